"""What leaving boilerplate paragraphs out of the embedded text changes: the numbers behind the default
`--boilerplate-min-rows` and `operators.boilerplate.MIN_CHARS`.

    python benchmarks/boilerplate.py [--data ../shared/data] [--min-rows 5 10 20 50 100] [--min-chars 0 64 200]
        [--cache /tmp/chatsieve-boilerplate-vectors] [--out benchmarks/results/boilerplate.json]

Corpora (rows read without Ray by chatsieve's own reader and normalizer, `status == kept` only):
  real_conversation   every file of ../shared/data (about 15,400 kept rows), --dedup-on conversation (the default)
  real_user           the same rows, --dedup-on user
  planted_system      a planted-but-real boilerplate corpus: the 999 alpaca_en_demo rows (instruction, input when
                      present, their real output) plus PLANTED_PAIRS rows ("count the characters of X" / "count the
                      words of X", computed answers), every row given ONE fixed system message of ~2,000
                      characters made of real text: the distinct tool descriptions of glaive_toolcall_en_demo's
                      `tools` fields, one JSON object per paragraph, under glaive's own one-line header.
                      --dedup-on conversation
  planted_short       the same with a ~700-character preamble (the first tools only), which fits the embedder's
                      window with room to spare: does the shared paragraph dominate without cutting the text?
  planted_user        the ~2,000-character preamble as the leading paragraphs of the user turn, --dedup-on user

For each corpus the job's rule is replayed exactly (docs/architecture.md, "Near-duplicate semantics"): rows in
(source, source_row) order, exact duplicates of the FULL dedup text removed first, the representatives
embedded (all-MiniLM-L6-v2, the CPU default runtime, 2 threads, 512 word pieces), and the greedy keep rule at
0.95 over every pair (exact brute-force float32 cosine). Then, for each min_rows x min_chars, the boilerplate
paragraphs are found with the operator's own functions (count_paragraphs per block, count_rows,
boilerplate_keys), each representative's text is stripped (strip_boilerplate) and re-embedded where it changed,
and the keep rule is run again. Reported per setting: removals without and with stripping, the removals that
disappear and that appear (with examples: both rows' texts as embedded, short; "direct" when the deciding pair
involves a stripped text, the rest are cascades of the greedy rule: a row's kept neighbour changed fate), the
boilerplate paragraphs found and the rows carrying them, and for every removal under stripping the FULL-text cosine of the removed row to its
kept row (share >= 0.95, >= 0.90, min): are they still duplicates of the row that replaces them? For the planted
corpora, each planted pair's cosine with and without stripping.

Each distinct text is embedded once; vectors are cached by sha1 of the text in `--cache`.npz (keyed by the
embedder's runtime and max_tokens) so a rerun embeds only new texts. CPU embedding is the slow part: about
33,000 texts, ~18 minutes on 2 shared cores without the cache, ~2 minutes with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import numpy as np
import pyarrow as pa
from machine import BenchmarkRun

THRESHOLD = 0.95
MIN_ROWS = (5, 10, 20, 50, 100)
MIN_CHARS = (0, 64, 200)
EMBED_BATCH = 256  # texts per Embed call (one Ray batch's worth)
CHUNK = 2048  # rows per brute-force similarity block
EXAMPLES = 3
EXCERPT = 160
PREAMBLE_CHARS = {"long": 2000, "short": 700}
GLAIVE_HEADER = "You are a helpful assistant with access to the following functions. Use them if required -"
SHARED_DATA = REPO.parent / "shared" / "data"

PLANTED_SENTENCES = 3  # real sentences the planted pairs are about (first sentences of alpaca_en_demo answers)


def _sorted_nums(sentence: str) -> list[int]:
    return [len(word) * 7 + i for i, word in enumerate(sentence.split()[:8])]


def planted_pairs(sentences: list[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """((user_a, answer_a), (user_b, answer_b)): tasks that differ in one word, about the same real sentence,
    with correct (computed) answers. Each pair is what a shared preamble may make a near-duplicate."""
    vowels = set("aeiouAEIOU")
    pairs = []
    for s in sentences:
        nums = _sorted_nums(s)
        a, b = len(s) * 37 % 9000 + 100, len(s.split()) * 53 + 11
        letters = [c for c in s if c.isalpha()]
        pairs += [
            ((f"Count the characters in the following sentence: {s}", f"The sentence has {len(s)} characters."),
             (f"Count the words in the following sentence: {s}", f"The sentence has {len(s.split())} words.")),
            ((f"Count the vowels in the following sentence: {s}",
              f"The sentence has {sum(c in vowels for c in letters)} vowels."),
             (f"Count the consonants in the following sentence: {s}",
              f"The sentence has {sum(c not in vowels for c in letters)} consonants.")),
            ((f"Reverse the order of the words in this sentence: {s}", " ".join(reversed(s.split()))),
             (f"Reverse the order of the letters in this sentence: {s}", s[::-1])),
            ((f"Convert the following sentence to uppercase: {s}", s.upper()),
             (f"Convert the following sentence to lowercase: {s}", s.lower())),
            ((f"Sort these numbers in ascending order: {', '.join(map(str, nums))}",
              ", ".join(map(str, sorted(nums)))),
             (f"Sort these numbers in descending order: {', '.join(map(str, nums))}",
              ", ".join(map(str, sorted(nums, reverse=True))))),
            ((f"What is the sum of {a} and {b}?", f"The sum of {a} and {b} is {a + b}."),
             (f"What is the product of {a} and {b}?", f"The product of {a} and {b} is {a * b}.")),
        ]
    return pairs


def preamble(data: Path, chars: int) -> str:
    """Glaive's header and the distinct tool descriptions of glaive_toolcall_en_demo, one JSON object a
    paragraph, in first-seen order, until at least `chars` characters."""
    records = json.loads((data / "llamafactory" / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    paragraphs, seen = [GLAIVE_HEADER], set()
    for record in records:
        for tool in json.loads(record["tools"]):
            text = json.dumps(tool)
            if text not in seen:
                seen.add(text)
                paragraphs.append(text)
                if len("\n\n".join(paragraphs)) >= chars:
                    return "\n\n".join(paragraphs)
    return "\n\n".join(paragraphs)


def planted_file(data: Path, tmp: Path, layout: str, text: str) -> tuple[Path, list[tuple[int, int]]]:
    """An Alpaca JSON file: alpaca_en_demo's rows then the planted pairs, each with the preamble `text` as the
    system column (layout "system") or as the leading paragraphs of the instruction ("user"). Returns the file
    and the planted pairs' source_row pairs."""
    alpaca = json.loads((data / "llamafactory" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    # the first sentences of 50-150 characters, one line, that open an answer, in file order
    firsts = (r["output"].split(". ")[0].rstrip(".") + "." for r in alpaca)
    sentences = [f for f in firsts if 50 <= len(f) <= 150 and "\n" not in f][:PLANTED_SENTENCES]
    rows = [(r["instruction"], r.get("input", ""), r["output"]) for r in alpaca]
    pair_rows = []
    for (user_a, answer_a), (user_b, answer_b) in planted_pairs(sentences):
        pair_rows.append((len(rows), len(rows) + 1))
        rows += [(user_a, "", answer_a), (user_b, "", answer_b)]
    records = []
    for instruction, extra, output in rows:
        if layout == "system":
            records.append({"system": text, "instruction": instruction, "input": extra, "output": output})
        else:
            records.append({"instruction": text + "\n\n" + instruction, "input": extra, "output": output})
    path = tmp / f"planted_{layout}_{len(text)}.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path, pair_rows


def read_tables(inputs: list[str]) -> list[pa.Table]:
    """WORK_SCHEMA blocks of every input file, as the job's read stage makes them."""
    from operators.discover import discover
    from operators.normalize import NormalizeConfig
    from operators.read import read_file_batches

    return [t for item in discover(inputs).files for t in read_file_batches(item, NormalizeConfig())]


# --- embedding, cached by text ------------------------------------------------------------------


class Vectors:
    """sha1(text) -> vector, embedded once with the job's Embed stage, persisted in `path`.npz."""

    def __init__(self, path: str):
        from operators.embed import Embed, EmbedConfig

        self.config = EmbedConfig(device="cpu", threads=2)
        self.stage = Embed(self.config)
        tag = f"{self.config.runtime('cpu')}-{self.config.max_tokens}"
        self.path = Path(f"{path}-{tag}.npz")
        self.cache: dict[bytes, np.ndarray] = {}
        if self.path.exists():
            stored = np.load(self.path)
            self.cache = dict(zip(stored["keys"].tolist(), stored["vectors"]))
            print(f"{len(self.cache)} cached vectors from {self.path}", flush=True)
        self.embedded, self.seconds, self.cached_at_start = 0, 0.0, len(self.cache)

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha1(text.encode()).hexdigest().encode()

    def _save(self) -> None:
        keys = list(self.cache)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys, dtype="S40"), vectors=np.stack([self.cache[k] for k in keys]))
        tmp.replace(self.path)

    def __call__(self, texts: list[str], label: str) -> np.ndarray:
        missing = list({self.key(t): t for t in texts if self.key(t) not in self.cache}.values())
        if missing:
            print(f"{label}: embedding {len(missing)} of {len(texts)} texts", flush=True)
        started, since_save = time.perf_counter(), 0
        for start in range(0, len(missing), EMBED_BATCH):
            chunk = missing[start : start + EMBED_BATCH]
            table = pa.table({"id": [str(i) for i in range(len(chunk))], "dedup_text": chunk})
            vectors = self.stage(table).column("vector").combine_chunks().flatten().to_numpy()
            for text, vector in zip(chunk, vectors.reshape(len(chunk), -1)):
                self.cache[self.key(text)] = vector.copy()
            since_save += len(chunk)
            if since_save >= 2048 or start + EMBED_BATCH >= len(missing):
                self._save()
                since_save = 0
                done = start + len(chunk)
                rate = done / (time.perf_counter() - started)
                print(f"  {done}/{len(missing)} ({rate:.1f} texts/s)", flush=True)
        if missing:
            self.embedded += len(missing)
            self.seconds += time.perf_counter() - started
        return np.stack([self.cache[self.key(t)] for t in texts]).astype(np.float32)

    def word_pieces(self, text: str) -> int:
        return len(self.stage.tokenizer(text, add_special_tokens=False)["input_ids"])


# --- the keep rule --------------------------------------------------------------------------------


def pairs_of(vectors: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cosine) with a < b and float32 cosine >= THRESHOLD; only pairs touching `rows` if given."""
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows)
    touched = np.zeros(len(vectors), bool)
    touched[rows] = True
    found_a, found_b, found_s = [], [], []
    for start in range(0, len(rows), CHUNK):
        block = rows[start : start + CHUNK]
        sims = vectors[block] @ vectors.T
        r, c = np.nonzero(sims >= THRESHOLD)
        i = block[r]
        # each unordered pair once: i < c, or c < i when c is not itself in `rows` (else it is found from c)
        keep = (i < c) | ((c < i) & ~touched[c])
        i, c, s = i[keep], c[keep], sims[r[keep], c[keep]]
        found_a.append(np.minimum(i, c))
        found_b.append(np.maximum(i, c))
        found_s.append(s)
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s).astype(np.float32)


def resolve(n: int, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]):
    from operators.resolve import resolve_greedy

    return resolve_greedy(n, *pairs, THRESHOLD)


# --- one corpus -------------------------------------------------------------------------------------


def excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


def cos_stats(values: np.ndarray) -> dict:
    if not len(values):
        return {"n": 0}
    return {
        "n": len(values),
        "share_ge_0.95": round(float(np.mean(values >= THRESHOLD)), 4),
        "share_ge_0.90": round(float(np.mean(values >= 0.90)), 4),
        "min": round(float(values.min()), 4),
        "median": round(float(np.median(values)), 4),
    }


@dataclass
class Setting:
    """One min_rows x min_chars run's texts and vectors, for examples."""

    label: dict[int, str]
    sources: list[str]
    v0: np.ndarray  # full-text vectors
    v1: np.ndarray  # stripped-text vectors
    stripped: list[str]
    left_out: np.ndarray
    changed: np.ndarray

    def example(self, row: int, other: int) -> dict:
        return {
            "removed": self.label[row],
            "kept": self.label[other],
            "cos_full": round(float(self.v0[row] @ self.v0[other]), 4),
            "cos_stripped": round(float(self.v1[row] @ self.v1[other]), 4),
            "removed_text": excerpt(self.stripped[row]),
            "kept_text": excerpt(self.stripped[other]),
            "paragraphs_left_out": [int(self.left_out[row]), int(self.left_out[other])],
        }

    def examples(self, rows: np.ndarray, duplicate_of: np.ndarray) -> list[dict]:
        """Up to EXAMPLES: direct changes first (the deciding pair involves a stripped text), one per source, then
        in rank order."""
        ordered = sorted(rows.tolist(), key=lambda r: not (self.changed[r] or self.changed[duplicate_of[r]]))
        picked, sources = [], set()
        for row in ordered:
            if self.sources[row] not in sources:
                sources.add(self.sources[row])
                picked.append(row)
        picked += [r for r in ordered if r not in picked]
        return [self.example(r, int(duplicate_of[r])) for r in picked[:EXAMPLES]]


def check_counts(tables: list[pa.Table], dedup_on: str, min_chars: int, keys: np.ndarray, rows: np.ndarray) -> None:
    """The operator's counts equal a plain recount: distinct dedup texts (exact key) per paragraph key."""
    from operators import boilerplate, schema
    from operators.exact_dedup import dedup_text, exact_key

    texts: dict[int, set[str]] = {}
    for table in tables:
        for status, messages in zip(table.column(schema.STATUS).to_pylist(), table.column(schema.MESSAGES).to_pylist()):
            if status == schema.KEPT:
                text = exact_key(dedup_text(messages, dedup_on))
                for key in boilerplate.row_keys(messages, dedup_on, min_chars):
                    texts.setdefault(key, set()).add(text)
    expected = {key: len(found) for key, found in texts.items()}
    got = dict(zip(keys.tolist(), rows.tolist()))
    if got != expected:
        differ = sum(got.get(k) != v for k, v in expected.items()) + len(set(got) - set(expected))
        raise AssertionError(f"count_paragraphs/count_rows disagree with a plain recount on {differ} paragraphs")


def measure(name: str, tables: list[pa.Table], dedup_on: str, vectors: Vectors, min_rows: list[int],
            min_chars: list[int], planted: list[tuple[int, int]] | None = None) -> dict:
    from operators import boilerplate, schema
    from operators.exact_dedup import dedup_text, exact_key

    kept = []
    for table in tables:
        for source, source_row, status, messages in zip(
            *(table.column(c).to_pylist() for c in (schema.SOURCE, schema.SOURCE_ROW, schema.STATUS, schema.MESSAGES))
        ):
            if status == schema.KEPT:
                kept.append((source, source_row, messages))
    kept.sort(key=lambda row: (row[0], row[1]))
    # Exact dedup on the full dedup text: the first row of each key is its representative.
    seen, reps = set(), []
    for row in kept:
        key = exact_key(dedup_text(row[2], dedup_on))
        if key not in seen:
            seen.add(key)
            reps.append(row)
    n = len(reps)
    full = [dedup_text(messages, dedup_on) for _, _, messages in reps]
    label = {i: f"{reps[i][0].split('/')[-1]}:{reps[i][1]}" for i in range(n)}
    rank_of = {(source.split("/")[-1], row): i for i, (source, row, _) in enumerate(reps)}
    print(f"{name}: {len(kept)} kept rows, {n} representatives", flush=True)

    v0 = vectors(full, f"{name} full texts")
    base_pairs = pairs_of(v0)
    base = resolve(n, base_pairs)
    removed0 = ~base.kept
    result = {
        "dedup_on": dedup_on,
        "kept_rows": len(kept),
        "exact_duplicates": len(kept) - n,
        "representatives": n,
        "pairs_ge_threshold_without": len(base_pairs[0]),
        "removals_without": int(removed0.sum()),
        "removals_without_by_source": dict(Counter(reps[i][0].split("/")[-1] for i in np.flatnonzero(removed0)).most_common()),
        "settings": [],
    }

    counted = {}
    for mc in min_chars:
        blocks = [boilerplate.count_paragraphs(t, dedup_on, mc) for t in tables]
        keys, rows = boilerplate.count_rows(blocks)
        check_counts(tables, dedup_on, mc, keys, rows)
        counted[mc] = (keys, rows)
        result.setdefault("distinct_paragraphs_counted", {})[str(mc)] = len(keys)

    def paragraph_text(keys: set[int]) -> dict[int, tuple[str, str, str]]:
        """key -> (first paragraph text, its source file, its role)."""
        found = {}
        for source, _, messages in reps:
            for m in boilerplate.dedup_messages(messages, dedup_on):
                for p in boilerplate.split_paragraphs(m["content"]):
                    k = boilerplate.paragraph_key(p)
                    if k in keys and k not in found:
                        found[k] = (p, source.split("/")[-1], m["role"])
        return found

    for mc in min_chars:
        keys, rows = counted[mc]
        for mr in min_rows:
            started = time.perf_counter()
            bp = boilerplate.boilerplate_keys(keys, rows, mr)
            stripped, left_out, whole = [], np.zeros(n, np.int64), 0
            for i, (_, _, messages) in enumerate(reps):
                messages_s, out = boilerplate.strip_boilerplate(messages, dedup_on, bp)
                stripped.append(dedup_text(messages_s, dedup_on))
                left_out[i] = out
                if not out and bp and boilerplate.row_keys(messages, dedup_on, mc) & bp.keys():
                    whole += 1  # every paragraph is boilerplate: the row keeps its whole text
            changed = np.flatnonzero(np.array([s != f for s, f in zip(stripped, full)], bool))
            v1 = v0.copy()
            if len(changed):
                v1[changed] = vectors([stripped[i] for i in changed], f"{name} min_rows {mr} min_chars {mc}")
            is_changed = np.zeros(n, bool)
            is_changed[changed] = True
            a0, b0, s0 = base_pairs
            untouched = ~is_changed[a0] & ~is_changed[b0]
            new = pairs_of(v1, changed) if len(changed) else (a0[:0], b0[:0], s0[:0])
            pairs1 = tuple(np.concatenate([x[untouched], y]) for x, y in zip(base_pairs, new))
            res = resolve(n, pairs1)
            removed1 = ~res.kept
            gone = np.flatnonzero(removed0 & ~removed1)
            came = np.flatnonzero(~removed0 & removed1)
            remaining = np.flatnonzero(removed1)
            full_cos = np.sum(v0[remaining] * v0[res.duplicate_of[remaining]], axis=1)
            came_cos = np.sum(v0[came] * v0[res.duplicate_of[came]], axis=1)
            stripped_removed = remaining[is_changed[remaining] | is_changed[res.duplicate_of[remaining]]]
            stripped_cos = np.sum(v0[stripped_removed] * v0[res.duplicate_of[stripped_removed]], axis=1)

            view = Setting(label, [r[0] for r in reps], v0, v1, stripped, left_out, is_changed)
            carrying = np.flatnonzero(left_out > 0)
            top = sorted(bp.items(), key=lambda kv: -kv[1])[:8]
            texts = paragraph_text({k for k, _ in top})
            # A change is direct when the deciding pair involves a stripped text (the removed row and the row it
            # duplicates: without stripping for a removal that disappears, with stripping for one that appears);
            # otherwise it is a cascade of the greedy rule (a row's kept neighbour changed fate).
            gone_direct = int(np.sum(is_changed[gone] | is_changed[base.duplicate_of[gone]])) if len(gone) else 0
            came_direct = int(np.sum(is_changed[came] | is_changed[res.duplicate_of[came]])) if len(came) else 0
            entry = {
                "min_rows": mr,
                "min_chars": mc,
                "boilerplate_paragraphs": len(bp),
                "rows_carrying": len(carrying),
                "rows_all_boilerplate_kept_whole": whole,
                "rows_carrying_by_source": dict(Counter(reps[i][0].split("/")[-1] for i in carrying).most_common(6)),
                "top_paragraphs": [
                    {"rows": r, "chars": len(texts[k][0]), "source": texts[k][1], "role": texts[k][2],
                     "excerpt": excerpt(texts[k][0])[:100]}
                    for k, r in top if k in texts
                ],
                "removals_without": int(removed0.sum()),
                "removals_with": int(removed1.sum()),
                "net_change": int(removed1.sum() - removed0.sum()),
                "disappear": len(gone),
                "disappear_direct": gone_direct,
                "appear": len(came),
                "appear_direct": came_direct,
                "disappear_by_source": dict(Counter(reps[i][0].split("/")[-1] for i in gone).most_common(6)),
                "appear_by_source": dict(Counter(reps[i][0].split("/")[-1] for i in came).most_common(6)),
                "remaining_full_cos_to_kept": cos_stats(full_cos),
                "remaining_involving_stripped_rows_full_cos": cos_stats(stripped_cos),
                "appeared_full_cos_to_kept": cos_stats(came_cos),
                "examples_disappear": view.examples(gone, base.duplicate_of),
                "examples_appear": view.examples(came, res.duplicate_of),
                "seconds": round(time.perf_counter() - started, 1),
            }
            if planted:
                source = reps[0][0].split("/")[-1]
                ranks = [(rank_of[(source, ra)], rank_of[(source, rb)]) for ra, rb in planted]
                if "planted_pairs" not in result:
                    result["planted_pairs"] = [
                        {"a": excerpt(stripped[i])[:90], "b": excerpt(stripped[j])[:90],
                         "cos_full": round(float(v0[i] @ v0[j]), 4), "b_removed_without": bool(removed0[j])}
                        for i, j in ranks
                    ]
                entry["planted_pairs_cos_stripped"] = [round(float(v1[i] @ v1[j]), 4) for i, j in ranks]
                entry["planted_pairs_ge_threshold_without"] = sum(float(v0[i] @ v0[j]) >= THRESHOLD for i, j in ranks)
                entry["planted_pairs_ge_threshold_with"] = sum(float(v1[i] @ v1[j]) >= THRESHOLD for i, j in ranks)
            result["settings"].append(entry)
            print(f"{name} min_rows {mr:>3} min_chars {mc:>3}: {len(bp)} paragraphs, {len(carrying)} rows; "
                  f"removals {removed0.sum()} -> {removed1.sum()} (-{len(gone)} [{gone_direct} direct] "
                  f"+{len(came)} [{came_direct} direct])", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--min-rows", type=int, nargs="+", default=list(MIN_ROWS))
    parser.add_argument("--min-chars", type=int, nargs="+", default=list(MIN_CHARS))
    parser.add_argument("--corpora", nargs="+",
                        default=["planted_system", "planted_short", "planted_user", "real_conversation", "real_user"])
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "chatsieve-boilerplate-vectors"))
    parser.add_argument("--out", default=str(HERE / "results" / "boilerplate.json"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "llamafactory").is_dir():
        print(f"no shared data at {data}: nothing to measure", file=sys.stderr)
        return 1
    run = BenchmarkRun("boilerplate", REPO)
    vectors = Vectors(args.cache)
    corpora, planted_info = {}, {}
    with tempfile.TemporaryDirectory(prefix="chatsieve-boilerplate-") as tmp:
        for name in args.corpora:
            if name.startswith("planted"):
                size = "short" if name == "planted_short" else "long"
                layout = "user" if name == "planted_user" else "system"
                text = preamble(data, PREAMBLE_CHARS[size])
                path, pairs = planted_file(data, Path(tmp), layout, text)
                planted_info[name] = {
                    "layout": layout, "preamble_chars": len(text), "preamble_paragraphs": text.count("\n\n") + 1,
                    "preamble_word_pieces": vectors.word_pieces(text), "planted_pairs": len(pairs),
                    "preamble_excerpt": excerpt(text),
                }
                dedup_on = "user" if layout == "user" else "conversation"
                corpora[name] = measure(name, read_tables([str(path)]), dedup_on, vectors, args.min_rows,
                                        args.min_chars, pairs)
            else:
                dedup_on = name.removeprefix("real_")
                corpora[name] = measure(name, read_tables([str(data)]), dedup_on, vectors, args.min_rows, args.min_chars)
    settings = {
        "threshold": THRESHOLD, "min_rows": args.min_rows, "min_chars": args.min_chars,
        "embedder": vectors.config.model, "runtime": vectors.config.runtime("cpu"),
        "max_tokens": vectors.config.max_tokens, "threads": 2,
        "rule": "boilerplate = paragraphs of >= min_chars characters in MORE than min_rows distinct dedup texts",
    }
    run.write(args.out, settings=settings, planted=planted_info, corpora=corpora,
              vectors_cached_at_start=vectors.cached_at_start, texts_embedded=vectors.embedded,
              embed_s=round(vectors.seconds, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
