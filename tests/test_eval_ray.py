"""`recon eval --ray` on real Ray clusters: a 2-CPU cluster started by a helper process (attached to by
address, as to a remote cluster) runs two tiny scenes on two workers and a failing one; a rerun reuses
the results without running them; a task that raises becomes its scene's error row; without an address
a local cluster is started and stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from evaldata import posefree_folder, tiny_config, tiny_dataset

from recon.eval.runner import _scene_task, gather_ray, run_eval

ray = pytest.importorskip("ray", reason="the 'dist' extra (ray) is not installed")

pytestmark = pytest.mark.usefixtures("single_thread")

HEAD = textwrap.dedent("""
    import sys
    import ray
    ray.init(num_cpus=2, include_dashboard=False)
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # until the test closes stdin
    ray.shutdown()
""")


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster owned by a helper process; yields (address, process). Closing the helper's
    stdin makes it shut its cluster down."""
    # Without token authentication: a driver attaching by address then needs no token (with it, Ray wants
    # RAY_AUTH_MODE=token in the driver's environment before its configuration is first read).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    address = proc.stdout.readline().strip()
    if not address:
        proc.wait(timeout=60)
        pytest.fail(f"the Ray head process exited with {proc.returncode} before giving an address")
    yield address, proc
    proc.stdin.close()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_data")
    a = tiny_dataset(root / "room_a", seed=0)
    b = tiny_dataset(root / "room_b", seed=1)
    return a, b, posefree_folder(root / "nopose", a), tmp_path_factory.mktemp("ray_out")


@pytest.fixture
def no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_eval_on_a_ray_cluster_two_workers_and_a_failed_scene(cluster, data, no_ray_address):
    address, head = cluster
    a, b, nopose, out = data
    cfg = tiny_config(ray=True, ray_address=address, ray_cpus=1.0)
    res = run_eval([a, b, nopose], out, cfg)
    rows = {r["scene"]: r for r in res["scenes"]}
    assert list(rows) == ["room_a", "room_b", "nopose"]  # the order given, whatever order they ended in
    for name in ("room_a", "room_b"):
        assert "error" not in rows[name], rows[name].get("error")
        assert rows[name]["registered"] == 3 and rows[name]["psnr"] > 10.0
        assert json.loads((out / name / "result.json").read_text())["result"]["psnr"] == rows[name]["psnr"]
        assert len(list((out / name / "renders" / "test").glob("*.png"))) == 2
    assert "no reference poses" in rows["nopose"]["error"]  # reported, the others kept
    assert rows["room_a"]["worker"]["pid"] != rows["room_b"]["worker"]["pid"]  # one worker each
    assert res["mean"]["scenes"] == 3 and res["mean"]["failed"] == 1
    assert (out / "report.html").is_file()
    assert not ray.is_initialized()  # the driver disconnected ...
    assert head.poll() is None  # ... and left the cluster it attached to running


def test_a_second_ray_run_reuses_the_first_runs_results(cluster, data, no_ray_address):
    """The finished scenes are not run again: with nothing left to run, Ray is not even contacted."""
    address, _ = cluster
    a, b, _, out = data
    done = {n: ((out / n / "result.json").read_bytes(), (out / n / "result.json").stat().st_mtime_ns)
            for n in ("room_a", "room_b")}
    first = json.loads((out / "results.json").read_text())
    res = run_eval([a, b], out, tiny_config(ray=True, ray_address=address, ray_cpus=1.0))
    assert res["skipped"] == ["room_a", "room_b"] and not ray.is_initialized()
    for n, before in done.items():
        path = out / n / "result.json"
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert res["scenes"] == first["scenes"][:2]
    assert json.loads((out / "results.json").read_text())["scenes"] == first["scenes"][:2]


def test_a_task_that_raises_becomes_its_scenes_error_row(cluster, data, no_ray_address):
    address, _ = cluster
    _, _, nopose, out = data
    ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_scene_task)
        broken = Path("/nonexistent/broken_scene")
        tasks = {task.remote(broken, out, None): broken, task.remote(nopose, out, tiny_config()): nopose}
        rows = {}
        gather_ray(tasks, lambda scene, row: rows.__setitem__(scene.name, row))
    finally:
        ray.shutdown()
    assert set(rows) == {"broken_scene", "nopose"}
    bad = rows["broken_scene"]
    assert bad["error"].startswith("ray task failed:") and "AttributeError" in bad["traceback"]
    assert bad["registered"] == 0 and bad["auc"]["15"] == 0.0
    assert "no reference poses" in rows["nopose"]["error"]  # the other task's own result


def test_without_an_address_a_local_cluster_is_started_and_stopped(data, tmp_path, no_ray_address):
    _, _, nopose, _ = data
    res = run_eval([nopose], tmp_path / "out", tiny_config(ray=True, ray_address="local"))
    assert "no reference poses" in res["scenes"][0]["error"]
    assert not ray.is_initialized()
    saved = json.loads((tmp_path / "out" / "nopose" / "result.json").read_text())
    assert saved["result"]["scene"] == "nopose"
