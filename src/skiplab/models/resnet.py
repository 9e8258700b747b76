"""ResNets: one class for CIFAR and ImageNet, plain, post- and pre-activation networks.

Builders differ only in data (a table of depths), never in code (STYLE 2).

- CIFAR (He et al. 2015, Sec. 4.2): a 3x3 stem with 16 channels, three stages of n units
  with widths 16/32/64 (basic, depth 6n+2) or 64/128/256 out with 16/32/64 inside
  (bottleneck, depth 9n+2, He et al. 2016), global average pooling and a classifier.
- ImageNet (torchvision's ResNet v1.5 layout): a 7x7 stride-2 stem and a max-pool, four
  stages of widths 64/128/256/512 (x4 for bottlenecks).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .blocks import PREACT_PLACEMENTS, ResidualUnit, check_unit_options
from .layers import (
    NORM_TYPES,
    ActLayer,
    ConvLayer,
    NormLayer,
    ScalarBias,
    check_choice,
    check_positive_float,
    check_positive_int,
    conv2d_layer,
    get_act_layer,
    get_norm_layer,
)

INITS = ("he", "zero-last-norm", "fixup")
BLOCKS = ("basic", "bottleneck")


@dataclass(frozen=True)
class UnitArgs:
    """The options every residual model passes to its units, validated once."""

    placement: str = "original"
    shortcut: str = "identity"
    shortcut_scale: float | None = None
    shortcut_dropout: float | None = None
    gate_bias: float | None = None
    branch_scale: float | str = 1.0
    init: str = "he"
    norm: str = "batch"

    def __post_init__(self) -> None:
        check_unit_options(
            self.placement,
            self.shortcut,
            self.shortcut_scale,
            self.shortcut_dropout,
            self.gate_bias,
            self.branch_scale,
        )
        init = check_choice("init", self.init, INITS)
        norm_name = self.norm if isinstance(self.norm, str) else "custom"
        if init == "fixup" and norm_name != "none":
            raise ValueError(
                f"invalid init='fixup' with norm={norm_name!r}: Fixup replaces normalisation; "
                "use norm='none' with init='fixup', or init='he'/'zero-last-norm' with a norm"
            )
        if init == "zero-last-norm" and norm_name == "none":
            raise ValueError(
                "invalid init='zero-last-norm' with norm='none': there is no norm to zero; "
                "use a norm ('batch', 'group', 'layer') or init='fixup'"
            )
        if self.shortcut == "none":
            for option, value, bad in (
                ("init", init, ("zero-last-norm", "fixup")),
                ("branch_scale", self.branch_scale, ("rezero",)),
            ):
                if value in bad:
                    raise ValueError(
                        f"invalid {option}={value!r} with shortcut='none': it silences the "
                        "branch, and a plain unit has no shortcut to carry the signal; use a "
                        "residual shortcut or init='he'"
                    )

    def unit_kwargs(self) -> dict:
        return dict(
            placement=self.placement,
            shortcut=self.shortcut,
            shortcut_scale=self.shortcut_scale,
            shortcut_dropout=self.shortcut_dropout,
            gate_bias=self.gate_bias,
            branch_scale=self.branch_scale,
            fixup=self.init == "fixup",
        )


def resolve_parts(
    act: str | ActLayer, norm: str | NormLayer, init: str, dim: int
) -> tuple[ActLayer, NormLayer | None, bool]:
    """(act_layer, norm_layer, conv bias) for a model; Fixup puts scalar biases where norms go."""
    act_layer = get_act_layer(act)
    norm_layer = get_norm_layer(norm, dim=dim)
    if init == "fixup":
        norm_layer = lambda _c: ScalarBias()  # noqa: E731
    return act_layer, norm_layer, norm_layer is None


def stem_tail(placement: str, norm_layer: NormLayer | None, act_layer: ActLayer, ch: int) -> list:
    """What follows the stem's weight layer: norm + act, unless the first unit pre-activates."""
    parts: list[tuple[str, nn.Module]] = []
    if norm_layer is not None and placement != "full-preact":
        parts.append(("norm", norm_layer(ch)))
    if placement not in PREACT_PLACEMENTS:
        parts.append(("act", act_layer()))
    return parts


def head_pre(placement: str, norm_layer: NormLayer | None, act_layer: ActLayer, ch: int) -> list:
    """Pre-activation nets end with the activation the last unit left out (He et al. 2016)."""
    parts: list[tuple[str, nn.Module]] = []
    if placement == "full-preact" and norm_layer is not None:
        parts.append(("norm", norm_layer(ch)))
    if placement in PREACT_PLACEMENTS:
        parts.append(("act", act_layer()))
    return parts


def fixup_bias(init: str) -> list:
    """Fixup's scalar bias before the classifier (Zhang et al. 2019, rule 3)."""
    return [("bias", ScalarBias())] if init == "fixup" else []


def incoming(conv: nn.Conv2d | nn.ConvTranspose2d) -> int:
    """Inputs of one output unit of ``conv`` (Ronneberger et al.'s N): input channels
    (per group) times the kernel taps that reach one output, k*k for a conv, (k/s)^2 for a
    transposed conv (4 taps of a 2x2 stride-2 up-conv reach 4 different outputs)."""
    taps = math.prod(
        max(1, k // s) if isinstance(conv, nn.ConvTranspose2d) else k
        for k, s in zip(conv.kernel_size, conv.stride, strict=True)
    )
    return conv.in_channels // conv.groups * taps


def init_weights(
    model: nn.Module, init: str, classifier: nn.Module | None, conv_fan: str = "fan_out"
) -> None:
    """He init for weight layers, norms at 1/0, then the chosen init's quirks, applied by
    the units themselves. Convs: ``"fan_out"``, std sqrt(2 / (k*k*out)) as in He et al.'s
    code and torchvision; ``"fan_in"``, std sqrt(2 / N) with N the inputs of one output
    unit (``incoming``; Ronneberger et al. 2015)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if conv_fan == "fan_in":
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / incoming(m)))
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m is not classifier:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORM_TYPES) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    units = [m for m in model.modules() if isinstance(m, ResidualUnit)]
    if init == "zero-last-norm":
        for u in units:
            u.zero_init_last()
    elif init == "fixup":
        for u in units:
            u.fixup_init(len(units))
        if classifier is not None:
            nn.init.zeros_(classifier.weight)
            if classifier.bias is not None:
                nn.init.zeros_(classifier.bias)


class ResNet(nn.Module):
    """A stem, stages of residual (or plain) units, and a pooled linear classifier.

    ``stages`` is a list of ``(units, out_channels, stride)``; everything else is options
    (``stride_first``: a bottleneck's stride on its first 1x1 layer, not on its k x k).
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, int, int]],
        *,
        stem: str = "cifar",
        stem_channels: int = 16,
        bottleneck: bool = False,
        mid_divisor: int = 4,
        stride_first: bool = False,
        unit: UnitArgs,
        act: str | ActLayer = "relu",
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        act_layer, norm_layer, bias = resolve_parts(act, unit.norm, unit.init, dim=2)
        conv: ConvLayer = conv2d_layer(bias=bias)
        placement = unit.placement

        # Stem. CIFAR: 3x3 conv; ImageNet: 7x7 stride-2 conv and a 3x3 stride-2 max-pool.
        if stem == "cifar":
            parts = [("conv", nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=bias))]
            parts += stem_tail(placement, norm_layer, act_layer, stem_channels)
        else:
            parts = [("conv", nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=bias))]
            parts += stem_tail(placement, norm_layer, act_layer, stem_channels)
            parts.append(("pool", nn.MaxPool2d(3, 2, 1)))
        self.stem = nn.Sequential(OrderedDict(parts))  # [N, C0, H, W] (ImageNet: H/4, W/4)

        stage_modules = []
        ch = stem_channels
        for n, out_ch, stride in stages:
            units = []
            for i in range(n):
                units.append(
                    ResidualUnit(
                        ch,
                        out_ch,
                        stride if i == 0 else 1,
                        conv_layer=conv,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                        bottleneck=bottleneck,
                        mid_channels=out_ch // mid_divisor if bottleneck else None,
                        stride_first=stride_first,
                        **unit.unit_kwargs(),
                    )
                )
                ch = out_ch
            stage_modules.append(nn.Sequential(*units))
        first = stage_modules[0][0] if stage_modules and len(stage_modules[0]) else None
        if placement in PREACT_PLACEMENTS and first is not None and first.shortcut is not None:
            # He et al. 2016, Sec. 4: "for the first Residual Unit (that follows a
            # stand-alone convolutional layer, conv1), we adopt the first activation right
            # after conv1 and before splitting into two paths": its shortcut, identity or
            # not, reads the pre-activated input (He et al.'s code: 'both_preact').
            first.shortcut_reads_preact = True
        self.stages = nn.Sequential(*stage_modules)  # [N, C_last, H / 2^(stages-1), ...]

        head = head_pre(placement, norm_layer, act_layer, ch)
        head += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
        head += fixup_bias(unit.init)
        head.append(("fc", nn.Linear(ch, num_classes)))
        self.head = nn.Sequential(OrderedDict(head))  # [N, num_classes]
        self.num_features = ch
        self.example_input_shape = (
            (in_channels, 32, 32) if stem == "cifar" else (in_channels, 224, 224)
        )
        init_weights(self, unit.init, classifier=self.head.fc)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


# --------------------------------------------------------------------------- builders


def _unit_args(
    placement: str,
    shortcut: str | None,
    default_shortcut: str,
    shortcut_scale: float | None,
    shortcut_dropout: float | None,
    gate_bias: float | None,
    branch_scale: float | str,
    init: str,
    norm: str | NormLayer,
) -> UnitArgs:
    return UnitArgs(
        placement=placement,
        shortcut=default_shortcut if shortcut is None else shortcut,
        shortcut_scale=shortcut_scale,
        shortcut_dropout=shortcut_dropout,
        gate_bias=gate_bias,
        branch_scale=branch_scale,
        init=init,
        norm=norm,
    )


def _widths(base: Sequence[int], width: float) -> list[int]:
    width = check_positive_float("width", width)
    return [max(1, round(w * width)) for w in base]


def cifar_stages(depth: int, block: str | None) -> tuple[str, int]:
    """(block, units per stage) for a CIFAR depth; a clear error for any other depth."""
    depth = check_positive_int("depth", depth)
    if block is None:
        if depth >= 164 and (depth - 2) % 9 == 0:
            block = "bottleneck"
        elif (depth - 2) % 6 == 0 and depth >= 8:
            block = "basic"
        else:
            raise ValueError(
                f"invalid depth={depth}: CIFAR nets have depth 6n+2 with basic blocks "
                "(8, 14, 20, 32, 44, 56, 110, 1202, ...) or 9n+2 >= 164 with bottleneck "
                "blocks (164, 1001, ...)"
            )
    block = check_choice("block", block, BLOCKS)
    per_unit = 2 if block == "basic" else 3
    if (depth - 2) % (3 * per_unit) or depth < 2 + 3 * per_unit:
        raise ValueError(
            f"invalid depth={depth} with block={block!r}: {block} CIFAR nets have depth "
            f"{3 * per_unit}n+2 (n >= 1)"
        )
    return block, (depth - 2) // (3 * per_unit)


def cifar_resnet(
    *,
    depth: int,
    block: str | None = None,
    placement: str = "original",
    shortcut: str | None = None,
    shortcut_scale: float | None = None,
    shortcut_dropout: float | None = None,
    gate_bias: float | None = None,
    branch_scale: float | str = 1.0,
    init: str = "he",
    act: str = "relu",
    norm: str = "batch",
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = 10,
) -> ResNet:
    """CIFAR ResNet of He et al. 2015 (basic, 6n+2) and 2016 (bottleneck, 9n+2).

    Default shortcut: option A ('identity') for basic blocks, B ('projection') for bottlenecks.
    """
    block, n = cifar_stages(depth, block)
    bottleneck = block == "bottleneck"
    unit = _unit_args(
        placement,
        shortcut,
        "projection" if bottleneck else "identity",
        shortcut_scale,
        shortcut_dropout,
        gate_bias,
        branch_scale,
        init,
        norm,
    )
    widths = _widths([16, 32, 64], width)
    outs = [w * 4 for w in widths] if bottleneck else widths
    return ResNet(
        [(n, outs[0], 1), (n, outs[1], 2), (n, outs[2], 2)],
        stem="cifar",
        stem_channels=widths[0],
        bottleneck=bottleneck,
        stride_first=bottleneck,  # He et al. 2016's code: the stride on the first 1x1
        unit=unit,
        act=act,
        in_channels=check_positive_int("in_channels", in_channels),
        num_classes=check_positive_int("num_classes", num_classes),
    )


IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def imagenet_resnet(
    *,
    depth: int,
    placement: str = "original",
    shortcut: str | None = None,
    shortcut_scale: float | None = None,
    shortcut_dropout: float | None = None,
    gate_bias: float | None = None,
    branch_scale: float | str = 1.0,
    init: str = "he",
    act: str = "relu",
    norm: str = "batch",
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = 1000,
) -> ResNet:
    """ImageNet ResNet in torchvision's v1.5 layout; option B ('projection') by default."""
    if depth not in IMAGENET_LAYOUTS:
        raise ValueError(
            f"invalid depth={depth!r}; allowed: {', '.join(map(str, IMAGENET_LAYOUTS))}"
        )
    block, layout = IMAGENET_LAYOUTS[depth]
    bottleneck = block == "bottleneck"
    unit = _unit_args(
        placement,
        shortcut,
        "projection",
        shortcut_scale,
        shortcut_dropout,
        gate_bias,
        branch_scale,
        init,
        norm,
    )
    widths = _widths([64, 128, 256, 512], width)
    outs = [w * 4 for w in widths] if bottleneck else widths
    strides = (1, 2, 2, 2)
    return ResNet(
        list(zip(layout, outs, strides, strict=True)),
        stem="imagenet",
        stem_channels=widths[0],
        bottleneck=bottleneck,
        unit=unit,
        act=act,
        in_channels=check_positive_int("in_channels", in_channels),
        num_classes=check_positive_int("num_classes", num_classes),
    )
