"""Where jobs run: in this process, or spread over Ray workers (parallel.engine: ray).

Each Ray worker is an actor holding its own Players, so its own replica of every model its jobs
need, loaded on first use and kept (a policy checkpoint is loaded by path and freed when the
pipeline releases it). A job is a pure function of its contents and the model weights
(star_gate/jobs.py), so which worker runs which chunk changes nothing: the pipeline, the only
writer of the run directory, saves each chunk as it comes back and merges them in chunk order.

On a cluster the workers load models, checkpoints and the API cache by path, so run_dir and
data.path must be on a filesystem every node shares, and star-gate must be installed on each node.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from pathlib import Path

from star_gate.config import ConfigError, ParallelConfig, RunConfig
from star_gate.jobs import Job, run_job
from star_gate.roles.factory import Players

# What a runner yields per job: its index, its records, and the work its backends counted.
Result = tuple[int, list, dict[str, int]]


def check_parallel(config: RunConfig) -> None:
    """Refuse, before the run directory is touched, a Ray engine that cannot start here."""
    parallel = config.parallel
    if parallel.engine != "ray":
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "parallel.engine is 'ray' but the ray package is not installed; "
            "install it with pip install 'star-gate[ray]', or set parallel.engine: none"
        )
    if not parallel.address and parallel.gpus_per_worker > 0:
        import torch

        needed, present = parallel.workers * parallel.gpus_per_worker, torch.cuda.device_count()
        if needed > present:
            # A local Ray instance would keep the workers waiting for GPUs forever.
            raise ConfigError(
                f"parallel: {parallel.workers} workers x gpus_per_worker {parallel.gpus_per_worker} "
                f"need {needed:g} GPUs and this machine has {present}"
            )


class InProcess:
    """Runs every job here, in order, with the pipeline's own players."""

    def __init__(self, players: Players):
        self.players = players

    def run(self, jobs: dict[int, Job]) -> Iterator[Result]:
        for index, job in jobs.items():
            yield index, *run_job(self.players, job)

    def release(self, model: str) -> None:
        pass  # its players are the pipeline's, which releases the model itself

    def close(self) -> None:
        pass


class Worker:
    """A Ray actor's state: its players, kept between jobs so each model loads once."""

    def __init__(self, config: RunConfig, cache_path: str):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.players = Players(config, cache_path)

    def run(self, index: int, job: Job) -> Result:
        return index, *run_job(self.players, job)

    def release(self, model: str) -> None:
        self.players.release(model)


def join_cluster(ray, address: str) -> None:
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError) as err:  # Ray's own message runs to many lines
        raise RuntimeError(
            f"parallel.address {address!r}: cannot join a Ray cluster there ({str(err).splitlines()[0]}); "
            "is `ray start --head` running, and, for a cluster that asks for a token, RAY_AUTH_MODE=token set?"
        ) from None


class RayPool:
    """parallel.workers Ray actors, started on the first job and stopped by close().

    Uses the Ray instance this process already has, else starts a private local one (address
    empty) or joins parallel.address; close() stops the actors and, only where this pool called
    ray.init, disconnects (which stops a private local instance, never a cluster).
    """

    def __init__(self, config: RunConfig, cache_path: Path):
        self.config = config
        self.cache_path = str(cache_path)
        self.actors: list = []
        self.started_ray = False

    def _start(self) -> list:
        import ray

        parallel: ParallelConfig = self.config.parallel
        if not ray.is_initialized():
            if parallel.address:
                join_cluster(ray, parallel.address)
            else:
                # Sized to the workers, so that none waits for a CPU this machine does not have.
                cpus = math.ceil(parallel.workers * parallel.cpus_per_worker)
                ray.init(address="local", num_cpus=cpus, include_dashboard=False)
            self.started_ray = True
        actor = ray.remote(num_cpus=parallel.cpus_per_worker, num_gpus=parallel.gpus_per_worker)(
            Worker
        )
        self.actors = [actor.remote(self.config, self.cache_path) for _ in range(parallel.workers)]
        return self.actors

    def run(self, jobs: dict[int, Job]) -> Iterator[Result]:
        """Keep every worker busy and yield each result as it comes back (in any order)."""
        if not jobs:
            return
        import ray

        idle = list(self.actors or self._start())
        todo = list(jobs.items())
        running: dict = {}  # result reference -> the worker computing it
        while todo or running:
            while todo and idle:
                worker = idle.pop()
                index, job = todo.pop(0)
                running[worker.run.remote(index, job)] = worker
            [done], _ = ray.wait(list(running), num_returns=1)
            idle.append(running.pop(done))
            yield ray.get(done)

    def release(self, model: str) -> None:
        if self.actors:
            import ray

            ray.get([actor.release.remote(model) for actor in self.actors])

    def close(self) -> None:
        if not self.actors and not self.started_ray:
            return
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False


def make_runner(config: RunConfig, players: Players, cache_path: Path) -> InProcess | RayPool:
    return RayPool(config, cache_path) if config.parallel.engine == "ray" else InProcess(players)
