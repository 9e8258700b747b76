"""Job functions for LocalExecutor tests; a module of their own so that spawned worker
processes can import them cheaply."""

from __future__ import annotations

import os
import time


class KillsWorker:
    """Job ``victim`` ends its worker process abruptly: the first time only when
    ``marker`` names a file to create, every time when it is None."""

    def __init__(self, victim: str, marker: str | None) -> None:
        self.victim, self.marker = victim, marker

    def __call__(self, job) -> dict:
        if job.job_id == self.victim and (self.marker is None or not os.path.exists(self.marker)):
            if self.marker is not None:
                open(self.marker, "w").close()
            time.sleep(0.2)  # let the other worker pick up its job first
            os._exit(1)
        time.sleep(0.5)
        return {"status": "finished", "metrics": {"job": job.job_id}, "results": []}
