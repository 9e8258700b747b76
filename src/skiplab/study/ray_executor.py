"""Hand a study's runs to Ray: each run becomes a Ray task with its resource request.

    skiplab study he2016-table2 --executor ray --address auto --workers 8 --device cuda

Only the driver (this process) writes ``study.db``: tasks return their results, and a
result is recorded once, when its task completes. A worker lost midway (its process or
node dies) makes Ray run the task again (``max_retries``); the run's folder is cleared
at the start of every attempt, so nothing is recorded twice. On a cluster the study
folder must be on a filesystem that every node sees (run folders are written there).
``ray`` is an optional dependency: ``pip install skiplab[ray]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def _call(fn: Callable[[Any], dict[str, Any]], job: Any) -> dict[str, Any]:
    return fn(job)


class RayExecutor:
    """Runs jobs as Ray tasks; ``workers`` bounds the runs in flight (and, on one GPU,
    splits it: each run asks for 1/workers of a GPU, so several small runs share it)."""

    def __init__(
        self,
        address: str | None = None,
        workers: int = 1,
        device: str = "auto",
        cpus_per_run: float = 1.0,
        max_retries: int = 2,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'skiplab[ray]'") from None
        self.ray = ray
        self.address, self.workers, self.device = address, max(1, workers), device
        self.cpus_per_run, self.max_retries = cpus_per_run, max_retries
        self.init_kwargs = init_kwargs or {}

    def _gpus_per_run(self) -> float:
        if self.device == "cpu":
            return 0.0
        gpus = self.ray.cluster_resources().get("GPU", 0.0)
        if self.device == "cuda" and gpus == 0:
            raise ValueError("--device cuda with --executor ray: the Ray cluster has no GPUs")
        return 0.0 if gpus == 0 else min(1.0, gpus / self.workers)

    def map(self, jobs: list[Any], fn: Callable[[Any], dict[str, Any]], on_start: Callable[[Any], None],
            on_done: Callable[[Any, dict[str, Any]], None]) -> None:  # fmt: skip
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kwargs["address"] = self.address
            ray.init(**kwargs)
        try:
            task = ray.remote(
                num_cpus=self.cpus_per_run,
                num_gpus=self._gpus_per_run(),
                max_retries=self.max_retries,
            )(_call)
            queue, pending = list(jobs), {}
            while queue or pending:
                while queue and len(pending) < self.workers:
                    job = queue.pop(0)
                    on_start(job)
                    pending[task.remote(fn, job)] = job
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                job = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - retries exhausted: record, go on
                    log.warning("run %s failed on Ray: %s", getattr(job, "job_id", job), err)
                    out = {
                        "status": "failed",
                        "error": f"Ray task failed: {type(err).__name__}: {err}",
                        "results": [],
                    }
                on_done(job, out)
        finally:
            if started_here:
                ray.shutdown()
