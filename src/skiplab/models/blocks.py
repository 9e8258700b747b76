"""The residual unit: one class for every unit of He et al. 2015/2016 and their relatives.

Skip structure is a parameter, not a class. A unit is

    out = post( combine( shortcut(x), branch_scale * branch(preact(x)) ) )

where ``preact`` is the pre-activation of He et al. 2016 (empty for post-activation
units), ``combine`` is an addition (or a gated sum), and ``post`` is what the unit does
after the addition (ReLU in the original unit, BN + ReLU in "BN after addition").
The parts (``conv_layer``, ``norm_layer``, ``act_layer``) are injected callables, so the
same unit serves 2-D convolutions and fully connected layers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .layers import (
    NORM_TYPES,
    ActLayer,
    ConvLayer,
    NormLayer,
    PadShortcut,
    ScalarBias,
    Scale,
    check_choice,
    invalid,
)

# He et al. 2016, Fig. 4 (a)-(e).
PLACEMENTS = ("original", "bn-after-add", "relu-before-add", "relu-only-preact", "full-preact")
PREACT_PLACEMENTS = ("relu-only-preact", "full-preact")
# He et al. 2015 options A/B/C and He et al. 2016, Fig. 2 / Table 1.
SHORTCUTS = (
    "identity",
    "projection",
    "all-projection",
    "scaling",
    "exclusive-gating",
    "shortcut-only-gating",
    "conv1x1",
    "dropout",
    "none",
)
# What shortcut_scale / shortcut_dropout / gate_bias = None mean (He et al. 2016, Table 1).
DEFAULT_SHORTCUT_SCALE = 0.5
DEFAULT_SHORTCUT_DROPOUT = 0.5
DEFAULT_GATE_BIAS = 0.0


def check_branch_scale(value: float | str) -> float | str:
    if value == "rezero":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid("branch_scale", value, "allowed: a finite number or 'rezero'")
    return float(value)


def check_unit_options(
    placement: str,
    shortcut: str,
    shortcut_scale: float | None,
    shortcut_dropout: float | None,
    gate_bias: float | None,
    branch_scale: float | str,
) -> None:
    """Validate the unit options that every residual model shares; raise ``ValueError``."""
    check_choice("placement", placement, PLACEMENTS)
    check_choice("shortcut", shortcut, SHORTCUTS)
    check_branch_scale(branch_scale)
    for option, value, needs in (
        ("shortcut_scale", shortcut_scale, ("scaling",)),
        ("shortcut_dropout", shortcut_dropout, ("dropout",)),
        ("gate_bias", gate_bias, ("exclusive-gating", "shortcut-only-gating")),
    ):
        if value is None:
            continue
        if shortcut not in needs:
            raise ValueError(
                f"invalid {option}={value!r} with shortcut={shortcut!r}: {option} only applies "
                f"to shortcut={' or '.join(repr(n) for n in needs)}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise invalid(option, value, "must be a finite number")
    if shortcut_dropout is not None and not 0.0 <= shortcut_dropout < 1.0:
        raise invalid("shortcut_dropout", shortcut_dropout, "must be in [0, 1)")


class Gate(nn.Module):
    """g(x) = sigmoid(W_g x + b_g), a 1x1 convolution with per-channel bias (He et al. 2016, Fig. 2c-d)."""

    def __init__(self, conv: nn.Module, channels: int, bias: float) -> None:
        super().__init__()
        self.conv = conv
        self.bias = nn.Parameter(torch.full((channels,), float(bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return torch.sigmoid(z + self.bias.view(1, -1, *([1] * (z.dim() - 2))))


class ResidualUnit(nn.Module):
    """A basic (two k x k layers) or bottleneck (1x1, k x k, 1x1) residual unit.

    Args:
        in_channels, out_channels, stride: shape of the unit; a bottleneck's inner width
            is ``mid_channels`` (default ``out_channels // 4``); its stride sits on the
            k x k layer (torchvision's ResNet v1.5), or with ``stride_first`` on the first
            1x1 layer (He et al.'s code: ResNet v1 and the CIFAR bottlenecks of 2016).
        placement: where BN and the activation sit (He et al. 2016, Fig. 4).
        shortcut: the shortcut variant (see ``SHORTCUTS``); ``"none"`` makes a plain unit.
        shortcut_scale / shortcut_dropout / gate_bias: parameters of those variants.
        branch_scale: constant factor on the branch, or ``"rezero"`` (learnable, init 0).
        fixup: add Fixup's scalar biases before the branch's weight layers and its learnable
            scalar multiplier (Zhang et al. 2019); the norm slots take ``ScalarBias`` norms.
        conv_layer, norm_layer, act_layer: the parts; ``norm_layer=None`` means no norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        conv_layer: ConvLayer,
        norm_layer: NormLayer | None,
        act_layer: ActLayer,
        bottleneck: bool = False,
        mid_channels: int | None = None,
        stride_first: bool = False,
        kernel_size: int = 3,
        placement: str = "original",
        shortcut: str = "identity",
        shortcut_scale: float | None = None,
        shortcut_dropout: float | None = None,
        gate_bias: float | None = None,
        branch_scale: float | str = 1.0,
        fixup: bool = False,
    ) -> None:
        super().__init__()
        check_unit_options(
            placement, shortcut, shortcut_scale, shortcut_dropout, gate_bias, branch_scale
        )
        self.placement = placement
        self.shortcut_variant = shortcut
        preact = placement in PREACT_PLACEMENTS

        if bottleneck:
            mid = mid_channels or max(1, out_channels // 4)
            s1, s2 = (stride, 1) if stride_first else (1, stride)
            layers = [
                (in_channels, mid, 1, s1),
                (mid, mid, kernel_size, s2),
                (mid, out_channels, 1, 1),
            ]
        else:
            layers = [
                (in_channels, out_channels, kernel_size, stride),
                (out_channels, out_channels, kernel_size, 1),
            ]

        # Pre-activation (He et al. 2016, Fig. 4d-e): applied before the branch; a
        # projection shortcut reads its output too (as in He et al.'s code and timm).
        pre: list[tuple[str, nn.Module]] = []
        if placement == "full-preact" and norm_layer is not None:
            pre.append(("norm", norm_layer(in_channels)))
        if preact:
            pre.append(("act", act_layer()))
        self.preact = nn.Sequential(OrderedDict(pre)) if pre else nn.Identity()

        # The residual branch, named conv1, norm1, act1, conv2, ...
        ops: list[tuple[str, nn.Module]] = []
        # Fixup (Zhang et al. 2019, rule 3): a scalar bias before each weight layer and each
        # activation (the norm slots hold the latter), and a scalar multiplier on the branch
        # ahead of its last bias, as in out * scale + bias.
        for i, (cin, cout, k, s) in enumerate(layers, start=1):
            last = i == len(layers)
            if fixup:
                ops.append((f"bias{i}", ScalarBias()))
            ops.append((f"conv{i}", conv_layer(cin, cout, k, s)))
            if last and fixup:
                ops.append(("scale", Scale(1.0, learnable=True)))
            # "BN after addition" and full pre-activation end the branch on the weight layer.
            if norm_layer is not None and not (
                last and placement in ("bn-after-add", "full-preact")
            ):
                ops.append((f"norm{i}", norm_layer(cout)))
            if not last or placement == "relu-before-add":
                ops.append((f"act{i}", act_layer()))
        self.branch = nn.Sequential(OrderedDict(ops))
        self.num_branch_layers = len(layers)

        if branch_scale == "rezero":
            self.branch_scale: nn.Module | None = Scale(0.0, learnable=True)
        elif float(branch_scale) != 1.0:
            self.branch_scale = Scale(float(branch_scale))
        else:
            self.branch_scale = None

        # The shortcut. Where the shape changes and a variant has no rule of its own,
        # it is a projection (1x1 conv + norm), then the variant's scale/dropout/gate. In a
        # full pre-activation unit the projection is the bare 1x1 conv: it reads the input
        # the unit's own BN has just normalised (He et al.'s code, timm's ResNetV2).
        reshape = stride != 1 or in_channels != out_channels

        def projection() -> nn.Module:
            parts = [("conv", conv_layer(in_channels, out_channels, 1, stride))]
            if norm_layer is not None and placement != "full-preact":
                parts.append(("norm", norm_layer(out_channels)))
            return nn.Sequential(OrderedDict(parts))

        self.gate: Gate | None = None
        self.exclusive_gate = shortcut == "exclusive-gating"
        self.shortcut: nn.Module | None
        if shortcut == "none":
            self.shortcut = None
        elif shortcut == "identity":
            self.shortcut = (
                PadShortcut(in_channels, out_channels, stride) if reshape else nn.Identity()
            )
        elif shortcut == "projection":
            self.shortcut = projection() if reshape else nn.Identity()
        elif shortcut == "all-projection":
            self.shortcut = projection()
        elif shortcut == "conv1x1":
            self.shortcut = conv_layer(in_channels, out_channels, 1, stride)
        else:
            base = projection() if reshape else None
            if shortcut == "scaling":
                tail: nn.Module | None = Scale(
                    DEFAULT_SHORTCUT_SCALE if shortcut_scale is None else shortcut_scale
                )
            elif shortcut == "dropout":
                # He et al. 2016 (Sec. 3.1): a scale "with an expectation of 0.5" on the
                # shortcut, so kept values are not rescaled by 1/(1-p) as in inverted
                # dropout: mask * x in training, (1 - p) * x in eval.
                p = DEFAULT_SHORTCUT_DROPOUT if shortcut_dropout is None else shortcut_dropout
                tail = nn.Sequential(OrderedDict(drop=nn.Dropout(p), expect=Scale(1.0 - p)))
            else:  # gating: the gate multiplies the shortcut; see forward
                tail = None
                self.gate = Gate(
                    conv_layer(in_channels, out_channels, 1, stride),
                    out_channels,
                    DEFAULT_GATE_BIAS if gate_bias is None else gate_bias,
                )
            parts = [p for p in (("proj", base), ("op", tail)) if p[1] is not None]
            self.shortcut = nn.Sequential(OrderedDict(parts)) if parts else nn.Identity()
        # Identity-like shortcuts carry the raw input; a shortcut with weights reads the
        # pre-activated input in pre-activation units.
        has_weights = self.shortcut is not None and any(True for _ in self.shortcut.parameters())
        self.shortcut_reads_preact = preact and has_weights
        # Fixup: a shortcut that does anything (downsampling, a projection) reads the input
        # plus the branch's first scalar bias, like the branch's first conv (Zhang et al.'s
        # code: downsample(x + bias1a)); an identity shortcut carries x itself.
        # A flag, not a second reference to the module: a module registered twice puts its
        # tensor in the state dict twice, and safetensors refuses to save shared tensors.
        self._shortcut_adds_bias = (
            fixup and self.shortcut is not None and not isinstance(self.shortcut, nn.Identity)
        )

        post: list[tuple[str, nn.Module]] = []
        if placement == "bn-after-add" and norm_layer is not None:
            post.append(("norm", norm_layer(out_channels)))
        if placement in ("original", "bn-after-add"):
            post.append(("act", act_layer()))
        self.post = nn.Sequential(OrderedDict(post)) if post else nn.Identity()

    @property
    def shortcut_kind(self) -> str:
        """What the shortcut does here: 'none', 'identity', 'zero-pad', 'projection', ..."""
        if self.shortcut is None:
            return "none"
        if isinstance(self.shortcut, nn.Identity):
            return "identity"
        if isinstance(self.shortcut, PadShortcut):
            return "zero-pad"
        return self.shortcut_variant if self.shortcut_variant != "identity" else "projection"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = self.preact(x)
        branch = self._scaled_branch(xp)
        s_in = self._shortcut_input(x, xp)
        shortcut = None if self.shortcut is None else self.shortcut(s_in)
        return self._combine(shortcut, branch, s_in)

    @property
    def shortcut_bias(self) -> nn.Module | None:
        """Fixup's bias the shortcut reads its input through: the branch's first (or None)."""
        return self.branch.bias1 if self._shortcut_adds_bias else None

    def _shortcut_input(self, x: torch.Tensor, xp: torch.Tensor | None = None) -> torch.Tensor:
        """What the shortcut (and a gate) reads: ``x``, or its pre-activation ``xp``
        (computed here only when not given and needed), plus Fixup's bias."""
        if self.shortcut_reads_preact:
            x = self.preact(x) if xp is None else xp
        return x if self.shortcut_bias is None else self.shortcut_bias(x)

    def _scaled_branch(self, xp: torch.Tensor) -> torch.Tensor:
        branch = self.branch(xp)
        return branch if self.branch_scale is None else self.branch_scale(branch)

    def _combine(
        self, shortcut: torch.Tensor | None, branch: torch.Tensor, s_in: torch.Tensor
    ) -> torch.Tensor:
        if self.shortcut is None:  # plain unit
            out = branch
        elif self.gate is None:
            out = shortcut + branch
        else:
            g = self.gate(s_in)
            out = (1 - g) * shortcut + (g * branch if self.exclusive_gate else branch)
        return self.post(out)

    # The two paths one at a time, and their combination, for analyses that take
    # vector-Jacobian products through each: forward(x) == combine(shortcut_path(x),
    # branch_path(x), x).
    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        """The skip path's output (a zero for a plain unit)."""
        if self.shortcut is None:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        return self.shortcut(self._shortcut_input(x))

    def branch_path(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch's output, pre-activation and branch scale included."""
        return self._scaled_branch(self.preact(x))

    def combine(
        self, shortcut: torch.Tensor, branch: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """What the unit does with its two paths (``x``, the unit input, feeds gates)."""
        s_in = self._shortcut_input(x) if self.gate is not None else x
        return self._combine(shortcut, branch, s_in)

    # Blocks own their init quirks (STYLE 5).
    def zero_init_last(self) -> None:
        """Start the unit as its shortcut (Goyal et al. 2017) and keep the branch trainable.

        Where the branch ends on its norm, zero that norm's gamma. Where it ends on a
        weight layer (BN after addition, full pre-activation), zero that layer instead: a
        zeroed norm followed by a ReLU would output exact zeros, where the ReLU's gradient
        is 0, and the branch would never leave zero. A branch that ends on its activation
        (ReLU before addition) needs an activation with act(0) = 0 and a nonzero slope there.
        """
        children = list(self.branch.children())
        norms = [m for m in children if isinstance(m, NORM_TYPES) and not isinstance(m, ScalarBias)]
        if not norms or getattr(norms[-1], "weight", None) is None:
            raise ValueError(
                "invalid init='zero-last-norm' with norm='none': the branch has no norm "
                "to zero; use a norm ('batch', 'group', 'layer') or init='fixup'"
            )
        last = children[-1]
        if isinstance(last, nn.Conv2d | nn.Linear):
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
            return
        if last is not norms[-1]:
            self._check_zero_passes(last)
        nn.init.zeros_(norms[-1].weight)

    def _check_zero_passes(self, last: nn.Module) -> None:
        """The branch ends on its activation ``last``: zeroing the norm before it starts the
        unit as its shortcut only if act(0) = 0, and leaves it trainable only if act'(0) != 0."""
        with torch.enable_grad():
            z = torch.zeros(1, requires_grad=True)
            y = last(z * 1.0)
            (slope,) = torch.autograd.grad(y.sum(), z, allow_unused=True)
        value, slope = float(y.detach()), 0.0 if slope is None else float(slope)
        if value != 0.0 or slope == 0.0:
            why = (
                f"{type(last).__name__}(0) = {value:g}, so the branch would not start at zero"
                if value != 0.0
                else f"{type(last).__name__} has slope 0 at 0, so the zeroed branch would get "
                "no gradient and stay zero for ever"
            )
            raise ValueError(
                f"invalid init='zero-last-norm' with placement={self.placement!r}: the branch "
                f"ends on its activation and {why}; use branch_scale='rezero', or an activation "
                "with act(0) = 0 and a nonzero slope there ('gelu', 'tanh', 'identity')"
            )

    def fixup_init(self, num_branches: int) -> None:
        """Fixup (Zhang et al. 2019): scale the branch's weights by L^(-1/(2m-2)), zero the last."""
        convs = [m for name, m in self.branch.named_children() if name.startswith("conv")]
        m = len(convs)
        factor = num_branches ** (-1.0 / (2 * m - 2))
        with torch.no_grad():
            for conv in convs[:-1]:
                conv.weight.mul_(factor)
            nn.init.zeros_(convs[-1].weight)
            if getattr(convs[-1], "bias", None) is not None:
                nn.init.zeros_(convs[-1].bias)
