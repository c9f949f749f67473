"""Where scored rows go: atomic record-batch writers (Parquet/CSV/JSONL, stdout), the output layout (one file,
a directory of part files, or stdout), and the writer that commits parts and records them in the job manifest
(`_manifest.json`, then `_SUCCESS` last).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from .errors import InputError, OutputError, describe_os_error
from .job import (LOCK, REJECTS, SUCCESS, Job, JobLock, StoreLock, create_temp, new_run_id, owned_names, owned_temp,
                  publish, read_manifest, remove_spool)
from .score import Result, Scorer, abstained, output_schema
from .source import HIVE_NULL
from .storage import Location, is_uri

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
        raise OutputError(describe_os_error(exc, f"Cannot write the rejects file {final}")) from None


def mark_success(root: Path | Location, run_id: str) -> None:
    """`_SUCCESS`: the last file a job writes, after its final manifest."""
    tmp, fh = create_temp(root / SUCCESS, run_id)
    fh.close()
    publish(tmp, root / SUCCESS)


# ----------------------------------------------------------------------------------------------- atomic sinks
class Sink:
    """Writes record batches to a temp file unique to this run beside `path`; `commit` renames it into place.

    With `stream` (`-o -`) it writes there instead: no temp file, nothing to rename."""

    def __init__(self, path: Path, schema: pa.Schema, stream=None, run_id: str | None = None):
        self.path = path if isinstance(path, Location) else Path(path)  # a Location: a file in a store
        self.stream = stream
        if stream is None:
            self.tmp, self.fh = create_temp(self.path, run_id or new_run_id())
        else:
            self.tmp, self.fh = None, stream
        self.schema = schema
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
                self.fh.close()
                self.tmp.unlink(missing_ok=True)


class ParquetSink(Sink):
    def __init__(self, path, schema, stream=None, run_id=None):
        super().__init__(path, schema, stream, run_id)
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
    def __init__(self, path, schema, stream=None, run_id=None):
        super().__init__(path, schema, stream, run_id)
        self.writer = None

    def _open(self, schema: pa.Schema) -> None:
        self.writer = csv.CSVWriter(self.fh, schema)

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
    def __init__(self, path, schema, stream=None, run_id=None):
        super().__init__(path, schema, stream, run_id)
        self.text = stream if stream is not None else io.TextIOWrapper(self.fh, encoding="utf-8")

    def write(self, batch):
        for row in batch.to_pylist():
            self.text.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self.rows += batch.num_rows

    def _close(self):
        self.text.flush()
        if self.stream is None:
            self.text.detach()  # the binary file is closed by Sink


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


def refuse_existing(output: Path, overwrite: bool) -> None:
    target = output if isinstance(output, Location) else Path(output)
    if target.exists() and not overwrite:
        raise InputError(f"Output {output} exists. Pass --overwrite to replace it.")


class OutputLayout:
    """Decides file vs directory, refuses clobbering, output == input, foreign files and links; names parts.

    A directory output is a job bertbatch owns: while it runs, `_bertbatch.lock` is flock'ed; it writes
    into an empty directory or its own job only, removes (with --overwrite) only what its manifest lists,
    and refuses a directory holding any link."""

    def __init__(self, output: str, fmt: str, inputs: list[Path], input_is_dir: bool, overwrite: bool,
                 resume: bool = False, rejects: str | None = None, partition_by: tuple[str, ...] | None = None):
        self.stdout = output == "-"
        self.remote = is_uri(output)  # an object store: the same protocol, with uploads for renames
        self.output = Location.of(output) if self.remote else Path(output)
        self.format = fmt
        self.partition_by = tuple(partition_by or ())
        self.run_id = new_run_id()
        self.lock = None
        if self.remote:
            self.directory = input_is_dir or self.output.is_dir() or "." not in self.output.name
        else:
            self.directory = not self.stdout and (input_is_dir or self.output.is_dir() or self.output.suffix == "")
        if resume and not self.directory:
            raise InputError("--resume needs a directory output (an -o path without a file suffix).")
        if self.partition_by and not self.directory:
            raise InputError("--partition-by needs a directory output (an -o path without a file suffix).")
        if rejects and self.directory:
            raise InputError(f"--rejects is for file and stdout outputs; a directory job keeps its rejects in "
                             f"{self.output / REJECTS}.")
        self.rejects_file = Path(rejects) if rejects else None
        if not self.stdout:
            refuse_input_overlap(self.output, inputs, self.directory)
            if self.directory:
                self._prepare_directory(overwrite, resume)
            else:
                self._prepare_file(overwrite)

    # -- a single file
    def _prepare_file(self, overwrite: bool) -> None:
        refuse_existing(self.output, overwrite)
        if self.output.is_dir():
            raise OutputError(f"Output {self.output} is a directory; give a file name, or a path without a suffix "
                              "for a directory job.")
        if not self.remote:
            make_directory(self.output.parent, self.output)

    # -- a job directory
    def _entries(self) -> list[str]:
        """Names in the output directory; inside Hive `key=value` directories, relative paths of their files."""
        if self.remote:
            return sorted(f.relative_to(self.output) for f in self.output.list_files())
        return sorted(_local_entries(self.output, "")) if self.output.is_dir() else []

    def _check_owned(self) -> tuple[dict | None, list[str]]:
        """(saved manifest, entries) of the output directory; refuses links and files that are not the job's."""
        if self.output.exists() and not self.output.is_dir():
            raise OutputError(f"Output {self.output} exists and is not a directory; choose another -o path.")
        entries = self._entries()
        for name in entries:
            if (self.output / name).is_symlink():
                raise OutputError(
                    f"Output directory {self.output} holds a link, {name} -> {os.readlink(self.output / name)}; "
                    "bertbatch never follows links in its output. Remove the link, or write elsewhere with -o."
                )
        saved = read_manifest(self.output)
        owned = owned_names(saved) if saved else {LOCK}
        foreign = [n for n in entries if n not in owned and not owned_temp(n, saved)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(
                f"Output directory {self.output} holds files bertbatch did not write ({shown}); it writes only "
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
            if overwrite and not resume:
                self.remove_outputs()
            else:  # temp files of a killed run of this job: never published, never needed
                for name in self._entries():
                    if owned_temp(name, saved):
                        (self.output / name).unlink(missing_ok=True)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.remote:
            remove_spool(self.run_id)

    def open(self, schema: pa.Schema, file_index: int = 0, chunk: int = 0) -> Sink:
        """A sink for part (file_index, chunk) of a directory, or for the one output file."""
        if self.stdout:
            if self.format == "jsonl":
                return JsonlSink(Path("-"), schema, stream=sys.stdout)
            return SINKS[self.format](Path("-"), schema, stream=sys.stdout.buffer)
        if self.partition_by:
            return PartitionedSink(self, schema, part_name(file_index, chunk, self.format))
        if self.directory:
            path = self.output / part_name(file_index, chunk, self.format)
        else:
            path = self.output
        return SINKS[self.format](path, schema, run_id=self.run_id)

    def open_file(self, relative: str, schema: pa.Schema) -> Sink:
        """A sink for a file in Hive `key=value` directories (`--partition-by`), made as needed, never via links."""
        *dirs, name = relative.split("/")
        if any(d in ("", ".", "..") or "=" not in d for d in dirs):
            raise InputError(f"Refusing to write {relative!r}: it escapes the output directory {self.output}.")
        if not self.remote:
            folder = self.output
            for segment in dirs:
                folder = folder / segment
                if folder.is_symlink():
                    raise OutputError(f"Refusing to write through the link {folder} in the output directory.")
                make_directory(folder, self.output)
        return SINKS[self.format](self.output / relative, schema, run_id=self.run_id)

    def list_parts(self) -> list:
        if not self.directory:
            return [self.output]
        if self.remote:
            return [f for f in self.output.list_files() if f.name.startswith("part-")]
        return sorted(self.output.glob("**/part-*" if self.partition_by else "part-*"))

    @property
    def rejects_path(self) -> Path | None:
        if self.rejects_file is not None:
            return self.rejects_file
        if self.stdout:
            return None
        if self.remote and not self.directory:
            return Location.of(self.output.uri + ".rejects.csv")
        return self.output / REJECTS if self.directory else self.output.with_name(self.output.name + ".rejects.csv")

    def verify_parts(self, parts: list[dict]) -> int:
        """Rows in the committed part files, checked against the manifest (Parquet footers are read)."""
        total = 0
        for part in parts:
            for name, rows in (part.get("files") or {part["name"]: part["rows"]}).items():
                self._verify_file(self.output / name, rows)
            total += part["rows"]
        return total

    def _verify_file(self, path, rows: int) -> None:
        if not path.is_file() or path.is_symlink():
            raise OutputError(f"Part {path} is listed in the manifest but missing; the job cannot continue. "
                              "Start again with --overwrite.")
        if self.format == "parquet":
            try:
                on_disk = pq.ParquetFile(path.open_input_file() if self.remote else path).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise OutputError(f"Part {path} is damaged ({exc}); the job cannot continue. "
                                  "Start again with --overwrite.") from None
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
        """`_SUCCESS`, unless it is there already (a finished job re-run changes nothing)."""
        if not self.directory or (self.output / SUCCESS).is_file():
            return
        try:
            mark_success(self.output, self.run_id)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, f"Cannot write {self.output / SUCCESS}")) from None

    def remove_outputs(self) -> None:
        """Remove what this job's manifest lists (parts, pending parts, its runs' temp files, the manifest,
        rejects, `_SUCCESS`) and nothing else; never through a link (unlink removes the link itself)."""
        if not (self.directory and self.output.is_dir()):
            return
        saved = read_manifest(self.output)
        owned = owned_names(saved) - {LOCK}
        for name in self._entries():
            if name in owned or owned_temp(name, saved):
                (self.output / name).unlink(missing_ok=True)
        if not self.remote:
            _remove_empty_partition_dirs(self.output)


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
        raise OutputError(describe_os_error(exc, f"Cannot create the directory for {output}")) from None


def part_name(file_index: int, chunk: int, fmt: str) -> str:
    return f"part-{file_index:05d}-{chunk:05d}{OUTPUT_SUFFIX[fmt]}"


# ------------------------------------------------------------------------------------------ Hive partitions
_SAFE = " -_.~+,;@!$&()"  # kept as is; '/', '=', '%', ':' and the rest are percent-encoded, as Hive does


def hive_segment(key: str, value: str | None) -> str:
    """`key=value` as Hive, Spark and DuckDB write it: percent-encoded; null and '' as __HIVE_DEFAULT_PARTITION__."""
    from urllib.parse import quote

    return f"{quote(key, safe=_SAFE)}={HIVE_NULL if value in (None, '') else quote(value, safe=_SAFE)}"


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
        values = [batch.column(k).cast(pa.string()).to_pylist() for k in self.keys]
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(zip(*values)):
            groups.setdefault(key, []).append(row)
        data = batch.select(self.file_schema.names)
        for key, rows in groups.items():
            relative = "/".join(hive_segment(k, v) for k, v in zip(self.keys, key)) + "/" + self.path.name
            if relative not in self.sinks:
                self.sinks[relative] = self.layout.open_file(relative, self.file_schema)
            self.sinks[relative].write(data.take(pa.array(rows, pa.int64())))
        self.rows += batch.num_rows

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


# -------------------------------------------------------------------------------------- parts and the manifest
class Writer:
    """Owns the open sink: switches parts, commits them (temp -> pending in the manifest -> publish ->
    recorded), and turns OS failures into OutputError naming the file."""

    def __init__(self, layout: OutputLayout, job: Job | None, kept: pa.Schema, scorer: Scorer, config, metadata):
        self.layout, self.job, self.config = layout, job, config
        self.schema = output_schema(kept, scorer.model.labels, scorer.model.multi_label, config).with_metadata(metadata)
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
        return "stdout" if self.layout.stdout else str(self.sink.path)

    def _new_rejects(self, rejects) -> list[dict]:
        if rejects is None:
            return []
        fresh = [r for r in rejects.rows[self.rejects_taken:] if (r["file"], r["where"]) not in self.known_rejects]
        self.rejects_taken = len(rejects.rows)
        return fresh

    def _commit(self, rejects, last: bool) -> None:
        sink, (index, chunk) = self.sink, self.key
        try:
            sink.finish_writing()
            if sink.stream is None:
                for tmp, final, name in sink.pieces():
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
                            files=getattr(sink, "files", None), abstained=self.part_abstained)
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
