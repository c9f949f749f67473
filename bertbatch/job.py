"""The resume manifest of a directory job: what was asked (fingerprint) and which parts are committed.

`OUT/_manifest.json` is rewritten atomically after every committed part, so after a crash it lists exactly
the parts that are complete on disk (a part renamed into place but not yet listed is simply redone, and
its deterministic name means the retry overwrites it). `_SUCCESS` follows the final manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .config import ScoreConfig
from .errors import InputError
from .manifest import write_json_atomic
from .storage import Location

MANIFEST = "_manifest.json"
# Options that change what lands in the output (values, columns, part boundaries or batch composition).
RESULT_OPTIONS = (
    "text_column", "text_pair_column", "keep", "max_length", "probs", "top_k", "logits", "threshold", "long_text",
    "stride", "aggregate", "output_format", "on_bad_rows", "rows_per_part", "max_tokens", "max_batch_rows",
    "window_rows", "partition_by",
)


def fingerprint(files: list, model_hash: str, graph: str, provider: str, config: ScoreConfig, fmt: str) -> dict:
    options = {k: v for k, v in asdict(config).items() if k in RESULT_OPTIONS}
    options["keep"] = list(options["keep"]) if options["keep"] is not None else None
    options["partition_by"] = list(options["partition_by"]) if options["partition_by"] is not None else None
    options["output_format"] = fmt
    inputs = [f.identity() for f in files]  # path (or URI), size, modification time
    return {"inputs": inputs, "model_hash": model_hash, "graph": graph, "provider": provider, "options": options}


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    if [i["path"] for i in old["inputs"]] != [i["path"] for i in new["inputs"]]:
        diffs.append("the input files")
    elif old["inputs"] != new["inputs"]:
        changed = [n["path"] for o, n in zip(old["inputs"], new["inputs"]) if o != n]
        diffs.append(f"input file contents (size/mtime of {changed[:3]})")
    for key in ("model_hash", "graph", "provider"):
        if old[key] != new[key]:
            diffs.append(f"{key} ({old[key]} -> {new[key]})")
    for key, value in new["options"].items():
        if old["options"].get(key) != value:
            diffs.append(f"--{key.replace('_', '-')} ({old['options'].get(key)} -> {value})")
    return diffs


def _read_manifest(root) -> str | None:
    if isinstance(root, Location):
        manifest = root.child(MANIFEST)
        return manifest.read_bytes().decode() if manifest.exists() else None
    path = root / MANIFEST
    return path.read_text() if path.exists() else None


class Job:
    """Committed parts of one directory job; load/verify for --resume, record after each part commit."""

    def __init__(self, root: Path, fingerprint: dict, state: dict | None = None):
        self.root = root
        self.fingerprint = fingerprint
        self.state = state or {"parts": [], "files_done": [], "complete": False}

    @classmethod
    def start(cls, root: Path, fp: dict, resume: bool) -> "Job":
        text = _read_manifest(root)
        if not resume or text is None:
            job = cls(root, fp)
            job.save()
            return job
        saved = json.loads(text)
        diffs = _differences(saved["fingerprint"], fp)
        if diffs:
            raise InputError(
                f"Cannot resume {root}: {', '.join(diffs)} differ from the interrupted run. "
                "Restore them, or start again with --overwrite."
            )
        return cls(root, fp, saved["state"])

    def save(self) -> None:
        payload = {"fingerprint": self.fingerprint, "state": self.state}
        if isinstance(self.root, Location):  # a store: one upload, visible whole when it completes
            self.root.child(MANIFEST).write_bytes((json.dumps(payload, indent=2, default=str) + "\n").encode())
        else:
            write_json_atomic(self.root / MANIFEST, payload)

    @property
    def complete(self) -> bool:
        return self.state["complete"]

    def rows_done(self, file_index: int) -> int:
        return sum(p["rows"] for p in self.state["parts"] if p["file_index"] == file_index)

    def file_done(self, file_index: int) -> bool:
        return file_index in self.state["files_done"]

    def reject_keys(self) -> set:
        return {(r["file"], r["where"]) for p in self.state["parts"] for r in p["rejects"]}

    def record(self, name: str, file_index: int, chunk: int, rows: int, errors: int, rejects: list[dict],
               last: bool, files: dict[str, int] | None = None) -> None:
        parts = [p for p in self.state["parts"] if p["name"] != name]  # a retried part replaces its entry
        start = sum(p["rows"] for p in parts if p["file_index"] == file_index)
        entry = {"name": name, "file_index": file_index, "chunk": chunk, "row_start": start,
                 "row_end": start + rows, "rows": rows, "errors": errors, "rejects": rejects}
        if files is not None:  # --partition-by: the part is one file per partition, {relative name: rows}
            entry["files"] = files
        parts.append(entry)
        self.state["parts"] = parts
        if last:
            self.mark_file_done(file_index, save=False)
        self.save()

    def mark_file_done(self, file_index: int, save: bool = True) -> None:
        self.state["files_done"] = sorted(set(self.state["files_done"]) | {file_index})
        if save:
            self.save()

    def finish(self, totals: dict) -> None:
        self.state.update(totals, complete=True)
        self.save()

    def errors(self) -> int:
        return sum(p["errors"] for p in self.state["parts"])

    def all_rejects(self) -> list[dict]:
        return [r for p in sorted(self.state["parts"], key=lambda p: p["name"]) for r in p["rejects"]]
