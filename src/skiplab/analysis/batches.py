"""The ``data`` argument of analyses that read a data set: ``(x, y)`` tensors or an
iterable of ``(x, y)`` batches, turned into batches in one place, with one message for
data that is neither."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch import Tensor

_SEVERAL_INPUTS = (
    "invalid data: a batch of {got}; expected (x, y) with one input tensor x and one target "
    "tensor y (for a model with several inputs, wrap it in a module that takes one tensor)"
)


def xy_batches(
    data: Any, batch_size: int | None = None, *, reiterable: bool = False
) -> Iterable[tuple[Tensor, Tensor]]:
    """``(x, y)`` tensors -> chunks of ``batch_size`` samples (default: one batch); an
    iterable of ``(x, y)`` batches is passed on, or listed (references, no copies) when
    ``reiterable``, for analyses that go over the data many times."""
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"invalid data: x has {x.shape[0]} samples and y has {y.shape[0]}; "
                "expected (x, y) tensors with the same first dimension"
            )
        n = x.shape[0]
        step = batch_size or max(n, 1)
        return [(x[i : i + step], y[i : i + step]) for i in range(0, n, step)]
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and isinstance(data[0], tuple | list)
        and isinstance(data[1], Tensor)
    ):
        raise ValueError(_SEVERAL_INPUTS.format(got=f"({type(data[0]).__name__}, Tensor)"))
    if isinstance(data, Tensor):
        raise ValueError(
            f"invalid data: a single tensor of shape {tuple(data.shape)}; pass (x, y) tensors "
            "(inputs and targets) or an iterable of (x, y) batches such as a DataLoader"
        )
    if not isinstance(data, Iterable):
        raise ValueError(
            f"invalid data of type {type(data).__name__}: expected (x, y) tensors or an "
            "iterable of (x, y) batches"
        )
    return list(_pairs(data)) if reiterable else _pairs(data)


def _pairs(data: Iterable[Any]) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in data:
        if isinstance(batch, Tensor) or not isinstance(batch, Sequence) or len(batch) < 2:
            got = type(batch).__name__
            raise ValueError(
                f"invalid data: a batch of type {got}; expected (x, y) tensors or an iterable "
                "of (x, y) batches"
            )
        x, y = batch[0], batch[1]
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError(
                _SEVERAL_INPUTS.format(got=f"({type(x).__name__}, {type(y).__name__})")
            )
        yield x, y
