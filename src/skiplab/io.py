"""Files written atomically: every run folder, checkpoint, result and report is written
through here, so that a kill at any moment leaves the old file or the new one. Also
``one_line``, which puts an error's text on one line for the messages users read."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file in the same folder, which
    is fsynced and renamed over ``path`` (a kill at any moment leaves the old file or the
    new one, never a torn one); the temp file is removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file + fsync + rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(Path(path), write)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(Path(path), write)


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` (an exception, a message) on one line: runs of whitespace, newlines
    included, become one space; cut to ``limit`` characters, ending in ``...``, if given."""
    out = " ".join(str(text).split())
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 3)] + "..."
    return out
