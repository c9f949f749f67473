"""Pure batching: every row planned once, budget respected, padding only to each batch's own length."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bertbatch.batching import GPU_BUCKETS, bucket_length, bucket_lengths, pad, pad_rows, plan_batches, padding_stats


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 512), max_size=300),
    max_tokens=st.integers(1, 4096),
    max_rows=st.integers(1, 64),
    gpu=st.booleans(),
)
def test_plan_covers_every_row_once_within_budget(lengths, max_tokens, max_rows, gpu):
    plan = plan_batches(lengths, max_tokens, max_rows, 512, buckets=GPU_BUCKETS if gpu else None)
    rows = np.concatenate([b.rows for b in plan]) if plan else np.array([], dtype=int)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for batch in plan:
        longest = max(lengths[i] for i in batch.rows)
        assert batch.length >= longest
        assert batch.length <= 512
        assert len(batch.rows) <= max_rows
        # over budget only when a single row alone is too long
        assert len(batch.rows) * batch.length <= max_tokens or len(batch.rows) == 1


def test_empty_input_plans_nothing():
    assert plan_batches([], 100, 8, 128) == []


def test_one_text_longer_than_budget_gets_its_own_batch():
    plan = plan_batches([5, 300, 6], max_tokens=64, max_rows=8, max_length=512)
    assert [len(b.rows) for b in plan] == [2, 1]
    assert plan[1].rows.tolist() == [1] and plan[1].length == 300


def test_sorting_reduces_padding_against_arrival_order():
    rng = np.random.default_rng(0)
    lengths = rng.choice([8, 16, 120, 400], size=512)
    sorted_plan = plan_batches(lengths, 10**9, 32, 512)
    real, padded = padding_stats(sorted_plan, lengths)
    fixed = sum(32 * max(lengths[i:i + 32]) for i in range(0, 512, 32))  # unsorted batches of 32
    assert padded < fixed / 2
    assert real <= padded


def test_bucket_lengths():
    assert bucket_length(9, 512) == 9  # CPU: exactly the longest row
    assert bucket_length(9, 512, multiple=8) == 16
    assert bucket_length(9, 12, multiple=8) == 12  # never past max_length
    assert bucket_length(100, 512, buckets=GPU_BUCKETS) == 128


def test_pad_masks_only_real_tokens():
    ids, mask = pad([[1, 2, 3], [4]], 5)
    assert ids.tolist() == [[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 600), max_size=400),
    max_tokens=st.integers(1, 8192),
    max_rows=st.integers(1, 80),
    max_length=st.sampled_from([16, 128, 512]),
    multiple=st.sampled_from([1, 8]),
    gpu=st.booleans(),
)
def test_plan_is_the_row_by_row_plan(lengths, max_tokens, max_rows, max_length, multiple, gpu):
    from reference_host import plan_batches as row_by_row

    lengths = [min(x, max_length) for x in lengths]
    buckets = GPU_BUCKETS if gpu else None
    plan = plan_batches(lengths, max_tokens, max_rows, max_length, multiple, buckets)
    expected = row_by_row(lengths, max_tokens, max_rows, max_length, multiple, buckets)
    assert [(b.rows.tolist(), b.length) for b in plan] == [(r.tolist(), n) for r, n in expected]


@given(lengths=st.lists(st.integers(0, 700), max_size=50), max_length=st.sampled_from([12, 300, 512]))
def test_bucket_lengths_match_one_at_a_time(lengths, max_length):
    from reference_host import bucket_length as one_at_a_time  # plain Python, written from the docstring

    for buckets, multiple in ((None, 1), (None, 8), (GPU_BUCKETS, 1)):
        expected = [one_at_a_time(n, max_length, multiple, buckets) for n in lengths]
        assert bucket_lengths(lengths, max_length, multiple, buckets).tolist() == expected
        assert [bucket_length(n, max_length, multiple, buckets) for n in lengths] == expected


@given(sequences=st.lists(st.lists(st.integers(1, 30000), min_size=1, max_size=20), min_size=1, max_size=30),
       data=st.data())
def test_pad_rows_pads_flat_rows_like_lists(sequences, data):
    from reference_host import pad as pad_lists

    rows = np.array(data.draw(st.lists(st.integers(0, len(sequences) - 1), min_size=1, max_size=10)))
    length = max(len(sequences[r]) for r in rows) + data.draw(st.integers(0, 3))
    flat = np.array([t for s in sequences for t in s], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    ids, mask = pad_rows(flat, offsets, rows, length)
    expected_ids, expected_mask = pad_lists([sequences[r] for r in rows], length)
    assert ids.tolist() == expected_ids.tolist() and mask.tolist() == expected_mask.tolist()
    assert ids.dtype == mask.dtype == np.int64
