"""The run summary: one shape for every engine, so a job's report reads the same local or on Spark.

Keys an engine cannot know are None (Spark has no resume and no token counts; the local engine has no master).
"""

from __future__ import annotations

KEYS = (
    "engine", "rows_in", "rows_written", "rows_scored", "rows_with_error", "rows_abstained", "rows_rejected", "rows_this_run",
    "resumed", "seconds", "rows_per_s", "tokens_per_s", "padding_ratio", "provider", "graph", "threads", "settings", "calibration",
    "tokenizer", "truncation",
    "output", "parts", "rejects",
    # distributed engines
    "master", "partitions", "session_seconds", "providers",
)


def make_summary(**values) -> dict:
    """The summary dict: every key in KEYS, in that order; an unknown key is a programming error."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"not summary keys: {sorted(unknown)}")
    return {key: values.get(key) for key in KEYS}
