"""A farm on loopback: `ray start` nodes, a worker node that cannot see the input, a driver killed mid-run.

The worker node runs in its own mount namespace, with an empty tmpfs mounted over the input's
folder, and the head node has no CPUs: every segment is computed where the input is invisible,
from the packets the driver sends. Every process started here carries a marker in its
environment, so the cleanup (and the "nothing left" check) finds exactly this test's processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import processes_marked
from mediagen import _env, make_video, read_planes, run_cli
from test_resume import CLIP, FRAMES, SEGMENTED, _done, _kill_after, _ok, _same_output

pytestmark = pytest.mark.slow  # real Ray nodes: `make test-quick` leaves these out
MARK = "HATSTREAM_FARM_TEST"
LOOPBACK = "127.0.0.1"


def _marked(tag: str) -> list[int]:
    return processes_marked(MARK, tag)


# A worker node of its own process, joined to the cluster at argv[1] as `Cluster.add_node` joins one
# (Ray's `ray start` refuses to join from loopback), and stopped with its processes on SIGTERM.
WORKER_NODE = """
import signal, sys, time
import ray._private.node, ray._private.parameter
params = ray._private.parameter.RayParams(
    num_cpus=2, num_gpus=0, object_store_memory=150 << 20, min_worker_port=0, max_worker_port=0,
    node_ip_address="127.0.0.1", gcs_address=sys.argv[1], include_log_monitor=False, node_manager_port=0)
params.dashboard_agent_listen_port = None
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit runs the node's own shutdown
print("joined", flush=True)
while True:
    time.sleep(3600)
"""


def _alive_cpu_nodes() -> int:
    import ray
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))


@pytest.fixture
def farm(tmp_path, monkeypatch):
    """A CPU-less head node and one 2-CPU worker node that cannot see `tmp_path / "in"`, on loopback.

    Yields (address, input folder). Everything is stopped afterwards, by marker, and checked gone.
    """
    import ray
    from ray.cluster_utils import Cluster

    tag = uuid.uuid4().hex
    monkeypatch.setenv(MARK, tag)  # for the CLI runs too: a killed driver's helpers are found
    inputs = tmp_path / "in"
    inputs.mkdir()
    cluster = worker = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK})
        hide = f"mount -t tmpfs farm-hides-the-input {inputs} && exec \"$0\" -c \"$1\" \"$2\""
        worker = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide,
                                   sys.executable, WORKER_NODE, cluster.address],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert worker.stdout.readline().strip() == "joined"
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False, _node_ip_address=LOOPBACK)
        try:
            deadline = time.monotonic() + 60
            while _alive_cpu_nodes() < 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _alive_cpu_nodes() == 1
            assert {n["NodeManagerAddress"] for n in ray.nodes()} == {LOOPBACK}
        finally:
            ray.shutdown()  # the drivers are the CLI runs
        yield cluster.address, inputs
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if cluster is not None:
            cluster.shutdown()
        deadline = time.monotonic() + 60
        while (left := _marked(tag)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # what a killed driver's node left, if anything: never another test's
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, "Ray processes left running"


def _ray_args(address: str) -> tuple[str, ...]:
    return ("--engine", "ray", "--address", address, "--workers", "2", "--device", "cpu")


def _sent(proc) -> list[int]:
    """The segments a `-vv` run handed to its Ray actors, from its debug log, in order."""
    marker = " sent to the Ray workers"
    return [int(line.split("segment ")[1].removesuffix(marker)) for line in proc.stderr.splitlines()
            if line.endswith(marker)]


def test_farm_without_the_input_resumes_after_the_driver_is_killed(farm, tmp_path):
    address, inputs = farm
    src = make_video(inputs / "clip.mkv", CLIP)
    ref = tmp_path / "local.mkv"
    _ok(run_cli(src, "-o", ref, "--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "0"))
    # The worker node really cannot see the input: its processes find an empty folder there.
    workers = [pid for pid in _marked(os.environ[MARK]) if os.readlink(f"/proc/{pid}/ns/mnt")
               != os.readlink("/proc/self/ns/mnt")]
    assert workers and not any(Path(f"/proc/{pid}/root{src}").exists() for pid in workers)

    out = tmp_path / "out" / "farm.mkv"
    out.parent.mkdir()
    # Generous limits: a driver starts Ray actors that import torch, slow on a loaded CI machine.
    manifest = _kill_after(src, out, 2, *_ray_args(address), wait=400)
    already = {d["index"] for d in manifest["done"]}
    frames_before = sum(d["frames"] for d in manifest["done"])
    rerun = subprocess.run([sys.executable, "-m", "hatstream", "-vv", "run", *map(str, (src, "-o", out)),
                            *SEGMENTED, *_ray_args(address)], capture_output=True, text=True, timeout=400,
                           env=_env())
    done = _done(rerun)
    # Only the missing segments were remuxed and sent, each once (none of the kept ones re-run).
    assert _sent(rerun) == [s["index"] for s in manifest["segments"] if s["index"] not in already]
    # The finished segments were kept and only the rest computed: counted in frames, and in
    # segments by the files the killed run had left (the rerun recomputes none of them).
    assert done["frames"] == FRAMES and done["note"] is None
    assert done["resumed"] == frames_before and 0 < frames_before < FRAMES
    assert 0 < len(already) < len(manifest["segments"])
    _same_output(out, ref, src)
    assert sorted(p.name for p in out.parent.iterdir()) == ["farm.mkv"]
    assert len(read_planes(out)) == FRAMES
