"""LightGBM's own data-parallel training (`tree_learner="data"`) launched on Ray actors: one shard of the
rows per actor, histograms reduced over LightGBM's socket network, the same model on every worker.

Used for the organisation-wide change-risk model (`awo train change-risk --org --ray`); a RiskModel fits
through it when given a `RayTrainer` (models.risk_model.LocalTrainer is the one-process default)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.errors import AwoError

# LightGBM 4.x network parameters (docs: Parameters, "Network Parameters"; set per worker below).
NETWORK_PARAMS = (
    "tree_learner",
    "num_machines",
    "machines",
    "local_listen_port",
    "time_out",
    "pre_partition",
)


class TrainingWorkerLost(AwoError):
    """A training actor (or its node) died, or did not answer in time."""


@dataclass(frozen=True)
class WorkerPlace:
    """Where one training actor runs and the port its LightGBM network listens on."""

    rank: int
    ip: str
    port: int
    node_id: str

    @property
    def name(self) -> str:
        return f"worker {self.rank} on node {self.ip} ({self.node_id[:12]})"


def shard_rows(n: int, workers: int) -> list[np.ndarray]:
    """Row positions of each worker's shard: every `workers`-th row from its rank, so each shard spans the
    whole period (the rows are in time order) and shard sizes differ by at most one."""
    return [np.arange(rank, n, workers) for rank in range(workers)]


def machine_list(places: list[WorkerPlace]) -> str:
    """LightGBM's `machines` value, in rank order; duplicate endpoints are an error."""
    endpoints = [f"{p.ip}:{p.port}" for p in sorted(places, key=lambda p: p.rank)]
    if len(set(endpoints)) != len(endpoints):
        raise TrainingWorkerLost(f"two training workers chose the same endpoint: {','.join(endpoints)}")
    return ",".join(endpoints)


def worker_params(params: dict[str, Any], place: WorkerPlace, machines: str, time_out_min: int) -> dict:
    """The estimator parameters of one worker: the caller's, plus data-parallel networking with one thread
    (the actor holds one CPU) and the shard taken as given (`pre_partition`)."""
    return {
        **params,
        "tree_learner": "data",
        "num_machines": machines.count(",") + 1,
        "machines": machines,
        "local_listen_port": place.port,
        "time_out": time_out_min,
        "pre_partition": True,
        "n_jobs": 1,  # LightGBM's num_threads, by its scikit-learn name
    }


class _ShardWorker:
    """A Ray actor: reports where it listens, then fits its shard in LightGBM's data-parallel network."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def place(self) -> WorkerPlace:
        import socket

        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("", 0))  # a port free on this node now; LightGBM binds it again right after
            port = int(probe.getsockname()[1])
        context = ray.get_runtime_context()
        return WorkerPlace(self.rank, ray.util.get_node_ip_address(), port, context.get_node_id())

    def fit(
        self,
        params: dict[str, Any],
        shard: tuple[pd.DataFrame, np.ndarray, np.ndarray],
        validation: tuple[pd.DataFrame, np.ndarray] | None,
        early_stopping_rounds: int | None,
    ) -> tuple[int, Any]:
        from models.risk_model import LocalTrainer

        X, y, weight = shard
        model = LocalTrainer().fit(params, X, y, weight, validation, early_stopping_rounds)
        # rank 0's model is the result; the others only say where early stopping ended, to be checked
        return int(model.best_iteration_ or 0), (model if self.rank == 0 else None)


class RayTrainer:
    """Fits LightGBM classifiers across `workers` Ray actors (one CPU each) on the connected cluster.

    Every actor gets the same full validation set: the model is identical on all workers, so the early
    stopping metric and the iteration it picks are too. The actors start with the first fit and serve
    the next ones (a RiskModel fits twice: early-stopped, then the refit) until `close`. A dead actor or
    node ends the fit with a one-line TrainingWorkerLost naming the node; `start_timeout_s` bounds placing
    the actors and opening LightGBM's network, `fit_timeout_s` one fit."""

    def __init__(
        self,
        workers: int,
        start_timeout_s: float = 180.0,
        fit_timeout_s: float = 3600.0,
        on_start: Callable[[list[WorkerPlace]], None] | None = None,
    ) -> None:
        if workers < 1:
            raise AwoError(f"--workers {workers}: need at least one training worker")
        self.workers = workers
        self.start_timeout_s = start_timeout_s
        self.fit_timeout_s = fit_timeout_s
        self.on_start = on_start
        self._actors: list[Any] = []

    def __enter__(self) -> RayTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors (their CPUs go back to the cluster)."""
        if self._actors:
            from features.cluster import ray_module

            ray = ray_module()
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
        self._actors = []

    def _start(self, ray) -> list[Any]:
        from features.cluster import cluster_cpus

        if not ray.is_initialized():
            raise AwoError("the Ray trainer needs a connected cluster: call features.cluster.connect first")
        cpus = cluster_cpus()
        if cpus < self.workers:
            raise AwoError(
                f"--workers {self.workers}: the Ray cluster offers {cpus} CPUs, and each training worker "
                "holds one for the whole fit"
            )
        actor = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_ShardWorker)
        self._actors = [actor.remote(rank) for rank in range(self.workers)]
        return self._actors

    def fit(
        self,
        params: dict[str, Any],
        X: pd.DataFrame,
        y: np.ndarray,
        weight: np.ndarray,
        validation: tuple[pd.DataFrame, np.ndarray] | None = None,
        early_stopping_rounds: int | None = None,
    ):
        from features.cluster import ray_module

        ray = ray_module()
        first = not self._actors
        actors = self._actors or self._start(ray)
        try:
            # fresh ports for every fit: the previous network's sockets may still be closing
            places = self._gather(ray, [a.place.remote() for a in actors], None, self.start_timeout_s)
            machines = machine_list(places)
            if first and self.on_start is not None:
                self.on_start(places)
            shared_validation = ray.put(validation)
            time_out_min = max(1, math.ceil(self.start_timeout_s / 60))
            calls = [
                a.fit.remote(
                    worker_params(params, place, machines, time_out_min),
                    (X.iloc[rows], y[rows], weight[rows]),
                    shared_validation,
                    early_stopping_rounds,
                )
                for a, place, rows in zip(actors, places, shard_rows(len(y), self.workers), strict=True)
            ]
            results = self._gather(ray, calls, places, self.fit_timeout_s)
        except BaseException:
            self.close()  # a network with a dead member cannot fit again
            raise
        stops = {best for best, _ in results}
        if len(stops) > 1:
            raise AwoError(f"the training workers stopped early at different iterations {sorted(stops)}")
        model = results[0][1]
        _drop_network_params(model)
        return model

    def _gather(self, ray, refs: list, places: list[WorkerPlace] | None, timeout_s: float):
        """Every ref's value in order, failing fast on the first actor that dies or errs."""
        pending = {ref: rank for rank, ref in enumerate(refs)}
        values: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            left = deadline - time.monotonic()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, left))
            if not ready:
                waiting = ", ".join(_who(places, r) for r in sorted(pending.values()))
                stage = "to fit" if places else "to start (are the cluster's CPUs busy?)"
                raise TrainingWorkerLost(
                    f"training timed out after {timeout_s:.0f} s waiting for {waiting} {stage}"
                )
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    values[rank] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise TrainingWorkerLost(
                        f"training {_who(places, rank)} died: {_first_line(exc)}"
                    ) from None
                except ray.exceptions.RayTaskError as exc:
                    # a worker whose peer died fails in LightGBM's socket code: name the dead one if it shows
                    dead = _first_death(ray, pending, places)
                    raise dead or TrainingWorkerLost(
                        f"training {_who(places, rank)} failed: {_first_line(exc.cause or exc)}"
                    ) from None
        return [values[rank] for rank in range(len(refs))]


def _first_death(
    ray, pending: dict[Any, int], places: list[WorkerPlace] | None, wait_s: float = 10.0
) -> TrainingWorkerLost | None:
    """The death of another worker among `pending`, if Ray reports one within `wait_s`."""
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait_s)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            return TrainingWorkerLost(f"training {_who(places, pending[ref])} died: {_first_line(exc)}")
        except ray.exceptions.RayError:
            continue
    return None


def _who(places: list[WorkerPlace] | None, rank: int) -> str:
    return places[rank].name if places else f"worker {rank}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _drop_network_params(model) -> None:
    """Rank 0's estimator as a one-machine model: its parameters would otherwise name the training
    network's endpoints (and a refit from them would try to join it)."""
    for name in NETWORK_PARAMS:
        model._other_params.pop(name, None)
        model.__dict__.pop(name, None)
    model.set_params(n_jobs=None)
