"""Provenance recorded in every run and report: versions, git commit, device."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def git_commit(root: Path | None = None) -> str | None:
    """The commit of the skiplab source tree, when it is a git checkout.

    Only a repository that tracks this file counts: an installed skiplab inside the
    user's own repository (a virtual environment in a project folder) has no commit."""
    root = Path(__file__).resolve().parent if root is None else Path(root)

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "provenance.py") is None:
        return None
    return git("rev-parse", "HEAD") or None


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():  # e.g. a CPU-only Ray driver of GPU workers
            return "cuda (no GPU visible to this process)"
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    from . import __version__

    info: dict[str, Any] = {
        "skiplab": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device is not None:
        info["device"] = device_name(device)
    return info
