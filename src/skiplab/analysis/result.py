"""The contract every analysis result follows (captum-style: a function returns a dataclass).

A result is a dataclass with ``to_dict()`` (JSON-safe), ``plot(ax=None)`` (matplotlib,
returns the Axes), ``summary()`` (a few lines of text for the CLI) and a readable repr.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch


def to_jsonable(value: Any) -> Any:
    """Tensors and arrays to lists, dataclasses and mappings recursively; big ints stay exact
    (Python ints in JSON), non-finite floats become None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Result:
    """Mixin for analysis result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def summary(self) -> str:  # pragma: no cover - each result overrides
        return repr(self)

    def plot(self, ax: Any = None) -> Any:  # pragma: no cover - each result overrides
        raise NotImplementedError


def new_axes(ax: Any = None, figsize: tuple[float, float] = (6.0, 4.0)) -> Any:
    """``ax`` or a fresh Axes on a new figure (Agg backend; no window opens)."""
    if ax is not None:
        return ax
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _fig, ax = plt.subplots(figsize=figsize)
    return ax
