"""The baseline: the pipeline a user writes from the original tutorial, in one process.

    python benchmarks/naive_pipeline.py --input conversations.jsonl --output naive.parquet [--json timings.json]

Read ShareGPT (JSON lines or a JSON array of {"conversations": [{"from", "value"}, ...]}), take the first
human turn and the first gpt answer after it, count tokens row by row with `len(tokenizer.tokenize(text))`
for each side, keep rows whose sum is <= 4096, `SentenceTransformer.encode` the answers with its defaults
(batch size 32, not normalized), normalize, `faiss.IndexFlatIP`, search k=2, keep rows whose second score is
< 0.95, apply the chat template row by row, write one Parquet file.

The same tokenizer and embedder as chatsieve's defaults: the built-in Mistral-7B v0.1 tokenizer and chat
template (`operators.tokens.build_default_tokenizer`) and the bundled all-MiniLM-L6-v2. Torch uses every
core, as it does by default. Rows without a human turn followed by a gpt answer are skipped (the tutorial's
script would crash or silently drop them; here they are counted).

It prints (and with --json writes) the time of each step, the rows at each step and the peak RSS, so the
end-to-end benchmark (benchmarks/end_to_end.py) can compare it with chatsieve on the same input.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAX_TOKENS = 4096
THRESHOLD = 0.95


class Steps:
    """Wall time per step, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def read_sharegpt(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def first_exchange(row: dict) -> tuple[str, str] | None:
    """The first human turn and the gpt answer right after it, or None."""
    turns = row.get("conversations") or []
    for i, turn in enumerate(turns[:-1]):
        if turn.get("from") == "human" and turns[i + 1].get("from") == "gpt":
            return turn.get("value") or "", turns[i + 1].get("value") or ""
    return None


def run(input_path: Path, output_path: Path) -> dict:
    import faiss
    import numpy as np
    import pandas as pd
    import torch
    from sentence_transformers import SentenceTransformer

    from operators.embed import resolve_model_path
    from operators.tokens import build_default_tokenizer

    steps = Steps()
    counts: dict[str, int] = {}
    with steps.step("load_models"):
        tokenizer = build_default_tokenizer()
        model = SentenceTransformer(resolve_model_path("all-minilm-l6-v2"), device="cpu", local_files_only=True)
    with steps.step("read"):
        rows = read_sharegpt(input_path)
        pairs = [first_exchange(row) for row in rows]
        pairs = [pair for pair in pairs if pair is not None]
    counts["read"], counts["with_exchange"] = len(rows), len(pairs)
    with steps.step("count_tokens"):
        lengths = [len(tokenizer.tokenize(q)) + len(tokenizer.tokenize(a)) for q, a in pairs]
        pairs = [pair for pair, n in zip(pairs, lengths) if n <= MAX_TOKENS]
    counts["within_max_tokens"] = len(pairs)
    with steps.step("embed"):
        vectors = model.encode([a for _, a in pairs])
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with steps.step("search"):
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors.astype(np.float32))
        scores, _ = index.search(vectors.astype(np.float32), 2)
        keep = scores[:, 1] < THRESHOLD
        kept = [pair for pair, k in zip(pairs, keep) if k]
    counts["kept"] = len(kept)
    with steps.step("template_and_write"):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
            )
            for q, a in kept
        ]
        pd.DataFrame({"prompt": [q for q, _ in kept], "response": [a for _, a in kept], "text": texts}).to_parquet(
            output_path
        )
    return {
        "steps_s": steps.seconds,
        "total_s": round(sum(steps.seconds.values()), 3),
        "rows": counts,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="ShareGPT JSON or JSON lines")
    parser.add_argument("--output", required=True, type=Path, help="Parquet file to write")
    parser.add_argument("--json", type=Path, help="write the timings here")
    args = parser.parse_args(argv)
    result = run(args.input, args.output)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
