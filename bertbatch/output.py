"""Where scored rows go: one file, a directory of part files (`_manifest.json`, then `_SUCCESS` last), or stdout."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .io import OUTPUT_SUFFIX, REJECT_SCHEMA, SINKS, CsvSink, JsonlSink, Sink, write_csv_atomic

OURS = ("part-", "_SUCCESS", "_rejects.csv", "_manifest.json", ".part-", "._manifest.json")


class OutputLayout:
    """Decides file vs directory, refuses clobbering, output == input and escaping paths; names parts."""

    def __init__(self, output: str, fmt: str, inputs: list[Path], input_is_dir: bool, overwrite: bool,
                 resume: bool = False):
        self.stdout = output == "-"
        self.output = Path(output)
        self.format = fmt
        self.directory = not self.stdout and (input_is_dir or self.output.is_dir() or self.output.suffix == "")
        if resume and not self.directory:
            raise InputError("--resume needs a directory output (an -o path without a file suffix).")
        if not self.stdout:
            self._refuse_input_overlap(inputs)
            self._prepare(overwrite, resume)

    def _refuse_input_overlap(self, inputs: list[Path]) -> None:
        out = self.output.resolve()
        for path in inputs:
            src = path.resolve()
            if src == out or out in src.parents or (self.directory and src.parent == out):
                raise InputError(f"Output {self.output} would overwrite the input {path}; choose another -o path.")

    def _prepare(self, overwrite: bool, resume: bool) -> None:
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
            if self.output.exists() and not overwrite:
                raise InputError(f"Output {self.output} exists. Pass --overwrite to replace it.")
            self.output.parent.mkdir(parents=True, exist_ok=True)

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
        if self.directory:
            path = self._child(f"part-{file_index:05d}-{chunk:05d}{OUTPUT_SUFFIX[self.format]}")
        else:
            path = self.output
        return SINKS[self.format](path, schema)

    def list_parts(self) -> list[Path]:
        return sorted(self.output.glob("part-*")) if self.directory else [self.output]

    @property
    def rejects_path(self) -> Path | None:
        if self.stdout:
            return None
        return self.output / "_rejects.csv" if self.directory else self.output.with_name(self.output.name + ".rejects.csv")

    def verify_parts(self, parts: list[dict]) -> int:
        """Rows in the committed part files, checked against the manifest (Parquet footers are read)."""
        total = 0
        for part in parts:
            path = self.output / part["name"]
            if not path.exists():
                raise InputError(f"Part {path} is listed in the manifest but missing; rerun with --overwrite.")
            if self.format == "parquet":
                on_disk = pq.ParquetFile(path).metadata.num_rows
                if on_disk != part["rows"]:
                    raise InputError(f"Row conservation failed: {path} holds {on_disk} rows, manifest says {part['rows']}.")
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
            (self.output / "_SUCCESS").write_text("")

    def remove_outputs(self) -> None:
        """Remove what bertbatch writes in the output directory (and nothing else)."""
        if self.directory and self.output.is_dir():
            for path in self.output.iterdir():
                if (path.is_file() or path.is_symlink()) and path.name.startswith(OURS):
                    path.unlink()
