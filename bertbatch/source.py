"""Where rows come from: input discovery, streaming record-batch readers, rejects, and the input checks done
before the first row is scored.

CSV columns are read as strings, exactly as written (no type inference, no null markers), so an ID like
`00123`, a 64-bit integer, or the text `NA` pass through untouched. Parquet keeps its own types.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob as globlib
import io
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import csv

from .config import ScoreConfig
from .errors import InputError
from .storage import Location, check_no_credentials, is_uri, local_file_path

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


def _is_data_name(name: str) -> bool:
    # Spark/Hive conventions: _SUCCESS, _metadata and .crc/hidden files are not data.
    return not name.startswith(("_", ".")) and name.lower().endswith(TABLE_SUFFIXES)


def _is_data_file(path: Path) -> bool:
    return path.is_file() and _is_data_name(path.name)


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class InputFile:
    """One input table: a local path or a file in a store, with the Hive partition values (`key=value`
    directories between the input root and the file; strings, `__HIVE_DEFAULT_PARTITION__` is null)."""

    path: Path | None = None
    remote: Location | None = None
    partitions: tuple[tuple[str, str | None], ...] = ()
    types: tuple[tuple[str, str], ...] = ()  # partition key -> pyarrow type name (--partition-types); else string

    def partition_values(self) -> dict[str, pa.Scalar]:
        """Each partition key's value as a scalar of its type; a value the type cannot hold is an InputError."""
        types = dict(self.types)
        values = {}
        for key, value in self.partitions:
            kind = partition_type(types.get(key, "string"))
            try:
                values[key] = pa.scalar(value, pa.string()).cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InputError(f"{self}: partition value {key}={value!r} is not a {kind}; fix the directory name "
                                 f"or --partition-types.") from None
        return values

    def __str__(self) -> str:
        return str(self.path) if self.remote is None else str(self.remote)

    def __fspath__(self) -> str:
        if self.remote is not None:
            raise TypeError(f"{self.remote} is in a store, not on this file system")
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name if self.remote is None else self.remote.name

    def resolved(self) -> str:
        """The absolute path, links resolved, or the URI: the same for every way of naming the file."""
        return str(self.path.resolve()) if self.remote is None else self.remote.uri

    def open_random(self):
        """What pyarrow's Parquet reader opens: the local path, or a random-access store file."""
        return str(self.path) if self.remote is None else self.remote.open_input_file()

    def open_stream(self):
        """What pyarrow's CSV reader opens: the local path (compression from the suffix), or a decompressed stream."""
        return str(self.path) if self.remote is None else self.remote.open_input_stream()

    def identity(self) -> dict:
        """Path (or URI), size, modification time and SHA-256 of the bytes: what a resumed job compares."""
        if self.remote is None:
            from .manifest import sha256_file

            stat = self.path.stat()
            return {"path": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "sha256": sha256_file(self.path)}
        info = self.remote.info()
        return {"path": self.remote.uri, "size": info.size, "mtime_ns": info.mtime_ns,
                "sha256": self.remote.sha256()}


def partition_type(name: str) -> pa.DataType:
    try:
        return pa.type_for_alias(name)
    except ValueError:
        raise InputError(f"--partition-types: unknown type {name!r}; use a pyarrow type name such as string, int32, "
                         "int64, float64, bool, date32 or timestamp[s].") from None


def hive_partitions(relative_dirs: list[str]) -> tuple[tuple[str, str | None], ...]:
    """`key=value` directory names (percent-decoded, as Hive, Spark and DuckDB write them) as (key, value)."""
    pairs = []
    for segment in relative_dirs:
        key, sep, value = segment.partition("=")
        if sep and key:
            value = unquote(value)
            pairs.append((unquote(key), None if value == HIVE_NULL else value))
    return tuple(pairs)


def _with_partitions(files: list[InputFile], root: str) -> list[InputFile]:
    """Every file under one input root must have the same partition keys in the same order."""
    keys = {tuple(k for k, _ in f.partitions) for f in files}
    if len(keys) > 1:
        a, b = sorted(keys)[:2]
        raise InputError(
            f"Input {root} mixes Hive partition layouts: some files sit under {list(a) or 'no'} key=value directories, "
            f"others under {list(b) or 'none'}. Give the partitioned directories as separate inputs or move the files."
        )
    return files


def _local_tree(root: Path) -> list[InputFile]:
    found = sorted(p for p in root.rglob("*") if _is_data_file(p))
    return _with_partitions(
        [InputFile(p, partitions=hive_partitions(list(p.relative_to(root).parts[:-1]))) for p in found], str(root))


def _remote_tree(root: Location, pattern: str | None = None) -> list[InputFile]:
    found = []
    for loc in root.list_files():
        relative = loc.relative_to(root)
        if _is_data_name(loc.name) and (pattern is None or fnmatch.fnmatchcase(relative, pattern)):
            found.append(InputFile(remote=loc, partitions=hive_partitions(relative.split("/")[:-1])))
    return _with_partitions(found, str(root))


def _expand_uri(item: str) -> list[InputFile]:
    check_no_credentials(item)
    where, _, query = item.partition("?")  # in a URI '?' starts the query: globs are '*' and '[...]'
    if any(ch in where for ch in "*["):
        prefix = where[: min(where.index(ch) for ch in "*[" if ch in where)].rsplit("/", 1)[0]
        found = _remote_tree(Location.of(prefix + (f"?{query}" if query else "")), where[len(prefix) + 1:])
        if not found:
            raise InputError(f"No table files match {item}.")
        return found
    loc = Location.of(item)
    if loc.is_file():
        file_format(item)
        return [InputFile(remote=loc)]
    found = _remote_tree(loc)
    if not found:
        if loc.is_dir():
            raise InputError(f"Directory {item} holds no {'/'.join(TABLE_SUFFIXES)} files.")
        raise InputError(f"Input {item} does not exist.")
    return found


def expand_inputs(inputs: str | Path | list | tuple, partition_types: dict[str, str] | None = None) -> list[InputFile]:
    """Files behind one or more inputs: a file, a directory of part files (recursive, sorted, Hive
    `key=value` directories read as partition values, strings unless `partition_types` names a type),
    or a glob; each a local path or a store URI."""
    files = _expand(inputs)
    if partition_types:
        keys = {k for f in files for k, _ in f.partitions}
        unknown = sorted(set(partition_types) - keys)
        if unknown:
            raise InputError(f"--partition-types names {unknown}, but the inputs have no such key=value directories "
                             f"(their partition keys: {sorted(keys)}).")
        for name in partition_types.values():
            partition_type(name)
        files = [replace(f, types=tuple((k, partition_types[k]) for k, _ in f.partitions if k in partition_types))
                 for f in files]
    return files


def _expand(inputs) -> list[InputFile]:
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[InputFile] = []
    for item in inputs:
        if is_uri(str(item)):
            files.extend(_expand_uri(str(item)))
            continue
        item = local_file_path(item)  # file:///x is the local path /x
        path = Path(item)
        if path.is_dir():
            found = _local_tree(path)
            if not found:
                raise InputError(f"Directory {path} holds no {'/'.join(TABLE_SUFFIXES)} files.")
            files.extend(found)
        elif path.is_file():
            file_format(path)
            files.append(InputFile(path))
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(p) for p in globlib.glob(str(item), recursive=True) if _is_data_file(Path(p)))
            if not found:
                raise InputError(f"No table files match {item}.")
            files.extend(InputFile(p) for p in found)
        else:
            raise InputError(f"Input {item} does not exist.")
    seen: dict = {}
    for index, path in enumerate(files):  # a row's identity is (file, record): one file twice is refused
        first = seen.setdefault(path.resolved(), index)
        if first != index:
            raise InputError(f"Input {path} is given twice (also as {files[first]}); list each file once.")
    return files


def input_is_directory(inputs) -> bool:
    """Whether any input names a directory (local or a store prefix): such input makes a directory output."""
    items = [inputs] if isinstance(inputs, (str, Path)) else inputs
    return any(Location.of(i).is_dir() if is_uri(str(i)) else Path(local_file_path(i)).is_dir() for i in items)


def csv_delimiter(path: Path) -> str:
    return "\t" if str(path).lower().endswith((".tsv", ".tsv.gz")) else ","


CSV_BLOCK = 1 << 22  # 4 MiB; a row larger than a block is retried with a larger one (see _csv_batches)
CSV_MAX_BLOCK = 1 << 30


def csv_options(path: Path, column_names: list[str] | None = None, invalid_row_handler=None,
                block_size: int = CSV_BLOCK):
    """Parse/convert options: quoted newlines allowed, every column a non-null string.

    Parsing is serial (`use_threads=False`): pyarrow only knows a malformed row's line number then
    (`InvalidRow.number` is None when blocks are parsed in parallel), and the line is the row's identity.
    Scoring, not parsing, bounds the speed."""
    read = csv.ReadOptions(block_size=block_size, use_threads=False)
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


class _RowHandler:
    """An `invalid_row_handler` that also learns of the ragged rows pyarrow could not hand it: pyarrow decodes a
    ragged row's text as UTF-8 before calling the handler, and when that fails (a ragged row with Latin-1 bytes,
    say) it reports the UnicodeDecodeError through `sys.unraisablehook` and stops with a parse error instead.
    While pyarrow parses (see _blocks), such errors are kept here, off stderr, so the reader can name the row."""

    def __init__(self, on_row):
        self.on_row = on_row
        self.undecodable: list[UnicodeDecodeError] = []

    def __call__(self, row):
        return self.on_row(row)


@contextmanager
def _undecodable_rows_to(handler: _RowHandler):
    """Route the UnicodeDecodeErrors pyarrow reports for `handler` to it; everything else to the hook in place."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.object is handler and isinstance(unraisable.exc_value, UnicodeDecodeError):
            handler.undecodable.append(unraisable.exc_value)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _blocks(source, read, parse, convert, handler: _RowHandler):
    """pyarrow's CSV record batches, with `handler` told of the rows pyarrow could not decode for it."""
    with _undecodable_rows_to(handler):
        reader = csv.open_csv(source, read_options=read, parse_options=parse, convert_options=convert)
    with reader:
        while True:
            with _undecodable_rows_to(handler):
                try:
                    block = reader.read_next_batch()
                except StopIteration:
                    return
            yield block


_ROW_NUMBER = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+)")


def _undecodable_ragged_row(path, exc: pa.ArrowInvalid, handler: _RowHandler) -> InputError | None:
    """The message for a parse error caused by a ragged row that is not UTF-8 (see _RowHandler), else None."""
    found = _ROW_NUMBER.search(str(exc))
    if not handler.undecodable or not found:
        return None
    record, expected, actual = found.groups()
    return InputError(f"{path}, record {record}: a ragged row (expected {expected} columns, found {actual}) that "
                      "is also not valid UTF-8. Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) and fix or remove "
                      "the row, or use --on-bad-rows reject.")


def csv_header(path: Path) -> list[str]:
    """Column names of a CSV file (compression detected from the suffix)."""
    # rows are not this function's business: skip malformed ones so the real reader reports them by line
    handler = _RowHandler(lambda row: "skip")
    read, parse, convert = csv_options(path, block_size=1 << 16, invalid_row_handler=handler)
    try:
        with _undecodable_rows_to(handler), csv.open_csv(_stream(path), read_options=read, parse_options=parse,
                                                          convert_options=convert) as reader:
            return reader.schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise InputError(f"{path} is empty: no header and no rows.") from None
        if handler.undecodable:
            return _header_alone(path)
        raise InputError(f"{path}: cannot read the CSV header: {exc}") from None
    except (OSError, EOFError) as exc:  # truncated gzip and other I/O failures
        raise InputError(f"{path}: cannot read: {exc}") from None


def _header_alone(path: Path) -> list[str]:
    """The header when a row of the first block stops pyarrow (a ragged row that is not UTF-8): the rows are
    skipped unparsed (slower, so only then); the reader proper reports the row."""
    read, parse, convert = csv_options(path, block_size=1 << 16)
    read.skip_rows_after_names = (1 << 31) - 1  # pyarrow takes an int32
    try:
        with csv.open_csv(_stream(path), read_options=read, parse_options=parse, convert_options=convert) as reader:
            return reader.schema.names
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the CSV header: {exc}") from None


def read_whole_table(inputs, columns: list[str] | None = None) -> pa.Table:
    """Read every file behind `inputs` into one table (training/eval sizes, not scoring)."""
    tables = []
    for path in expand_inputs(inputs):
        try:
            if file_format(path) == "parquet":
                table = pq.read_table(_random(path), columns=columns)
            else:
                read, parse, convert = csv_options(path, csv_header(path))
                if columns:
                    convert.include_columns = columns
                table = csv.read_csv(_stream(path), read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: cannot read: {exc}") from None
        tables.append(table)
    try:
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise InputError(f"Input files have different schemas: {exc}") from None


# --------------------------------------------------------------------------------------------- streaming sources
class Rejects:
    """Unreadable rows kept aside with --on-bad-rows reject: (file, where, reason, raw text).

    `where` is the row's identity, unique in its file and the same on every read: `record N`, the Nth
    record of the CSV file counting the header as record 1 and every non-blank record after it (ragged or
    not); it is the line number when no cell spans lines and no line is blank. A row met again (a retried
    read, a resumed job) is kept once."""

    def __init__(self):
        self.rows: list[dict] = []
        self.keys: set = set()

    def add(self, file, where, reason, raw):
        key = (str(file), str(where))
        if key not in self.keys:
            self.keys.add(key)
            self.rows.append({"file": key[0], "where": key[1], "reason": reason, "raw": raw})

    def __len__(self):
        return len(self.rows)


def _random(path):
    return path.open_random() if isinstance(path, InputFile) else path


def _stream(path):
    return path.open_stream() if isinstance(path, InputFile) else path


def input_schema(path: InputFile | Path) -> pa.Schema:
    """Schema of one input file without reading its rows (CSV: every column a string), then its partition keys."""
    if file_format(path) == "parquet":
        try:
            schema = pq.read_schema(_random(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc}).") from None
    else:
        schema = pa.schema([(name, pa.string()) for name in csv_header(path)])
    values = path.partition_values() if isinstance(path, InputFile) else {}
    for key, value in values.items():
        if key in schema.names:
            raise InputError(f"{path}: column '{key}' is also a Hive partition directory ({key}=...); rename one of them.")
        schema = schema.append(pa.field(key, value.type))
    return schema


def read_batches(path: InputFile | Path, columns: list[str], rows: int, rejects: Rejects | None = None,
                 schema: pa.Schema | None = None, as_text: tuple[str, ...] = ()):
    """Record batches of at most `rows` rows with `columns`, in file order; partition columns filled in;
    dictionary-encoded columns decoded, and columns `schema` names cast to its (unified) types.

    CSV is read as bytes and then checked as UTF-8, so a bad row is reported with its row number
    (or sent to `rejects`); Parquet strings are checked as UTF-8 too, and so are the binary columns `as_text`
    names (those a CSV/JSONL output or a partition directory must hold as text). Ragged CSV rows likewise. Errors
    name the file and the row.
    """
    partitions = path.partition_values() if isinstance(path, InputFile) else {}
    stored = [c for c in columns if c not in partitions]
    if file_format(path) == "parquet":
        batches = _parquet_batches(path, stored, rows, rejects, as_text)
    else:
        batches = _csv_batches(path, stored, rows, rejects)
    for batch in batches:
        arrays = [pa.repeat(partitions[c], batch.num_rows) if c in partitions else batch.column(c) for c in columns]
        yield pa.RecordBatch.from_arrays([_conform(a, c, schema) for a, c in zip(arrays, columns)], names=columns)


def _conform(array: pa.Array, name: str, schema: pa.Schema | None) -> pa.Array:
    """A column as the output holds it: dictionaries decoded to their values, then the unified type."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if schema is not None and name in schema.names and array.type != schema.field(name).type:
        array = array.cast(schema.field(name).type)
    return array


def _parquet_batches(path, columns, rows, rejects=None, as_text=()):
    try:
        reader = pq.ParquetFile(_random(path))
        first = 0  # row number of the batch's first row, counting from 1 less one
        for batch in reader.iter_batches(batch_size=rows, columns=columns):
            yield _valid_utf8(path, batch, first, rejects, as_text)
            first += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read Parquet ({exc}).") from None


def _string_columns(batch: pa.RecordBatch, as_text=()) -> list[int]:
    def textual(kind):
        return pa.types.is_string(kind) or pa.types.is_large_string(kind) or (
            pa.types.is_dictionary(kind) and textual(kind.value_type))
    return [i for i, field in enumerate(batch.schema) if textual(field.type) or field.name in as_text]


def _valid_utf8(path, batch: pa.RecordBatch, first: int, rejects: Rejects | None, as_text=()) -> pa.RecordBatch:
    """Parquet's reader does not check that string columns hold UTF-8: check them (Arrow's validator, fast),
    and name the first bad row and column (`row N`, counting the file's rows from 1) or reject the bad rows."""
    bad: dict[int, str] = {}
    for i in _string_columns(batch, as_text):
        column = batch.column(i)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            text = pa.large_string() if pa.types.is_large_binary(column.type) else pa.string()
            column = pa.Array.from_buffers(text, len(column), column.buffers(), column.null_count, column.offset)
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
        for row, value in enumerate(raw.to_pylist()):
            if value is not None and not _is_utf8(value):
                bad.setdefault(row, batch.schema.names[i])
    if not bad:
        return batch
    if rejects is None:
        row, column = min(bad.items())
        if column in as_text:
            raise InputError(f"{path}, row {first + row + 1}, column '{column}': binary that is not UTF-8 cannot be "
                             "written as text (a CSV/JSONL cell or a --partition-by directory). Write Parquet, leave "
                             "the column out with --keep, or use --on-bad-rows reject.")
        raise InputError(f"{path}, row {first + row + 1}, column '{column}': invalid UTF-8 in a string column. "
                         "Rewrite the file with valid UTF-8 strings (or the column as binary, left out with --keep), "
                         "or use --on-bad-rows reject.")
    for row, column in sorted(bad.items()):
        rejects.add(path, f"row {first + row + 1}", f"invalid UTF-8 in column '{column}'", "")
    return batch.filter(pa.array([i not in bad for i in range(batch.num_rows)]))


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _BlockTooSmall(Exception):
    pass


class _UndecodableRaggedRow(Exception):
    """Reject mode met a ragged row that is not UTF-8 (see _RowHandler): read again through _Utf8Sentinels."""


# Each byte of a sequence that is not UTF-8 becomes one of these code points (plane 16, private use) in the
# stream pyarrow parses, so every row reaches bertbatch's handlers; rows holding them are then rejected.
SENTINEL_BASE = 0x10FF00
_SENTINELS = "[\U0010FF00-\U0010FFFF]"


def _to_sentinels(error: UnicodeDecodeError):
    return "".join(chr(SENTINEL_BASE + b) for b in error.object[error.start:error.end]), error.end


codecs.register_error("bertbatch-sentinels", _to_sentinels)


class _Utf8Sentinels(io.RawIOBase):
    """The (decompressed) bytes of a CSV file with every invalid UTF-8 byte replaced by a sentinel code point.
    Quotes, delimiters and newlines are untouched, so records and their numbers are the file's own."""

    def __init__(self, path):
        self.source = path.open_stream() if isinstance(path, InputFile) and path.remote is not None else \
            pa.input_stream(str(path), compression="detect")
        self.decoder = codecs.getincrementaldecoder("utf-8")("bertbatch-sentinels")
        self.pending, self.finished = b"", False

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self.pending and not self.finished:
            chunk = self.source.read(1 << 20)
            self.finished = not chunk
            self.pending = self.decoder.decode(chunk, self.finished).encode("utf-8")
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size

    def close(self):
        self.source.close()
        super().close()


def _unsentinel(text: str) -> str:
    return re.sub(_SENTINELS, "\ufffd", text)


def _csv_batches(path, columns, rows, rejects):
    """CSV record batches. A row larger than the block (pyarrow: "straddling object") restarts the read with
    a 4x larger block, skipping the rows already handed out; the rows, their order and identities are the
    same whatever the block size."""
    block_size, done = CSV_BLOCK, [0]  # done[0]: well-formed data rows already handed out (or rejected)
    sentinels = False
    while True:
        try:
            yield from _csv_pass(path, columns, rows, rejects, block_size, done, sentinels)
            return
        except _UndecodableRaggedRow:
            sentinels = True
        except _BlockTooSmall:
            if block_size >= CSV_MAX_BLOCK:
                raise InputError(f"{path}, after data row {done[0]}: a row larger than {CSV_MAX_BLOCK >> 20} MiB "
                                 "cannot be read. Split the cell or drop the row.") from None
            block_size *= 4


def _csv_pass(path, columns, rows, rejects, block_size, done, sentinels=False):
    ragged: list = []
    ragged_records: list[int] = []  # record numbers of the ragged rows met in this pass, increasing

    def on_invalid_row(row):
        # serial parsing: pyarrow numbers every record (header = 1, blank lines skipped)
        ragged_records.append(row.number)
        where = f"record {row.number}"
        reason = f"expected {row.expected_columns} columns, found {row.actual_columns}"
        if rejects is None:
            ragged.append((where, reason, row.text))
            return "error"
        rejects.add(path, where, reason, _unsentinel(row.text) if sentinels else row.text)
        return "skip"

    header = csv_header(path)
    handler = _RowHandler(on_invalid_row)
    read, parse, convert = csv_options(path, None, handler, block_size)
    convert.column_types = {name: pa.binary() for name in header}
    convert.include_columns = columns
    seen = 0  # well-formed data rows parsed in this pass
    try:
        source = io.BufferedReader(_Utf8Sentinels(path), 1 << 20) if sentinels else _stream(path)
        for block in _blocks(source, read, parse, convert, handler):
            start, seen = seen, seen + block.num_rows
            if seen <= done[0]:
                continue  # handed out by an earlier pass
            if start < done[0]:
                block, start = block.slice(done[0] - start), done[0]
            record_of = lambda i, start=start: _record(start + i + 1, ragged_records)  # noqa: E731
            block = _decode_utf8(path, block, record_of, rejects)
            if sentinels:
                block = _reject_sentinels(path, block, record_of, rejects)
            done[0] = seen
            for first in range(0, block.num_rows, rows):
                yield block.slice(first, rows)
    except pa.ArrowInvalid as exc:
        if ragged:
            where, reason, text = ragged[0]
            raise InputError(f"{path}, {where}: {reason}: {text[:200]!r}. Fix the row or use --on-bad-rows reject.") from None
        undecodable = _undecodable_ragged_row(path, exc, handler)
        if undecodable is not None and rejects is not None and not sentinels:
            raise _UndecodableRaggedRow() from None
        if undecodable is not None:
            raise undecodable from None
        if "straddling object" in str(exc):
            raise _BlockTooSmall() from None
        found = re.search(r"Row #(\d+)", str(exc))
        where = f"record {found.group(1)}" if found else f"after {done[0]} data rows"
        raise InputError(f"{path}: cannot read CSV at {where}: {exc}") from None
    except (OSError, EOFError) as exc:  # truncated gzip, I/O errors
        raise InputError(f"{path}: read failed after {done[0]} data rows: {exc}") from None


def _reject_sentinels(path, block: pa.RecordBatch, record_of, rejects: Rejects) -> pa.RecordBatch:
    """In a read through _Utf8Sentinels: reject the rows whose cells held bytes that are not UTF-8."""
    bad: dict[int, str] = {}
    for name, column in zip(block.schema.names, block.columns):
        for i in pc.indices_nonzero(pc.match_substring_regex(column, _SENTINELS)).to_pylist():
            bad.setdefault(i, name)
    if not bad:
        return block
    for row, name in sorted(bad.items()):
        raw = _unsentinel(block.column(block.schema.names.index(name))[row].as_py())
        rejects.add(path, f"record {record_of(row)}", f"invalid UTF-8 in column '{name}'", raw)
    return block.filter(pa.array([i not in bad for i in range(block.num_rows)]))


def _record(ordinal: int, ragged_records: list[int]) -> int:
    """Record number of the `ordinal`-th well-formed data row: after the header and the ragged rows before it."""
    record = ordinal + 1
    for number in ragged_records:
        if number > record:
            break
        record += 1
    return record


def _decode_utf8(path, block: pa.RecordBatch, record_of, rejects: Rejects | None) -> pa.RecordBatch:
    """Cast every bytes column to string; find and name (or reject) rows that are not valid UTF-8.

    `record_of(i)`: the record number (the rows' identity) of row i of this block."""
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
            f"{path}, record {record_of(row)}, column '{column}': invalid UTF-8. "
            "Re-encode the file as UTF-8 or use --on-bad-rows reject."
        )
    for row, column in sorted(bad.items()):
        raw = block.column(block.schema.names.index(column))[row].as_py()
        rejects.add(path, f"record {record_of(row)}", f"invalid UTF-8 in column '{column}'", raw.decode("utf-8", "replace"))
    keep = pa.array([i not in bad for i in range(block.num_rows)])
    return _decode_utf8(path, block.filter(keep), record_of, None)


# ------------------------------------------------------------------------------------------------ input checks
def check_inputs(files: list[Path], config: ScoreConfig) -> tuple[list[str], pa.Schema]:
    """Check every input file before the first row is scored: readable header or footer, unique column names,
    rows present (with --on-bad-rows error), text column present and textual, the same kept schema.

    What warehouse writers differ in is not a difference (README, "Choices"): dictionary-encoded columns are read
    as their values, `string` and `large_string` (or `binary` and `large_binary`) unify to the large type, and
    nullability differences unify to nullable. A zero-row Parquet file (a writer's empty part) is accepted when
    another input has rows."""
    reference, empty = None, []
    for path in files:
        schema = input_schema(path)
        duplicates = sorted({name for name in schema.names if schema.names.count(name) > 1})
        if duplicates:
            raise InputError(f"{path} has duplicate column names {duplicates}; columns are {schema.names}. "
                             "Rename them so each column has one name.")
        if config.on_bad_rows == "error" and not has_rows(path):
            if file_format(path) != "parquet":
                raise InputError(f"{path} has no data rows (empty or header only). Remove it or use --on-bad-rows reject.")
            empty.append(path)
        _, kept = check_schema(schema, config, str(path))
        kept = _plain(kept)
        if reference is None:
            reference = (path, kept)
        else:
            reference = (reference[0], _unified(reference, path, kept))
    if empty and len(empty) == len(files):
        raise InputError(f"{empty[0]} has no data rows{' (nor has any other input)' if len(files) > 1 else ''}. "
                         "Remove it or use --on-bad-rows reject.")
    return list(reference[1].names), reference[1]


# types that hold the same values and unify to the second (Arrow writers choose one or the other)
_SAME_VALUES = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary()}


def _plain(schema: pa.Schema) -> pa.Schema:
    """Dictionary-encoded fields as their value type (what the readers hand out, see _conform)."""
    return pa.schema([field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field
                      for field in schema])


def _unified(reference: tuple, path, kept: pa.Schema) -> pa.Schema:
    """The reference schema extended by one more file's kept schema, or an InputError naming the differences."""
    first, schema = reference
    if kept.names != schema.names:
        raise InputError(f"Input files have different schemas: {first} has columns {schema.names}, {path} has "
                         f"{kept.names}.")
    fields, differences = [], []
    for a, b in zip(schema, kept):
        nullable = a.nullable or b.nullable  # a column is non-null in the output only when it is in every file
        if a.type == b.type:
            fields.append(a.with_nullable(nullable))
        elif _SAME_VALUES.get(a.type) == b.type or _SAME_VALUES.get(b.type) == a.type:
            fields.append(a.with_type(_SAME_VALUES.get(a.type, a.type)).with_nullable(nullable))
        else:
            differences.append(f"'{a.name}' is {a.type} in {first} but {b.type} in {path}")
    if differences:
        raise InputError(f"Input files have different schemas: {'; '.join(differences)}. Cast the columns to one "
                         "type, or leave them out with --keep.")
    return pa.schema(fields)


def check_schema(schema: pa.Schema, config: ScoreConfig, where: str) -> tuple[list[str], pa.Schema]:
    """The checks of one input's columns, for files and Arrow streams alike: the text column(s) present and
    textual, the --keep columns present. Returns the kept names and their schema."""
    for column in config.text_columns:
        if column not in schema.names:
            raise InputError(f"Column '{column}' not found in {where}; columns are {schema.names}. Use --text-column NAME.")
        kind = schema.field(column).type
        if pa.types.is_dictionary(kind):  # pandas categoricals: read as their values
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise InputError(f"Column '{column}' in {where} has type {kind}; text must be strings.")
    keep = list(config.keep) if config.keep is not None else schema.names
    missing = [c for c in keep if c not in schema.names]
    if missing:
        raise InputError(f"--keep columns {missing} not found in {where}; columns are {schema.names}.")
    return keep, pa.schema([schema.field(c) for c in keep])


def total_rows(files: list[Path]) -> int | None:
    """Row count from Parquet metadata (an independent check of conservation); None for CSV."""
    if all(str(f).lower().endswith((".parquet", ".pq")) for f in files):
        return sum(pq.ParquetFile(_random(f)).metadata.num_rows for f in files)
    return None


def has_rows(path: Path) -> bool:
    """Whether a file holds at least one data row (Parquet: its footer; CSV: the first records parsed)."""
    if file_format(path) == "parquet":
        try:
            return pq.ParquetFile(_random(path)).metadata.num_rows > 0
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc}).") from None
    ragged = []

    def note_ragged(row):
        ragged.append(row)
        return "skip"

    handler = _RowHandler(note_ragged)
    read, parse, convert = csv_options(path, invalid_row_handler=handler, block_size=1 << 16)
    convert.column_types = {name: pa.binary() for name in csv_header(path)}
    try:
        found = any(batch.num_rows for batch in _blocks(_stream(path), read, parse, convert, handler))
    except pa.ArrowInvalid as exc:
        if "straddling object" in str(exc):
            return True  # a row larger than this probe's block: there is a row
        raise _undecodable_ragged_row(path, exc, handler) or InputError(f"{path}: cannot read CSV: {exc}") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    if not found and ragged:  # rows there are, but every one is ragged: say so, not "no data rows"
        row = ragged[0]
        raise InputError(f"{path}, record {row.number}: expected {row.expected_columns} columns, found "
                         f"{row.actual_columns}, and so is every data row ({len(ragged)}): {row.text[:200]!r}. Check "
                         "the delimiter and quoting, fix the rows, or use --on-bad-rows reject.")
    return found
