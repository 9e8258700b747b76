"""Fully connected versions of the same units, for 1-D studies (identity task, shattered
gradients). The residual unit is ``ResidualUnit`` with ``Linear`` layers as its parts.

Depth D counts weight layers as the CIFAR nets do: an input layer, n units of two layers
and an output layer, D = 2n + 2.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .blocks import ResidualUnit
from .layers import ActLayer, check_positive_float, check_positive_int, linear_layer
from .resnet import (
    UnitArgs,
    _unit_args,
    fixup_bias,
    head_pre,
    init_weights,
    resolve_parts,
    stem_tail,
)


class ResMLP(nn.Module):
    """Linear stem, ``num_units`` residual (or plain) units of width ``hidden``, linear head.

    Inputs of any shape ``[N, ...]`` are flattened to ``[N, in_channels]``.
    """

    def __init__(
        self,
        num_units: int,
        *,
        hidden: int,
        unit: UnitArgs,
        act: str | ActLayer = "relu",
        in_channels: int = 64,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        act_layer, norm_layer, bias = resolve_parts(act, unit.norm, unit.init, dim=1)
        linear = linear_layer(bias=bias)
        placement = unit.placement
        stem = [("flatten", nn.Flatten(1)), ("fc", nn.Linear(in_channels, hidden, bias=bias))]
        stem += stem_tail(placement, norm_layer, act_layer, hidden)
        self.stem = nn.Sequential(OrderedDict(stem))  # [N, hidden]
        self.units = nn.Sequential(
            *(
                ResidualUnit(
                    hidden,
                    hidden,
                    conv_layer=linear,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    **unit.unit_kwargs(),
                )
                for _ in range(num_units)
            )
        )
        head = head_pre(placement, norm_layer, act_layer, hidden) + fixup_bias(unit.init)
        head.append(("fc", nn.Linear(hidden, num_classes)))
        self.head = nn.Sequential(OrderedDict(head))  # [N, num_classes]
        self.example_input_shape = (in_channels,)
        init_weights(self, unit.init, classifier=self.head.fc)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.units(self.stem(x)))


def mlp(
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
    hidden: int = 64,
    width: float = 1.0,
    in_channels: int = 64,
    num_classes: int = 10,
) -> ResMLP:
    """MLP of depth D = 2n + 2 (n units); ``in_channels``/``num_classes`` are feature counts."""
    depth = check_positive_int("depth", depth)
    if depth < 4 or depth % 2:
        raise ValueError(
            f"invalid depth={depth}: MLP depth counts weight layers, 2n+2 with n >= 1 units "
            "(4, 6, 8, ...)"
        )
    unit = _unit_args(
        placement,
        shortcut,
        "identity",
        shortcut_scale,
        shortcut_dropout,
        gate_bias,
        branch_scale,
        init,
        norm,
    )
    hidden = check_positive_int("hidden", hidden)
    features = max(1, round(hidden * check_positive_float("width", width)))
    return ResMLP(
        (depth - 2) // 2,
        hidden=features,
        unit=unit,
        act=act,
        in_channels=check_positive_int("in_channels", in_channels),
        num_classes=check_positive_int("num_classes", num_classes),
    )
