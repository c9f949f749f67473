"""Tables in and out: input discovery, streaming record-batch readers, atomic writers.

CSV columns are read as strings, exactly as written (no type inference, no null markers), so an ID like
`00123`, a 64-bit integer, or the text `NA` pass through untouched. Parquet keeps its own types.
"""

from __future__ import annotations

import glob as globlib
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
    read, parse, convert = csv_options(path, block_size=1 << 16)
    try:
        with csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            return reader.schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise InputError(f"{path} is empty: no header and no rows.") from None
        raise InputError(f"{path}: cannot read the CSV header: {exc}") from None


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
