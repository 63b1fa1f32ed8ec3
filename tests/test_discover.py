"""Discovery: directory links are followed at most once and never loop; a file is read once."""

from __future__ import annotations

import json
import os

from operators.discover import discover

CONV = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def tree(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for path in (data / "a.jsonl", data / "sub" / "b.jsonl"):
        path.write_text(json.dumps(CONV) + "\n")
    return data


def test_a_link_to_its_own_directory_is_not_followed_again(tmp_path):
    data = tree(tmp_path)
    os.symlink(".", data / "self")
    found = discover([str(data)])
    assert [f.source for f in found.files] == ["data/a.jsonl", "data/sub/b.jsonl"]
    assert found.skipped == [{"path": "data/self", "reason": "directory already read as data"}]


def test_two_links_that_loop_end_and_read_each_file_once(tmp_path):
    data = tree(tmp_path)
    os.symlink("..", data / "sub" / "up")
    os.symlink("sub", data / "down")
    found = discover([str(data)])
    assert [f.source for f in found.files] == ["data/a.jsonl", "data/sub/b.jsonl"]
    assert {s["path"] for s in found.skipped} == {"data/down", "data/sub/up"}


def test_a_link_to_another_directory_is_followed_once(tmp_path):
    data = tree(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c.jsonl").write_text(json.dumps(CONV) + "\n")
    os.symlink(elsewhere, data / "more")
    os.symlink(elsewhere, data / "sub" / "again")
    found = discover([str(data)])
    assert [f.source for f in found.files] == ["data/a.jsonl", "data/more/c.jsonl", "data/sub/b.jsonl"]
    assert found.skipped == [{"path": "data/sub/again", "reason": "directory already read as data/more"}]


def test_a_file_reached_by_two_paths_is_read_once_under_its_real_name(tmp_path):
    data = tree(tmp_path)
    os.symlink("sub/b.jsonl", data / "0-link.jsonl")  # sorts first, still loses to the real path
    os.link(data / "a.jsonl", data / "sub" / "hard.jsonl")
    os.symlink("missing.jsonl", data / "broken.jsonl")
    found = discover([str(data)])
    assert [f.source for f in found.files] == ["data/a.jsonl", "data/sub/b.jsonl"]
    assert sorted((s["path"], s["reason"]) for s in found.skipped) == [
        ("data/0-link.jsonl", "same file as data/sub/b.jsonl, read once"),
        ("data/broken.jsonl", "broken link"),
        ("data/sub/hard.jsonl", "same file as data/a.jsonl, read once"),
    ]


def test_the_same_file_named_by_two_inputs_is_read_once(tmp_path):
    data = tree(tmp_path)
    found = discover([str(data), str(data / "*.jsonl")])
    assert [f.source for f in found.files] == ["data/a.jsonl", "data/sub/b.jsonl"]
    found = discover([str(data / "a.jsonl"), str(data)])
    assert [f.source for f in found.files] == ["a.jsonl", "data/sub/b.jsonl"]
    assert found.skipped == [{"path": "data/a.jsonl", "reason": "same file as a.jsonl, read once"}]
