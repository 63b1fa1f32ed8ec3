"""The GPU embedding path, checked where Ray and FAISS are not installed (a lent GPU machine has torch,
transformers and sentence-transformers only; docs/notes.md, "The GPU machine").

    python benchmarks/gpu_check.py --prepare-model /tmp/minilm-fp16   # here: the bundled MiniLM in fp16 (~45 MB)
    python benchmarks/gpu_check.py --minilm /tmp/minilm-fp16 --out benchmarks/results/gpu_check.json  # on the GPU
    python benchmarks/gpu_check.py --device cpu --rows 64 --big-rows 8 --out /tmp/gpu_check_cpu.json  # a dry run

For two models, all-MiniLM-L6-v2 and a gte-large-sized model (BERT-large shape: 24 layers, 1024 wide, 335M
parameters) built from a config with random weights on the spot (the real one is too large to carry; its speed
is the same, its vectors are meaningless), on the same texts (the dedup texts of the built-in sample):

  fidelity    the `Embed` operator on the device (fp16 on CUDA) against `Embed` on the CPU in fp32: max
              |1 - cos| between a text's two vectors; over every pair of texts, the decisions at 0.95 that
              differ and the pairs within 0.001 of it.
  throughput  `Embed` against a raw `SentenceTransformer.encode` of the same texts on the same device in the
              same precision, interleaved A B B A, best of --rounds: rows/s and the ratio.
  efficiency  tokens/s (non-padding word pieces the model saw) and the share of the device's dense fp16 peak
              that 2 x parameters x tokens FLOP/s reaches (attention FLOPs left out: a lower bound).

No timing asserts; the JSON says what ran where. Refuses to run if Ray or FAISS got imported (the point is that
the operator needs neither).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import BenchmarkRun  # noqa: E402
from operators import schema  # noqa: E402
from operators.embed import BUILTIN_EMBEDDER, Embed, EmbedConfig, resolve_model_path  # noqa: E402
from operators.exact_dedup import DEDUP_TEXT  # noqa: E402

THRESHOLD = 0.95
NEAR = 0.001
# Dense fp16/bf16 tensor-core peaks (NVIDIA data sheets, SXM parts, without sparsity), TFLOP/s.
FP16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
GTE_LARGE_SHAPE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096, "max_position_embeddings": 512}


def sample_texts(rows: int) -> list[str]:
    """The dedup texts (conversation) of the built-in sample's kept rows: what the job embeds for it."""
    from jobs.sample import SampleConfig, write_sample
    from operators.discover import discover_inputs
    from operators.exact_dedup import dedup_text
    from operators.normalize import NormalizeConfig, normalize_record
    from operators.read import iter_records

    texts: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        write_sample(Path(scratch) / "sample", SampleConfig(rows=rows * 2, seed=0))
        for item in discover_inputs([str(Path(scratch) / "sample")]):
            for raw in iter_records(item):
                result = normalize_record(raw.record, NormalizeConfig()) if raw.error is None else None
                if result is not None and result.status == schema.KEPT and len(texts) < rows:
                    texts.append(dedup_text(result.messages, "conversation"))
    return texts


def prepare_minilm(directory: Path) -> None:
    """The bundled MiniLM saved in fp16 (about 45 MB, small enough to carry to the GPU machine)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path(BUILTIN_EMBEDDER), device="cpu", local_files_only=True)
    model.half()
    model.save(str(directory))
    print(f"saved fp16 MiniLM to {directory}")


def build_gte_large_shaped(directory: Path, tokenizer_source: str) -> None:
    """A sentence-transformers directory with gte-large's architecture and random weights (BERT's vocabulary,
    from the MiniLM tokenizer, which is bert-base-uncased's)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **GTE_LARGE_SHAPE))
    hf_dir = directory / "hf"
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=512)
    pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu").save(str(directory / "st"))


def as_table(texts: list[str]) -> pa.Table:
    return pa.table({schema.ID: [str(i) for i in range(len(texts))], DEDUP_TEXT: texts})


def embed_vectors(stage: Embed, texts: list[str]) -> np.ndarray:
    out = stage(as_table(texts))
    return out.column("vector").combine_chunks().flatten().to_numpy().reshape(len(texts), -1)


def decisions(a: np.ndarray, b: np.ndarray) -> dict:
    sim_a, sim_b = a @ a.T, b @ b.T
    upper = np.triu_indices(len(a), k=1)
    sa, sb = sim_a[upper], sim_b[upper]
    return {
        "pairs": int(len(sa)),
        "decisions_changed_at_threshold": int(np.sum((sa >= THRESHOLD) != (sb >= THRESHOLD))),
        "pairs_within_0.001_of_threshold": int(np.sum(np.abs(sb - THRESHOLD) <= NEAR)),
        "max_abs_delta_cosine": float(np.max(np.abs(sa - sb))) if len(sa) else 0.0,
    }


def timed(fn, rounds: int, sync) -> float:
    best = float("inf")
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def check_model(name: str, model_dir: str, texts: list[str], cpu_rows: int, device: str, rounds: int,
                max_tokens: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    on_device = Embed(EmbedConfig(model=model_dir, device=device, backend="torch", max_tokens=max_tokens))
    on_cpu = Embed(EmbedConfig(model=model_dir, device="cpu", backend="torch", max_tokens=max_tokens))
    on_cpu.model.float()  # fp32 on the CPU whatever the saved dtype (the fp16 copy that travels)
    subset = texts[:cpu_rows]
    device_vectors, cpu_vectors = embed_vectors(on_device, subset), embed_vectors(on_cpu, subset)
    cos = np.sum(device_vectors * cpu_vectors, axis=1)
    fidelity = {"rows": len(subset), "max_one_minus_cos": float(np.max(1 - cos)), **decisions(cpu_vectors, device_vectors)}

    raw = SentenceTransformer(model_dir, device=device, local_files_only=True)
    if device == "cuda":
        raw.half()
    raw.max_seq_length = min(raw.max_seq_length, on_device.window + 2)  # the same window as one Embed window
    batch = on_device.batch_size
    table = as_table(texts)
    run_embed = lambda: on_device(table)  # noqa: E731
    run_raw = lambda: raw.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)  # noqa: E731
    run_embed(), run_raw()  # warm: kernels, allocator
    times = {"embed": [], "raw": []}
    for order in (("embed", "raw"), ("raw", "embed")) * max(1, rounds // 2):
        for variant in order:
            times[variant].append(timed(run_embed if variant == "embed" else run_raw, 1, sync))
    best = {k: min(v) for k, v in times.items()}
    tokenizer = on_device.tokenizer
    tokens = sum(min(len(ids), on_device.window) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    params = sum(p.numel() for p in on_device.model.parameters())
    seconds = best["embed"]
    flops = 2.0 * params * tokens / seconds
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    peak = next((v for k, v in FP16_PEAK_TFLOPS.items() if gpu and k in gpu), None)
    return {
        "model": name,
        "parameters": params,
        "fidelity_vs_cpu_fp32": fidelity,
        "throughput": {
            "rows": len(texts),
            "embed_rows_per_s": round(len(texts) / best["embed"], 1),
            "raw_encode_rows_per_s": round(len(texts) / best["raw"], 1),
            "embed_vs_raw": round(best["raw"] / best["embed"], 3),
            "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "batch_size": batch,
        },
        "efficiency": {
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds),
            "model_tflops": round(flops / 1e12, 2),
            "device_fp16_peak_tflops": peak,
            "share_of_peak": round(flops / (peak * 1e12), 4) if peak else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-model", metavar="DIR", help="save the bundled MiniLM in fp16 to DIR and exit")
    parser.add_argument("--minilm", default=BUILTIN_EMBEDDER, help="MiniLM directory (default: the bundled one)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--rows", type=int, default=4000, help="texts for throughput")
    parser.add_argument("--cpu-rows", type=int, default=1000, help="texts for the CPU fp32 comparison (MiniLM)")
    parser.add_argument("--big-rows", type=int, default=256, help="texts for the CPU comparison of the large model")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--skip-big", action="store_true", help="MiniLM only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args()
    if args.prepare_model:
        prepare_minilm(Path(args.prepare_model))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a dry run")
    run = BenchmarkRun("gpu_check", REPO)
    texts = sample_texts(args.rows)
    minilm = resolve_model_path(args.minilm)
    results = [check_model("all-MiniLM-L6-v2", minilm, texts, args.cpu_rows, args.device, args.rounds,
                           args.max_tokens)]
    if not args.skip_big:
        with tempfile.TemporaryDirectory() as scratch:
            build_gte_large_shaped(Path(scratch), minilm)
            results.append(check_model("gte-large-shaped (random weights)", str(Path(scratch) / "st"), texts,
                                       args.big_rows, args.device, args.rounds, args.max_tokens))
    imported = sorted(m for m in ("ray", "faiss") if m in sys.modules)
    if imported:
        raise SystemExit(f"the check imported {imported}: the embedding operator must not need them")
    report = run.write(
        args.out,
        device=args.device,
        gpu=torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        torch=torch.__version__,
        threshold=THRESHOLD,
        models=results,
    )
    print(json.dumps([{m["model"]: m["throughput"]["embed_vs_raw"]} for m in report["models"]]))


if __name__ == "__main__":
    main()
