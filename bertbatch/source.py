"""Where rows come from: input discovery, streaming record-batch readers, rejects, and the input checks done
before the first row is scored.

CSV columns are read as strings, exactly as written (no type inference, no null markers), so an ID like
`00123`, a 64-bit integer, or the text `NA` pass through untouched. Parquet keeps its own types.
"""

from __future__ import annotations

import glob as globlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from .config import ScoreConfig
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


# ------------------------------------------------------------------------------------------------ input checks
def check_inputs(files: list[Path], config: ScoreConfig) -> tuple[list[str], pa.Schema]:
    """Check every input file before any output: text column present and textual, same kept schema."""
    reference = None
    needed = config.text_columns
    for path in files:
        schema = input_schema(path)
        for column in needed:
            if column not in schema.names:
                raise InputError(f"Column '{column}' not found in {path}; columns are {schema.names}. Use --text-column NAME.")
            kind = schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise InputError(f"Column '{column}' in {path} has type {kind}; text must be strings.")
        keep = list(config.keep) if config.keep is not None else schema.names
        missing = [c for c in keep if c not in schema.names]
        if missing:
            raise InputError(f"--keep columns {missing} not found in {path}; columns are {schema.names}.")
        kept = pa.schema([schema.field(c) for c in keep])
        if reference is None:
            reference = (path, kept)
        elif not kept.equals(reference[1]):
            raise InputError(
                f"Input files have different schemas: {reference[0]} has {reference[1].names} "
                f"({[str(t) for t in reference[1].types]}), {path} has {kept.names} ({[str(t) for t in kept.types]})."
            )
    return list(reference[1].names), reference[1]


def total_rows(files: list[Path]) -> int | None:
    """Row count from Parquet metadata (an independent check of conservation); None for CSV."""
    if all(str(f).lower().endswith((".parquet", ".pq")) for f in files):
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None
