"""A real Spark standalone cluster on 127.0.0.1, started from the installed pyspark: one master, N workers.

Each daemon is a child process started here and stopped by its own PID. Web UIs bind to port 0 (any free
port), every worker has 1 core and 1g for executors, and each has its own work directory (where its executors
fetch and unpack what the job ships). Used by tests/test_spark_cluster.py and benchmarks/bench_spark.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandaloneCluster:
    """`with StandaloneCluster(tmp, workers=2) as cluster:` -> cluster.url is spark://127.0.0.1:PORT."""

    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "1g", timeout: float = 120,
                 env: dict | None = None, worker_cpus: set[int] | None = None):
        self.root, self.cores, self.memory, self.timeout = Path(root), cores, memory, timeout
        # CPU affinity of the worker JVMs, inherited by their executors and Python workers: a node with fewer
        # CPUs than the driver's, so a different machine signature (tune records are per signature)
        self.worker_cpus = worker_cpus
        self.extra_env = dict(env or {})  # e.g. PYTHONPATH: executors' Python workers inherit the worker's env
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen | None] = [None] * workers
        self._logs: dict[int, Path] = {}

    # ------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> StandaloneCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.master = self._daemon("master", [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(self.port),
                                              "--webui-port", "0"])
        self._wait_for(self.master, r"I have been elected leader|Starting Spark master at")
        for index in range(len(self.workers)):
            self.start_worker(index)

    def start_worker(self, index: int) -> subprocess.Popen:
        work = self.root / f"worker{index}"
        work.mkdir(exist_ok=True)
        worker = self._daemon(f"worker{index}", [
            WORKER_CLASS, self.url, "--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
            "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(work),
        ], cpus=self.worker_cpus)
        self.workers[index] = worker
        self._wait_for(worker, r"Successfully registered with master")
        return worker

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker JVM (its executor exits when it loses the worker, as on a crashed node)."""
        worker = self.workers[index]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)

    def work_dir(self, index: int) -> Path:
        return self.root / f"worker{index}"

    def stop(self) -> None:
        for process in [*self.workers, self.master]:
            if process is not None and process.poll() is None:
                process.terminate()  # workers stop their executors on SIGTERM
        for process in [*self.workers, self.master]:
            if process is not None:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)

    # --------------------------------------------------------------------------------------------- helpers
    def _env(self) -> dict:
        conf = self.root / "conf"  # an empty conf dir: no spark-defaults.conf from the machine
        conf.mkdir(exist_ok=True)
        return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
                "SPARK_CONF_DIR": str(conf), "SPARK_HOME": str(spark_home()), "SPARK_NO_DAEMONIZE": "1",
                **self.extra_env}

    def _daemon(self, name: str, args: list[str], cpus: set[int] | None = None) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with open(log, "ab") as out:
            process = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], stdout=out,
                                       stderr=subprocess.STDOUT, env=self._env(), start_new_session=True,
                                       preexec_fn=pin)
        self._logs[process.pid] = log
        return process

    def _wait_for(self, process: subprocess.Popen, pattern: str) -> None:
        log, deadline = self._logs[process.pid], time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if re.search(pattern, text):
                return
            if process.poll() is not None:
                raise RuntimeError(f"Spark daemon exited with {process.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"Spark daemon not ready after {self.timeout}s; see {log}")
