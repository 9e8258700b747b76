"""What the benchmark scripts share: the check of the device a script is asked to run on,
timing that waits for the GPU, and the name of the machine a figure was measured on.
Imported by the scripts in this folder (run them as ``python benchmarks/NAME.py``, which
puts this folder on the path)."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import torch


def fail(message: str) -> NoReturn:
    """One line on stderr naming the problem, exit status 2 (a usage error, as argparse's)."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


def require_device(
    name: str, allowed: Iterable[str] = ("cpu", "cuda"), *, option: str = "--device"
) -> torch.device:
    """The device ``name`` (e.g. ``cpu``, ``cuda``, ``cuda:1``), or ``fail`` if torch does
    not know it, the script does not run on it (``allowed`` device types) or this machine
    does not have it. ``option`` names what asked for it in the message."""
    allowed = tuple(allowed)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        fail(f"{option} {name!r}: not a torch device; choose one of {', '.join(allowed)}")
    if device.type not in allowed:
        fail(f"{option} {name!r}: this script runs on {', '.join(allowed)} only")
    if device.type == "cuda":
        fix = "use --device cpu or run" if "cpu" in allowed else "run it"
        if not torch.cuda.is_available():
            fail(
                f"{option} {name!r}: no CUDA device (torch.cuda.is_available() is False; torch "
                f"{torch.__version__}, built for CUDA {torch.version.cuda}); {fix} on a GPU machine"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"{option} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def require_model(name: str, **options: Any) -> None:
    """Exit 2 with the registry's own message when ``name`` (with ``options``) is not a
    model skiplab builds; depth-generic names such as ``resnet-8`` are models too."""
    import skiplab

    try:
        skiplab.create_model(name, **options)
    except ValueError as err:
        fail(f"--model: {err}")


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
