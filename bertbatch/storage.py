"""Where bytes live: a local path or a store URI, behind one pyarrow FileSystem.

`s3://`, `gs://`, `abfs://`, `hdfs://` (and `file://`) go through pyarrow.fs; any other scheme fsspec knows
(`memory://`, `az://`, ...) through fsspec, wrapped as a pyarrow FileSystem. Credentials come from each store's
own chain (environment, config files, instance roles): a URI that carries them is refused, because paths end up
in logs, summaries and job manifests.

Object stores have no rename. A file is published by one upload that the store makes visible only when it is
complete (a single PUT, or a multipart upload completed on close; a process killed mid-upload leaves nothing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
from pyarrow import fs as pafs

from .errors import InputError, ModelError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Query keys that carry secrets in pyarrow's and fsspec's URI forms (lower case).
SECRET_KEYS = ("access_key", "secret_key", "session_token", "account_key", "sas_token", "password", "secret",
               "token", "credential", "sig", "key")


def is_uri(target) -> bool:
    """A `scheme://` URI other than `file://` (local paths stay paths)."""
    match = _SCHEME.match(str(target)) if isinstance(target, str) else None
    return bool(match) and match.group(1).lower() != "file"


def local_file_path(target):
    """A `file://` URI as the local path it names (`file:///data/x.parquet` -> `/data/x.parquet`, `file:/x`
    -> `/x`); anything else unchanged. Outputs, inputs and model directories all take it."""
    text = str(target) if isinstance(target, (str, Path)) else None
    if text is None or not text.lower().startswith("file:"):
        return target
    from urllib.parse import unquote

    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"{text}: a file:// URI names a path on this machine (file:///path); "
                         f"got the host {parts.netloc!r}.")
    return unquote(parts.path)


def check_no_credentials(uri: str) -> None:
    """Refuse a URI with a user/password or a secret query parameter, naming neither."""
    parts = urlsplit(uri)
    secret = [k for k, _ in parse_qsl(parts.query) if k.lower() in SECRET_KEYS]
    if ":" in parts.netloc.rpartition("@")[0]:  # user:password@ (abfs's container@account has no colon)
        secret.append("user:password@")
    if secret:
        safe = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
        raise InputError(
            f"{safe}: the URI carries credentials ({', '.join(secret)}); they would end up in logs and manifests. "
            "Give them through the store's own chain instead (environment variables such as AWS_ACCESS_KEY_ID, "
            "config files such as ~/.aws/credentials, or an instance role)."
        )


@functools.lru_cache(maxsize=32)
def _filesystem(base: str) -> pafs.FileSystem:
    """One FileSystem per scheme + authority + query (S3 clients and region look-ups are not free)."""
    try:
        return pafs.FileSystem.from_uri(base)[0]
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise InputError(f"{base}: {exc}") from None
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{base}: pyarrow does not know this scheme and fsspec is not installed.") from None
    try:
        store = fsspec.core.url_to_fs(base)[0]
    except (ImportError, ValueError) as exc:  # fsspec names the package that brings the scheme
        raise InputError(f"{base}: no filesystem for this scheme ({exc}).") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(store))


def _split(uri: str) -> tuple[pafs.FileSystem, str]:
    check_no_credentials(uri)
    parts = urlsplit(uri)
    base = f"{parts.scheme}://{parts.netloc}/" + (f"?{parts.query}" if parts.query else "")
    filesystem = _filesystem(base)
    if isinstance(filesystem, pafs.PyFileSystem):  # fsspec: its own path form (memory: '/bucket/x')
        import fsspec

        return filesystem, fsspec.core.url_to_fs(uri.split("?")[0])[1]
    return filesystem, _native_path(parts)


def _native_path(parts) -> str:
    """pyarrow's path inside the FileSystem: 'bucket/key' (s3, gs), 'container/key' (abfs), '/x' (hdfs)."""
    if parts.scheme in ("hdfs", "viewfs"):
        return parts.path
    if parts.scheme in ("abfs", "abfss"):
        return (parts.netloc.split("@")[0] + parts.path).rstrip("/")
    return (parts.netloc + parts.path).rstrip("/")


@dataclass(frozen=True)
class Location:
    """A file or directory: its FileSystem, its path there, and the URI a person wrote (used in messages)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(cls, target: "str | Path | Location") -> "Location":
        if isinstance(target, Location):
            return target
        text = str(target)
        if is_uri(text):
            filesystem, path = _split(text)
            return cls(filesystem, path, text.split("?")[0].rstrip("/"))
        if text.startswith("file://"):
            text = urlsplit(text).path
        path = Path(text).absolute()
        return cls(pafs.LocalFileSystem(), str(path), str(target))

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, relative: str) -> "Location":
        return self.child(relative)

    def child(self, relative: str) -> "Location":
        relative = relative.strip("/")
        return Location(self.fs, f"{self.path.rstrip('/')}/{relative}", f"{self.uri.rstrip('/')}/{relative}")

    def relative_to(self, root: "Location") -> str:
        return self.path[len(root.path.rstrip("/")) + 1:]

    # -- inspecting
    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise InputError(f"{self}: cannot reach the store: {exc}") from None

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def list_files(self) -> list["Location"]:
        """Every file under this directory (recursive), sorted by path."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise InputError(f"{self}: cannot list: {exc}") from None
        found = sorted(i.path for i in infos if i.type == pafs.FileType.File)
        return [self.child(p[len(self.path.rstrip("/")) + 1:]) for p in found]

    # -- reading
    def open_input_file(self):
        """Random access (Parquet footers)."""
        return self.fs.open_input_file(self.path)

    def open_input_stream(self):
        """Sequential, decompressed by suffix (.gz ...)."""
        return self.fs.open_input_stream(self.path, compression="detect")

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path, compression=None) as fh:
            return fh.read()

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path, compression=None) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    # -- publishing: visible whole or not at all
    def write_bytes(self, data: bytes) -> None:
        """Local disk: temp file + fsync + rename. Store: one upload, visible when it completes."""
        if self.local:
            _write_local_atomic(Path(self.path), data)
            return
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def upload(self, local_file: Path) -> None:
        """Publish a finished local file here. All its bytes go in one C++ call (an interrupt cannot land
        half-way: a stream closed early would complete a partial object), then the upload is completed."""
        if os.path.getsize(local_file) == 0:
            self.write_bytes(b"")
            return
        with pa.memory_map(str(local_file)) as source:
            data = source.read_buffer()
            with self.fs.open_output_stream(self.path) as out:
                out.write(data)

    def is_symlink(self) -> bool:  # the same questions as a local Path: a store has no links
        return False

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def unlink(self, missing_ok: bool = True) -> None:
        self.delete()

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass


def _write_local_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------- model directories
CACHE_STAMP = ".bertbatch-cache.json"


def local_model_dir(model_dir: "str | Path", cache_root: "str | Path | None" = None) -> Path:
    """A local path for a model directory: itself when local; for a URI, a cached copy, made once.

    The copy is reused while the store's listing (names, sizes, modification times) is unchanged and every
    cached file still has the SHA-256 it was downloaded with; every hash `bertbatch.json` records is checked
    against the downloaded bytes. A copy is built beside the cache and renamed into place whole."""
    if not is_uri(str(model_dir)):
        return Path(local_file_path(model_dir))
    if cache_root is None:
        cache_root = Path.home() / ".cache" / "bertbatch" / "models"
    source = Location.of(model_dir)
    files = {f.relative_to(source): f for f in source.list_files()}
    if "config.json" not in files:
        raise ModelError(f"{source} is not a model directory: config.json is missing.")
    listing = {rel: _stamp_of(f.info()) for rel, f in files.items()}
    cache_root = Path(cache_root)
    target = cache_root / hashlib.sha256(source.uri.encode()).hexdigest()[:24]
    if _cache_is_valid(target, source.uri, listing):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    hashes = {}
    for rel, remote in files.items():
        local = staging / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(remote.path, str(local), source_filesystem=remote.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        hashes[rel] = _sha256(local)
    _check_recorded_hashes(source, staging, hashes)
    stamp = {"uri": source.uri, "files": {rel: {**listing[rel], "sha256": hashes[rel]} for rel in files}}
    (staging / CACHE_STAMP).write_text(json.dumps(stamp, indent=2))
    if target.exists():  # a stale copy: moved aside whole, so no reader sees it half-removed
        trash = cache_root / f".{target.name}.old-{os.getpid()}"
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:  # another process put its copy in place first: use it if it is good
        shutil.rmtree(staging, ignore_errors=True)
        if not _cache_is_valid(target, source.uri, listing):
            raise ModelError(f"Cannot put the copy of {source} in place at {target}; remove it and run again.") from None
    return target


def _stamp_of(info: pafs.FileInfo) -> dict:
    return {"size": info.size, "mtime_ns": info.mtime_ns}


def _cache_is_valid(target: Path, uri: str, listing: dict) -> bool:
    stamp_file = target / CACHE_STAMP
    if not stamp_file.exists():
        return False
    stamp = json.loads(stamp_file.read_text())
    if stamp.get("uri") != uri or {k: {"size": v["size"], "mtime_ns": v["mtime_ns"]} for k, v in stamp["files"].items()} != listing:
        return False
    return all((target / rel).is_file() and _sha256(target / rel) == entry["sha256"] for rel, entry in stamp["files"].items())


def _check_recorded_hashes(source: Location, staging: Path, hashes: dict) -> None:
    """The graph and weight hashes bertbatch.json records must match the bytes that arrived."""
    from .modeldir import GRAPH_FILES

    manifest_file = staging / "bertbatch.json"
    if not manifest_file.exists():
        return
    manifest = json.loads(manifest_file.read_text())
    expected = {GRAPH_FILES[k]: v.get("sha256") for k, v in manifest.get("graphs", {}).items() if k in GRAPH_FILES}
    weights = manifest.get("train", {}).get("weights_hash")
    if weights:
        expected["model.safetensors"] = weights
    for rel, digest in expected.items():
        if digest and rel in hashes and hashes[rel] != digest:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelError(
                f"{source}/{rel}: SHA-256 {hashes[rel][:12]}... differs from {digest[:12]}... recorded in "
                "bertbatch.json; the store holds a changed or partial copy. Upload the model directory again."
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
