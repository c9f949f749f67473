"""Where scored rows go: atomic record-batch writers (Parquet/CSV/JSONL, stdout), the output layout (one file,
a directory of part files, or stdout), and the writer that commits parts and records them in the job manifest
(`_manifest.json`, then `_SUCCESS` last).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from .errors import InputError
from .job import Job
from .score import Result, Scorer, output_schema
from .source import HIVE_NULL
from .storage import Location, is_uri

def write_csv_atomic(table: pa.Table, path: Path | Location) -> None:
    if isinstance(path, Location):  # a store: one upload
        buffer = io.BytesIO()
        csv.write_csv(table, buffer)
        path.write_bytes(buffer.getvalue())
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    csv.write_csv(table, tmp)
    os.replace(tmp, path)


REJECT_SCHEMA = pa.schema([("file", pa.string()), ("where", pa.string()), ("reason", pa.string()), ("raw", pa.string())])



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
        self.publish = None  # a store output: uploads the committed local file to its final key

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
        if self.publish is not None:
            self.publish(self.path)

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
    if Path(output).exists() and not overwrite:
        raise InputError(f"Output {output} exists. Pass --overwrite to replace it.")


OURS = ("part-", "_SUCCESS", "_rejects.csv", "_manifest.json", ".part-", "._manifest.json")


def part_name(file_index: int, chunk: int, fmt: str) -> str:
    return f"part-{file_index:05d}-{chunk:05d}{OUTPUT_SUFFIX[fmt]}"


def _ours(relative: str) -> bool:
    """A file bertbatch writes: directly in the output, or a part inside `key=value` partition directories."""
    *dirs, name = relative.split("/")
    if not dirs:
        return name.startswith(OURS)
    return name.startswith("part-") and all("=" in d for d in dirs)


class OutputLayout:
    """Decides file vs directory, refuses clobbering, output == input and escaping paths; names parts."""

    def __init__(self, output: str, fmt: str, inputs: list[Path], input_is_dir: bool, overwrite: bool,
                 resume: bool = False, partition_by: tuple[str, ...] | None = None):
        self.partition_by = tuple(partition_by or ())
        self.stdout = output == "-"
        self.remote = Location.of(output) if is_uri(output) else None  # an object store: no rename, no links
        self.output = self.remote or Path(output)
        self.format = fmt
        self.spool = None  # store output: where parts are written before their one upload
        if self.remote is not None:
            self.directory = input_is_dir or self.remote.is_dir() or "." not in self.remote.name
        else:
            self.directory = not self.stdout and (input_is_dir or self.output.is_dir() or self.output.suffix == "")
        if resume and not self.directory:
            raise InputError("--resume needs a directory output (an -o path without a file suffix).")
        if self.partition_by and not self.directory:
            raise InputError("--partition-by needs a directory output (an -o path without a file suffix).")
        if not self.stdout:
            refuse_input_overlap(self.output, inputs, self.directory)
            self._prepare(overwrite, resume)

    def _prepare(self, overwrite: bool, resume: bool) -> None:
        if self.remote is not None:
            self._prepare_remote(overwrite, resume)
            return
        if self.directory:
            existing = list(self.output.iterdir()) if self.output.is_dir() else []
            if existing and not (overwrite or resume):
                raise InputError(
                    f"Output directory {self.output} is not empty. Pass --resume to continue an interrupted job, "
                    "or --overwrite to replace it."
                )
            if overwrite and not resume:
                self.remove_outputs()
            self.output.mkdir(parents=True, exist_ok=True)
        else:
            refuse_existing(self.output, overwrite)
            self.output.parent.mkdir(parents=True, exist_ok=True)

    def _prepare_remote(self, overwrite: bool, resume: bool) -> None:
        """The same refusals as on a local disk; parts are spooled locally and uploaded whole on commit."""
        if self.directory:
            if self.remote.list_files() and not (overwrite or resume):
                raise InputError(
                    f"Output directory {self.output} is not empty. Pass --resume to continue an interrupted job, "
                    "or --overwrite to replace it."
                )
            if overwrite and not resume:
                self.remove_outputs()
        elif self.remote.exists() and not overwrite:
            raise InputError(f"Output {self.output} exists. Pass --overwrite to replace it.")
        self.spool = Path(tempfile.mkdtemp(prefix="bertbatch-spool-"))

    def _remote_sink(self, name: str, schema: pa.Schema) -> Sink:
        target = self.remote.child(name) if self.directory else self.remote
        local = self.spool / name.replace("/", "%2F")
        sink = SINKS[self.format](local, schema)

        def publish(path: Path) -> None:
            target.upload(path)  # visible in the store only once complete
            path.unlink()

        sink.publish = publish
        return sink

    def close_spool(self) -> None:
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)

    def open_file(self, relative: str, schema: pa.Schema) -> Sink:
        """A sink for one file at `relative` (`key=value/.../part-...`) inside the output directory."""
        if self.remote is not None:
            return self._remote_sink(relative, schema)
        *dirs, name = relative.split("/")
        folder = self.output
        for segment in dirs:
            if segment in ("", ".", "..") or "=" not in segment:
                raise InputError(f"Refusing to write {relative!r}: it escapes the output directory {self.output}.")
            folder = folder / segment
            if folder.is_symlink():
                raise InputError(f"Refusing to write through the symlink {folder} in the output directory.")
            folder.mkdir(exist_ok=True)
        path = folder / name
        for candidate in (path, path.with_name(f".{name}.tmp")):
            if candidate.is_symlink():
                raise InputError(f"Refusing to write through the symlink {candidate} in the output directory.")
        return SINKS[self.format](path, schema)

    def _child(self, name: str) -> Path:
        """A file directly inside the output root: never through '..' or a symlink placed there."""
        if "/" in name or name in ("", ".", ".."):
            raise InputError(f"Refusing to write {name!r}: it escapes the output directory {self.output}.")
        path = self.output / name
        for candidate in (path, path.with_name(f".{name}.tmp")):
            if candidate.is_symlink():
                raise InputError(f"Refusing to write through the symlink {candidate} in the output directory.")
        if path.resolve().parent != self.output.resolve():
            raise InputError(f"Refusing to write {name!r}: it escapes the output directory {self.output}.")
        return path

    def open(self, schema: pa.Schema, file_index: int = 0, chunk: int = 0) -> Sink:
        """A sink for part (file_index, chunk) of a directory, or for the one output file."""
        if self.stdout:
            if self.format == "jsonl":
                return JsonlSink(Path("-"), schema, stream=sys.stdout)
            return CsvSink(Path("-"), schema, stream=sys.stdout.buffer)
        if self.partition_by:
            return PartitionedSink(self, schema, part_name(file_index, chunk, self.format))
        if self.remote is not None:
            return self._remote_sink(part_name(file_index, chunk, self.format) if self.directory else self.remote.name,
                                     schema)
        if self.directory:
            path = self._child(part_name(file_index, chunk, self.format))
        else:
            path = self.output
        return SINKS[self.format](path, schema)

    def list_parts(self) -> list:
        if self.remote is not None:
            if not self.directory:
                return [self.remote]
            return [f for f in self.remote.list_files() if f.name.startswith("part-")]
        if self.partition_by:
            return sorted(self.output.glob("**/part-*"))
        return sorted(self.output.glob("part-*")) if self.directory else [self.output]

    @property
    def rejects_path(self) -> Path | Location | None:
        if self.stdout:
            return None
        if self.remote is not None:
            return self.remote.child("_rejects.csv") if self.directory else Location.of(self.remote.uri + ".rejects.csv")
        return self.output / "_rejects.csv" if self.directory else self.output.with_name(self.output.name + ".rejects.csv")

    def _part_rows(self, name: str) -> int | None:
        """Rows in a committed part (Parquet footer), None when it is missing; -1 for text formats."""
        if self.remote is not None:
            part = self.remote.child(name)
            if not part.exists():
                return None
            return pq.ParquetFile(part.open_input_file()).metadata.num_rows if self.format == "parquet" else -1
        path = self.output / name
        if not path.exists():
            return None
        return pq.ParquetFile(path).metadata.num_rows if self.format == "parquet" else -1

    def verify_parts(self, parts: list[dict]) -> int:
        """Rows in the committed part files, checked against the manifest (Parquet footers are read)."""
        total = 0
        for part in parts:
            for name, rows in (part.get("files") or {part["name"]: part["rows"]}).items():
                path = f"{self.output}/{name}"
                on_disk = self._part_rows(name)
                if on_disk is None:
                    raise InputError(f"Part {path} is listed in the manifest but missing; rerun with --overwrite.")
                if on_disk >= 0 and on_disk != rows:
                    raise InputError(f"Row conservation failed: {path} holds {on_disk} rows, manifest says {rows}.")
            total += part["rows"]
        return total

    def finish(self, rejects: list[dict], job, totals: dict) -> None:
        """Rejects file, then the final manifest, then `_SUCCESS`: the last things a job writes."""
        if self.stdout:
            return
        if rejects:
            write_csv_atomic(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), self.rejects_path)
        if job is not None:
            job.finish({k: totals[k] for k in ("rows_in", "rows_written", "rows_rejected", "rows_with_error")})
        if self.directory:
            if self.remote is not None:
                self.remote.child("_SUCCESS").write_bytes(b"")
            else:
                (self.output / "_SUCCESS").write_text("")
        self.close_spool()

    def remove_outputs(self) -> None:
        """Remove what bertbatch writes in the output directory (and nothing else)."""
        if self.remote is not None:
            if self.directory:
                for found in self.remote.list_files():
                    if _ours(found.relative_to(self.remote)):
                        found.delete()
            return
        if self.directory and self.output.is_dir():
            for path in self.output.iterdir():
                if (path.is_file() or path.is_symlink()) and path.name.startswith(OURS):
                    path.unlink()
                elif path.is_dir() and not path.is_symlink() and "=" in path.name:
                    _remove_partition_dir(path)


def _remove_partition_dir(folder: Path) -> None:
    """Parts inside a `key=value` directory (recursively), then the directory if that left it empty."""
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink() and "=" in path.name:
            _remove_partition_dir(path)
        elif (path.is_file() or path.is_symlink()) and path.name.startswith(("part-", ".part-")):
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


# ------------------------------------------------------------------------------------------ Hive partitions
_SAFE = " -_.~+,;@!$&()"  # kept as is; '/', '=', '%', ':' and the rest are percent-encoded, as Hive does


def hive_segment(key: str, value: str | None) -> str:
    """`key=value` as Hive, Spark and DuckDB write it: percent-encoded; null and '' as __HIVE_DEFAULT_PARTITION__."""
    from urllib.parse import quote

    return f"{quote(key, safe=_SAFE)}={HIVE_NULL if value in (None, '') else quote(value, safe=_SAFE)}"


class PartitionedSink:
    """One part of a `--partition-by` job: one file per partition value (`k=v/.../part-FFFFF-CCCCC.ext`, the
    partition columns in the path, not in the file), rows in input order. Each file is committed atomically;
    the part is recorded in the manifest only after all of them."""

    def __init__(self, layout: "OutputLayout", schema: pa.Schema, name: str):
        self.layout, self.name, self.keys = layout, name, layout.partition_by
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
            relative = "/".join(hive_segment(k, v) for k, v in zip(self.keys, key)) + "/" + self.name
            if relative not in self.sinks:
                self.sinks[relative] = self.layout.open_file(relative, self.file_schema)
            self.sinks[relative].write(data.take(pa.array(rows, pa.int64())))
        self.rows += batch.num_rows

    @property
    def files(self) -> dict[str, int]:
        return {relative: sink.rows for relative, sink in self.sinks.items()}

    def commit(self) -> None:
        for sink in self.sinks.values():
            sink.commit()

    def abort(self) -> None:
        for sink in self.sinks.values():
            sink.abort()


# -------------------------------------------------------------------------------------- parts and the manifest
class Writer:
    """Owns the open sink: switches parts, commits them, records them in the job manifest."""

    def __init__(self, layout: OutputLayout, job: Job | None, kept: pa.Schema, scorer: Scorer, config, metadata):
        self.layout, self.job, self.config = layout, job, config
        self.schema = output_schema(kept, scorer.model.labels, scorer.model.multi_label, config).with_metadata(metadata)
        self.sink = self.key = None
        self.rows_this_run = self.real = self.padded = self.errors = self.part_errors = 0
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
        self.sink.write(out.cast(self.schema) if out.schema != self.schema else out)
        self.rows_this_run += out.num_rows
        self.real += result.real_tokens
        self.padded += result.padded_tokens
        errors = sum(e is not None for e in result.errors)
        self.errors += errors
        self.part_errors += errors

    def _new_rejects(self, rejects) -> list[dict]:
        if rejects is None:
            return []
        fresh = [r for r in rejects.rows[self.rejects_taken:] if (r["file"], r["where"]) not in self.known_rejects]
        self.rejects_taken = len(rejects.rows)
        return fresh

    def _commit(self, rejects, last: bool) -> None:
        sink, (index, chunk) = self.sink, self.key
        sink.commit()
        self.sink = self.key = None
        if self.job:
            self.job.record(sink.path.name, index, chunk, sink.rows, self.part_errors, self._new_rejects(rejects), last,
                            files=getattr(sink, "files", None))
        self.part_errors = 0

    def close(self, rejects, expected_rows: int | None) -> dict:
        if self.sink is not None:
            self._commit(rejects, last=True)
        elif self.key is None and not self.layout.directory and self.rows_this_run == 0:
            self.layout.open(self.schema, 0, 0).commit()  # no rows at all: a header-only output, full schema
        if self.job:
            self._new_rejects(rejects)
            all_rejects = self.job.all_rejects()
            written = self.layout.verify_parts(self.job.state["parts"])
            self.errors = self.job.errors()
        else:
            all_rejects = self._new_rejects(rejects)
            written = self.rows_this_run
        rows_in = written + len(all_rejects)
        if expected_rows is not None and rows_in != expected_rows:
            raise InputError(f"Row conservation failed: the inputs hold {expected_rows} rows, {rows_in} were accounted for.")
        totals = {"rows_in": rows_in, "rows_written": written, "rows_rejected": len(all_rejects),
                  "rows_with_error": self.errors, "rows_this_run": self.rows_this_run,
                  "real_tokens": self.real, "padded_tokens": self.padded}
        self.layout.finish(all_rejects, self.job, totals)
        return totals

    def abort(self) -> None:
        try:
            if self.sink is not None:
                self.sink.abort()
                self.sink = None
        finally:
            self.layout.close_spool()
