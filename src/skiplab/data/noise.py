"""``random``: Gaussian-noise images with uniformly random labels, deterministic by seed.

There is nothing to learn here except the training set itself: test accuracy stays at
chance (1 / ``classes``) and training accuracy rises only as the network memorises
(Zhang et al. 2017, "Understanding deep learning requires rethinking generalization",
random labels and Gaussian inputs). The set is for what needs images of the right shape
and no files: throughput benchmarks, many small runs at once on one device, and
memorisation studies on machines without CIFAR. The default is CIFAR-shaped (3x32x32,
10 classes) with CIFAR's standard augmentation, ``"crop-flip"``.

Generation is one vectorised draw per split; the default 10,000 + 1,000 images take a
fraction of a second.
"""

from __future__ import annotations

import numpy as np

from .tensor_data import TensorData, check_int, generated_data


def make_noise(
    n: int, rng: np.random.Generator, *, size: int, channels: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images float32 ``[n, channels, size, size]`` of N(0, 1) pixels, labels int64 ``[n]``."""
    images = rng.standard_normal((n, channels, size, size), dtype=np.float32)
    labels = rng.integers(0, classes, size=n, dtype=np.int64)
    return images, labels


def load_random_data(
    *,
    n_train: int = 10000,
    n_test: int = 1000,
    size: int = 32,
    channels: int = 3,
    classes: int = 10,
    seed: int = 0,
) -> TensorData:
    """Gaussian-noise images with uniformly random labels (default: CIFAR-10's shape).

    Deterministic by ``seed``: the training split comes from the random stream
    ``(seed, 0)`` and the test split from ``(seed, 1)``, so changing ``n_train`` does not
    change the test set. Standard augmentation: ``"crop-flip"`` (as for CIFAR).
    """
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    size = check_int("size", size, 1)
    channels = check_int("channels", channels, 1)
    classes = check_int("classes", classes, 2)
    seed = check_int("seed", seed, 0)
    opts = dict(size=size, channels=channels, classes=classes)
    return generated_data(
        "random",
        "classification",
        lambda n, rng: make_noise(n, rng, **opts),
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        num_classes=classes,
        augment="crop-flip",
        options={"n_train": n_train, "n_test": n_test, **opts, "seed": seed},
        meta={"source": "skiplab.data.noise (generated: N(0, 1) pixels, uniform random labels)"},
    )
