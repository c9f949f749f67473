"""The job protocol of a directory output, and its manifest: what was asked (fingerprint), which parts are
committed, which files the job owns.

Every file a job writes goes the same way, through a few functions an object store could implement too:
`create_temp` (a name unique to this run, created exclusively, never through a link) → `publish` (fsync,
rename into place) → `Job.record` (the manifest lists it) → `_SUCCESS` last. `OUT/_manifest.json` is
rewritten atomically after every committed part, so after a crash it lists exactly the parts that are
complete on disk. A part about to be renamed is first listed as `pending`: one renamed but not yet recorded
is redone (its deterministic name means the retry replaces it), and it is still known to be bertbatch's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from .config import ScoreConfig
from .errors import InputError, OutputError, describe_os_error
from .manifest import sha256_file
from .storage import Location

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
REJECTS = "_rejects.csv"
LOCK = "_bertbatch.lock"
FIXED_NAMES = (MANIFEST, SUCCESS, REJECTS, LOCK)
# Options that change what lands in the output (values, columns, part boundaries or batch composition).
RESULT_OPTIONS = (
    "text_column", "text_pair_column", "keep", "max_length", "probs", "top_k", "logits", "embeddings", "threshold",
    "long_text", "calibration", "min_score",
    "stride", "aggregate", "output_format", "on_bad_rows", "rows_per_part", "max_tokens", "max_batch_rows",
    "window_rows", "partition_by", "partition_types", "truncation", "head_tokens",
)


# ------------------------------------------------------------------------------------------ file protocol
def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def temp_path(final: Path, run_id: str) -> Path:
    """`.NAME.RUN.tmp` beside `final`: unique to one run, so two runs never share a temp file, and
    attributable to the run that wrote it (the manifest lists its runs)."""
    return final.with_name(f".{final.name}.{run_id}.tmp")


def spool_dir(run_id: str) -> Path:
    """Where a run writes the files it will upload to a store (which has no rename): local, private to the run."""
    path = Path(tempfile.gettempdir()) / f"bertbatch-spool-{run_id}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def remove_spool(run_id: str) -> None:
    shutil.rmtree(Path(tempfile.gettempdir()) / f"bertbatch-spool-{run_id}", ignore_errors=True)


def create_temp(final: Path | Location, run_id: str):
    """(temp path, binary file) for `final`: created exclusively, never through a link planted there.

    For a file in a store the temp file is a local spool file; `publish` uploads it."""
    if isinstance(final, Location):
        tmp = spool_dir(run_id) / f"{uuid.uuid4().hex}-{final.name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        return tmp, os.fdopen(fd, "wb")
    tmp = temp_path(final, run_id)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, f"Cannot create the temp file for {final}")) from None
    return tmp, os.fdopen(fd, "wb")


def publish(tmp: Path, final: Path | Location) -> None:
    """Make a complete temp file visible under its final name: fsync, rename (replacing a link, never
    following it), fsync the directory so the rename survives a power loss.

    In a store (no rename): one upload that the store shows only once complete (a single PUT, or a multipart
    upload completed at its end; a process killed mid-upload leaves nothing under the name)."""
    if isinstance(final, Location):
        final.upload(tmp)
        tmp.unlink()
        return
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_atomic(final: Path, data: bytes, run_id: str) -> None:
    """A small file (manifest, rejects, `_SUCCESS`) through a temp file; the temp is removed on failure.
    In a store: one PUT."""
    if isinstance(final, Location):
        final.write_bytes(data)
        return
    tmp, fh = create_temp(final, run_id)
    try:
        with fh:
            fh.write(data)
        publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JobLock:
    """`OUT/_bertbatch.lock`, flock'ed while a job runs; it holds the PID of the holder. The OS releases the
    lock when the process dies (even by SIGKILL), so a crashed job never blocks its --resume."""

    def __init__(self, root: Path):
        path = root / LOCK
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, f"Cannot create the job lock of -o {root}")) from None
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise OutputError(
                f"Output directory {root} is in use by another bertbatch job (PID {holder}). Wait for it to "
                "finish, or write elsewhere with -o."
            ) from None
        pid = str(os.getpid()).encode()
        if os.pread(self.fd, 64, 0) != pid:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, pid, 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class StoreLock:
    """`_bertbatch.lock` in an object store: JSON naming the holder (host, PID, run). Stores reached through
    pyarrow offer neither an exclusive create nor a lock that dies with its process, so this is a
    check-then-write: it refuses a job held by a live process on this host or by another host (whose liveness
    it cannot see), and takes over the lock of a dead process on this host, so --resume after a kill works."""

    def __init__(self, root: Location, run_id: str):
        self.path, self.run_id = root / LOCK, run_id
        if self.path.exists():
            try:
                holder = json.loads(self.path.read_text())
            except ValueError:
                holder = {}
            if holder.get("host") != socket.gethostname():
                raise OutputError(
                    f"Output {root} is in use by a bertbatch job on host {holder.get('host', 'unknown')} (PID "
                    f"{holder.get('pid', 'unknown')}). Wait for it to finish; if that job is gone, delete {self.path}."
                )
            if _alive(holder.get("pid")):
                raise OutputError(f"Output directory {root} is in use by another bertbatch job (PID {holder['pid']}). "
                                  "Wait for it to finish, or write elsewhere with -o.")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "run": run_id}
        self.path.write_bytes(json.dumps(holder).encode())

    def release(self) -> None:
        if self.path is not None:
            try:
                if json.loads(self.path.read_text()).get("run") == self.run_id:
                    self.path.delete()
            except (OSError, ValueError):
                pass
            self.path = None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- fingerprint
def model_files_digest(model_root: Path, weights: Path | None) -> dict[str, str]:
    """sha256 of the model files that run, by path relative to the model directory: the graph (or the
    PyTorch weights), the tokenizer and config.json. Computed from the bytes on disk, never read from
    bertbatch.json, so a file replaced after export (or between a crash and --resume) is seen."""
    files = [weights] if weights is not None else []
    files += [model_root / "tokenizer.json", model_root / "config.json"]
    digest = {}
    for path in files:
        if path.is_file():
            try:
                name = str(path.resolve().relative_to(model_root.resolve()))
            except ValueError:
                name = str(path.resolve())
            digest[name] = sha256_file(path)
    return digest


def fingerprint(files: list[Path], model_files: dict[str, str], graph: str, provider: str, config: ScoreConfig,
                fmt: str, max_length: int, calibration: dict | None = None) -> dict:
    """What a resume must find unchanged: the inputs' bytes, the bytes of the model files that run, the
    graph, provider, and every option that changes results."""
    options = {k: v for k, v in asdict(config).items() if k in RESULT_OPTIONS}
    options["keep"] = list(options["keep"]) if options["keep"] is not None else None
    for key in ("partition_by", "partition_types"):
        options[key] = list(options[key]) if options[key] is not None else None
    options["output_format"] = fmt
    options["max_length"] = max_length  # resolved: the model's when not given
    options["threshold"] = config.decision_threshold  # resolved: 0.5 when not given
    inputs = [f.identity() for f in files]  # path or URI, size, mtime, sha256 of the bytes (source.InputFile)
    # the applied temperature(s): bertbatch.json is not among the model files hashed, and `calibrate` rewrites it
    return {"inputs": inputs, "model_files": model_files, "graph": graph, "provider": provider, "options": options,
            "calibration": calibration}


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    if [i["path"] for i in old["inputs"]] != [i["path"] for i in new["inputs"]]:
        diffs.append("the input files")
    elif old["inputs"] != new["inputs"]:
        changed = [n["path"] for o, n in zip(old["inputs"], new["inputs"]) if o != n]
        diffs.append(f"input file contents ({', '.join(changed[:3])})")
    if old.get("model_files") != new["model_files"]:
        changed = sorted(k for k in set(old.get("model_files", {})) | set(new["model_files"])
                         if old.get("model_files", {}).get(k) != new["model_files"].get(k))
        diffs.append(f"the model files that run ({', '.join(changed)})")
    for key in ("graph", "provider", "calibration"):
        if old.get(key) != new[key]:
            diffs.append(f"{key} ({old.get(key)} -> {new[key]})")
    for key, value in new["options"].items():
        if old["options"].get(key) != value:
            diffs.append(f"--{key.replace('_', '-')} ({old['options'].get(key)} -> {value})")
    return diffs


# ------------------------------------------------------------------------------------------------ manifest
def read_manifest(root: Path) -> dict | None:
    """The saved manifest of a job directory, or None when there is none."""
    path = root / MANIFEST
    if not path.is_file() or path.is_symlink():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path} is unreadable ({exc}); this is not a job bertbatch can continue. "
                          "Write elsewhere with -o.") from None


def owned_names(saved: dict | None) -> set[str]:
    """Every name a job's manifest accounts for: its parts (committed or pending), its fixed files."""
    names = set(FIXED_NAMES)
    if saved:
        state = saved.get("state", {})
        names |= {p["name"] for p in state.get("parts", [])} | set(state.get("pending", []))
        names |= {f for p in state.get("parts", []) for f in p.get("files", {})}  # --partition-by files
    return names


def owned_temp(name: str, saved: dict | None) -> bool:
    """A temp file left by one of this job's runs (`.NAME.RUN.tmp`), or of one of bertbatch's fixed files
    (a run killed while writing its first manifest is not listed yet)."""
    name = name.rsplit("/", 1)[-1]  # inside a partition directory
    if not (name.startswith(".") and name.endswith(".tmp")) or name.count(".") < 3:
        return False
    base, run = name[1:-4].rsplit(".", 1)
    return run in set((saved or {}).get("state", {}).get("runs", [])) or base in FIXED_NAMES


class Job:
    """Committed parts of one directory job; load/verify for --resume, record after each part commit."""

    def __init__(self, root: Path, fingerprint: dict, run_id: str, state: dict | None = None):
        self.root = root
        self.fingerprint = fingerprint
        self.run_id = run_id
        self.state = state or {"parts": [], "files_done": [], "complete": False, "runs": [], "pending": []}
        self.state.setdefault("runs", [])
        self.state.setdefault("pending", [])
        self.state["runs"].append(run_id)

    @classmethod
    def start(cls, root: Path, fp: dict, resume: bool, run_id: str, replaces: str | None = None) -> "Job":
        """`replaces`: a staged --overwrite names the last run of the job it replaces, so a swap cut short
        can tell the old job from the new one."""
        saved = read_manifest(root) if resume else None
        if saved is None:
            job = cls(root, fp, run_id)
            if replaces:
                job.state["replaces"] = replaces
            job.save()
            return job
        diffs = _differences(saved["fingerprint"], fp)
        if diffs:
            raise InputError(
                f"Cannot resume {root}: {', '.join(diffs)} differ from the interrupted run. "
                "Restore them, or start again with --overwrite."
            )
        job = cls(root, fp, run_id, saved["state"])
        if not job.complete:
            job.save()  # this run's id is listed before it writes any temp file
        return job

    def save(self) -> None:
        data = json.dumps({"fingerprint": self.fingerprint, "state": self.state}, indent=2, default=str) + "\n"
        write_atomic(self.root / MANIFEST, data.encode(), self.run_id)

    @property
    def complete(self) -> bool:
        return self.state["complete"]

    def rows_done(self, file_index: int) -> int:
        return sum(p["rows"] for p in self.state["parts"] if p["file_index"] == file_index)

    def file_done(self, file_index: int) -> bool:
        return file_index in self.state["files_done"]

    def reject_keys(self) -> set:
        return {(r["file"], r["where"]) for p in self.state["parts"] for r in p["rejects"]}

    def intend(self, name: str) -> None:
        """List `name` as pending before it is renamed into place: it is this job's even if never recorded."""
        if name not in self.state["pending"]:
            self.state["pending"].append(name)
            self.save()

    def record(self, name: str, file_index: int, chunk: int, rows: int, errors: int, rejects: list[dict],
               last: bool, files: dict[str, int] | None = None, sizes: dict[str, int] | None = None,
               abstained: int = 0) -> None:
        parts = [p for p in self.state["parts"] if p["name"] != name]  # a retried part replaces its entry
        start = sum(p["rows"] for p in parts if p["file_index"] == file_index)
        entry = {"name": name, "file_index": file_index, "chunk": chunk, "row_start": start,
                 "row_end": start + rows, "rows": rows, "errors": errors, "rejects": rejects,
                 "abstained": abstained}
        if files is not None:  # --partition-by: one file per partition, {relative name: rows}
            entry["files"] = files
        if sizes:  # bytes of each file at commit: --resume checks them (CSV and JSONL have no footer)
            entry["bytes"] = sizes
        parts.append(entry)
        self.state["parts"] = parts
        done = {name, *(files or {})}
        self.state["pending"] = [p for p in self.state["pending"] if p not in done]
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

    def abstained(self) -> int:
        """Rows written without a label for --min-score (parts recorded before it existed count none)."""
        return sum(p.get("abstained", 0) for p in self.state["parts"])

    def all_rejects(self) -> list[dict]:
        return [r for p in sorted(self.state["parts"], key=lambda p: p["name"]) for r in p["rejects"]]
