"""``digits``: scikit-learn's handwritten digits, real data that works offline.

1,797 8x8 grey images with 17 intensity levels (0..16), 10 classes: the UCI "Optical
Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998) as shipped by
``sklearn.datasets.load_digits``. skiplab splits it once, stratified and seeded.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..models.layers import invalid
from .tensor_data import TensorData, standardise

log = logging.getLogger(__name__)


def load_digits_data(*, test_size: float = 0.2, split_seed: int = 0) -> TensorData:
    """The digits as ``[N, 1, 8, 8]`` floats (pixel / 16, then standardised).

    ``test_size``: fraction of the 1,797 images held out (default 0.2: 1,437 train /
    360 test), stratified by class with ``split_seed``. Standard augmentation:
    ``"crop1"`` (shifts of up to one pixel; digits are not flipped).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if (
        isinstance(test_size, bool)
        or not isinstance(test_size, int | float)
        or not 0.0 < test_size < 1.0
    ):
        raise invalid("test_size", test_size, "must be a fraction strictly between 0 and 1")
    if (
        isinstance(split_seed, bool)
        or not isinstance(split_seed, int)
        or not 0 <= split_seed < 2**32
    ):
        raise invalid("split_seed", split_seed, "must be an integer in [0, 2**32)")

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)
    # A stratified split needs every class in both parts (scikit-learn rounds the test part up).
    n, classes = len(labels), len(np.unique(labels))
    n_test = math.ceil(test_size * n)
    if min(n_test, n - n_test) < classes:
        raise invalid(
            "test_size",
            test_size,
            f"gives {n - n_test} train / {n_test} test images; a stratified split needs at "
            f"least {classes} (one per class) in each, so use a fraction in "
            f"[{classes / n:.3f}, {1 - classes / n:.3f}]",
        )
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=float(test_size),
        stratify=labels,
        random_state=split_seed,
    )
    x = torch.from_numpy(images)[:, None]  # [N, 1, 8, 8]
    y = torch.from_numpy(labels)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    train_x, test_x, mean, std = standardise(x[train_idx], x[test_idx])  # indexing copies
    log.debug("digits: %d train / %d test", len(train_idx), len(test_idx))
    return TensorData(
        name="digits",
        task="classification",
        train_x=train_x,
        train_y=y[train_idx],
        test_x=test_x,
        test_y=y[test_idx],
        num_classes=10,
        augment="crop1",
        meta={
            "source": "sklearn.datasets.load_digits (UCI optical digits, Alpaydin & Kaynak 1998)",
            "split": "stratified train_test_split",
            "split_seed": split_seed,
            "test_size": float(test_size),
            "n_train": len(train_idx),
            "n_test": len(test_idx),
            "mean": mean,
            "std": std,
            "options": {"test_size": float(test_size), "split_seed": split_seed},
        },
    )
