"""--decontaminate PATH: remove training rows whose user turns match a benchmark prompt (reason `contaminated`).

Benchmarks are small (thousands of prompts): they are read on the driver before Ray starts, so a missing or
prompt-less benchmark is refused at once. The n-gram test (operators/contamination.py) runs in Ray tasks over
every user turn of every kept row; the turns of rows it did not catch are embedded into the run's vectors
store (keyed by text, so `--dedup-on user` on one-turn rows shares the vectors and a rerun embeds nothing) and
compared with the prompts' vectors by exact inner product on the driver, a batch at a time.

    _work/turns/                     one row per user turn: turn id, row id, text, n-gram match
    _work/benchmarks/prompts.parquet every benchmark prompt: id, source, source_row, turn, benchmark, prompt
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.dedup import DECISION_SCHEMA
from jobs.resources import IO_TASK_CPUS
from operators import schema
from operators.contamination import NGRAM, NGRAM_PROMPT, ROW_ID, TURN, NgramIndex, prompts_of, user_turns
from operators.discover import discover
from operators.exact_dedup import TEXT_SHA1
from operators.read import iter_records
from operators.write import WORK_DIR, Output, read_checkpoint

logger = logging.getLogger(__name__)

TURNS_DIR = "turns"
BENCHMARKS_DIR = "benchmarks"
PROMPTS_FILE = "prompts.parquet"
PROMPTS_SCHEMA = pa.schema(
    [
        pa.field(schema.ID, pa.string()),  # "b<benchmark>:<row id>/<turn>": the embedding key
        pa.field(ROW_ID, pa.string()),  # the benchmark row's id (row_id(source, source_row))
        pa.field(schema.SOURCE, pa.string()),
        pa.field(schema.SOURCE_ROW, pa.int64()),
        pa.field(TURN, pa.int32()),
        pa.field("benchmark", pa.string()),  # the --decontaminate PATH as given
        pa.field("dedup_text", pa.string()),  # the prompt
        pa.field(TEXT_SHA1, pa.string()),
    ]
)
SEARCH_ROWS = 8192


@dataclass
class Benchmarks:
    prompts: pa.Table  # PROMPTS_SCHEMA
    summary: list[dict]  # per PATH: files, rows, prompts, rows without a prompt


def load_benchmarks(paths: tuple[str, ...]) -> Benchmarks:
    """Every prompt of every benchmark PATH; raises when a PATH holds no prompt at all."""
    import hashlib

    columns: dict[str, list] = {field.name: [] for field in PROMPTS_SCHEMA}
    summary = []
    for number, path in enumerate(paths):
        files = discover([path]).files
        rows = without = found = 0
        for item in files:
            for record in iter_records(item):
                rows += 1
                prompts = [] if record.error else prompts_of(record.record)
                if not prompts:
                    without += 1
                row = schema.row_id(item.source, record.source_row)
                for turn, prompt in enumerate(prompts):
                    columns[schema.ID].append(f"b{number}:{row}/{turn}")
                    columns[ROW_ID].append(row)
                    columns[schema.SOURCE].append(item.source)
                    columns[schema.SOURCE_ROW].append(record.source_row)
                    columns[TURN].append(turn)
                    columns["benchmark"].append(path)
                    columns["dedup_text"].append(prompt)
                    columns[TEXT_SHA1].append(hashlib.sha1(prompt.encode()).hexdigest())
                    found += 1
        if not found:
            raise ValueError(
                f"--decontaminate {path}: no prompt found in {rows} rows of {len(files)} files (expected a "
                "conversation, a prompt / question / instruction / input string, or a turns list of strings)"
            )
        summary.append({"path": path, "files": len(files), "rows": rows, "prompts": found, "rows_without_prompt": without})
        if without:
            logger.warning("--decontaminate %s: %d of %d rows hold no prompt and are not used", path, without, rows)
    return Benchmarks(pa.Table.from_pydict(columns, schema=PROMPTS_SCHEMA), summary)


@dataclass
class Outcome:
    decisions: pa.Table  # jobs.dedup.DECISION_SCHEMA
    manifest: dict

    @property
    def ids(self) -> pa.Array:
        return self.decisions.column(schema.ID).combine_chunks()


def run_decontaminate(config, output: Output, rows: tuple[Output, tuple[str, ...]], benchmarks: Benchmarks, timings) -> Outcome:
    settings = config.decontaminate
    prompts = benchmarks.prompts
    output.fs.create_dir(output.child_path(WORK_DIR, BENCHMARKS_DIR), recursive=True)
    pq.write_table(prompts, output.child_path(WORK_DIR, BENCHMARKS_DIR, PROMPTS_FILE), filesystem=output.fs)
    with timings.stage("decontaminate_ngrams"):
        index = NgramIndex(prompts.column("dedup_text").to_pylist(), settings.ngrams)
        output.delete_dir(WORK_DIR, TURNS_DIR)
        read_checkpoint(*rows, [schema.ID, schema.STATUS, schema.MESSAGES], empty=schema.WORK_SCHEMA).map_batches(
            user_turns, fn_args=(index,), batch_format="pyarrow", num_cpus=IO_TASK_CPUS
        ).write_parquet(output.child_uri(WORK_DIR, TURNS_DIR), ray_remote_args={"num_cpus": IO_TASK_CPUS})
        turns = _load_turns(output)
    by_ngram = pc.is_valid(turns.column(NGRAM_PROMPT))
    caught = pc.unique(turns.filter(by_ngram).column(ROW_ID))
    # The embedding test, for the turns of rows the n-grams did not catch.
    open_turns = turns.filter(pc.invert(pc.is_in(turns.column(ROW_ID), value_set=caught)))
    with timings.stage("decontaminate_embed"):
        best_prompt, best_sim, embedded = _embedding_test(config, output, open_turns, prompts)
    hit = best_sim >= np.float32(settings.threshold)
    decisions = _decisions(turns.filter(by_ngram), open_turns.filter(pa.array(hit)), best_prompt[hit], best_sim[hit],
                           prompts, settings)
    per_benchmark = pc.value_counts(decisions.column("benchmark")).to_pylist() if decisions.num_rows else []
    counts = {item["values"]: item["counts"] for item in per_benchmark}
    manifest = {
        "ngrams": settings.ngrams,
        "threshold": settings.threshold,
        "benchmarks": [{**b, "contaminated": counts.get(b["path"], 0)} for b in benchmarks.summary],
        "user_turns": turns.num_rows,
        "prompts_too_short_for_ngrams": index.unmatched_short,
        "rows_by_ngram": len(caught),
        "rows_by_embedding": decisions.num_rows - len(caught),
        "texts_embedded": embedded,
        "contaminated": decisions.num_rows,
    }
    logger.info("decontaminate: %d rows contaminated (%d by n-gram)", decisions.num_rows, len(caught))
    return Outcome(decisions.select(DECISION_SCHEMA.names).cast(DECISION_SCHEMA), manifest)


def _load_turns(output: Output) -> pa.Table:
    from operators.contamination import TURNS_SCHEMA

    narrow = [schema.ID, ROW_ID, TURN, TEXT_SHA1, NGRAM_PROMPT, NGRAM]
    tables = list(
        read_checkpoint(output, (WORK_DIR, TURNS_DIR), narrow, empty=TURNS_SCHEMA).iter_batches(
            batch_format="pyarrow", batch_size=None
        )
    )
    empty = pa.schema([TURNS_SCHEMA.field(name) for name in narrow]).empty_table()
    return pa.concat_tables([t.select(narrow) for t in tables]) if tables else empty


def _embedding_test(config, output: Output, turns: pa.Table, prompts: pa.Table) -> tuple[np.ndarray, np.ndarray, int]:
    """(best prompt index, its cosine) of each turn, embedding the texts the store lacks; and how many it embedded."""
    import dataclasses

    import ray

    from jobs.dedup import embed_into
    from jobs.resources import largest_node_cpus, plan_embed
    from jobs.vectors import VectorStore, settings_key, settings_of
    from operators.embed import VECTOR

    if not turns.num_rows:
        return np.empty(0, np.int64), np.empty(0, np.float32), 0
    embed_plan = plan_embed(
        ray.cluster_resources(), config.resources.embed_actors, config.resources.embed_gpus_per_actor,
        node_cpus=largest_node_cpus(),
    )
    embed_config = dataclasses.replace(config.embed, device=embed_plan.device, threads=embed_plan.threads)
    runtime = embed_config.runtime(embed_plan.device)
    store = VectorStore(output, settings_key(config.embed, runtime))
    store.remove_scratch()
    turn_sha1 = pc.unique(turns.column(TEXT_SHA1))
    prompt_sha1 = pc.unique(prompts.column(TEXT_SHA1))
    stored = store.stored_hashes()
    # One text of each missing content: the first turn or prompt that carries it.
    missing_ids = []
    for table in (prompts, turns):
        keys = table.select([schema.ID, TEXT_SHA1])
        keys = keys.filter(pc.invert(pc.is_in(keys.column(TEXT_SHA1), value_set=stored)))
        first = np.unique(keys.column(TEXT_SHA1).to_numpy(zero_copy_only=False), return_index=True)[1]
        missing_ids.append(keys.column(schema.ID).take(pa.array(np.sort(first))))
        stored = pa.concat_arrays([stored, keys.column(TEXT_SHA1).combine_chunks()])
    to_embed = pa.concat_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in missing_ids])
    embedded = 0
    if len(to_embed):
        store.write_settings(settings_of(config.embed, runtime))
        texts = ray.data.from_arrow(prompts.select([schema.ID, TEXT_SHA1, "dedup_text"])).union(
            read_checkpoint(output, (WORK_DIR, TURNS_DIR), [schema.ID, TEXT_SHA1, "dedup_text"])
        ).map_batches(_only, fn_args=(to_embed,), batch_format="pyarrow", num_cpus=IO_TASK_CPUS)
        embedded = embed_into(store, texts, config, embed_config, embed_plan, len(to_embed), stage="benchmark")
    matrix = np.zeros((len(prompt_sha1), 0), np.float32)
    for positions, table in store.batches(prompt_sha1, [VECTOR], SEARCH_ROWS):
        vectors = table.column(VECTOR).combine_chunks()
        block = vectors.flatten().to_numpy().reshape(len(positions), vectors.type.list_size)
        if matrix.shape[1] == 0:
            matrix = np.zeros((len(prompt_sha1), block.shape[1]), np.float32)
        matrix[positions] = block
    # Best prompt per distinct turn text, then per turn.
    text_best = np.full(len(turn_sha1), -1, np.int64)
    text_sim = np.full(len(turn_sha1), -np.inf, np.float32)
    for positions, table in store.batches(turn_sha1, [VECTOR], SEARCH_ROWS):
        vectors = table.column(VECTOR).combine_chunks()
        block = vectors.flatten().to_numpy().reshape(len(positions), vectors.type.list_size)
        sims = block @ matrix.T
        text_best[positions] = np.argmax(sims, axis=1)
        text_sim[positions] = sims[np.arange(len(positions)), text_best[positions]]
    # The first prompt row carrying each distinct prompt text.
    prompt_of_text = pc.index_in(prompt_sha1, value_set=prompts.column(TEXT_SHA1)).to_numpy()
    order = pc.index_in(turns.column(TEXT_SHA1), value_set=turn_sha1).to_numpy()
    best_text = text_best[order]
    return np.where(best_text >= 0, prompt_of_text[np.maximum(best_text, 0)], -1), text_sim[order], embedded


def _only(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch.column(schema.ID), value_set=wanted))


def _decisions(by_ngram: pa.Table, by_embedding: pa.Table, prompt_index: np.ndarray, sims: np.ndarray, prompts: pa.Table,
               settings) -> pa.Table:
    """One `contaminated` decision per row: its first turn caught by n-gram, else its most similar turn."""
    records: dict[str, dict] = {}
    for turn in by_ngram.to_pylist():
        if turn[ROW_ID] in records:
            continue
        prompt = prompts.slice(turn[NGRAM_PROMPT], 1).to_pylist()[0]
        records[turn[ROW_ID]] = _record(
            turn, prompt, None,
            f"user turn {turn[TURN]} shares the {len(turn[NGRAM].split())}-word sequence \"{turn[NGRAM]}\" with "
            f"{_prompt_name(prompt)}",
        )
    for turn, index, sim in zip(by_embedding.to_pylist(), prompt_index.tolist(), sims.tolist()):
        best = records.get(turn[ROW_ID])
        if best is not None and (best[schema.SIMILARITY] is None or best[schema.SIMILARITY] >= sim):
            continue
        prompt = prompts.slice(index, 1).to_pylist()[0]
        records[turn[ROW_ID]] = _record(
            turn, prompt, sim,
            f"user turn {turn[TURN]}: cosine {sim:.6f} >= {settings.threshold} to {_prompt_name(prompt)}",
        )
    rows = [records[key] for key in sorted(records)]
    return pa.Table.from_pylist(rows, schema=_DECISIONS) if rows else _DECISIONS.empty_table()


# The decisions of jobs/dedup.py plus the benchmark each row matched (counted per benchmark in the manifest).
_DECISIONS = DECISION_SCHEMA.append(pa.field("benchmark", pa.string()))


def _prompt_name(prompt: dict) -> str:
    turn = f" (turn {prompt[TURN]})" if prompt[TURN] else ""
    return f"a prompt of {prompt['benchmark']}{turn}"


def _record(turn: dict, prompt: dict, sim: float | None, detail: str) -> dict:
    return {
        schema.ID: turn[ROW_ID],
        schema.REASON: schema.CONTAMINATED,
        schema.DETAIL: detail,
        schema.DUPLICATE_OF: prompt[ROW_ID],
        schema.SIMILARITY: sim,
        schema.DUPLICATE_OF_SOURCE: f"{prompt[schema.SOURCE]}#{prompt[schema.SOURCE_ROW]} in {prompt['benchmark']}",
        "benchmark": prompt["benchmark"],
    }
