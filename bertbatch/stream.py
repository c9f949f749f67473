"""`score_batches`: Arrow record batches in, labeled record batches out, no file in between.

Anything that speaks the Arrow C stream interface (`__arrow_c_stream__`: a DuckDB relation, a Polars
DataFrame, a pyarrow Table or RecordBatchReader) or a pyarrow Dataset/Scanner goes in; a
`pyarrow.RecordBatchReader` comes out, which DuckDB, Polars and pyarrow read in turn. One window of rows is
held at a time, so memory stays flat whatever the row count.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from .config import ScoreConfig
from .errors import InputError


def score_batches(source, model_dir: str | Path, config: ScoreConfig | None = None, *, runner=None,
                  **overrides) -> pa.RecordBatchReader:
    """Label every row of `source`: kept columns, then `label`, `score`, ...; same rows, same order.

    Batches are read, scored and handed on one window (`window_rows`) at a time, lazily, as the returned
    reader is consumed. `model_dir` may be a store URI (copied once to the local model cache)."""
    from .plan import open_scorer, windows
    from .source import check_schema
    from .storage import local_model_dir

    config = replace(config or ScoreConfig(), **overrides)
    reader = as_reader(source)
    keep, kept = check_schema(reader.schema, config, "the source stream")
    scorer = open_scorer(local_model_dir(model_dir, config.model_cache), config, runner)
    schema = scorer.output_schema(kept)

    def labeled():
        for _, window in windows(reader, config.window_rows):
            out = scorer.label_batch(window, keep)
            yield out if out.schema.equals(schema) else out.cast(schema)

    return pa.RecordBatchReader.from_batches(schema, labeled())


def as_reader(source) -> pa.RecordBatchReader:
    """A RecordBatchReader over `source`, without reading it."""
    if isinstance(source, pa.RecordBatchReader):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.RecordBatchReader.from_batches(source.schema, [source])
    try:
        import pyarrow.dataset as ds

        if isinstance(source, ds.Dataset):
            return source.scanner().to_reader()
        if isinstance(source, ds.Scanner):
            return source.to_reader()
    except ImportError:  # pragma: no cover - pyarrow built without datasets
        pass
    if hasattr(source, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(source)
    raise InputError(
        f"score_batches reads Arrow streams; got a {type(source).__module__}.{type(source).__name__}. Pass a DuckDB "
        "relation, a Polars DataFrame (LazyFrame: .collect() it), a pyarrow Table, Dataset or RecordBatchReader."
    )
