"""A real Ray cluster on 127.0.0.1, started from the installed Ray: a head and worker nodes, 1 CPU each.

Each node is a `ray start --block` child process (it starts, and on SIGTERM stops, that node's GCS, raylet and
workers), stopped by its own PID; what a node's processes leave behind is killed by PID too. Every node is
pinned to loopback with `--node-ip-address=127.0.0.1`. Ray turns "127.0.0.1" or "localhost" in an address into
the machine's interface address (services.resolve_ip_for_localhost) and connects there, unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which the head and drivers get; `ray start --address` refuses to join a
cluster with that setting, and turns `--node-ip-address=127.0.0.1` into the interface address too, so worker
nodes join, and name themselves, with this machine's host name when it resolves to loopback (as /etc/hosts makes
it on most Linux machines and containers): a name Ray leaves as it is.
`connections()` lists the remote addresses of every socket the nodes' processes hold. Used by
tests/test_ray.py and benchmarks/bench_engines.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 as given (ray_constants.ENABLE_RAY_CLUSTER)
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_agent_register_timeout_ms": "120000",  # agents that start slowly on a loaded machine  # no usage report leaves the machine
    # a killed node is declared dead in ~3 s rather than ~30 s
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_name() -> str:
    """This machine's host name when it resolves to a loopback address (else RuntimeError)."""
    import ipaddress

    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError as exc:
        raise RuntimeError(f"the host name {name} does not resolve ({exc})") from None
    if not ipaddress.ip_address(address).is_loopback:
        raise RuntimeError(f"the host name {name} resolves to {address}, not to loopback")
    return name


def ray_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(LOOPBACK_ENV, **extra)
    return env


class RayCluster:
    """`with RayCluster(workers=1) as cluster:` -> cluster.address is 127.0.0.1:PORT."""

    def __init__(self, workers: int = 1, cpus: int = 1, env: dict | None = None, timeout: float = 180):
        self.cpus, self.timeout = cpus, timeout
        self.env = ray_env(**(env or {}))
        # Ray's socket paths must stay under ~107 characters: a short directory of our own, not pytest's tmp_path
        self.root = Path(tempfile.mkdtemp(prefix="bbray-", dir="/tmp"))
        (self.root / "tmp").mkdir()
        self.env["TMPDIR"] = str(self.root / "tmp")  # where workers unpack shipped models: removed with the cluster
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen | None] = []
        self.workers = workers
        self._pids: dict[int, float] = {}  # pid -> create time: a pid reused by another process is never killed

    def __enter__(self) -> RayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.head = self._start(["--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--temp-dir={self.root / 'ray'}"], "head")
        for _ in range(self.workers):
            self.add_worker()

    def add_worker(self, python: str | None = None, env: dict | None = None) -> int:
        """Start one more node (with `python`'s Ray, and `env` on top of the cluster's); its index."""
        index = len(self.nodes)
        joining = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", **(env or {})}
        name = loopback_name()  # for the address to join and the node's own address: Ray leaves a name as it is
        self.nodes.append(self._start([f"--address={name}:{self.port}", f"--node-ip-address={name}"], f"worker{index}",
                                      python, joining))
        return index

    def _start(self, args: list[str], name: str, python: str | None = None, env: dict | None = None,
               attempts: int = 3):
        """A node, started again (up to `attempts` times) when it fails to start: a raylet waits a fixed ~15 s
        for its dashboard agent (a Python process) to report a port, which a loaded 2-core machine can miss."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(args, f"{name}-{attempt}", python, env)
            except RuntimeError:
                if attempt == attempts:
                    raise

    def _start_once(self, args: list[str], name: str, python: str | None, env: dict | None):
        ip = [] if any(a.startswith("--node-ip-address") for a in args) else ["--node-ip-address=127.0.0.1"]
        command = [python or sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--block",
                   *ip, f"--num-cpus={self.cpus}", "--num-gpus=0", "--disable-usage-stats",
                   f"--object-store-memory={150 * 2**20}",
                   # fixed ports: with 0 (any) the raylet waits only ~15 s for its agents to report theirs, too
                   # short for a Python to start on a loaded 2-core machine
                   *(f"--{name}={free_port()}" for name in (
                       "node-manager-port", "object-manager-port", "runtime-env-agent-port",
                       "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port")),
                   *args]
        log = open(self.root / f"{name}.log", "w")
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                start_new_session=True)
        deadline = time.monotonic() + self.timeout
        try:
            while "Ray runtime started" not in (self.root / f"{name}.log").read_text():
                if node.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray {name} did not start:\n{(self.root / f'{name}.log').read_text()[-1500:]}\n"
                                       f"{self._raylet_log()}")
                time.sleep(0.2)
        except BaseException:  # not started, or interrupted while starting: stop what it started
            self._stop(node)
            raise
        self._remember(node)
        return node

    def _raylet_log(self) -> str:
        """The raylets' own account of a failed start (their fatal lines), for the error message."""
        lines = []
        for log in (self.root / "ray").glob("session_*/logs/raylet*.out"):
            lines += [l for l in log.read_text(errors="replace").splitlines() if " C " in l or " E " in l]
        return "\n".join(lines[-10:])

    def _remember(self, node: subprocess.Popen) -> None:
        try:
            for proc in psutil.Process(node.pid).children(recursive=True):
                self._pids[proc.pid] = proc.create_time()
        except psutil.NoSuchProcess:
            pass

    def processes(self) -> list[psutil.Process]:
        """Every live process of the nodes (the `ray start` processes, GCS, raylets, workers)."""
        found = {}
        for node in [self.head, *self.nodes]:
            if node is None or node.poll() is not None:
                continue
            try:
                parent = psutil.Process(node.pid)
                for proc in [parent, *parent.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
        for proc in found.values():
            try:
                self._pids[proc.pid] = proc.create_time()
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def connections(self) -> list[tuple[int, str, str]]:
        """(pid, local address, remote address) of every inet socket the nodes' processes hold."""
        out = []
        for proc in self.processes():
            try:
                for conn in proc.net_connections(kind="inet"):
                    local = f"{conn.laddr.ip}:{conn.laddr.port}" if conn.laddr else ""
                    remote = f"{conn.raddr.ip}:{conn.raddr.port}" if conn.raddr else ""
                    out.append((proc.pid, local, remote))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def kill_worker(self, index: int) -> None:
        """The node lost: its raylet and workers killed at once (SIGKILL), then its `ray start` stopped."""
        node = self.nodes[index]
        if node is None:
            return
        try:
            for proc in psutil.Process(node.pid).children(recursive=True):
                proc.kill()
        except psutil.NoSuchProcess:
            pass
        self.stop_node(index)

    def stop_node(self, index: int) -> None:
        node, self.nodes[index] = self.nodes[index], None
        if node is not None:
            self._stop(node)

    def _stop(self, node: subprocess.Popen) -> None:
        self._remember(node)
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(timeout=10)

    def stop(self) -> None:
        for index in range(len(self.nodes)):
            self.stop_node(index)
        if self.head is not None:
            self._stop(self.head)
            self.head = None
        for pid, created in self._pids.items():  # anything a node left running: by its own PID
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.is_running():
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
