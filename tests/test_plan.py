"""The job plan's one windowing function (plan.windows), used by every engine."""

from __future__ import annotations

import pyarrow as pa

from bertbatch.plan import windows


def _batches(sizes: list[int]) -> list[pa.RecordBatch]:
    out, start = [], 0
    for size in sizes:
        out.append(pa.record_batch({"n": list(range(start, start + size))}))
        start += size
    return out


def _cut(sizes, rows, per_part=None, skip=0):
    return [(chunk, batch.column("n").to_pylist()) for chunk, batch in windows(_batches(sizes), rows, per_part, skip)]


def test_windows_hold_exactly_rows_rows_whatever_the_batch_sizes():
    cut = _cut([3, 1, 7, 2, 5], rows=4)
    assert [len(rows) for _, rows in cut] == [4, 4, 4, 4, 2]
    assert [n for _, rows in cut for n in rows] == list(range(18))  # every row once, in order


def test_windows_never_cross_a_part_boundary_and_say_their_part():
    cut = _cut([10, 10, 5], rows=4, per_part=6)
    assert [(chunk, rows[0], len(rows)) for chunk, rows in cut] == [
        (0, 0, 4), (0, 4, 2), (1, 6, 4), (1, 10, 2), (2, 12, 4), (2, 16, 2), (3, 18, 4), (3, 22, 2), (4, 24, 1)]


def test_skipping_whole_parts_cuts_the_windows_an_uninterrupted_run_cuts():
    whole = _cut([5, 9, 4], rows=4, per_part=6)
    resumed = _cut([5, 9, 4], rows=4, per_part=6, skip=12)
    assert resumed == [w for w in whole if w[0] >= 2]
