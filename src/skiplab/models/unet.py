"""U-Net (Ronneberger et al. 2015) with switchable long skips and optional short skips.

Defaults reproduce the paper's network: 4 downsamplings, widths 64 -> 1024, two 3x3
conv + ReLU per level, 2x2 max-pool down, 2x2 transposed conv up, concatenated long
skips, a 1x1 classifier; 1 input channel and 2 classes give 31,030,658 parameters.
``padding="valid"`` reproduces the paper's unpadded convolutions and cropped skips
(572 -> 388); the default ``"same"`` keeps the input size.

Long skips give "paths of increasing nonlinearity": the top skip bypasses every level
below it, so the paths through it cross the fewest nonlinearities.
``block="residual"`` adds short skips inside each level (Drozdzal et al. 2016).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .blocks import ResidualUnit
from .layers import (
    ActLayer,
    check_choice,
    check_positive_int,
    get_act_layer,
    get_norm_layer,
)
from .resnet import UnitArgs, init_weights

SKIPS = ("concat", "add", "none")
PADDINGS = ("same", "valid")
UNET_BLOCKS = ("plain", "residual")


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop the centre of a feature map to ``size`` (the paper's crop-and-copy)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def output_size(size: int, depth: int, padding: str) -> int | None:
    """The output side length for an input side, or None if the net cannot take it."""
    shrink = 0 if padding == "same" else 4  # two unpadded 3x3 convs per level
    for _ in range(depth):
        size -= shrink
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= shrink
    if size <= 0:
        return None
    for _ in range(depth):
        size = 2 * size - shrink
        if size <= 0:
            return None
    return size


class UNet(nn.Module):
    """Encoder levels, a bottom level, decoder levels joined by per-level long skips."""

    def __init__(
        self,
        *,
        depth: int,
        base_width: int,
        skips: Sequence[str],
        block: str,
        norm: str,
        act: str | ActLayer,
        padding: str,
        in_channels: int,
        num_classes: int,
        placement: str,
    ) -> None:
        super().__init__()
        self.depth, self.padding, self.skips = depth, padding, tuple(skips)
        act_layer = get_act_layer(act)
        norm_layer = get_norm_layer(norm, dim=2)
        bias = norm_layer is None
        pad = 1 if padding == "same" else 0

        def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
            return nn.Conv2d(cin, cout, k, stride, padding=pad if k == 3 else 0, bias=bias)

        def level(cin: int, cout: int) -> nn.Module:
            if block == "residual":  # short skip around the level (Drozdzal et al. 2016)
                unit = UnitArgs(placement=placement, shortcut="projection", norm=norm)
                return ResidualUnit(
                    cin, cout, 1, conv_layer=conv, norm_layer=norm_layer, act_layer=act_layer,
                    **unit.unit_kwargs(),
                )  # fmt: skip
            parts: list[tuple[str, nn.Module]] = []
            for i, (a, b) in enumerate(((cin, cout), (cout, cout)), start=1):
                parts.append((f"conv{i}", conv(a, b)))
                if norm_layer is not None:
                    parts.append((f"norm{i}", norm_layer(b)))
                parts.append((f"act{i}", act_layer()))
            return nn.Sequential(OrderedDict(parts))

        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoder.append(level(cin, w))  # [N, w, H_l, W_l]
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = level(widths[-2], widths[-1])  # [N, 2^depth * base, H / 2^depth, ...]
        # Decoder levels, listed top (full resolution) first, like the encoder.
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, 2, bias=bias) for w in widths[:-1])
        self.decoder = nn.ModuleList(
            level(2 * w if s == "concat" else w, w)
            for w, s in zip(widths[:-1], self.skips, strict=True)
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)  # [N, classes, H_out, W_out]
        self.example_input_shape = (
            (in_channels, 572, 572) if padding == "valid" else (in_channels, 128, 128)
        )
        # Ronneberger et al. 2015: Gaussian weights of std sqrt(2 / N), N the incoming
        # nodes of one neuron (a 3x3 conv on 64 channels: N = 576).
        init_weights(self, "he", classifier=None, conv_fan="fan_in")

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"invalid input shape {tuple(x.shape)}: the U-Net takes [N, C, H, W]")
        for side in x.shape[-2:]:
            if output_size(side, self.depth, self.padding) is None:
                near = [
                    s
                    for d in range(1, 64)
                    for s in (side - d, side + d)
                    if s > 0 and output_size(s, self.depth, self.padding)
                ]
                raise ValueError(
                    f"invalid input size {tuple(x.shape[-2:])} for a U-Net of depth {self.depth} "
                    f"with padding={self.padding!r}: a side of {side} cannot be halved cleanly "
                    f"{self.depth} times; use e.g. {near[0] if near else 'a larger size'}"
                    + (f" (a multiple of {2**self.depth})" if self.padding == "same" else "")
                )

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            self.check_input(x)
        features = []
        for enc in self.encoder:
            x = enc(x)
            features.append(x)
            x = self.pool(x)  # halve H, W
        x = self.bottom(x)
        for level in reversed(range(self.depth)):
            x = self.up[level](x)  # double H, W; halve channels
            skip = self.skips[level]
            if skip != "none":
                f = center_crop(features[level], x.shape[-2:])
                x = torch.cat([f, x], dim=1) if skip == "concat" else f + x
            x = self.decoder[level](x)
        return self.head(x)


def unet(
    *,
    depth: int = 4,
    base_width: int = 64,
    skip: str | Sequence[str] = "concat",
    block: str = "plain",
    placement: str = "original",
    norm: str = "none",
    act: str = "relu",
    padding: str = "same",
    in_channels: int = 1,
    num_classes: int = 2,
) -> UNet:
    """U-Net; ``skip`` is one mode or a list with one mode per level, top level first."""
    depth = check_positive_int("depth", depth)
    base_width = check_positive_int("base_width", base_width)
    if isinstance(skip, str):
        skips = [check_choice("skip", skip, SKIPS)] * depth
    elif isinstance(skip, list | tuple):
        if len(skip) != depth:
            raise ValueError(
                f"invalid skip={list(skip)!r}: give one entry per level ({depth} for depth={depth}), "
                "top level first, each one of 'concat', 'add', 'none'"
            )
        skips = [check_choice("skip", s, SKIPS) for s in skip]
    else:
        raise ValueError(
            f"invalid skip={skip!r}: allowed: 'concat', 'add', 'none', or a list of those"
        )
    block = check_choice("block", block, UNET_BLOCKS)
    padding = check_choice("padding", padding, PADDINGS)
    if block == "residual" and padding == "valid":
        raise ValueError(
            "invalid block='residual' with padding='valid': unpadded convolutions shrink the "
            "branch but not the shortcut; use padding='same' with residual blocks"
        )
    if block == "plain" and placement != "original":
        raise ValueError(
            f"invalid placement={placement!r} with block='plain': placement only applies to "
            "block='residual'"
        )
    UnitArgs(placement=placement, shortcut="projection", norm=norm)  # validates placement, norm
    return UNet(
        depth=depth,
        base_width=base_width,
        skips=skips,
        block=block,
        norm=norm,
        act=act,
        padding=padding,
        in_channels=check_positive_int("in_channels", in_channels),
        num_classes=check_positive_int("num_classes", num_classes),
        placement=placement,
    )
