"""The benchmark inputs: ShareGPT JSON lines both the naive pipeline and chatsieve read.

real       up to N rows of ../shared/data (when present), taken round-robin from files of different kinds
           (Alpaca answers, English math chain-of-thought, code, role play, Chinese medical ShareGPT, templated
           FastChat rows with repeated turns, tool calls), reduced to the first user turn and its answer by
           chatsieve's own reader and normalizer (`--turns first`), so the naive script's ShareGPT reader
           sees every row. Rows without such an exchange are skipped.
generated  the first exchange of every kept row of chatsieve's generated sample (`jobs.sample`, seed 0):
           short conversations with planted exact and near-duplicates, written as ShareGPT.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
REAL_FILES = (
    "llamafactory/alpaca_en_demo.json",
    "medicalgpt/finetune_numina_cot_sharegpt_data_1k.jsonl",
    "gpteacher/Codegen_codegen-instruct.json",
    "gpteacher/Roleplay_roleplay-simple-deduped-roleplay-instruct.json",
    "medicalgpt/sft_sharegpt_zh_1K_format.jsonl",
    "fastchat/dummy_conversation.json",
    "llamafactory/glaive_toolcall_en_demo.json",
)


def _first_exchanges(path: str):
    """(user, assistant) of each record of `path` that has both, in file order, via chatsieve's reader."""
    from operators.normalize import NormalizeConfig, normalize_record
    from operators.discover import discover_inputs
    from operators.read import iter_records

    config = NormalizeConfig(turns="first", system="drop")
    for item in discover_inputs([path]):
        for raw in iter_records(item):
            if raw.record is None:
                continue
            normalized = normalize_record(raw.record, config)
            messages = normalized.messages or []
            roles = [m["role"] for m in messages]
            if normalized.status == "kept" and roles[:2] == ["user", "assistant"]:
                yield messages[0]["content"], messages[1]["content"]


def _write_sharegpt(exchanges, path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for user, assistant in exchanges:
            row = {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def real_sharegpt(path: Path, rows: int) -> dict | None:
    """Write up to `rows` real exchanges to `path`; None when ../shared/data is absent."""
    files = [SHARED_DATA / name for name in REAL_FILES if (SHARED_DATA / name).is_file()]
    if not files:
        return None
    streams = [_first_exchanges(str(f)) for f in files]
    mixed = (pair for group in itertools.zip_longest(*streams) for pair in group if pair is not None)
    written = _write_sharegpt(itertools.islice(mixed, rows), path)
    return {"kind": "real", "rows": written, "files": [str(f.relative_to(SHARED_DATA)) for f in files]}


def generated_sharegpt(path: Path, rows: int, seed: int = 0) -> dict:
    """Write the first exchanges of a generated sample of `rows` rows to `path`."""
    from jobs.sample import SampleConfig, write_sample

    with tempfile.TemporaryDirectory() as scratch:
        write_sample(scratch, SampleConfig(rows=rows, seed=seed))
        pairs = itertools.chain.from_iterable(
            _first_exchanges(str(f)) for f in sorted(Path(scratch).iterdir()) if f.is_file()
        )
        written = _write_sharegpt(pairs, path)
    return {"kind": "generated", "sample_rows": rows, "seed": seed, "rows": written}
