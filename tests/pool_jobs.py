"""Job functions for LocalExecutor tests; a module of their own so that spawned worker
processes can import them cheaply."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class KillsWorker:
    """Job ``victim`` ends its worker process abruptly (``os._exit(1)``, or a signal: SIGKILL
    as the kernel's OOM killer sends, SIGSEGV as a crash in native code): the first time
    only when ``marker`` names a file to create, every time when it is None."""

    def __init__(self, victim: str, marker: str | None, sig: int | None = None) -> None:
        self.victim, self.marker, self.sig = victim, marker, sig

    def __call__(self, job) -> dict:
        if job.job_id == self.victim and (self.marker is None or not os.path.exists(self.marker)):
            if self.marker is not None:
                open(self.marker, "w").close()
            time.sleep(0.2)  # let the other worker pick up its job first
            if self.sig is not None:
                os.kill(os.getpid(), self.sig)
            os._exit(1)
        time.sleep(0.5)
        return {"status": "finished", "metrics": {"job": job.job_id}, "results": []}


class Sleeps:
    """Writes its worker's pid to ``folder/JOB.pid``, then works for ``seconds``."""

    def __init__(self, folder: str, seconds: float) -> None:
        self.folder, self.seconds = folder, seconds

    def __call__(self, job) -> dict:
        (Path(self.folder) / f"{job.job_id}.pid").write_text(str(os.getpid()))
        time.sleep(self.seconds)
        return {"status": "finished", "results": []}


class KillsRun:
    """A study's own job function, except that the job ``victim`` kills its worker with
    SIGKILL first: once when ``marker`` names a file to create, every time when None."""

    def __init__(self, fn, victim: str, marker: str | None) -> None:
        self.fn, self.victim, self.marker = fn, victim, marker

    def __call__(self, job) -> dict:
        if job.job_id == self.victim and (self.marker is None or not os.path.exists(self.marker)):
            if self.marker is not None:
                open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.fn(job)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class RecordsPid:
    """Stands in for the study's job function (same arguments): writes the pid of the
    process that runs each job to ``study_dir/JOB_ID.pid`` (``/`` as ``_``)."""

    def __init__(self, study_dir: str, device: str, data_dir, threads=None) -> None:
        self.study_dir = study_dir

    def __call__(self, job) -> dict:
        name = job.job_id.replace("/", "_") + ".pid"
        (Path(self.study_dir) / name).write_text(str(os.getpid()))
        return {"status": "finished", "metrics": {}, "results": []}
