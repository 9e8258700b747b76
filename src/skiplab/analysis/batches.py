"""The ``data`` argument of analyses that read a data set: ``(x, y)`` tensors or an
iterable of ``(x, y)`` batches, turned into batches in one place, with one message for
data that is neither."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
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


# The dtypes of integer class labels: cross-entropy targets, checked against the outputs.
LABEL_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def class_scores(out: Any, y: Tensor) -> bool:
    """Whether ``out`` holds class scores ``[N, C, ...]`` for the labels ``y`` ``[N, ...]``
    (one score per class at each target position)."""
    return isinstance(out, Tensor) and out.dim() >= 2 and out.shape[:1] + out.shape[2:] == y.shape


def check_class_targets(out: Any, targets: Sequence[Tensor], analysis: str) -> None:
    """Raise ``ValueError`` when integer class targets fall outside ``0..C-1`` for class
    scores ``out`` ``[N, C, ...]`` (the output for a sample or more of the data), before
    cross-entropy fails on them (on CUDA with a device-side assert) or accuracy silently
    counts them as wrong. All the ``targets`` are read with one copy to the host (call it
    once, not per batch). Outputs and targets that are not class scores and labels (float
    targets, other shapes) are left to the analysis's own checks."""
    if not isinstance(out, Tensor) or out.dim() < 2 or out.shape[1] == 0:
        return
    ys = [
        y
        for y in targets
        if isinstance(y, Tensor)
        and y.dtype in LABEL_DTYPES
        and y.numel()
        and y.shape[1:] == out.shape[2:]
    ]
    if not ys:
        return
    device = ys[0].device
    # (min, max) of each batch [B, 2], then one copy to the host.
    ranges = torch.stack([torch.stack([v.long() for v in torch.aminmax(y)]).to(device) for y in ys])
    lo, hi = torch.stack([ranges[:, 0].min(), ranges[:, 1].max()]).tolist()
    num = out.shape[1]
    if lo >= 0 and hi < num:
        return
    problem = []
    if hi >= num:
        problem.append(f"the largest label is {hi}")
    if lo < 0:
        problem.append(f"the smallest label is {lo}")
    fix = f"pass class labels in 0..{num - 1}"
    if hi >= num and lo >= 0:
        fix = f"build the model with num_classes={hi + 1}, or {fix}"
    raise ValueError(
        f"{analysis}: class targets out of range: {' and '.join(problem)}, but the model has "
        f"{num} outputs (classes 0..{num - 1}); {fix}"
    )


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


@contextlib.contextmanager
def quiet_vmap_fallback() -> Iterator[None]:
    """Silence ``vmap``'s warning that an op has no batching rule and falls back to a slow
    loop (attention's backward, ``as_strided_`` in Swin): nothing the caller can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="There is a performance drop because we have not yet"
        )
        yield
