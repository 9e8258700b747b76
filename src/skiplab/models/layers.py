"""Name -> layer factories shared by every model, the CLI and study files.

A part is given either as a name (``"relu"``, ``"batch"``) or as a callable that builds
the module, in the manner of timm's ``get_act_layer``/``get_norm_layer``. Resolving
happens once, here; blocks only ever see callables:

- ``act_layer() -> nn.Module``
- ``norm_layer(num_features) -> nn.Module``
- ``conv_layer(in_features, out_features, kernel_size, stride) -> nn.Module``
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ActLayer = Callable[[], nn.Module]
NormLayer = Callable[[int], nn.Module]
ConvLayer = Callable[[int, int, int, int], nn.Module]


def invalid(option: str, value: Any, allowed: Sequence[Any] | str) -> ValueError:
    """The one error format for a bad option: names the option, the value and what is allowed."""
    if isinstance(allowed, str):
        return ValueError(f"invalid {option}={value!r}: {allowed}")
    names = [str(a) for a in allowed]
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, names, n=3, cutoff=0.5)
        if value in names:  # the right value as a string where a number is wanted
            hint = f" (a {type(allowed[names.index(value)]).__name__}, not a string)"
        elif close:
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)"
    return ValueError(
        f"invalid {option}={value!r}{hint}; allowed: {', '.join(repr(n) for n in names)}"
    )


def check_choice(option: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise invalid(option, value, allowed)
    return value


def check_positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(option, value, "must be a positive integer")
    return value


def check_positive_float(option: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise invalid(option, value, "must be a positive number")
    return float(value)


# --------------------------------------------------------------------------- activations

ACT_LAYERS: dict[str, ActLayer] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def get_act_layer(act: str | ActLayer) -> ActLayer:
    """Resolve an activation name (see ``ACT_LAYERS``) or pass a callable through."""
    if callable(act) and not isinstance(act, str):
        return act
    return ACT_LAYERS[check_choice("act", act, list(ACT_LAYERS))]


# --------------------------------------------------------------------------- norms

NORMS = ("batch", "group", "layer", "none")


class ScalarBias(nn.Module):
    """A learnable scalar added to every element (Fixup's bias, Zhang et al. 2019)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scale(nn.Module):
    """Multiply by a constant, or by a learnable scalar when ``learnable``."""

    def __init__(self, value: float, learnable: bool = False) -> None:
        super().__init__()
        if learnable:
            self.scale = nn.Parameter(torch.tensor(float(value)))
        else:
            self.register_buffer("scale", torch.tensor(float(value)), persistent=False)
        self.learnable = learnable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"{float(self.scale.detach()):g}, learnable={self.learnable}"


def _groups(channels: int, max_groups: int = 32) -> int:
    # The largest group count <= 32 that divides the channels (Wu & He 2018 use 32).
    return math.gcd(channels, max_groups)


def get_norm_layer(norm: str | NormLayer, dim: int = 2) -> NormLayer | None:
    """Resolve a norm name for 2-D feature maps (``dim=2``) or feature vectors (``dim=1``).

    Returns ``None`` for ``"none"``. ``"layer"`` on feature maps normalises over
    (C, H, W), i.e. ``GroupNorm(1, C)``.
    """
    if callable(norm) and not isinstance(norm, str):
        return norm
    norm = check_choice("norm", norm, NORMS)
    if norm == "none":
        return None
    if norm == "batch":
        return nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    if norm == "group":
        return lambda c: nn.GroupNorm(_groups(c), c)
    return (lambda c: nn.GroupNorm(1, c)) if dim == 2 else nn.LayerNorm


NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    ScalarBias,
)

# --------------------------------------------------------------------------- convs


def eval_norm_affine(
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as the per-channel affine map it is: ``x * scale + shift``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def conv2d_layer(bias: bool = False) -> ConvLayer:
    """k x k convolution with 'same' padding (the CIFAR and ImageNet ResNet convention)."""

    def make(in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Module:
        return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, bias=bias)

    return make


def linear_layer(bias: bool = False) -> ConvLayer:
    """The MLP's 'convolution': a Linear layer (kernel size ignored, stride must be 1)."""

    def make(in_f: int, out_f: int, kernel_size: int = 1, stride: int = 1) -> nn.Module:
        if stride != 1:
            raise ValueError("invalid stride for a Linear layer: MLP units cannot downsample")
        return nn.Linear(in_f, out_f, bias=bias)

    return make


class PadShortcut(nn.Module):
    """He et al. 2015 option A: subsample by ``stride`` and zero-pad the new channels.

    Parameter-free and linear, so it adds no nonlinearity to the identity path.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"invalid shortcut='identity' from {in_channels} to {out_channels} channels: "
                "option A can only add channels; use shortcut='projection'"
            )
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]  # [N, C, H/s, W/s]
        if self.extra:
            # F.pad pads the last dims first: leave the spatial dims, extend dim 1 (channels).
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, self.extra))  # [N, C + extra, ...]
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.extra}"
