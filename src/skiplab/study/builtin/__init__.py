"""Built-in study specs shipped with skiplab (YAML files in this folder)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def list_builtin() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def builtin_path(name: str, missing_ok: bool = False) -> Path | None:
    path = HERE / f"{name}.yaml"
    if path.is_file():
        return path
    if missing_ok:
        return None
    raise ValueError(f"unknown built-in study {name!r}; built-in: {', '.join(list_builtin())}")
