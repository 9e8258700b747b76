"""Batched, on-device data augmentation and a deterministic batch iterator.

Augmentation kinds (the ``augment`` string of a :class:`~skiplab.data.TensorData`):

- ``"none"``: the batch unchanged.
- ``"crop-flip"``: the CIFAR standard of He et al. 2015 (Sec. 4.2): zero-pad 4 pixels
  on each side, take a random crop of the original size, and flip horizontally with
  probability 1/2. Same as ``"crop4-flip"``.
- ``"crop<N>"``: zero-pad ``N`` pixels, random crop, no flip (for digits: ``"crop1"`` on
  8x8 digits, ``"crop2"`` on 28x28 MNIST), i.e. random shifts of up to ``N`` pixels.
- ``"crop<N>-flip"``: the same plus the random horizontal flip.
- ``"seg-flip"``: random horizontal flip of image and mask together (segmentation).

Padding is with zeros *after* normalisation (the channel mean), as in fb.resnet.torch's
CIFAR pipeline. When the targets are masks (``y`` of shape ``[N, H, W]``) every kind
moves the mask with the image; padded mask pixels get class 0 (background).

All randomness comes from the ``torch.Generator`` passed in, so the same generator state
gives the same batch. The generator may live on the CPU or on the data's device: random
numbers are drawn on the generator's device and moved to the data (a CPU generator thus
gives the same augmentation on CPU and GPU).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.layers import invalid

AUGMENT_KINDS = ("none", "crop-flip", "crop<N>", "crop<N>-flip", "seg-flip")
_CROP = re.compile(r"crop(\d+)(-flip)?")


@dataclass(frozen=True)
class AugmentSpec:
    """A parsed augmentation kind: padding for the random crop, flip, mask required."""

    pad: int = 0
    flip: bool = False
    needs_mask: bool = False

    @property
    def is_identity(self) -> bool:
        return self.pad == 0 and not self.flip


def parse_augment(kind: str) -> AugmentSpec:
    """Parse an augmentation kind (see the module docstring); raises ``ValueError``."""
    if kind == "none":
        return AugmentSpec()
    if kind == "crop-flip":
        return AugmentSpec(pad=4, flip=True)
    if kind == "seg-flip":
        return AugmentSpec(flip=True, needs_mask=True)
    m = _CROP.fullmatch(kind) if isinstance(kind, str) else None
    if m is None or int(m.group(1)) < 1:
        raise invalid("augment", kind, AUGMENT_KINDS)
    return AugmentSpec(pad=int(m.group(1)), flip=m.group(2) is not None)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move ``t`` to ``device``; CPU -> GPU through pinned memory without blocking, so that
    drawing random numbers on the CPU does not make the CPU wait for the GPU every batch
    (a plain ``.to("cuda")`` synchronises, which would stall a CUDA-graph training loop)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _randint(
    high: int, size: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> Tensor:
    # Draw on the generator's own device (CUDA generators only make CUDA tensors), then move.
    t = torch.randint(0, high, size, generator=generator, device=generator.device)
    return to_device(t, device)


def augment_batch(
    x: Tensor, y: Tensor, kind: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Augment a batch ``x`` ``[N, C, H, W]`` (and ``y`` when it is a mask ``[N, H, W]``).

    Vectorised: one pad, then two ``gather`` calls with per-sample row and column
    indices, so the cost does not depend on a Python loop over samples.
    """
    spec = parse_augment(kind)
    if spec.is_identity:
        return x, y
    if x.dim() != 4:
        raise ValueError(f"invalid x of shape {tuple(x.shape)}: augment_batch needs [N, C, H, W]")
    if len(y) != len(x):
        raise ValueError(f"invalid y: {len(y)} targets for {len(x)} inputs")
    n, c, h, w = x.shape
    is_mask = y.dim() == 3 and tuple(y.shape[1:]) == (h, w)
    if spec.needs_mask and not is_mask:
        raise ValueError(
            f"invalid augment={kind!r} for targets of shape {tuple(y.shape)}: it flips "
            "segmentation masks [N, H, W]; use 'crop<N>-flip' or 'crop-flip' for classification"
        )
    p = spec.pad
    # Random draws, always in this order: crop offsets (if any), then flips (if any).
    if p:
        offsets = _randint(2 * p + 1, (2, n), generator, x.device)  # [2, N] in [0, 2p]
    else:
        offsets = torch.zeros(2, n, dtype=torch.long, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)  # [N, W]
    if spec.flip:
        flip = _randint(2, (n,), generator, x.device).bool()  # [N]
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [N, H] in padded coords
    cols = offsets[1, :, None] + cols  # [N, W] in padded coords

    def apply(t: Tensor) -> Tensor:  # t: [N, C', H, W]
        if p:
            t = F.pad(t, (p, p, p, p))  # [N, C', H + 2p, W + 2p], zeros
        ch, wp = t.shape[1], t.shape[3]
        t = t.gather(2, rows[:, None, :, None].expand(n, ch, h, wp))  # [N, C', H, W + 2p]
        return t.gather(3, cols[:, None, None, :].expand(n, ch, h, w))  # [N, C', H, W]

    x = apply(x)
    if is_mask:
        y = apply(y[:, None])[:, 0]
    return x, y


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: str = "none",
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x_batch, y_batch)`` over one epoch, on the tensors' device.

    With ``shuffle`` the order is ``torch.randperm`` drawn from ``generator``; then each
    batch is augmented with ``augment`` (drawing from the same generator). Given the same
    generator state the batches are bit-identical, so a trainer that seeds a fresh
    generator from (seed, epoch) reproduces an epoch exactly on resume. Without
    ``drop_last`` every sample appears exactly once per epoch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid("batch_size", batch_size, "must be a positive integer")
    if len(x) != len(y):
        raise ValueError(f"invalid y: {len(y)} targets for {len(x)} inputs")
    spec = parse_augment(augment)
    if generator is None and (shuffle or not spec.is_identity):
        raise ValueError(
            "invalid generator=None: shuffle=True or augment other than 'none' needs a "
            "torch.Generator (seed it, e.g. from (seed, epoch), for reproducible batches)"
        )
    return _batches(x, y, batch_size, shuffle, generator, augment, spec.is_identity, drop_last)


def _batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: str,
    identity: bool,
    drop_last: bool,
) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(x)
    order = None
    if shuffle:
        assert generator is not None
        order = to_device(torch.randperm(n, generator=generator, device=generator.device), x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[to_device(idx, y.device)]
        if not identity:
            assert generator is not None
            xb, yb = augment_batch(xb, yb, augment, generator)
        yield xb, yb
