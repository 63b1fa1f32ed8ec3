"""Read stage: discovery, source naming, exact row numbers, and per-row / per-file rejection."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import schema
from operators.normalize import NormalizeConfig
from operators.discover import discover_inputs
from operators.read import iter_records, read_file_batches

CONV = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_jsonl(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def records(path, tmp_root):
    [item] = discover_inputs([str(path)])
    return list(iter_records(item))


def test_source_is_relative_to_parent_of_input_root(tmp_path):
    write_jsonl(tmp_path / "data" / "a" / "x.jsonl", [json.dumps(CONV)])
    write_jsonl(tmp_path / "data" / "y.json", [json.dumps(CONV)])
    by_dir = [f.source for f in discover_inputs([str(tmp_path / "data")])]
    assert by_dir == ["data/a/x.jsonl", "data/y.json"]
    by_glob = [f.source for f in discover_inputs([str(tmp_path / "data" / "*.json")])]
    assert by_glob == ["data/y.json"]  # `*` does not cross directories
    by_globstar = [f.source for f in discover_inputs([str(tmp_path / "data" / "**" / "*.jsonl")])]
    assert by_globstar == ["data/a/x.jsonl"]
    by_file = [f.source for f in discover_inputs([str(tmp_path / "data" / "a" / "x.jsonl")])]
    assert by_file == ["x.jsonl"]


def test_directory_skips_hidden_metadata_and_other_extensions(tmp_path):
    write_jsonl(tmp_path / "d" / "ok.jsonl", [json.dumps(CONV)])
    (tmp_path / "d" / "notes.txt").write_text("not data")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".hidden.jsonl").write_text("{}")
    (tmp_path / "d" / "state.json").write_text("{}")
    assert [f.source for f in discover_inputs([str(tmp_path / "d")])] == ["d/ok.jsonl"]


def test_missing_input_and_colliding_sources_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        discover_inputs([str(tmp_path / "nope")])
    write_jsonl(tmp_path / "a" / "data" / "x.jsonl", [json.dumps(CONV)])
    write_jsonl(tmp_path / "b" / "data" / "x.jsonl", [json.dumps(CONV)])
    with pytest.raises(ValueError, match="same source name"):
        discover_inputs([str(tmp_path / "a" / "data"), str(tmp_path / "b" / "data")])


def test_jsonl_rows_keep_physical_line_numbers_and_bad_lines_alone(tmp_path):
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [json.dumps(CONV), "", "   ", '{"messages": [', "[1, 2]", json.dumps(CONV)],
    )
    got = records(path, tmp_path)
    assert [r.source_row for r in got] == [0, 3, 4, 5]  # blank lines 1-2 skipped but counted
    assert got[0].record == CONV and got[3].record == CONV
    assert got[1].error == schema.INVALID_JSON and got[1].raw == '{"messages": ['
    assert got[2].record == [1, 2]  # valid JSON, not an object: normalize rejects it


def test_json_vs_jsonl_detected_from_content_not_extension(tmp_path):
    lines = write_jsonl(tmp_path / "lines.json", [json.dumps(CONV), json.dumps(CONV)])
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([CONV, CONV, CONV], indent=2))
    assert [r.source_row for r in records(lines, tmp_path)] == [0, 1]
    got = records(array, tmp_path)
    assert [r.source_row for r in got] == [0, 1, 2] and all(r.record == CONV for r in got)


def test_broken_json_array_is_one_unreadable_row(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": ')
    [row] = records(path, tmp_path)
    assert (row.source_row, row.error) == (-1, schema.UNREADABLE_FILE)


def test_gzip_detected_by_magic_and_truncation_keeps_earlier_lines(tmp_path):
    body = ("\n".join(json.dumps({**CONV, "n": i}) for i in range(2000)) + "\n").encode()
    whole = tmp_path / "whole.dat"
    whole.write_bytes(gzip.compress(body))
    assert len(records(whole, tmp_path)) == 2000
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(body)[: len(gzip.compress(body)) // 2])
    got = records(truncated, tmp_path)
    good, last = got[:-1], got[-1]
    assert all(r.error is None for r in good) and len(good) > 100
    assert [r.record["n"] for r in good] == list(range(len(good)))
    assert last.error == schema.TRUNCATED_FILE and last.source_row == len(good)


def test_parquet_rows_numbered_across_row_groups(tmp_path):
    table = pa.table({"instruction": [f"q{i}" for i in range(10)], "output": [f"a{i}" for i in range(10)]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=3)
    got = records(path, tmp_path)
    assert [r.source_row for r in got] == list(range(10))
    assert got[7].record == {"instruction": "q7", "output": "a7"}


def test_unreadable_parquet_is_one_rejected_row(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    [row] = records(path, tmp_path)
    assert (row.source_row, row.error) == (-1, schema.UNREADABLE_FILE)


def test_hf_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([CONV, {"instruction": "q", "output": "a"}] * 3)
    ds.save_to_disk(str(tmp_path / "hfds"))
    items = discover_inputs([str(tmp_path / "hfds")])
    assert [i.kind for i in items] == ["arrow"]
    got = list(iter_records(items[0]))
    assert [r.source_row for r in got] == list(range(6))
    assert got[0].record["messages"] == CONV["messages"]


def test_read_file_batches_gives_work_schema_with_ids_and_statuses(tmp_path):
    write_jsonl(tmp_path / "d" / "x.jsonl", [json.dumps(CONV), "nope", json.dumps({"foo": 1})])
    [item] = discover_inputs([str(tmp_path / "d")])
    [table] = list(read_file_batches(item, NormalizeConfig()))
    assert table.schema == schema.WORK_SCHEMA
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == [schema.KEPT, schema.REJECTED, schema.REJECTED]
    assert [r["reason"] for r in rows] == [None, schema.INVALID_JSON, schema.UNKNOWN_FORMAT]
    assert rows[0]["id"] == schema.row_id("d/x.jsonl", 0)
    assert rows[2]["raw"] == '{"foo": 1}'
    assert rows[0]["messages"] == CONV["messages"]


# --- one pathological row never fails its file (issue: "a bad row never fails the job") ---------------

DEEP = "[" * 10_000 + "]" * 10_000  # json.loads raises RecursionError on it


def batch_rows(path):
    [item] = discover_inputs([str(path)])
    return [r for table in read_file_batches(item, NormalizeConfig()) for r in table.to_pylist()]


def test_deeply_nested_line_is_rejected_alone(tmp_path):
    path = write_jsonl(tmp_path / "deep.jsonl", [json.dumps(CONV), '{"messages": ' + DEEP + "}", json.dumps(CONV)])
    rows = batch_rows(path)
    assert [(r["source_row"], r["status"], r["reason"]) for r in rows] == [
        (0, schema.KEPT, None), (1, schema.REJECTED, schema.TOO_DEEPLY_NESTED), (2, schema.KEPT, None)]
    assert "recursion" in rows[1]["detail"] and rows[1]["raw"].startswith('{"messages": [[[')


def test_lone_surrogate_is_rejected_alone_and_the_batch_still_builds(tmp_path):
    bad = '{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "ok"}]}'
    path = write_jsonl(tmp_path / "s.jsonl", [json.dumps(CONV), bad, json.dumps(CONV)])
    rows = batch_rows(path)
    assert [r["reason"] for r in rows] == [None, schema.INVALID_UNICODE, None]
    assert "\\ud800" in rows[1]["detail"] and rows[1]["messages"] is None
    assert "\\ud800" in rows[1]["raw"]  # the excerpt is kept, escaped so it is valid UTF-8


def test_json_array_with_one_pathological_element_keeps_the_others(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text("[" + json.dumps(CONV) + ', {"messages": ' + DEEP + "},\n" + json.dumps(CONV) + "]")
    got = records(path, tmp_path)
    assert [(r.source_row, r.error) for r in got] == [(0, None), (1, schema.TOO_DEEPLY_NESTED), (2, None)]
    assert got[2].record == CONV
    # A deep element with strings holding brackets and quotes is still skipped exactly.
    path.write_text('[{"x": ' + "[" * 5000 + '"]\\"[", {"k": "}"}' + "]" * 5000 + "}, " + json.dumps(CONV) + "]")
    got = records(path, tmp_path)
    assert [(r.source_row, r.error) for r in got] == [(0, schema.TOO_DEEPLY_NESTED), (1, None)]


def test_bom_before_a_json_array_and_before_jsonl(tmp_path):
    array = tmp_path / "bom.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps([CONV, CONV, CONV], indent=2).encode())
    assert [(r.source_row, r.error) for r in records(array, tmp_path)] == [(0, None), (1, None), (2, None)]
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + (json.dumps(CONV) + "\n" + json.dumps(CONV) + "\n").encode())
    assert [(r.source_row, r.error) for r in records(lines, tmp_path)] == [(0, None), (1, None)]


def test_one_pretty_printed_object_is_one_row(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(CONV, indent=2))
    [row] = records(path, tmp_path)
    assert (row.source_row, row.error, row.record) == (0, None, CONV)
    # A JSONL file whose first line is broken is still JSON lines, not one object.
    broken_first = tmp_path / "lines.jsonl"
    broken_first.write_text('{"messages": [\n' + json.dumps(CONV) + "\n" + json.dumps(CONV) + "\n")
    got = records(broken_first, tmp_path)
    assert [(r.source_row, r.error) for r in got] == [(0, schema.INVALID_JSON), (1, None), (2, None)]


def test_an_exception_while_normalizing_one_row_rejects_that_row(tmp_path, monkeypatch):
    from operators import normalize

    real = normalize.normalize_record

    def failing(record, config):
        if record.get("boom"):
            raise KeyError("a bug that only this row triggers")
        return real(record, config)

    monkeypatch.setattr(normalize, "normalize_record", failing)
    path = write_jsonl(tmp_path / "n.jsonl", [json.dumps(CONV), json.dumps({**CONV, "boom": 1}), json.dumps(CONV)])
    rows = batch_rows(path)
    assert [r["reason"] for r in rows] == [None, schema.ROW_ERROR, None]
    assert rows[1]["detail"] == "normalize: KeyError: 'a bug that only this row triggers'" and '"boom": 1' in rows[1]["raw"]


def test_a_fault_of_the_file_itself_names_the_file_and_row(tmp_path, monkeypatch):
    from operators import read

    def failing_records(item):
        yield read.RawRecord(source_row=0, record=CONV)
        raise OSError("connection reset by peer")

    monkeypatch.setattr(read, "iter_records", failing_records)
    path = write_jsonl(tmp_path / "f.jsonl", [json.dumps(CONV)])
    with pytest.raises(read.InputFault, match=r"input f\.jsonl .*after row 0: OSError: connection reset by peer"):
        batch_rows(path)


def test_small_files_are_grouped_into_read_tasks_in_source_order():
    from operators.discover import InputFile
    from operators.read import group_for_reading

    def f(name, size, kind="text"):
        return InputFile(uri=f"/d/{name}", source=f"d/{name}", kind=kind, size=size)

    files = [f("a", 400), f("b", 400), f("c", 400), f("big", 5000), f("d", 100), f("hub", -1, "hf"), f("e", 100)]
    groups = group_for_reading(files, cpus=2, group_bytes=1000)
    assert [[x.source for x in g] for g in groups] == [
        ["d/a", "d/b"], ["d/c"], ["d/big"], ["d/d"], ["d/hub"], ["d/e"]]
    assert sorted(x.source for g in groups for x in g) == sorted(x.source for x in files)
    assert group_for_reading(files, cpus=2, group_bytes=0) == [[x] for x in files]
    # Derived: 5,000 tiny files on 2 CPUs make a handful of tasks, not 5,000.
    tiny = [f(f"t{i:05d}", 300) for i in range(5000)]
    assert len(group_for_reading(tiny, cpus=2)) == 2
