"""``shapes``: generated segmentation scenes, deterministic by seed (the U-Net default).

Each scene is a ``size`` x ``size`` image on a noisy background holding 1..``max_shapes``
filled shapes: circles (class 1), squares (class 2) and equilateral triangles (class 3),
with background class 0. Squares and triangles are randomly rotated; every shape has a
random size, position and intensity, so the class of a pixel is decided by the outline
of the shape it belongs to, not by its value: the task needs spatial context.

To keep the task learnable (a small U-Net reaches a high mean IoU), shapes never
overlap: the image is cut into a ``g x g`` grid of cells (``g = ceil(sqrt(max_shapes))``)
and each shape sits inside its own randomly chosen cell. Shape intensities (0.5..1) are
well above the background level (0..0.2) before Gaussian pixel noise of std ``noise``.

Generation is vectorised over scenes and pixels (a loop over the ``max_shapes`` slots
only); the default 1,200 scenes take well under a second.
"""

from __future__ import annotations

import math

import numpy as np

from ..models.layers import invalid
from .tensor_data import TensorData, check_int, generated_data

CLASSES = ("background", "circle", "square", "triangle")
MIN_CELL = 8  # pixels per grid cell: smaller shapes stop being recognisable


def make_scenes(
    n: int,
    rng: np.random.Generator,
    *,
    size: int = 32,
    max_shapes: int = 3,
    noise: float = 0.1,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw scenes: images float32 ``[n, channels, size, size]``, masks int64 ``[n, size, size]``."""
    g = math.ceil(math.sqrt(max_shapes))
    cell = size / g
    k = max_shapes
    # Which cells hold shapes (distinct per scene), and how many shapes each scene has.
    cells = np.argsort(rng.random((n, g * g)), axis=1)[:, :k]  # [n, k]
    count = rng.integers(1, k + 1, size=n)  # [n]
    active = np.arange(k)[None, :] < count[:, None]  # [n, k]
    cls = rng.integers(1, len(CLASSES), size=(n, k))  # [n, k] in {1, 2, 3}
    r = rng.uniform(0.3, 0.46, size=(n, k)) * cell  # circumradius: the shape fits a circle r
    slack = cell / 2 - r
    cy = (cells // g + 0.5) * cell + rng.uniform(-1, 1, size=(n, k)) * slack
    cx = (cells % g + 0.5) * cell + rng.uniform(-1, 1, size=(n, k)) * slack
    theta = rng.uniform(0, 2 * math.pi, size=(n, k))
    intensity = rng.uniform(0.5, 1.0, size=(n, k, channels))
    background = rng.uniform(0.0, 0.2, size=(n, channels))
    pixel_noise = rng.standard_normal((n, channels, size, size))

    centres = np.arange(size) + 0.5  # pixel centres
    image = np.broadcast_to(background[:, :, None, None], (n, channels, size, size)).copy()
    mask = np.zeros((n, size, size), dtype=np.int64)
    for j in range(k):
        dy = centres[None, :, None] - cy[:, j, None, None]  # [n, size, 1]
        dx = centres[None, None, :] - cx[:, j, None, None]  # [n, 1, size]
        rj = r[:, j, None, None]
        cos, sin = np.cos(theta[:, j, None, None]), np.sin(theta[:, j, None, None])
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated frame, [n, size, size]
        circle = dx**2 + dy**2 <= rj**2
        square = np.maximum(np.abs(u), np.abs(v)) <= rj / math.sqrt(2)  # inscribed in r
        # Equilateral triangle with circumradius r and a vertex at angle theta: the
        # intersection of three half-planes whose outward normals point away from the
        # vertices (angles theta + pi + 2 pi i / 3), each at distance r / 2 (the inradius).
        triangle = np.ones_like(circle)
        for i in range(3):
            phi = math.pi + 2 * math.pi * i / 3
            triangle &= u * math.cos(phi) + v * math.sin(phi) <= rj / 2
        c = cls[:, j, None, None]
        inside = np.where(c == 1, circle, np.where(c == 2, square, triangle))
        inside &= active[:, j, None, None]
        mask[inside] = np.broadcast_to(c, inside.shape)[inside]
        image = np.where(inside[:, None], intensity[:, j, :, None, None], image)
    image = image + noise * pixel_noise
    return image.astype(np.float32), mask


def load_shapes_data(
    *,
    size: int = 32,
    n_train: int = 1000,
    n_test: int = 200,
    max_shapes: int = 3,
    noise: float = 0.1,
    channels: int = 1,
    seed: int = 0,
) -> TensorData:
    """Generated segmentation scenes (circle 1, square 2, triangle 3, background 0).

    Deterministic by ``seed``: the training scenes come from the random stream
    ``(seed, 0)`` and the test scenes from ``(seed, 1)``, so changing ``n_train`` does not
    change the test set. Standard augmentation: ``"seg-flip"`` (the classes are
    mirror-symmetric).
    """
    size = check_int("size", size, MIN_CELL)
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    max_shapes = check_int("max_shapes", max_shapes, 1)
    channels = check_int("channels", channels, 1)
    seed = check_int("seed", seed, 0)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise < math.inf:
        raise invalid("noise", noise, "must be a finite number >= 0")
    fit = (size // MIN_CELL) ** 2
    if math.ceil(math.sqrt(max_shapes)) ** 2 > fit:
        raise invalid(
            "max_shapes",
            max_shapes,
            f"at most {fit} shapes fit in size={size} (each needs a {MIN_CELL}x{MIN_CELL} cell); "
            "lower max_shapes or raise size",
        )
    opts = dict(size=size, max_shapes=max_shapes, noise=float(noise), channels=channels)
    return generated_data(
        "shapes",
        "segmentation",
        lambda n, rng: make_scenes(n, rng, **opts),
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        num_classes=len(CLASSES),
        augment="seg-flip",
        options={**opts, "n_train": n_train, "n_test": n_test, "seed": seed},
        meta={"source": "skiplab.data.shapes (generated)", "classes": list(CLASSES)},
    )
