"""The Ray cluster the scale-out jobs run on (`--ray`, `AWO_RAY_ADDRESS`): one place that imports Ray,
connects the driver and turns "not installed" or "not reachable" into a one-line error.

Ray is an optional extra (`pip install 'awo[scale]'`): nothing imports this module unless a command is
asked to run on a cluster. The workers import the project's own packages, so every node needs awo
installed in the Python that `ray start` runs (the same virtual environment on one machine, the same
image or wheel on many)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from features.errors import AwoError

if TYPE_CHECKING:
    from types import ModuleType


class RayUnavailable(AwoError):
    """Ray is not installed, or the cluster at the given address does not answer."""


LOCAL = "local"  # a cluster started inside the driver for this run (ray.init() without an address)


def ray_module() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "Ray is not installed: install the scale-out extra (`uv sync --extra scale` or "
            "`pip install 'awo[scale]'`), or run without --ray"
        ) from None
    return ray


def connect(address: str | None) -> ModuleType:
    """Connect this process to the Ray cluster at `address` ('auto', HOST:PORT, ray://HOST:PORT; `local`
    or None starts a single-machine cluster inside this process) and return the `ray` module. Idempotent:
    an already connected driver stays connected to its cluster."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"log_to_driver": False, "include_dashboard": False}
    try:
        if address in (None, LOCAL):
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address!r}: {first}") from None
    return ray


def cluster_cpus() -> int:
    """CPUs the connected cluster offers (the number of tasks that run at once)."""
    ray = ray_module()
    return int(ray.cluster_resources().get("CPU", 0))
