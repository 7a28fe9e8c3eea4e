"""The embedded Ray stays on loopback, even where Ray would pick the network interface's address."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

PROBE = """
import json, ray
from hatstream.raylocal import start_local_ray
start_local_ray(2, configure_logging=False, log_to_driver=False)
@ray.remote
def where():
    return ray.util.get_node_ip_address()
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()], "driver": ray.util.get_node_ip_address(),
                  "task": ray.get(where.remote())}))
ray.shutdown()
"""


def test_embedded_ray_uses_loopback_only():
    # Without the test suite's own switch (conftest sets it for every test), as a user's process starts.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"nodes": ["127.0.0.1"], "driver": "127.0.0.1", "task": "127.0.0.1"}


JOIN = """
import json, sys, ray
from hatstream.pipeline.ray_engine import RayOptions, _connect
_connect(RayOptions(address=sys.argv[1]))
@ray.remote
def where():
    return ray.util.get_node_ip_address()
print(json.dumps({"driver": ray.util.get_node_ip_address(), "task": ray.get(where.remote(), timeout=120)}))
ray.shutdown()
"""


def test_a_driver_joins_a_loopback_cluster_without_the_switch():
    # A user's `hatstream run --address 127.0.0.1:PORT` against a one-machine cluster: without the
    # switch Ray would swap 127.0.0.1 for the interface address and wait for a node that is not there.
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-c", JOIN, cluster.address], capture_output=True, text=True,
                              timeout=150, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"driver": "127.0.0.1", "task": "127.0.0.1"}
    finally:
        cluster.shutdown()
