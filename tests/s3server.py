"""A real S3-protocol server for tests: moto in server mode, a separate process on 127.0.0.1.

The suite talks to it over HTTP exactly as to a store (pyarrow's S3 client, the CLI in a subprocess); nothing
is mocked in-process. Started once per session, stopped by its own PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from urllib.request import urlopen

import pytest

# Dummy credentials for the local server, given the way a real deployment gives them: the environment.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bertbatch-test-key", "AWS_SECRET_ACCESS_KEY": "bertbatch-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    def __init__(self, log_path):
        pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start; see {log_path}") from None
                time.sleep(0.2)

    @property
    def env(self) -> dict:
        """What a process needs to reach this server: the standard AWS variables, nothing bertbatch-specific."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        name = f"bb-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3server") / "moto.log")
    yield server
    server.stop()


class Bucket:
    """A fresh bucket on the server: URIs into it, and a plain S3 client's view of it (to check the store)."""

    def __init__(self, server: S3Server):
        self.server = server
        self.name = server.new_bucket()
        self.env = server.env

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.name, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.name, Key=key)["Body"].read()

    def listing(self, prefix: str = "") -> dict[str, tuple[int, str, object]]:
        """key -> (size, ETag, LastModified) of every object under `prefix`; not the empty `dir/` markers
        pyarrow's S3 client leaves when it deletes a directory's last file (no reader takes them for data)."""
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return {o["Key"]: (o["Size"], o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])
                if not (o["Key"].endswith("/") and o["Size"] == 0)}

    def upload_dir(self, local, prefix: str) -> None:
        from pathlib import Path

        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())


@pytest.fixture
def s3(s3_server, monkeypatch) -> Bucket:
    """A fresh bucket, with this process's environment pointed at the server as a user's shell would be."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return Bucket(s3_server)
