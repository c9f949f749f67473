"""Tables in and out: input discovery, streaming record-batch readers, atomic writers.

CSV columns are read as strings, exactly as written (no type inference, no null markers), so an ID like
`00123`, a 64-bit integer, or the text `NA` pass through untouched. Parquet keeps its own types.
"""

from __future__ import annotations

import glob as globlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from .errors import InputError

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES


def file_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise InputError(f"{path}: unknown table format; expected one of {', '.join(TABLE_SUFFIXES)}.")


def _is_data_file(path: Path) -> bool:
    # Spark/Hive conventions: _SUCCESS, _metadata and .crc/hidden files are not data.
    return path.is_file() and not path.name.startswith(("_", ".")) and path.name.lower().endswith(TABLE_SUFFIXES)


def expand_inputs(inputs: str | Path | list | tuple) -> list[Path]:
    """Files behind one or more inputs: a file, a directory of part files (recursive, sorted), or a glob."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_data_file(p))
            if not found:
                raise InputError(f"Directory {path} holds no {'/'.join(TABLE_SUFFIXES)} files.")
            files.extend(found)
        elif path.is_file():
            file_format(path)
            files.append(path)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(p) for p in globlib.glob(str(item), recursive=True) if _is_data_file(Path(p)))
            if not found:
                raise InputError(f"No table files match {item}.")
            files.extend(found)
        else:
            raise InputError(f"Input {item} does not exist.")
    return files


def csv_delimiter(path: Path) -> str:
    return "\t" if str(path).lower().endswith((".tsv", ".tsv.gz")) else ","


def csv_options(path: Path, column_names: list[str] | None = None, invalid_row_handler=None, block_size: int = 1 << 22):
    """Parse/convert options: quoted newlines allowed, every column a non-null string."""
    read = csv.ReadOptions(block_size=block_size, use_threads=True)
    parse = csv.ParseOptions(
        delimiter=csv_delimiter(path), newlines_in_values=True, invalid_row_handler=invalid_row_handler
    )
    convert = csv.ConvertOptions(
        column_types={name: pa.string() for name in column_names or []},
        strings_can_be_null=False,
        null_values=[],
        quoted_strings_can_be_null=False,
    )
    return read, parse, convert


def csv_header(path: Path) -> list[str]:
    """Column names of a CSV file (compression detected from the suffix)."""
    # rows are not this function's business: skip malformed ones so the real reader reports them by line
    read, parse, convert = csv_options(path, block_size=1 << 16, invalid_row_handler=lambda row: "skip")
    try:
        with csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            return reader.schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise InputError(f"{path} is empty: no header and no rows.") from None
        raise InputError(f"{path}: cannot read the CSV header: {exc}") from None
    except (OSError, EOFError) as exc:  # truncated gzip and other I/O failures
        raise InputError(f"{path}: cannot read: {exc}") from None


def read_whole_table(inputs, columns: list[str] | None = None) -> pa.Table:
    """Read every file behind `inputs` into one table (training/eval sizes, not scoring)."""
    tables = []
    for path in expand_inputs(inputs):
        try:
            if file_format(path) == "parquet":
                table = pq.read_table(path, columns=columns)
            else:
                read, parse, convert = csv_options(path, csv_header(path))
                if columns:
                    convert.include_columns = columns
                table = csv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: cannot read: {exc}") from None
        tables.append(table)
    try:
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise InputError(f"Input files have different schemas: {exc}") from None


# --------------------------------------------------------------------------------------------- streaming sources
class Rejects:
    """Unreadable rows kept aside with --on-bad-rows reject: (file, line/row, reason, raw text)."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, file, where, reason, raw):
        self.rows.append({"file": str(file), "where": str(where), "reason": reason, "raw": raw})

    def __len__(self):
        return len(self.rows)


def write_csv_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    csv.write_csv(table, tmp)
    os.replace(tmp, path)


REJECT_SCHEMA = pa.schema([("file", pa.string()), ("where", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


def input_schema(path: Path) -> pa.Schema:
    """Schema of one input file without reading its rows (CSV: every column a string)."""
    if file_format(path) == "parquet":
        try:
            return pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc}).") from None
    return pa.schema([(name, pa.string()) for name in csv_header(path)])


def read_batches(path: Path, columns: list[str], rows: int, rejects: Rejects | None = None):
    """Record batches of at most `rows` rows with `columns`, in file order.

    CSV is read as bytes and then checked as UTF-8, so a bad row is reported with its row number
    (or sent to `rejects`). Ragged CSV rows likewise. Errors name the file and the row.
    """
    if file_format(path) == "parquet":
        yield from _parquet_batches(path, columns, rows)
    else:
        yield from _csv_batches(path, columns, rows, rejects)


def _parquet_batches(path, columns, rows):
    try:
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=rows, columns=columns):
            yield batch
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read Parquet ({exc}).") from None


def _csv_batches(path, columns, rows, rejects):
    ragged: list = []

    def on_invalid_row(row):
        where = f"line {row.number}" if row.number is not None else "unknown line"
        reason = f"expected {row.expected_columns} columns, found {row.actual_columns}"
        if rejects is None:
            ragged.append((where, reason, row.text))
            return "error"
        rejects.add(path, where, reason, row.text)
        return "skip"

    header = csv_header(path)
    read, parse, convert = csv_options(path, None, on_invalid_row)
    convert.column_types = {name: pa.binary() for name in header}
    convert.include_columns = columns
    done = 0
    try:
        with csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            for block in reader:
                block = _decode_utf8(path, block, done, rejects)
                for start in range(0, block.num_rows, rows):
                    piece = block.slice(start, rows)
                    done += piece.num_rows
                    yield piece
    except pa.ArrowInvalid as exc:
        if ragged:
            where, reason, text = ragged[0]
            raise InputError(f"{path}, {where}: {reason}: {text[:200]!r}. Fix the row or use --on-bad-rows reject.") from None
        raise InputError(f"{path}: cannot read CSV after {done} data rows: {exc}") from None
    except (OSError, EOFError) as exc:  # truncated gzip, I/O errors
        raise InputError(f"{path}: read failed after {done} data rows: {exc}") from None


def _decode_utf8(path, block: pa.RecordBatch, offset: int, rejects: Rejects | None) -> pa.RecordBatch:
    """Cast every bytes column to string; find and name (or reject) rows that are not valid UTF-8."""
    try:
        return pa.RecordBatch.from_arrays([a.cast(pa.string()) for a in block.columns], names=block.schema.names)
    except pa.ArrowInvalid:
        pass
    bad = {}
    for name, column in zip(block.schema.names, block.columns):
        for i, value in enumerate(column.to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad.setdefault(i, name)
    if rejects is None:
        row, column = min(bad.items())
        raise InputError(
            f"{path}, data row {offset + row + 1}, column '{column}': invalid UTF-8. "
            "Re-encode the file as UTF-8 or use --on-bad-rows reject."
        )
    for row, column in sorted(bad.items()):
        raw = block.column(block.schema.names.index(column))[row].as_py()
        rejects.add(path, f"data row {offset + row + 1}", f"invalid UTF-8 in column '{column}'", raw.decode("utf-8", "replace"))
    keep = pa.array([i not in bad for i in range(block.num_rows)])
    return _decode_utf8(path, block.filter(keep), offset, None)


# ----------------------------------------------------------------------------------------------- atomic sinks
class Sink:
    """Writes record batches to a temp file beside `path` and renames it into place on commit.

    With `stream` (`-o -`) it writes there instead: no temp file, nothing to rename."""

    def __init__(self, path: Path, schema: pa.Schema, stream=None):
        self.path = Path(path)
        self.stream = stream
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        if stream is None:
            self.tmp.unlink(missing_ok=True)  # a leftover of a killed run (or a planted link) is never written through
        self.schema = schema
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self._close()
        if self.stream is not None:
            return
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._close()
        finally:
            if self.stream is None:
                self.tmp.unlink(missing_ok=True)


class ParquetSink(Sink):
    def __init__(self, path, schema):
        super().__init__(path, schema)
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, batch):
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def _close(self):
        self.writer.close()


def _text_schema(schema: pa.Schema) -> pa.Schema:
    nested = lambda t: pa.types.is_list(t) or pa.types.is_struct(t)  # noqa: E731
    return pa.schema([pa.field(f.name, pa.string() if nested(f.type) else f.type) for f in schema])


def _flatten_for_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV/JSON text cannot hold lists or structs: such columns become JSON strings."""
    arrays = []
    for column in batch.columns:
        if pa.types.is_list(column.type) or pa.types.is_struct(column.type):
            column = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class CsvSink(Sink):
    def __init__(self, path, schema, stream=None):
        super().__init__(path, schema, stream)
        self.writer = None

    def _open(self, schema: pa.Schema) -> None:
        self.writer = csv.CSVWriter(self.stream if self.stream is not None else str(self.tmp), schema)

    def write(self, batch):
        batch = _flatten_for_text(batch)
        if self.writer is None:
            self._open(batch.schema)
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def _close(self):
        if self.writer is None:  # no rows: still write the header
            self._open(_text_schema(self.schema))
        self.writer.close()


class JsonlSink(Sink):
    def __init__(self, path, schema, stream=None):
        super().__init__(path, schema, stream)
        self.fh = stream or open(self.tmp, "w", encoding="utf-8")

    def write(self, batch):
        for row in batch.to_pylist():
            self.fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self.rows += batch.num_rows

    def _close(self):
        if self.stream is None:
            self.fh.close()
        else:
            self.fh.flush()


SINKS = {"parquet": ParquetSink, "csv": CsvSink, "jsonl": JsonlSink}
OUTPUT_SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}


def output_format(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    name = str(path).lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "parquet"
