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


def bucket_length(length: int, max_length: int, multiple: int = 1, buckets: tuple[int, ...] | None = None) -> int:
    """Padded length for a batch whose longest row has `length` tokens (never above max_length)."""
    if buckets:
        padded = next((b for b in buckets if b >= length), length)
    else:
        padded = -(-length // multiple) * multiple
    return max(length, min(padded, max_length))


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
    batches: list[PlannedBatch] = []
    start = 0
    while start < len(order):
        end = start + 1
        padded = bucket_length(int(lengths[order[start]]), max_length, multiple, buckets)
        while end < len(order) and end - start < max_rows:
            candidate = bucket_length(int(lengths[order[end]]), max_length, multiple, buckets)
            if (end - start + 1) * candidate > max_tokens:
                break
            padded = candidate
            end += 1
        batches.append(PlannedBatch(order[start:end], padded))
        start = end
    return batches


def pad(sequences: list[list[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to `length`; returns (ids, attention_mask) as int64 arrays."""
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


def padding_stats(batches: list[PlannedBatch], lengths) -> tuple[int, int]:
    """(real tokens, padded tokens) for a plan: the efficiency figure reported in summaries."""
    lengths = np.asarray(lengths)
    real = int(lengths.sum())
    padded = int(sum(len(b.rows) * b.length for b in batches))
    return real, padded
