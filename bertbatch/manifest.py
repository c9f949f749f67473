"""`bertbatch.json`: the manifest each stage reads and extends (labels, max_length, hashes, metrics, graphs),
and the atomic file/directory writes the stages share."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import ModelError

MANIFEST = "bertbatch.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, payload: dict) -> None:
    """Write JSON through a temp file + rename so a reader never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def replace_dir(staging: Path, final: Path) -> None:
    """Put a finished directory in place of `final` (replaced whole if it exists), never half-written."""
    import shutil

    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        shutil.move(str(staging), final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        shutil.move(str(staging), final)


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        return {}
    return read_json_object(path)


def update_manifest(model_dir: str | Path, **sections) -> dict:
    """Merge top-level sections into the manifest and write it back atomically."""
    manifest = read_manifest(model_dir)
    manifest.update(sections)
    write_json_atomic(Path(model_dir) / MANIFEST, manifest)
    return manifest


def versions(*packages: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("bertbatch",) + packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_json_object(file: Path) -> dict:
    """A model file's JSON object; unreadable, truncated or not an object is a ModelError naming the file."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); restore it from the model's source or re-run the "
                         "stage that wrote it.") from None
    if not isinstance(value, dict):
        raise ModelError(f"{file} must hold a JSON object; got {type(value).__name__}.")
    return value
