"""Where scored rows go: one file, a directory of part files with `_SUCCESS` last, or stdout."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa

from .errors import InputError
from .io import OUTPUT_SUFFIX, SINKS, JsonlSink, Rejects, Sink, StdoutCsvSink

OURS = ("part-", "_SUCCESS", "_rejects.csv", "_manifest.json", ".part-")


class OutputLayout:
    """Decides file vs directory, refuses clobbering and output == input, names parts deterministically."""

    def __init__(self, output: str, fmt: str, inputs: list[Path], input_is_dir: bool, overwrite: bool,
                 rows_per_part: int):
        self.stdout = output == "-"
        self.output = Path(output)
        self.format = fmt
        self.rows_per_part = rows_per_part
        self.directory = not self.stdout and (input_is_dir or self.output.is_dir() or self.output.suffix == "")
        self.parts: list[Path] = []
        self._index = 0
        if not self.stdout:
            self._refuse_input_overlap(inputs)
            self._prepare(overwrite)

    def _refuse_input_overlap(self, inputs: list[Path]) -> None:
        out = self.output.resolve()
        for path in inputs:
            src = path.resolve()
            if src == out or out in src.parents or (self.directory and src.parent == out):
                raise InputError(f"Output {self.output} would overwrite the input {path}; choose another -o path.")

    def _prepare(self, overwrite: bool) -> None:
        if self.directory:
            existing = [p for p in self.output.iterdir()] if self.output.is_dir() else []
            if existing and not overwrite:
                raise InputError(f"Output directory {self.output} is not empty. Pass --overwrite to replace it.")
            for p in existing:
                if p.is_file() and p.name.startswith(OURS):
                    p.unlink()
            self.output.mkdir(parents=True, exist_ok=True)
        else:
            if self.output.exists() and not overwrite:
                raise InputError(f"Output {self.output} exists. Pass --overwrite to replace it.")
            self.output.parent.mkdir(parents=True, exist_ok=True)

    def open(self, schema: pa.Schema) -> Sink:
        """A sink for the next part (directory) or the one output file."""
        if self.stdout:
            stream = sys.stdout.buffer
            if self.format == "jsonl":
                return JsonlSink(Path("-"), schema, stream=sys.stdout)
            return StdoutCsvSink(schema, stream)
        if self.directory:
            path = self.output / f"part-{self._index:05d}{OUTPUT_SUFFIX[self.format]}"
            self._index += 1
        else:
            path = self.output
        self.parts.append(path)
        return SINKS[self.format](path, schema)

    @property
    def rejects_path(self) -> Path | None:
        if self.stdout:
            return None
        return self.output / "_rejects.csv" if self.directory else self.output.with_name(self.output.name + ".rejects.csv")

    def finish(self, rejects: Rejects) -> None:
        if self.stdout:
            return
        if len(rejects) and self.rejects_path is not None:
            rejects.write(self.rejects_path)
        if self.directory:
            (self.output / "_SUCCESS").write_text("")

    def cleanup_failed(self) -> None:
        """A failed fresh run leaves nothing under final names: remove the parts it committed."""
        for path in self.parts:
            if self.directory:
                path.unlink(missing_ok=True)
