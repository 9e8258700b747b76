"""Hand a study's runs to Ray: each run becomes a Ray task with its resource request.

    skiplab study he2016-table2 --executor ray --address auto --device cuda

The executor connects when it is created, so that a cluster that cannot be reached is a
clear error before the study writes anything. Only the driver (this process) writes
``study.db``: tasks return their results, and a result is recorded once, when its task
completes. A worker lost midway (its process or node dies) makes the driver submit the
task again (``max_retries``, each attempt counted in the store); the run's folder is
cleared at the start of every attempt, so nothing is recorded twice. On a cluster the
study folder must be on a filesystem that every node sees (run folders are written there).
``ray`` is an optional dependency: ``pip install skiplab[ray]``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from .runner import check_study_device

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


def _call(fn: Callable[[Any], dict[str, Any]], job: Any) -> dict[str, Any]:
    return fn(job)


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address; None for the
    addresses Ray resolves itself (``auto``, ``local``)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# HTTP/2's client connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast on a ``host:port`` that nothing answers on, or where what answers is not
    a gRPC server as Ray's GCS and Ray Client servers are: Ray itself retries such an
    address for minutes, or forever, before it gives up.

    The gRPC check sends HTTP/2's connection preface and expects the server's, a SETTINGS
    frame on stream 0. It is skipped under ``RAY_USE_TLS`` (the handshake is TLS first).
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            conn.sendall(_H2_PREFACE)
            head = _read(conn, 9)
    except OSError as err:
        raise _unreachable(address, str(err)) from None
    # A frame header: 24-bit length, type (4: SETTINGS), flags, 31-bit stream id (0).
    if len(head) < 9 or head[3] != 4 or int.from_bytes(head[5:9], "big") & 0x7FFFFFFF:
        answer = f"sent {head!r}" if head else f"sent nothing in {timeout:g} s"
        raise ValueError(
            f"something listens at {address}, but it is not a Ray cluster (no gRPC handshake: "
            f"it {answer}); give the address of the head node's GCS (the port "
            "`ray start --head` prints, 6379 by default) or of Ray Client (ray://HOST:10001)"
        )


def _unreachable(address: str, reason: str) -> ValueError:
    return ValueError(
        f"cannot reach a Ray cluster at {address}: {reason}; start one with `ray start --head` "
        "or drop --address"
    )


def _read(conn: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes: fewer when the peer closes or the socket's timeout passes."""
    data = b""
    try:
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


class RayExecutor:
    """Runs jobs as Ray tasks; ``workers`` bounds the runs in flight (and, on one GPU,
    splits it: each run asks for 1/workers of a GPU, so several small runs share it).
    ``workers=0`` takes it from the cluster: one run per GPU for ``device='cuda'`` (and for
    ``'auto'`` on a cluster with GPUs), else one per ``cpus_per_run`` CPUs."""

    runs_here = False  # runs execute on Ray's workers: the driver needs no GPU of its own

    def __init__(
        self,
        address: str | None = None,
        workers: int = 0,
        device: str = "auto",
        cpus_per_run: float = 1.0,
        max_retries: int = 2,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"invalid workers={workers}: must be 0 (from the cluster) or more")
        check_study_device(device, runs_here=False)
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'skiplab[ray]'") from None
        self.ray = ray
        self.address, self.device = address, device
        self.cpus_per_run, self.max_retries = cpus_per_run, max_retries
        self.init_kwargs = init_kwargs or {}
        self._started_here = False
        self.connect()
        if device == "cuda" and self.ray.cluster_resources().get("GPU", 0.0) == 0:
            self.close()
            raise ValueError(
                "--device cuda with --executor ray: the Ray cluster has no GPUs; "
                "add GPU nodes or use --device cpu"
            )
        self.workers = workers or self._cluster_workers()
        log.info("Ray: %d runs at once", self.workers)

    def connect(self) -> None:
        """Join the cluster at ``address`` (or start a local one) unless connected already;
        a cluster that cannot be reached is a ``ValueError`` naming the address."""
        if self.ray.is_initialized():
            return
        kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
        if self.address:
            check_reachable(self.address)
            kwargs["address"] = self.address
        try:
            self.ray.init(**kwargs)
        except (OSError, RuntimeError) as err:  # ConnectionError: no cluster at the address
            reason = _first_line(err).rstrip(".")
            if not self.address:
                raise ValueError(f"cannot start a local Ray instance: {reason}") from None
            raise _unreachable(self.address, reason) from None
        self._started_here = True

    def close(self) -> None:
        """Disconnect, if this executor connected (a connection made by the caller stays)."""
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_here = False

    def _cluster_workers(self) -> int:
        res = self.ray.cluster_resources()
        gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 1.0)
        if self.device == "cuda" or (self.device == "auto" and gpus > 0):
            return max(1, int(gpus))
        return max(1, int(cpus // self.cpus_per_run))

    def _gpus_per_run(self) -> float:
        if self.device == "cpu":
            return 0.0
        gpus = self.ray.cluster_resources().get("GPU", 0.0)
        return 0.0 if gpus == 0 else min(1.0, gpus / self.workers)

    def map(self, jobs: list[Any], fn: Callable[[Any], dict[str, Any]], on_start: Callable[[Any], None],
            on_done: Callable[[Any, dict[str, Any]], None]) -> None:  # fmt: skip
        """Run ``jobs`` as tasks. A task whose worker (or node) is lost runs again, at most
        ``max_retries`` more times; every attempt is started (``on_start``), so the store
        counts attempts. The driver resubmits, not Ray (its own retries are off: the
        driver would not see them). Interrupted, the tasks in flight are cancelled."""
        ray = self.ray
        self.connect()
        pending: dict[Any, Any] = {}
        try:
            task = ray.remote(
                num_cpus=self.cpus_per_run, num_gpus=self._gpus_per_run(), max_retries=0
            )(_call)
            queue, tries = list(jobs), {}
            while queue or pending:
                while queue and len(pending) < self.workers:
                    job = queue.pop(0)
                    on_start(job)
                    key = getattr(job, "job_id", job)
                    tries[key] = tries.get(key, 0) + 1
                    pending[task.remote(fn, job)] = job
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                job = pending.pop(ref)
                key = getattr(job, "job_id", job)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the job function raised
                    out = {"status": "failed", "error": f"Ray task failed: {err}", "results": []}
                except Exception as err:  # noqa: BLE001 - its worker or node was lost
                    reason = f"{type(err).__name__}: {_first_line(err)}"
                    if tries[key] <= self.max_retries:
                        log.warning("run %s lost its Ray worker (%s); it starts again", key, reason)
                        queue.insert(0, job)
                        continue
                    log.warning("run %s failed on Ray: %s", key, reason)
                    out = {"status": "failed", "results": [],
                           "error": f"its Ray worker was lost ({reason}); gave up after "
                                    f"{tries[key]} attempt{'s' if tries[key] > 1 else ''}"}  # fmt: skip
                on_done(job, out)
        finally:
            for ref in pending:  # interrupted: stop what runs (a caller's Ray instance stays up)
                try:
                    ray.cancel(ref, force=True)
                except Exception as err:  # noqa: BLE001 - finished meanwhile, or Ray is gone
                    log.debug("cancel: %s", err)
            self.close()


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]
