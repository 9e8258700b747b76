"""Files written atomically: every run folder, checkpoint, result and report is written
through here, so that a kill at any moment leaves the old file or the new one. Also the
helpers of the messages users read: ``one_line`` (an error's text on one line) and
``differences`` (where a stored run or spec differs from the one asked for)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
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


class _Missing:
    """The value of a key one side of ``differences`` does not have."""

    def __repr__(self) -> str:
        return "(not set)"


MISSING = _Missing()


def differences(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Where two JSON-like values differ, leaf by leaf: ``(where, old_value, new_value)``
    with ``where`` a dotted path (``recipe.epochs``, ``models[2]``) and ``MISSING`` for a
    key only one side has. Mappings and lists of one length are walked into; anything else
    that differs is one difference at ``path`` (``""`` for the values themselves)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            a, b = old.get(key, MISSING), new.get(key, MISSING)
            if a is MISSING or b is MISSING:
                yield where, a, b
            elif a != b:
                yield from differences(a, b, where)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                yield from differences(a, b, f"{path}[{i}]")
    elif old != new:
        yield path, old, new
