"""``TensorData``: a whole data set as four tensors, small enough to live on one device.

Every loader in :mod:`skiplab.data` returns one. Inputs are float32 ``[N, C, H, W]``,
normalised per channel by the training split's mean and standard deviation; targets are
int64 class indices, ``[N]`` for classification and ``[N, H, W]`` for segmentation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..models.layers import invalid

TASKS = ("classification", "segmentation")


@dataclass
class TensorData:
    """A train/test split held as tensors, with what a trainer needs to know about it."""

    name: str
    task: str  # "classification" | "segmentation"
    train_x: Tensor  # float32 [N, C, H, W], normalised
    train_y: Tensor  # int64 [N] or [N, H, W]
    test_x: Tensor  # float32 [M, C, H, W], normalised with the train statistics
    test_y: Tensor  # int64 [M] or [M, H, W]
    num_classes: int
    augment: str  # the data set's standard augmentation kind (see ``augment_batch``)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-safe provenance

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"invalid task={self.task!r}; allowed: {', '.join(map(repr, TASKS))}")
        y_dims = 1 if self.task == "classification" else 3
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.dim() != 4 or not x.is_floating_point():
                raise ValueError(
                    f"invalid {split}_x: expected a float tensor [N, C, H, W], got "
                    f"{x.dtype} {tuple(x.shape)}"
                )
            if y.dim() != y_dims or y.dtype != torch.int64 or len(y) != len(x):
                raise ValueError(
                    f"invalid {split}_y for task={self.task!r}: expected int64 with "
                    f"{y_dims} dim(s) and {len(x)} rows, got {y.dtype} {tuple(y.shape)}"
                )
            if self.task == "segmentation" and y.shape[1:] != x.shape[2:]:
                raise ValueError(
                    f"invalid {split}_y: mask size {tuple(y.shape[1:])} differs from "
                    f"image size {tuple(x.shape[2:])}"
                )

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one input."""
        return tuple(int(s) for s in self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> TensorData:
        """A copy with every tensor on ``device`` (small sets can live on the GPU)."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            meta=dict(self.meta),
        )

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> TensorData:
        """The first ``n_train`` training and ``n_test`` test samples (``None``: all).

        For quick runs and tests. The normalisation statistics stay those of the full
        training split. Asking for more samples than there are takes them all.
        """
        for option, n in (("n_train", n_train), ("n_test", n_test)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"invalid {option}={n!r}: must be a positive integer or None")
        meta = dict(self.meta)
        out = dataclasses.replace(
            self,
            train_x=self.train_x[:n_train],
            train_y=self.train_y[:n_train],
            test_x=self.test_x[:n_test],
            test_y=self.test_y[:n_test],
            meta=meta,
        )
        meta["subset"] = {"n_train": len(out.train_x), "n_test": len(out.test_x)}
        return out

    def __repr__(self) -> str:
        return (
            f"TensorData({self.name!r}, task={self.task!r}, train={len(self.train_x)}, "
            f"test={len(self.test_x)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, augment={self.augment!r}, "
            f"device={self.train_x.device})"
        )


def check_int(option: str, value: object, low: int) -> int:
    """``value`` if it is an integer >= ``low`` (not a bool); else the one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(option, value, f"must be an integer >= {low}")
    return value


def standardise(train_x: Tensor, test_x: Tensor) -> tuple[Tensor, Tensor, list[float], list[float]]:
    """Normalise both splits per channel by the training split's mean and std (in place).

    Returns the normalised tensors and the statistics (as lists, for ``meta``).
    """
    var, mean = torch.var_mean(train_x, dim=(0, 2, 3), correction=0, keepdim=True)
    std = var.sqrt().clamp_min(1e-8)
    train_x = train_x.sub_(mean).div_(std)
    test_x = test_x.sub_(mean).div_(std)
    return train_x, test_x, mean.flatten().tolist(), std.flatten().tolist()


def generated_data(
    name: str,
    task: str,
    make: Callable[[int, Any], tuple[Any, Any]],
    *,
    n_train: int,
    n_test: int,
    seed: int,
    num_classes: int,
    augment: str,
    options: dict[str, Any],
    meta: dict[str, Any],
) -> TensorData:
    """A generated data set: ``make(n, rng)`` gives numpy ``(x, y)``; the training split
    comes from the random stream ``(seed, 0)`` and the test split from ``(seed, 1)``, so
    changing ``n_train`` leaves the test set as it was. Normalised by the training split;
    ``meta`` (the source, ...) is completed with the split sizes, seed, mean/std and the
    options that rebuild the set."""
    import numpy as np

    train_x, train_y = make(n_train, np.random.default_rng([seed, 0]))
    test_x, test_y = make(n_test, np.random.default_rng([seed, 1]))
    tx, vx, mean, std = standardise(torch.from_numpy(train_x), torch.from_numpy(test_x))
    return TensorData(
        name=name,
        task=task,
        train_x=tx,
        train_y=torch.from_numpy(train_y),
        test_x=vx,
        test_y=torch.from_numpy(test_y),
        num_classes=num_classes,
        augment=augment,
        meta={
            **meta,
            "split_seed": seed,
            "n_train": n_train,
            "n_test": n_test,
            "mean": mean,
            "std": std,
            "options": options,
        },  # fmt: skip
    )
