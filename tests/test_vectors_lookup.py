"""HashLookup (jobs/vectors.py): the positions pc.index_in gives, from a lookup built once."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.vectors import HashLookup


def sha1s(words) -> list[str]:
    return [hashlib.sha1(w.encode()).hexdigest() for w in words]


def test_positions_equal_index_in_with_repeats_and_misses():
    rng = random.Random(3)
    wanted = sha1s(str(rng.randrange(5000)) for _ in range(3000))  # repeats: the first position counts
    asked = sha1s(str(rng.randrange(8000)) for _ in range(2000))  # about a third are not wanted
    lookup = HashLookup(pa.array(wanted))
    expected = pc.fill_null(pc.index_in(pa.array(asked), value_set=pa.array(wanted)), -1).to_numpy()
    got = lookup.positions(pa.array(asked))
    assert (got == expected).all()
    assert (got == -1).sum() > 300 and len(lookup) == 3000


def test_an_empty_lookup_finds_nothing_and_the_largest_hash_is_found():
    assert (HashLookup(pa.array([], pa.string())).positions(pa.array(sha1s("ab"))) == -1).all()
    hashes = sorted(sha1s("abcdef"))
    lookup = HashLookup(pa.array(hashes[::-1]))
    assert lookup.positions(pa.array([hashes[-1], hashes[0], "f" * 41])).tolist() == [0, 5, -1]
    assert np.issubdtype(lookup.positions(pa.array(hashes)).dtype, np.integer)


def test_slices_chunks_and_mixed_widths_find_what_index_in_finds():
    """Equal-width hashes are read straight from Arrow's buffer: a slice (non-zero offset), several chunks and
    mixed widths (the per-value path) must give the positions pc.index_in gives."""
    wanted = pa.array(sha1s(str(i) for i in range(400)))
    lookup = HashLookup(pa.chunked_array([wanted.slice(0, 150), wanted.slice(150)]))
    asked = pa.array(sha1s(str(i) for i in range(300, 700))).slice(37, 250)
    expected = pc.fill_null(pc.index_in(asked, value_set=wanted), -1).to_numpy()
    assert (lookup.positions(asked) == expected).all() and (expected >= 0).sum() == 63
    mixed = pa.array(["ab", "abc", "é", "b"])
    assert HashLookup(mixed).positions(pa.array(["é", "abc", "a", "ab"])).tolist() == [2, 1, -1, 0]


def test_mark_sets_every_position_of_a_found_hash_repeats_included():
    """The stored-vector check: a wanted hash that repeats (two representatives whose dedup texts match once
    boilerplate is left out) is marked at each of its positions, as pc.is_in marks it."""
    rng = random.Random(5)
    wanted = sha1s(str(rng.randrange(300)) for _ in range(1000))  # many repeats
    lookup = HashLookup(pa.array(wanted))
    found = np.zeros(len(lookup), dtype=bool)
    stored_files = [sha1s(str(rng.randrange(600)) for _ in range(50)) for _ in range(6)]
    for hashes in stored_files:
        lookup.mark(pa.array(hashes), found)
    lookup.mark(pa.array([], pa.string()), found)
    stored = pa.array([h for hashes in stored_files for h in hashes])
    expected = pc.is_in(pa.array(wanted), value_set=stored).to_numpy(zero_copy_only=False)
    assert (found == expected).all()
    assert 0 < found.sum() < len(found) and len(set(np.array(wanted)[found])) < found.sum()  # repeats marked
