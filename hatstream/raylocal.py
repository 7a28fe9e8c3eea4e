"""An embedded Ray that stays on this machine: the one start-up for every command that needs one.

Left to itself on Linux, Ray gives each node this machine's interface address, and replaces even
an explicit `_node_ip_address="127.0.0.1"` with it, so an embedded instance's processes would talk
through the network interface. Ray keeps loopback only when its cluster support is off (its
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` switch, on by default everywhere but macOS and Windows), which
an embedded, single-machine instance never needs. Ray's gRPC servers still listen on every
interface whatever the node address; its token auth (on by default since 2.52) guards them.
"""

from __future__ import annotations

import os

CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_loopback() -> None:
    """Keep this process's Ray (and the processes it starts) on loopback addresses.

    For an embedded instance, and for a driver joining a cluster at 127.0.0.1 (tests, a one-machine
    farm): without it the driver would announce, and look for its node at, the interface address.
    """
    os.environ[CLUSTER_SWITCH] = "0"  # for the processes Ray starts
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: this process may have imported ray already


def start_local_ray(num_cpus: int, **kwargs) -> None:
    """Start a new Ray instance of our own on loopback, without a dashboard; `kwargs` go to ray.init.

    address="local": a new instance, never a cluster that RAY_ADDRESS or /tmp/ray/ray_current_cluster
    happens to name (which would also refuse num_cpus).
    """
    import ray

    keep_loopback()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
