"""Where scored rows go: atomic record-batch writers (Parquet/CSV/JSONL, stdout), the output layout (one file,
a directory of part files, or stdout), and the writer that commits parts and records them in the job manifest
(`_manifest.json`, then `_SUCCESS` last).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from .errors import InputError, OutputError, describe_os_error
from .job import (LOCK, MANIFEST, REJECTS, SUCCESS, Job, JobLock, StoreLock, _fsync_dir, create_temp, new_run_id, owned_names,
                  owned_temp, publish, read_manifest, remove_spool)
from .score import Result, Scorer, abstained
from .source import HIVE_NULL
from .storage import Location, is_uri, local_file_path

REJECT_SCHEMA = pa.schema([("file", pa.string()), ("where", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


def write_rejects(rows: list[dict], final: Path | Location, run_id: str) -> None:
    """The rejects CSV through a temp file and `publish`, like a part."""
    tmp, fh = create_temp(final, run_id)
    try:
        with fh:
            csv.write_csv(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), fh)
        publish(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(describe_os_error(exc, f"Cannot write the rejects file (--rejects) {final}")) from None


def mark_success(root: Path | Location, run_id: str) -> None:
    """`_SUCCESS`: the last file a job writes, after its final manifest."""
    tmp, fh = create_temp(root / SUCCESS, run_id)
    fh.close()
    publish(tmp, root / SUCCESS)


# ----------------------------------------------------------------------------------------------- atomic sinks
class Sink:
    """Writes record batches to a temp file unique to this run beside `path`; `commit` renames it into place.

    With `stream` (`-o -`) it writes there instead: no temp file, nothing to rename."""

    def __init__(self, path: Path, schema: pa.Schema, stream=None, run_id: str | None = None, compress: bool = False,
                 delimiter: str = ","):
        self.path = path if isinstance(path, Location) else Path(path)  # a Location: a file in a store
        self.stream = stream
        self.raw = None  # with `compress`: the temp file under the gzip stream
        if stream is None:
            self.tmp, self.fh = create_temp(self.path, run_id or new_run_id())
            if compress:  # `-o out.csv.gz`: what the name says; no file name or time in the header
                self.raw, self.fh = self.fh, gzip.GzipFile(filename="", fileobj=self.fh, mode="wb", compresslevel=6,
                                                           mtime=0)
        else:
            self.tmp, self.fh = None, stream
        self.schema = schema
        self.delimiter = delimiter
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def finish_writing(self) -> None:
        """Close the writer and the temp file: complete on disk, not yet visible."""
        self._close()
        if self.stream is None:
            self.fh.close()
            if self.raw is not None:
                self.raw.close()

    def commit(self) -> None:
        self.finish_writing()
        if self.stream is None:
            publish(self.tmp, self.path)

    def pieces(self) -> list[tuple]:
        """(temp file, final name, name in the manifest) of what `commit` publishes."""
        return [(self.tmp, self.path, self.path.name)]

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - the write already failed; what matters is removing the temp file
            pass
        finally:
            if self.stream is None:
                for handle in (self.fh, self.raw):
                    try:
                        if handle is not None:
                            handle.close()
                    except OSError:  # a full disk fails the flush again: the temp file goes all the same
                        pass
                self.tmp.unlink(missing_ok=True)


class ParquetSink(Sink):
    def __init__(self, path, schema, stream=None, run_id=None, **options):
        super().__init__(path, schema, stream, run_id, **options)
        self.writer = pq.ParquetWriter(self.fh, schema, compression="zstd")

    def write(self, batch):
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def _close(self):
        self.writer.close()


def _text_type(t: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_nested(t) else t


def _text_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, _text_type(f.type)) for f in schema])


def _flatten_for_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV/JSON text cannot hold lists, structs or maps: such columns become JSON strings."""
    arrays = []
    for column in batch.columns:
        if pa.types.is_nested(column.type):
            column = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                               for v in column.to_pylist()], pa.string())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class CsvSink(Sink):
    def __init__(self, path, schema, stream=None, run_id=None, **options):
        super().__init__(path, schema, stream, run_id, **options)
        self.writer = None

    def _open(self, schema: pa.Schema) -> None:
        self.writer = csv.CSVWriter(self.fh, schema, write_options=csv.WriteOptions(delimiter=self.delimiter))

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
    """One strict JSON object a line, UTF-8 whatever the locale (stdout included): NaN and ±Infinity, which
    strict parsers reject, are written as null."""

    def __init__(self, path, schema, stream=None, run_id=None, **options):
        super().__init__(path, schema, stream, run_id, **options)
        self.text = io.TextIOWrapper(self.fh, encoding="utf-8", newline="\n", write_through=stream is not None)

    def write(self, batch):
        for row in batch.to_pylist():
            self.text.write(_json_line(row) + "\n")
        self.rows += batch.num_rows

    def _close(self):
        self.text.flush()
        self.text.detach()  # the binary file (or stdout's buffer) stays open: Sink or the process closes it


def _json_line(row: dict) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere in the row: null, as strict JSON has no such number
        return json.dumps(_finite(row), ensure_ascii=False, default=str, allow_nan=False)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


SINKS = {"parquet": ParquetSink, "csv": CsvSink, "jsonl": JsonlSink}
OUTPUT_SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
# What a single output file's name means: (format, gzip, CSV delimiter). Any other suffix is refused.
FILE_SUFFIXES = {
    ".parquet": ("parquet", False, ","), ".csv": ("csv", False, ","), ".csv.gz": ("csv", True, ","),
    ".tsv": ("csv", False, "\t"), ".tsv.gz": ("csv", True, "\t"), ".jsonl": ("jsonl", False, ","),
    ".jsonl.gz": ("jsonl", True, ","), ".ndjson": ("jsonl", False, ","), ".ndjson.gz": ("jsonl", True, ","),
}


def _named_kind(path: str) -> tuple[str, bool, str] | None:
    name = str(path).lower()
    for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return FILE_SUFFIXES[suffix]
    return None


def output_format(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    kind = _named_kind(path)
    return kind[0] if kind else "parquet"


def file_output_kind(path: str, explicit: str | None) -> tuple[str, bool, str]:
    """(format, gzip, delimiter) of a single output file: its name must mean a format. With --format, a name
    of another known format is a contradiction (refused); an unknown suffix takes --format's plain form."""
    kind = _named_kind(path)
    accepted = ", ".join(FILE_SUFFIXES)
    if kind is None:
        if explicit:
            return explicit, False, ","
        raise InputError(f"Output {path}: its suffix names no format bertbatch writes ({accepted}). Use one of "
                         "them, give --format parquet|csv|jsonl, or a path without a suffix for a directory job.")
    if explicit and explicit != kind[0]:
        raise InputError(f"Output {path} names a {kind[0]} file but --format is {explicit}; make them agree "
                         f"({accepted}).")
    return kind


# ---------------------------------------------------------------------------------------------- output layout
def refuse_input_overlap(output: Path, inputs: list[Path], directory: bool) -> None:
    """An output that is, contains, or (as a directory of parts) sits beside an input would destroy it."""
    if isinstance(output, Location) or is_uri(str(output)):
        out = Location.of(output).uri.rstrip("/")
        for path in inputs:
            src = str(path)
            if src == out or src.startswith(out + "/") or (directory and src.rsplit("/", 1)[0] == out):
                raise InputError(f"Output {output} would overwrite the input {path}; choose another -o path.")
        return
    out = Path(output).resolve()
    for path in inputs:
        if getattr(path, "remote", None) is not None:
            continue  # in a store: never on this disk
        src = Path(path).resolve()
        if src == out or out in src.parents or (directory and src.parent == out):
            raise InputError(f"Output {output} would overwrite the input {path}; choose another -o path.")


def refuse_inside_input_directory(target, option: str, input_dirs: list[Path]) -> None:
    """A file or directory written inside an input directory would be read back as input by the next run
    (and by --resume)."""
    if isinstance(target, Location):
        return
    resolved = Path(target).resolve()
    for folder in input_dirs:
        folder = Path(folder).resolve()
        if folder in resolved.parents:
            raise InputError(f"{option} {target} is inside the input directory {folder}: a later run or --resume "
                             f"would read it as input. Write it outside {folder}.")


def refuse_existing(output: Path, overwrite: bool) -> None:
    target = output if isinstance(output, Location) else Path(output)
    if target.exists() and not overwrite:
        raise InputError(f"Output {output} exists. Pass --overwrite to replace it.")


def stdout_is_closed() -> bool:
    """`bertbatch score ... -o - >&-`: the process started without a standard output."""
    if sys.stdout is None:
        return True
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False  # not a real descriptor (a test harness's buffer): writable
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


class OutputLayout:
    """Decides file vs directory, refuses clobbering, output == input, foreign files and links; names parts.

    A directory output is a job bertbatch owns: while it runs, `_bertbatch.lock` is flock'ed; it writes
    into an empty directory or its own job only, removes (with --overwrite) only what its manifest lists,
    and refuses a directory holding any link. `--overwrite` of a local job is staged in a sibling
    directory (`.OUT.bertbatch-overwrite`) and swapped into place when complete, so the previous result
    stays readable until then. `root` is where the job writes: the staging directory, or the output."""

    def __init__(self, output: str, fmt: str, inputs: list[Path], input_is_dir: bool, overwrite: bool,
                 resume: bool = False, rejects: str | None = None, partition_by: tuple[str, ...] | None = None,
                 explicit_format: str | None = None, input_dirs: list[Path] = (), reject_mode: bool = False):
        self.stdout = output == "-"
        output = output if self.stdout else local_file_path(output)  # file:///x is the local path /x
        self.remote = is_uri(output)  # an object store: the same protocol, with uploads for renames
        self.output = Location.of(output) if self.remote else Path(output)
        self.format, self.compress, self.delimiter = fmt, False, ","
        self.partition_by = tuple(partition_by or ())
        self.run_id = new_run_id()
        self.lock = None
        self.staging = None  # the sibling directory a staged --overwrite writes into
        self.replaces = None  # the last run of the job a staged --overwrite replaces
        if self.stdout and stdout_is_closed():
            raise OutputError("-o -: standard output is closed, so the scored rows have nowhere to go. Run with "
                              "stdout open (a file or a pipe), or give -o a path.")
        if self.remote:
            self.directory = input_is_dir or self.output.is_dir() or "." not in self.output.name
        else:
            self.directory = not self.stdout and (input_is_dir or self.output.is_dir() or self.output.suffix == "")
        if not self.stdout and not self.directory:
            self.format, self.compress, self.delimiter = file_output_kind(str(output), explicit_format)
        self.root = self.output
        if resume and not self.directory:
            raise InputError("--resume needs a directory output (an -o path without a file suffix).")
        if self.partition_by and not self.directory:
            raise InputError("--partition-by needs a directory output (an -o path without a file suffix).")
        if rejects and self.directory:
            raise InputError(f"--rejects is for file and stdout outputs; a directory job keeps its rejects in "
                             f"{self.output / REJECTS}.")
        self.rejects_file = local_file_path(rejects) if rejects else None
        if self.rejects_file is not None:
            self.rejects_file = Location.of(self.rejects_file) if is_uri(self.rejects_file) else Path(self.rejects_file)
        if not self.stdout:
            refuse_input_overlap(self.output, inputs, self.directory)
            refuse_inside_input_directory(self.output, "Output -o", input_dirs)
        if reject_mode:
            self._check_rejects_path(inputs, input_dirs, overwrite)
        if not self.stdout:
            if self.directory:
                self._prepare_directory(overwrite, resume)
            else:
                self._prepare_file(overwrite)

    def sink(self, path, schema: pa.Schema) -> Sink:
        options = {"compress": self.compress, "delimiter": self.delimiter} if not self.directory else {}
        return SINKS[self.format](path, schema, run_id=self.run_id, **options)

    # -- the rejects file of a file or stdout output: checked like the output, before anything is scored
    def _check_rejects_path(self, inputs: list[Path], input_dirs: list[Path], overwrite: bool) -> None:
        path = self.rejects_path
        if path is None or self.directory:
            return  # a directory job's `_rejects.csv` is one of its own files
        option = "--rejects" if self.rejects_file is not None else "The rejects file"
        if isinstance(path, Location):
            if path.exists() and not overwrite:
                raise InputError(f"{option} {path} exists. Pass --overwrite to replace it, or choose another "
                                 "--rejects path.")
            return
        resolved = path.resolve()
        for source in inputs:
            if getattr(source, "remote", None) is None and Path(source).resolve() == resolved:
                raise InputError(f"{option} {path} is the input {source}: the rejected rows would replace it. "
                                 "Choose another --rejects path.")
        if not self.stdout and not self.remote and Path(self.output).resolve() == resolved:
            raise InputError(f"{option} {path} is the output -o {self.output}: one would replace the other. "
                             "Choose another --rejects path.")
        refuse_inside_input_directory(path, option, input_dirs)
        if path.is_dir():
            raise OutputError(f"{option} {path} is a directory; give a file name for the rejected rows.")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise InputError(f"{option} {path} exists. Pass --overwrite to replace it, or choose another "
                             "--rejects path.")
        if self.rejects_file is not None and not path.parent.is_dir():
            raise OutputError(f"Cannot write --rejects {path}: the directory {path.parent} does not exist. "
                              "Create it, or choose another --rejects path.")

    # -- a single file
    def _prepare_file(self, overwrite: bool) -> None:
        refuse_existing(self.output, overwrite)
        if self.output.is_dir():
            raise OutputError(f"Output {self.output} is a directory; give a file name, or a path without a suffix "
                              "for a directory job.")
        if not self.remote:
            make_directory(self.output.parent, self.output)

    # -- a job directory
    def _entries(self, root=None) -> list[str]:
        """Names in the job directory; inside Hive `key=value` directories, relative paths of their files."""
        root = self.root if root is None else root
        if self.remote:
            return sorted(f.relative_to(root) for f in root.list_files())
        return sorted(_local_entries(root, "")) if root.is_dir() else []

    def _check_owned(self, root=None) -> tuple[dict | None, list[str]]:
        """(saved manifest, entries) of a job directory; refuses links and files that are not the job's."""
        root = self.output if root is None else root
        if root.exists() and not root.is_dir():
            raise OutputError(f"Output {root} exists and is not a directory; choose another -o path.")
        entries = self._entries(root)
        for name in entries:
            if (root / name).is_symlink():
                raise OutputError(
                    f"Output directory {root} holds a link, {name} -> {os.readlink(root / name)}; "
                    "bertbatch never follows links in its output. Remove the link, or write elsewhere with -o."
                )
        saved = read_manifest(root)
        owned = owned_names(saved) if saved else {LOCK}
        foreign = [n for n in entries if n not in owned and not owned_temp(n, saved)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(
                f"Output directory {root} holds files bertbatch did not write ({shown}); it writes only "
                "into an empty directory or its own job. Choose another -o path, or move them away."
            )
        return saved, entries

    def _prepare_directory(self, overwrite: bool, resume: bool) -> None:
        if (self.output / LOCK).exists() or (self.output / LOCK).is_symlink():
            saved = read_manifest(self.output)  # a job may be writing here: the full check waits for its lock
        else:
            saved, _ = self._check_owned()  # refuse a foreign directory before creating anything in it
        if saved is not None and not (overwrite or resume):
            raise InputError(
                f"Output directory {self.output} holds a bertbatch job. Pass --resume to continue an interrupted "
                "job, or --overwrite to replace it."
            )
        if self.remote:
            self.lock = StoreLock(self.output, self.run_id)
        else:
            make_directory(self.output, self.output)
            self.lock = JobLock(self.output)
        try:
            saved, _ = self._check_owned()  # again, under the lock: the directory is now this process's
            if not self.remote:
                self._settle_staging(saved, overwrite, resume)
            if self.staging is not None:
                pass
            elif overwrite and not resume:
                self.remove_outputs()  # a store (no rename) or a directory holding no job yet: in place
            else:
                self._remove_own_temps(saved)
        except BaseException:
            self.release()
            raise

    def _remove_own_temps(self, saved: dict | None) -> None:
        """Temp files of a killed run of this job: never published, never needed."""
        for name in self._entries():
            if owned_temp(name, saved):
                (self.root / name).unlink(missing_ok=True)

    # -- a staged --overwrite (local disk): the old job stays readable until the new one is complete
    def _stage_names(self) -> tuple[Path, Path]:
        return (self.output.with_name(f".{self.output.name}.bertbatch-overwrite"),
                self.output.with_name(f".{self.output.name}.bertbatch-replaced"))

    def _settle_staging(self, saved: dict | None, overwrite: bool, resume: bool) -> None:
        """Under the output's lock: clean what an earlier staged --overwrite left, then decide where this run
        writes. --overwrite of a job stages a fresh copy; --resume continues a staged --overwrite that was
        interrupted (and swaps it in at the end), else the job itself."""
        stage, trash = self._stage_names()
        if trash.is_symlink():
            trash.unlink()
        elif trash.exists():  # the previous result of a finished swap (a name only bertbatch makes)
            shutil.rmtree(trash, ignore_errors=True)
        staged = read_manifest(stage) if stage.is_dir() and not stage.is_symlink() else None
        replaced_run = (saved or {}).get("state", {}).get("replaces")
        if staged is not None and replaced_run and (staged["state"].get("runs") or [None])[-1] == replaced_run:
            self._remove_job_dir(stage)  # killed right after the swap: the stage holds the job it replaced
            staged = None
        if resume and staged is not None:
            self._check_owned(stage)
            self.staging = self.root = stage
            self._remove_own_temps(staged)
        elif overwrite and not resume and saved is not None:
            if stage.exists() or stage.is_symlink():
                self._remove_job_dir(stage)  # an interrupted earlier --overwrite: start it again
            try:
                stage.mkdir()
            except OSError as exc:
                raise OutputError(describe_os_error(exc, f"Cannot create the staging directory of -o {self.output}")) from None
            self.staging = self.root = stage
            self.replaces = (saved.get("state", {}).get("runs") or [None])[-1]
        elif stage.is_dir() and not stage.is_symlink() and staged is None and (resume or overwrite):
            self._remove_job_dir(stage)  # killed before its first manifest: nothing in it to continue

    def _remove_job_dir(self, folder: Path) -> None:
        """Remove a staging or replaced job directory: only if everything in it is a job's, never via a link."""
        if folder.is_symlink() or not folder.is_dir():
            raise OutputError(f"{folder} is not a directory bertbatch made; move it away and run again.")
        saved, entries = self._check_owned(folder)
        for name in entries:  # the manifest last: a removal cut short is still recognisably a job's
            if name != MANIFEST:
                (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder)

    def _swap_in(self) -> None:
        """Put the complete staged job in place of the old one: one atomic exchange where the OS offers it
        (Linux renameat2), else two renames; then remove the old job."""
        stage, trash = self._stage_names()
        try:
            if _exchange(self.staging, self.output):
                os.rename(self.staging, trash)  # the stage now holds the old job
            else:
                os.rename(self.output, trash)
                os.rename(self.staging, self.output)
            _fsync_dir(self.output.parent)
        except OSError as exc:
            raise OutputError(describe_os_error(
                exc, f"Cannot put the new job {self.staging} in place of -o {self.output} (the old job is intact)"
            )) from None
        self.staging, self.root = None, self.output
        shutil.rmtree(trash, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.remote:
            remove_spool(self.run_id)

    def open(self, schema: pa.Schema, file_index: int = 0, chunk: int = 0) -> Sink:
        """A sink for part (file_index, chunk) of a directory, or for the one output file."""
        if self.stdout:
            return SINKS[self.format](Path("-"), schema, stream=sys.stdout.buffer)
        if self.partition_by:
            return PartitionedSink(self, schema, part_name(file_index, chunk, self.format))
        if self.directory:
            path = self.root / part_name(file_index, chunk, self.format)
        else:
            path = self.output
        return self.sink(path, schema)

    def open_file(self, relative: str, schema: pa.Schema) -> Sink:
        """A sink for a file in Hive `key=value` directories (`--partition-by`), made as needed, never via links."""
        *dirs, name = relative.split("/")
        if any(d in ("", ".", "..") or "=" not in d for d in dirs):
            raise InputError(f"Refusing to write {relative!r}: it escapes the output directory {self.output}.")
        if not self.remote:
            folder = self.root
            for segment in dirs:
                folder = folder / segment
                if folder.is_symlink():
                    raise OutputError(f"Refusing to write through the link {folder} in the output directory.")
                make_directory(folder, self.output)
        return self.sink(self.root / relative, schema)

    def list_parts(self) -> list:
        if not self.directory:
            return [self.output]
        if self.remote:
            return [f for f in self.root.list_files() if f.name.startswith("part-")]
        return sorted(self.root.glob("**/part-*" if self.partition_by else "part-*"))

    @property
    def rejects_path(self) -> Path | None:
        if self.rejects_file is not None:
            return self.rejects_file
        if self.stdout:
            return None
        if self.remote and not self.directory:
            return Location.of(self.output.uri + ".rejects.csv")
        return self.root / REJECTS if self.directory else self.output.with_name(self.output.name + ".rejects.csv")

    def verify_parts(self, parts: list[dict]) -> int:
        """Rows in the committed part files, checked against the manifest: every format, every file (Parquet:
        the footer's row count; CSV and JSONL: the byte size recorded at commit, then the records counted)."""
        total = 0
        for part in parts:
            sizes = part.get("bytes", {})
            for name, rows in (part.get("files") or {part["name"]: part["rows"]}).items():
                self._verify_file(self.root / name, rows, sizes.get(name))
            total += part["rows"]
        return total

    def _verify_file(self, path, rows: int, size: int | None = None) -> None:
        if not path.is_file() or path.is_symlink():
            raise OutputError(f"Part {path} is listed in the manifest but missing; the job cannot continue. "
                              "Start again with --overwrite.")
        if self.format == "parquet":
            try:
                on_disk = pq.ParquetFile(path.open_input_file() if self.remote else path).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise OutputError(f"Part {path} is damaged ({exc}); the job cannot continue. "
                                  "Start again with --overwrite.") from None
        else:
            found = path.info().size if self.remote else path.stat().st_size
            if size is not None and found != size:
                raise OutputError(f"Part {path} is {found} bytes, the manifest recorded {size} at commit: it was "
                                  "cut or changed since. The job cannot continue; start again with --overwrite.")
            on_disk = _count_records(path, self.format, self.remote)
            if on_disk is None:
                raise OutputError(f"Part {path} is damaged (not the {self.format.upper()} bertbatch wrote); the job "
                                  "cannot continue. Start again with --overwrite.")
        if on_disk != rows:
            raise OutputError(f"Part {path} holds {on_disk} rows, the manifest says {rows}; "
                              "start again with --overwrite.")

    def finish(self, rejects: list[dict] | None, job, totals: dict) -> None:
        """Rejects file, then the final manifest, then `_SUCCESS`: the last things a job writes.

        In reject mode (`rejects` not None) the rejects file is always written, header only when nothing
        was rejected, so it never describes an earlier run."""
        if rejects is not None and self.rejects_path is not None:
            write_rejects(rejects, self.rejects_path, self.run_id)
        if job is not None:
            job.finish({k: totals[k] for k in ("rows_in", "rows_written", "rows_rejected", "rows_with_error",
                                                  "rows_abstained")})
        self.finish_success()

    def finish_success(self) -> None:
        """`_SUCCESS`, unless it is there already (a finished job re-run changes nothing); a staged
        --overwrite is then swapped into place."""
        if not self.directory:
            return
        if not (self.root / SUCCESS).is_file():
            try:
                mark_success(self.root, self.run_id)
            except OSError as exc:
                raise OutputError(describe_os_error(exc, f"Cannot write {self.root / SUCCESS} (-o)")) from None
        if self.staging is not None:
            self._swap_in()

    def remove_outputs(self) -> None:
        """Remove what this job's manifest lists (parts, pending parts, its runs' temp files, the manifest,
        rejects, `_SUCCESS`) and nothing else; never through a link (unlink removes the link itself). A
        staged --overwrite removes its staging directory: the old job stays."""
        if self.staging is not None:
            self._remove_job_dir(self.staging)
            self.staging = None
            self.root = self.output
            return
        if not (self.directory and self.root.is_dir()):
            return
        saved = read_manifest(self.root)
        owned = owned_names(saved) - {LOCK}
        for name in self._entries():
            if name in owned or owned_temp(name, saved):
                (self.root / name).unlink(missing_ok=True)
        if not self.remote:
            _remove_empty_partition_dirs(self.root)


def _count_records(path, fmt: str, remote: bool) -> int | None:
    """Records in a CSV (header not counted) or JSONL part, or None when it does not parse."""
    opener = path.open_input_stream if remote else (lambda: pa.OSFile(str(path)))
    if fmt == "jsonl":
        lines = last = 0
        with opener() as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1]
        return lines if last in (0, 10) else None  # a part ends with a newline
    options = csv.ReadOptions(autogenerate_column_names=True, skip_rows=1, block_size=1 << 24)
    convert = csv.ConvertOptions(include_columns=["f0"], column_types={"f0": pa.string()})
    try:
        with opener() as fh:
            reader = csv.open_csv(fh, read_options=options, convert_options=convert,
                                  parse_options=csv.ParseOptions(newlines_in_values=True))
            return sum(batch.num_rows for batch in reader)
    except pa.ArrowInvalid as exc:
        return 0 if "Empty CSV file" in str(exc) else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS or the file
    system offers no such call."""
    import ctypes
    import errno

    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    if call(at_cwd, os.fsencode(str(a)), at_cwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _local_entries(folder: Path, prefix: str) -> list[str]:
    """Names in `folder`; the files inside `key=value` directories (not links) as relative paths."""
    names = []
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink() and "=" in path.name:
            names += _local_entries(path, f"{prefix}{path.name}/")
        else:
            names.append(prefix + path.name)
    return names


def _remove_empty_partition_dirs(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink() and "=" in path.name:
            _remove_empty_partition_dirs(path)
            if not any(path.iterdir()):
                path.rmdir()


def make_directory(path: Path, output: Path) -> None:
    """mkdir -p, with a message naming the file that stands where a directory is needed."""
    for ancestor in [path, *path.parents]:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise OutputError(f"Cannot write {output}: {ancestor} is a file, not a directory. "
                                  "Choose another -o path.")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, f"Cannot create the directory for -o {output}")) from None


def part_name(file_index: int, chunk: int, fmt: str) -> str:
    return f"part-{file_index:05d}-{chunk:05d}{OUTPUT_SUFFIX[fmt]}"


# ------------------------------------------------------------------------------------------ Hive partitions
_SAFE = " -_.~+,;@!$&()"  # kept as is; '/', '=', '%', ':' and the rest are percent-encoded, as Hive does


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def hive_segment(key: str, value: str | None) -> str:
    """`key=value` as Hive, Spark and DuckDB write it: percent-encoded; null and '' as __HIVE_DEFAULT_PARTITION__.
    A segment longer than a file name allows is refused, naming the column and the value."""
    from urllib.parse import quote

    segment = f"{quote(key, safe=_SAFE)}={HIVE_NULL if value in (None, '') else quote(value, safe=_SAFE)}"
    if len(segment.encode()) > NAME_MAX:
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise InputError(f"--partition-by {key}: the value {shown!r} ({len(value)} characters) makes a directory "
                         f"name of {len(segment.encode())} bytes, over the {NAME_MAX} a file name allows; partition "
                         "by a column with shorter values.")
    return segment


def open_file_budget() -> int:
    """Partition files one part may hold open at once: the open-file limit, less room for everything else."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, (soft if soft != resource.RLIM_INFINITY else 1 << 16) - 64)


class PartitionedSink:
    """One part of a `--partition-by` job: one file per partition value (`k=v/.../part-FFFFF-CCCCC.ext`, the
    partition columns in the path, not in the file), rows in input order. Each file goes through the job
    protocol (temp, pending, publish); the part is recorded, with its files, only after all of them."""

    stream = None

    def __init__(self, layout: OutputLayout, schema: pa.Schema, name: str):
        self.layout, self.keys = layout, layout.partition_by
        missing = [k for k in self.keys if k not in schema.names]
        if missing:
            raise InputError(f"--partition-by columns {missing} are not in the output; its columns are {schema.names}.")
        nested = [k for k in self.keys if pa.types.is_nested(schema.field(k).type)]
        if nested:
            raise InputError(f"--partition-by columns {nested} hold lists or structs; partition by scalar columns.")
        self.file_schema = pa.schema([f for f in schema if f.name not in self.keys], metadata=schema.metadata)
        self.sinks: dict[str, Sink] = {}
        self.path = Path(name)  # the part's name in the manifest
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        values = [self._values(batch, k) for k in self.keys]
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(zip(*values)):
            groups.setdefault(key, []).append(row)
        data = batch.select(self.file_schema.names)
        relatives = {key: "/".join(hive_segment(k, v) for k, v in zip(self.keys, key)) + "/" + self.path.name
                     for key in groups}  # every name checked before a directory is made
        fresh = len(set(relatives.values()) - set(self.sinks))
        if len(self.sinks) + fresh > open_file_budget():
            raise InputError(
                f"--partition-by {','.join(self.keys)}: more than {open_file_budget()} distinct values in one part "
                f"({self.path.name}), one open file each, over the open-file limit (ulimit -n). Raise the limit, "
                "lower --rows-per-part, or partition by a column with fewer values.")
        for key, rows in groups.items():
            relative = relatives[key]
            if relative not in self.sinks:
                self.sinks[relative] = self.layout.open_file(relative, self.file_schema)
            self.sinks[relative].write(data.take(pa.array(rows, pa.int64())))
        self.rows += batch.num_rows

    @staticmethod
    def _values(batch: pa.RecordBatch, key: str) -> list:
        column = batch.column(key)
        try:
            return column.cast(pa.string()).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = next((i for i, v in enumerate(column.to_pylist()) if isinstance(v, bytes) and not _utf8(v)), None)
            where = f" (row {bad + 1} of this window)" if bad is not None else ""
            raise InputError(f"--partition-by {key}: the column holds bytes that are not UTF-8 text{where}, which "
                             "cannot name a directory; partition by a text column.") from None

    @property
    def files(self) -> dict[str, int]:
        return {relative: sink.rows for relative, sink in self.sinks.items()}

    def finish_writing(self) -> None:
        for sink in self.sinks.values():
            sink.finish_writing()

    def pieces(self) -> list[tuple]:
        return [(sink.tmp, sink.path, relative) for relative, sink in self.sinks.items()]

    def abort(self) -> None:
        for sink in self.sinks.values():
            sink.abort()
        if not self.layout.remote and self.layout.root.is_dir():
            _remove_empty_partition_dirs(self.layout.root)  # no empty `k=v` directories left behind


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -------------------------------------------------------------------------------------- parts and the manifest
class Writer:
    """Owns the open sink: switches parts, commits them (temp -> pending in the manifest -> publish ->
    recorded), and turns OS failures into OutputError naming the file."""

    def __init__(self, layout: OutputLayout, job: Job | None, kept: pa.Schema, scorer: Scorer, config, metadata):
        self.layout, self.job, self.config = layout, job, config
        self.schema = scorer.output_schema(kept).with_metadata(metadata)
        self.sink = self.key = None
        self.rows_this_run = self.real = self.padded = self.errors = self.part_errors = 0
        self.multi_label = scorer.model.multi_label
        self.abstained = self.part_abstained = 0  # --min-score: written, scored, without a label
        self.rows_before = sum(p["rows"] for p in job.state["parts"]) if job else 0
        self.known_rejects = job.reject_keys() if job else set()
        self.rejects_taken = 0

    def take(self, index, chunk, out, result: Result | None, rejects) -> None:
        if out is None:  # end of input file `index`
            if self.layout.directory and self.key and self.key[0] == index:
                self._commit(rejects, last=True)
            elif self.job and self.layout.directory:
                self.job.mark_file_done(index)
            return
        key = (index, chunk) if self.layout.directory else (0, 0)
        if self.sink is not None and key != self.key:
            self._commit(rejects, last=False)
        if self.sink is None:
            self.sink, self.key = self.layout.open(self.schema, *key), key
        try:
            self.sink.write(out.cast(self.schema) if out.schema != self.schema else out)
        except BrokenPipeError:
            raise  # `-o - | head`: the CLI ends quietly
        except OSError as exc:
            raise OutputError(describe_os_error(exc, f"Cannot write {self._target()}")) from None
        self.rows_this_run += out.num_rows
        self.real += result.real_tokens
        self.padded += result.padded_tokens
        errors = sum(e is not None for e in result.errors)
        self.errors += errors
        self.part_errors += errors
        held = int(abstained(result, self.multi_label, self.config).sum())
        self.abstained += held
        self.part_abstained += held

    def _target(self) -> str:
        """What failed, with the option behind it."""
        if self.layout.stdout:
            return "stdout (-o -)"
        path = self.sink.path if self.sink is not None else self.layout.output
        return f"-o {self.layout.root / path if self.layout.partition_by else path}"

    def _new_rejects(self, rejects) -> list[dict]:
        if rejects is None:
            return []
        fresh = [r for r in rejects.rows[self.rejects_taken:] if (r["file"], r["where"]) not in self.known_rejects]
        self.rejects_taken = len(rejects.rows)
        return fresh

    def _commit(self, rejects, last: bool) -> None:
        sink, (index, chunk) = self.sink, self.key
        sizes = {}
        try:
            sink.finish_writing()
            if sink.stream is None:
                for tmp, final, name in sink.pieces():
                    sizes[name] = os.path.getsize(tmp)  # recorded, so --resume sees a part cut or changed since
                    if self.job:
                        self.job.intend(name)
                    publish(tmp, final)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(describe_os_error(exc, f"Cannot write {self._target()}")) from None
        self.sink = self.key = None
        if self.job:
            self.job.record(sink.path.name, index, chunk, sink.rows, self.part_errors, self._new_rejects(rejects), last,
                            files=getattr(sink, "files", None), sizes=sizes, abstained=self.part_abstained)
        self.part_errors = self.part_abstained = 0

    def close(self, rejects, expected_rows: int | None) -> dict:
        if self.sink is not None:
            self._commit(rejects, last=True)
        elif self.key is None and not self.layout.directory and self.rows_this_run == 0:
            self.sink, self.key = self.layout.open(self.schema, 0, 0), (0, 0)  # no rows: a header-only output
            self._commit(rejects, last=True)
        if self.job:
            self._new_rejects(rejects)
            all_rejects = self.job.all_rejects() if rejects is not None else []
            written = self.layout.verify_parts(self.job.state["parts"])
            self.errors = self.job.errors()
            self.abstained = self.job.abstained()
        else:
            all_rejects = self._new_rejects(rejects)
            written = self.rows_this_run
        rows_in = written + len(all_rejects)
        if expected_rows is not None and rows_in != expected_rows:
            raise InputError(f"Row conservation failed: the inputs hold {expected_rows} rows, {rows_in} were accounted for.")
        totals = {"rows_in": rows_in, "rows_written": written, "rows_rejected": len(all_rejects),
                  "rows_with_error": self.errors, "rows_abstained": self.abstained, "rows_this_run": self.rows_this_run,
                  "real_tokens": self.real, "padded_tokens": self.padded}
        self.layout.finish(all_rejects if rejects is not None else None, self.job, totals)
        return totals

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None
