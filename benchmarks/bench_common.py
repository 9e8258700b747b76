"""What the benchmark scripts share: timing that waits for the GPU, and the name of the
machine a figure was measured on. Imported by the scripts in this folder (run them as
``python benchmarks/NAME.py``, which puts this folder on the path)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device | str) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device | str, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` takes, its queued GPU work included, and what it returned."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's with the number of torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine() or "cpu"
    return f"{cpu} ({torch.get_num_threads()} threads)"
