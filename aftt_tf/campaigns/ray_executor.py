"""Campaign cells on a Ray cluster: long-lived actors evaluate cells, the driver writes them.

Each actor (`CellWorker`) gets the models and the test data from the driver through
Ray's object store (never from paths on the worker's machine), builds one runner per
(model, group) and reuses its compiled evaluation function for every cell it is given,
as the local runner does. The driver submits cells, collects results as they complete
and hands each to the campaign engine, which appends it to cells.jsonl: the driver is
the only writer, so resume, locking and the spec key are those of a local run, and a
Ray run gives the cells a local run gives (same seeds, same positions, same data).

A worker that dies (node lost, process killed) loses only the cells in flight on it:
they are submitted again to a replacement actor, and a cell is recorded once, when its
first result arrives. Ray is imported only here, and only with `--executor=ray`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from aftt_tf import runtimes
from aftt_tf.data import inputs
from aftt_tf.faults.spec import CampaignModel, CellRunner, FaultSpec

ACTOR_PREFIX = "aftt-cell-worker-"
_IN_FLIGHT_PER_WORKER = 2  # One running, one queued: no idle gap between cells.
_MAX_ATTEMPTS = 4  # Per cell: the first try and three after worker failures.


class RayUnavailableError(RuntimeError):
    """`--executor=ray` without the extra installed, or a cluster that cannot be reached."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "--executor=ray needs Ray: pip install 'aftt-tf[ray]' (or use --executor=local)."
        ) from None
    return ray


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Where and how wide a Ray campaign runs.

    Attributes:
        address: an existing cluster ('ray://host:10001' or 'host:6379'; 'auto' for the
            local node's running cluster); empty: start a local Ray instance.
        workers: actors to start (0: as many as the cluster's CPUs allow).
        cpus_per_worker, gpus_per_worker: resources each actor reserves.
        imports: modules each worker imports first (custom layers of a model).
    """

    address: str = ""
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    imports: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.workers < 0 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(
                f"Ray workers must be >= 0, CPUs per worker > 0 and GPUs per worker >= 0; "
                f"received {self.workers}, {self.cpus_per_worker} and {self.gpus_per_worker}."
            )


def parse_resources(text: str) -> tuple[float, float]:
    """(CPUs, GPUs) from 'cpu=2,gpu=0.5' (either may be left out: CPUs 1, GPUs 0)."""
    values = {"cpu": 1.0, "gpu": 0.0}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            if name not in values:
                raise ValueError
            values[name] = float(value)
        except ValueError:
            raise ValueError(
                f"--resources_per_worker takes cpu=N,gpu=M; {item!r} is not one of them."
            ) from None
    return values["cpu"], values["gpu"]


def config_from_flags(
    address: str, workers: int, resources: str, imports: tuple[str, ...] = ()
) -> RayConfig:
    """The RayConfig of the binaries' --ray_address, --ray_workers, --resources_per_worker."""
    cpus, gpus = parse_resources(resources)
    config = RayConfig(address, workers, cpus, gpus, tuple(imports))
    config.validate()
    return config


ACTOR_START_TIMEOUT = 120.0  # Seconds for the workers to start before giving up.
CONNECT_TIMEOUT = 10.0  # Seconds to reach a --ray_address before giving up.


def _resources_text(config: RayConfig) -> str:
    return f"cpu={config.cpus_per_worker:g},gpu={config.gpus_per_worker:g}"


def _cluster_text(resources: dict[str, float]) -> str:
    return f"cpu={resources.get('CPU', 0):g},gpu={resources.get('GPU', 0):g}"


def check_resources(config: RayConfig, resources: dict[str, float]) -> None:
    """RayUnavailableError when one worker asks for more than the whole cluster has (Ray
    would wait for such a worker forever)."""
    for name, wanted in (("CPU", config.cpus_per_worker), ("GPU", config.gpus_per_worker)):
        if wanted > resources.get(name, 0.0):
            raise RayUnavailableError(
                f"--resources_per_worker asks for {name.lower()}={wanted:g} per worker, but the "
                f"Ray cluster has {name.lower()}={resources.get(name, 0.0):g} in all "
                f"({_cluster_text(resources)}); lower it (e.g. --resources_per_worker="
                f"cpu=1{',gpu=0' if name == 'GPU' else ''})."
            )


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """RayUnavailableError naming `address` when no TCP connection to it opens within
    `timeout` (ray.init would retry for minutes); 'auto' and 'local' are not checked."""
    import socket

    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(
            f"--ray_address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto)."
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise RayUnavailableError(
            f"Could not reach Ray at --ray_address={address} within {timeout:g} s "
            f"({error.strerror or error}); check the address and that `ray start --head` "
            "runs there."
        ) from None


# Kills what a local Ray instance started under this driver once the driver is gone: Ray
# fate-shares its head processes with the driver, but the raylet's agents (DashboardAgent,
# RuntimeEnvAgent) outlive a driver killed with SIGKILL. The watchdog follows the
# driver's descendants (pid and start time, so a reused pid is never killed) every
# second and kills the ones still alive after the driver dies.
_WATCHDOG = """
import os, signal, sys, time
driver = int(sys.argv[1])
def table():
    result = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
                result[int(name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return result
start = table().get(driver, (0, None))[1]
known = {}
while True:
    processes = table()
    if processes.get(driver, (0, None))[1] != start:
        break
    frontier = [driver]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in processes.items():
            if ppid == parent and pid != os.getpid() and pid not in known:
                known[pid] = started
                frontier.append(pid)
    time.sleep(1)
processes = table()
for pid, started in known.items():
    if processes.get(pid, (0, None))[1] == started:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""
_watchdog = None


def _start_watchdog() -> None:
    """Starts the watchdog of a local Ray instance (Linux /proc; elsewhere nothing)."""
    global _watchdog
    import subprocess
    import sys

    if not os.path.isdir("/proc") or _watchdog is not None:
        return
    _watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Not in the driver's process group: outlives its signals.
    )


def stop_watchdog() -> None:
    """After a normal shutdown nothing is left to kill."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.kill()
        _watchdog.wait()
        _watchdog = None


def connect(config: RayConfig) -> bool:
    """Connects to `config.address`, or starts a local Ray instance when it is empty;
    nothing when this process is already connected. Returns True when it started Ray (the
    caller then shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        if config.address:
            check_reachable(config.address)
            ray.init(address=config.address, log_to_driver=False)
            return False
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
        _start_watchdog()
        return True
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailableError(
            f"Could not connect to Ray at {config.address or 'a new local instance'} "
            f"({error}). Start one with `ray start --head` or check --ray_address."
        ) from None


def model_payload(model: CampaignModel) -> dict[str, Any]:
    """What a worker needs to rebuild `model` (its runtime's payload, `runtimes`)."""
    return runtimes.payload(model)


def restore_model(payload: dict[str, Any]) -> CampaignModel:
    return runtimes.restore(payload)


class CellWorker:
    """A Ray actor: holds the models it was sent (by fingerprint) and the runner of the
    (model, group, spec, data) it evaluates now."""

    def __init__(self, imports: tuple[str, ...] = ()):
        for name in imports:
            importlib.import_module(name)
        self.models: dict[str, CampaignModel] = {}
        self.runners: dict[str, Any] = {}

    def prepare(
        self,
        key: str,
        payload: dict[str, Any],
        fingerprint: str,
        spec: dict[str, Any],
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        transform: inputs.InputTransform,
    ) -> int:
        """Builds the runner `key` names (a hash of everything it depends on) and drops
        the others; returns this process's id."""
        if fingerprint not in self.models:
            model = restore_model(payload)
            if model.fingerprint() != fingerprint:
                raise RuntimeError(
                    f"A model rebuilt on a Ray worker has fingerprint {model.fingerprint()}, "
                    f"not the driver's {fingerprint}."
                )
            self.models[fingerprint] = model
        for other in [other for other in self.runners if other != key]:
            self.runners.pop(other).close()
        if key not in self.runners:
            runner_spec = FaultSpec.from_dict(spec)
            self.runners[key] = self.models[fingerprint].runner(
                runner_spec, images, labels, batch_size, transform=transform
            )
        return os.getpid()

    def evaluate(self, key: str, rate: float, trial: int) -> dict[str, Any]:
        return self.runners[key].evaluate_cell(rate, trial)


class RayExecutor:
    """Evaluates campaign cells on Ray actors (see the module docstring).

    Use as a context manager: it connects to (or starts) Ray on entry, and on exit kills
    its actors and shuts down a Ray instance it started itself.
    """

    def __init__(self, config: RayConfig):
        config.validate()
        self.config = config
        self.actors: list[Any] = []
        self.retried_cells = 0
        self._started_ray = False
        self._next_name = 0
        self._objects: dict[tuple, Any] = {}  # Object store references, put once.

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        self._started_ray = connect(self.config)
        try:
            self.start_seconds = 0.0
            start = time.perf_counter()
            resources = ray.cluster_resources()
            check_resources(self.config, resources)
            count = self.config.workers or max(
                1, int(resources.get("CPU", 1) // self.config.cpus_per_worker)
            )
            self._worker_class = ray.remote(CellWorker)
            self.actors = [self._new_actor() for _ in range(count)]
            ready = [actor.__ray_ready__.remote() for actor in self.actors]
            try:
                ray.get(ready, timeout=ACTOR_START_TIMEOUT)
            except ray.exceptions.GetTimeoutError:
                raise RayUnavailableError(
                    f"{count} Ray workers with {_resources_text(self.config)} each did not "
                    f"start within {ACTOR_START_TIMEOUT:.0f} s (the cluster has "
                    f"{_cluster_text(resources)}); ask for fewer --ray_workers or smaller "
                    "--resources_per_worker."
                ) from None
            self.start_seconds = time.perf_counter() - start
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            stop_watchdog()

    def _new_actor(self):
        name = f"{ACTOR_PREFIX}{os.getpid()}-{self._next_name}"
        self._next_name += 1
        return self._worker_class.options(
            name=name,
            num_cpus=self.config.cpus_per_worker,
            num_gpus=self.config.gpus_per_worker,
            max_restarts=0,
        ).remote(self.config.imports)

    def put(self, key: tuple, make) -> Any:
        """An object store reference for `key`, put once per campaign (models, data)."""
        if key not in self._objects:
            self._objects[key] = import_ray().put(make())
        return self._objects[key]

    def group(self, label: str, group: str, model: CampaignModel, spec: FaultSpec, data) -> _Group:
        """A handle that evaluates the cells of one (model, group) on every actor."""
        return _Group(self, label, group, model, spec, data)


class _Group(CellRunner):
    """The cells of one (model, group) on the executor's actors (they hold the runners:
    `RayExecutor.shutdown` releases them)."""

    def __init__(self, executor: RayExecutor, label, group, model, spec, data):
        self.executor, self.label, self.name = executor, label, group
        images, labels, batch_size, transform = data
        fingerprint = model.fingerprint()
        images, labels = np.ascontiguousarray(images), np.ascontiguousarray(labels)
        data = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
        identity = [fingerprint, group, spec.as_dict(), data, batch_size, transform.record()]
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.arguments = (
            executor.put(("model", fingerprint), lambda: model_payload(model)),
            fingerprint,
            spec.as_dict(),
            executor.put(("images", data), lambda: images),
            executor.put(("labels", data), lambda: labels),
            batch_size,
            transform,
        )

    def _prepare(self, actor):
        return actor.prepare.remote(self.key, *self.arguments)

    def _prepare_all(self) -> None:
        ray = import_ray()
        ray.get([self._prepare(actor) for actor in self.executor.actors])

    def close(self) -> None:
        """Nothing here: the actors' runners live as long as the executor."""

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        """One cell, on the first actor (the engine's clean-accuracy check)."""
        return next(self.evaluate_cells([(rate, trial)]))[2]

    def evaluate_cells(self, cells: list[tuple[float, int]]) -> Iterator[tuple[float, int, dict]]:
        """Yields (rate, trial, result) as cells complete; cells of a dead worker go to a
        replacement actor and are yielded once."""
        ray = import_ray()
        # Each actor holds one runner: another group (the engine checks every model before
        # running any) may have replaced ours since; preparing again is free when it did not.
        self._prepare_all()
        lost = _worker_failures(ray)
        actors = self.executor.actors
        queue = collections.deque((cell, 1) for cell in cells)
        pending: dict[Any, tuple[tuple[float, int], int, int, Any]] = {}
        load = collections.Counter()
        while queue or pending:
            for slot, actor in enumerate(actors):
                while queue and load[actor] < _IN_FLIGHT_PER_WORKER:
                    (rate, trial), attempt = queue.popleft()
                    future = actor.evaluate.remote(self.key, rate, trial)
                    pending[future] = ((rate, trial), attempt, slot, actor)
                    load[actor] += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for future in done:
                cell, attempt, slot, actor = pending.pop(future)
                load[actor] -= 1
                try:
                    result = ray.get(future)
                except lost:
                    if attempt >= _MAX_ATTEMPTS:
                        raise RuntimeError(
                            f"Cell rate={cell[0]} trial={cell[1]} of {self.label!r} was lost "
                            f"with {attempt} Ray workers in a row; giving up."
                        ) from None
                    if actors[slot] is actor:  # The first of its lost cells: replace it.
                        actors[slot] = self.executor._new_actor()
                        ray.get(self._prepare(actors[slot]))
                    queue.appendleft((cell, attempt + 1))
                    self.executor.retried_cells += 1
                    continue
                yield cell[0], cell[1], result


def _worker_failures(ray) -> tuple[type, ...]:
    """The errors that mean a worker (not the cell's computation) failed."""
    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))
