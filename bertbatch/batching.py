"""Pure functions: plan batches under a padded-token budget, pad each to its own length, restore order.

No ONNX Runtime, no pyarrow: everything here is testable with plain lists and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Few distinct shapes keep CUDA kernels/IOBinding buffers reusable. On CPU each batch is padded to exactly its
# longest row: rounding up to a multiple of 8 measured ~12% slower (benchmarks/README.md).
GPU_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512)
# (max_tokens, max_batch_rows) per provider. CPU: measured plateau on 2 cores (1024/32 gave 970 int8 rows/s,
# 8192/256 gave 614). CUDA (H100, fp16, benchmarks/bench_gpu.py): 32768/512 ran 97.8k short rows/s on the
# device vs 73.3k at 16384/256, 39.4k vs 36.1k for 128-token rows; 65536/1024 added nothing.
DEFAULT_BUDGET = {"cpu": (1024, 32), "cuda": (32768, 512)}


def bucket_lengths(lengths, max_length: int, multiple: int = 1, buckets: tuple[int, ...] | None = None) -> np.ndarray:
    """Padded length of a batch for each longest-row length in `lengths` (never above max_length).

    `buckets` ascending: the first bucket that holds the row, or the row's own length past the last bucket."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if buckets:
        table = np.asarray(buckets, dtype=np.int64)
        first = np.searchsorted(table, lengths, side="left")
        padded = np.where(first < len(table), table[np.minimum(first, len(table) - 1)], lengths)
    else:
        padded = -(-lengths // multiple) * multiple
    return np.maximum(lengths, np.minimum(padded, max_length))


def bucket_length(length: int, max_length: int, multiple: int = 1, buckets: tuple[int, ...] | None = None) -> int:
    """Padded length for a batch whose longest row has `length` tokens (never above max_length)."""
    return int(bucket_lengths([length], max_length, multiple, buckets)[0])


@dataclass(frozen=True)
class PlannedBatch:
    rows: np.ndarray  # positions of the batch's rows in the window, shortest first
    length: int  # padded sequence length of the batch


def plan_batches(
    lengths,
    max_tokens: int,
    max_rows: int,
    max_length: int,
    multiple: int = 1,
    buckets: tuple[int, ...] | None = None,
) -> list[PlannedBatch]:
    """Sort rows by token length and cut batches whose padded size (rows x padded length) stays in budget.

    A batch also closes at `max_rows`. A row longer than the budget alone gets a batch of its own.
    Every row appears in exactly one batch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    padded = bucket_lengths(lengths[order], max_length, multiple, buckets)
    # Rows sorted by length have non-decreasing padded lengths, so k rows from `start` cost k x padded[start+k-1],
    # which grows with k: the largest k within budget is one binary search, not a walk over the rows.
    rows_so_far = np.arange(1, min(max_rows, len(order)) + 1, dtype=np.int64)
    batches: list[PlannedBatch] = []
    start = 0
    while start < len(order):
        ahead = padded[start:start + len(rows_so_far)]
        fits = int(np.searchsorted(rows_so_far[:len(ahead)] * ahead, max_tokens, side="right"))
        end = start + max(fits, 1)
        batches.append(PlannedBatch(order[start:end], int(padded[end - 1])))
        start = end
    return batches


def pad(sequences: list[list[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to `length`; returns (ids, attention_mask) as int64 arrays."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    flat = np.fromiter((t for seq in sequences for t in seq), np.int64, int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return pad_rows(flat, offsets, np.arange(len(sequences)), length, pad_id)


def pad_rows(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, length: int,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of flat token arrays (row r is flat[offsets[r]:offsets[r + 1]]) right-padded to `length`;
    returns (ids, attention_mask) as int64 arrays. Rows longer than `length` are cut."""
    starts = offsets[rows]
    mask = np.arange(length) < (offsets[rows + 1] - starts)[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = flat[(starts[:, None] + np.arange(length))[mask]]
    return ids, mask.astype(np.int64)


def padding_stats(batches: list[PlannedBatch], lengths) -> tuple[int, int]:
    """(real tokens, padded tokens) for a plan: the efficiency figure reported in summaries."""
    lengths = np.asarray(lengths)
    real = int(lengths.sum())
    padded = int(sum(len(b.rows) * b.length for b in batches))
    return real, padded
