"""The Ray engine on a real Ray cluster on 127.0.0.1: a head and a worker node, 1 CPU each.

Drivers run as subprocesses, as a user runs them: the CLI with --address, and a Python script that connects
and calls `bertbatch.ray.score`. `pytest -m ray_cluster` runs these alone.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from helpers import make_texts
from raycluster import RayCluster, free_port, loopback_name, ray_env

import bertbatch
from bertbatch import score_file
from bertbatch.errors import EXIT_DEPENDENCY, EXIT_INPUT, EXIT_MODEL

pytestmark = pytest.mark.ray_cluster
ROOT = Path(bertbatch.__file__).resolve().parents[1]  # this checkout: drivers and workers import it
ROWS = 3000


def _env(**extra) -> dict:
    env = ray_env(**extra)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def cluster():
    try:
        loopback_name()
    except RuntimeError as exc:
        pytest.skip(f"worker nodes could not join on loopback: {exc}")
    with RayCluster(workers=1, env=_env()) as running:
        yield running


@pytest.fixture(scope="module")
def rows_path(tmp_path_factory):
    texts, _ = make_texts(ROWS, seed=3)
    path = tmp_path_factory.mktemp("ray-data") / "rows.parquet"
    pq.write_table(pa.table({"id": [f"{i:06d}" for i in range(ROWS)], "text": texts}), path, row_group_size=700)
    return path


def _labels(path) -> dict:
    table = pq.read_table(path, columns=["id", "label"])
    return dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))


def _ids_once(path, expected: int) -> list:
    ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
    assert len(ids) == expected
    assert len(set(ids)) == expected
    return ids


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "bertbatch", "score", *map(str, args)]


def _run(args, cwd, timeout=400, **env):
    return subprocess.run(_cli(*args), capture_output=True, text=True, env=_env(**env), cwd=cwd, timeout=timeout,
                          check=False)


def _loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


def _only_loopback(cluster) -> None:
    remote = [(pid, local, peer) for pid, local, peer in cluster.connections() if peer]
    assert remote, "the nodes hold no connections at all: nothing was checked"
    elsewhere = [c for c in remote if not _loopback(c[2].rsplit(":", 1)[0])]
    assert not elsewhere, f"Ray processes connected off loopback: {elsewhere[:5]}"


def _last_json(stdout: str) -> dict:
    """The last JSON line a driver printed (Ray's raylet may print its own warnings to a driver's stdout)."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_cli_scores_every_row_once_on_two_nodes_like_the_local_engine(cluster, tiny_exported, rows_path, tmp_path):
    out = tmp_path / "scored"
    run = _run([tiny_exported, rows_path, "-o", out, "--engine", "ray", "--address", cluster.address,
                "--rows-per-part", 1000], tmp_path)

    assert run.returncode == 0, run.stderr[-3000:]
    summary = _last_json(run.stdout)
    assert summary["engine"] == "ray" and summary["master"] == cluster.address
    assert summary["nodes_checked"] == 2 and summary["actors"] == 2 and summary["model_shipped"] is True
    assert summary["rows_in"] == summary["rows_written"] == ROWS
    assert (out / "_SUCCESS").exists() and (out / "_manifest.json").exists()
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-00000-0000{i}.parquet" for i in range(3)]
    ids = _ids_once(out, ROWS)
    assert ids == sorted(ids)  # input order: parts are the local engine's
    local = tmp_path / "local"
    score_file(rows_path, local, tiny_exported, graph=summary["graph"], rows_per_part=1000)
    assert _labels(out) == _labels(local)
    _only_loopback(cluster)


DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from bertbatch import ray as bray

    address, model, rows = sys.argv[1:]
    ray.init(address=address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    scored = bray.score(ray.data.read_parquet(rows), model, graph="fp32", keep=("id",))
    import pyarrow as pa
    table = pa.concat_tables(ray.get(scored.to_arrow_refs()))
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    print(json.dumps({"ids": table["id"].to_pylist(), "labels": table["label"].to_pylist(),
                      "columns": table.column_names, "nodes": len(nodes)}))
""")


def test_python_api_labels_equal_a_local_fp32_run_on_two_nodes(cluster, tiny_exported, rows_path, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    run = subprocess.run([sys.executable, str(script), cluster.address, str(tiny_exported), str(rows_path)],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=400, check=False)

    assert run.returncode == 0, run.stderr[-3000:]
    result = _last_json(run.stdout)
    assert result["nodes"] == 2
    assert result["columns"][:2] == ["id", "label"] and "text" not in result["columns"]
    assert len(result["ids"]) == len(set(result["ids"])) == ROWS
    local = tmp_path / "local.parquet"
    score_file(rows_path, local, tiny_exported, graph="fp32")
    assert dict(zip(result["ids"], result["labels"])) == _labels(local)


def test_worker_node_lost_mid_job_every_row_written_once(cluster, tiny_exported, tmp_path):
    rows = 12_000  # long enough that the worker node is scoring when it is killed
    texts, _ = make_texts(rows, seed=5)
    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": [f"{i:06d}" for i in range(rows)], "text": texts}), src, row_group_size=1000)
    out = tmp_path / "scored"
    lost = cluster.add_worker()  # a second worker node, killed below: the module's cluster keeps its own
    stderr = tmp_path / "driver.err"
    with open(stderr, "w") as err:
        driver = subprocess.Popen(_cli(tiny_exported, src, "-o", out, "--engine", "ray", "--address", cluster.address,
                                       "--rows-per-part", 1000, "--window-rows", 250, "--max-batch-rows", 8),
                                  stdout=subprocess.PIPE, stderr=err, text=True, env=_env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            while not list(out.glob("part-*")) and time.monotonic() < deadline:
                assert driver.poll() is None, stderr.read_text()[-3000:]
                time.sleep(0.01)
            os.kill(driver.pid, signal.SIGSTOP)  # held at its first part, so a quiet machine cannot finish first
            try:
                assert driver.poll() is None and not (out / "_SUCCESS").exists()  # the job is under way
                cluster.kill_worker(lost)
            finally:
                os.kill(driver.pid, signal.SIGCONT)
            output, _ = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 0, stderr.read_text()[-3000:]
    summary = _last_json(output)
    assert summary["nodes_checked"] == 3
    assert summary["rows_in"] == summary["rows_written"] == rows
    assert (out / "_SUCCESS").exists()
    assert _ids_once(out, rows) == [f"{i:06d}" for i in range(rows)]


def test_unreachable_address_is_one_line_exit_1(tiny_exported, rows_path, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    run = _run([tiny_exported, rows_path, "-o", tmp_path / "out", "--engine", "ray", "--address", address],
               tmp_path, timeout=120)

    assert run.returncode == EXIT_INPUT
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: Cannot reach a Ray cluster at {address}: ")
    assert "--address" in lines[0] and "ray start --head" in lines[0]
    assert not (tmp_path / "out").exists()  # the output directory is released, not left half-made


def _bare_python(tmp_path) -> Path:
    """A venv whose Python sees this environment's packages (Ray, pyarrow, onnxruntime) but not bertbatch:
    a path in a .pth file is added to sys.path, its own .pth files (bertbatch's editable finder) are not run."""
    import site

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    packages = next(Path(p) for p in site.getsitepackages() if (Path(p) / "ray").is_dir())
    (next(bare.glob("lib/python*/site-packages")) / "shared.pth").write_text(f"{packages}\n")
    return bare / "bin" / "python"


def test_worker_without_bertbatch_is_one_line_naming_its_python(cluster, tiny_exported, rows_path, tmp_path):
    python = _bare_python(tmp_path)
    node = cluster.add_worker(python=str(python), env={"PYTHONPATH": ""})
    try:
        run = _run([tiny_exported, rows_path, "-o", tmp_path / "out", "--engine", "ray", "--address",
                    cluster.address], tmp_path)
    finally:
        cluster.stop_node(node)

    assert run.returncode == EXIT_MODEL
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("Error: Ray workers on ") and f"run {python} (Python" in lines[0]
    assert "cannot import bertbatch" in lines[0] and "ray start" in lines[0]
    assert not list((tmp_path / "out").glob("part-*"))


def test_model_changed_on_a_node_is_one_line_exit_3(cluster, tiny_exported, rows_path, tmp_path):
    first = _run([tiny_exported, rows_path, "-o", tmp_path / "first", "--engine", "ray", "--address",
                  cluster.address], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    copies = glob.glob(str(cluster.root / "tmp" / "bertbatch-ray" / "*" / "*" / "tokenizer.json"))
    # unpacked on each node the cluster has had (one directory per node and model content)
    assert len({Path(c).parents[1].name for c in copies}) >= 2
    edited = copies
    for copy in edited:  # the nodes' copies edited after they were unpacked
        with open(copy, "a") as fh:
            fh.write(" ")
    run = _run([tiny_exported, rows_path, "-o", tmp_path / "second", "--engine", "ray", "--address",
                cluster.address], tmp_path)

    assert run.returncode == EXIT_MODEL
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("Error: Model file tokenizer.json differs between the driver and the Ray worker on ")
    assert any(str(Path(c).parent) in lines[0] for c in edited) and "Remove that directory" in lines[0]
    assert not list((tmp_path / "second").glob("part-*"))


def test_without_address_a_local_ray_is_started_for_the_job(tiny_exported, rows_path, tmp_path):
    import shutil
    import tempfile

    out = tmp_path / "scored"
    short = tempfile.mkdtemp(prefix="bbray-local-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    try:
        run = _run([tiny_exported, rows_path, "-o", out, "--engine", "ray"], tmp_path, TMPDIR=short, HOME=short)
    finally:
        shutil.rmtree(short, ignore_errors=True)

    assert run.returncode == 0, run.stderr[-3000:]
    summary = _last_json(run.stdout)
    assert summary["nodes_checked"] == 1 and summary["rows_written"] == ROWS
    assert summary["master"].startswith("127.0.0.1:")  # started on loopback for this job, and stopped after
    _ids_once(out, ROWS)


def test_ray_engine_refuses_what_it_cannot_do(tiny_exported, rows_path, tmp_path):
    from bertbatch.errors import InputError
    from bertbatch.ray import score_files

    for output, options, message in [
        ("-", {}, "cannot stream to stdout"),
        (tmp_path / "out.csv", {}, "names a csv file"),
        (tmp_path / "out.parquet", {}, "Parquet directory"),
        (tmp_path / "out", {"output_format": "csv"}, "writes Parquet only; --format csv"),
        (tmp_path / "out", {"on_bad_rows": "reject"}, "--on-bad-rows reject is not available with --engine ray"),
    ]:
        with pytest.raises(InputError, match=message):
            score_files(rows_path, output, tiny_exported, **options)


def test_without_ray_the_error_names_the_extra(monkeypatch, tiny_exported, rows_path, tmp_path):
    from bertbatch import ray as bray
    from bertbatch.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependency, match=r"bertbatch\[ray\]") as failure:
        bray.score_files(rows_path, tmp_path / "out", tiny_exported)
    assert failure.value.exit_code == EXIT_DEPENDENCY
