"""A model's vital statistics: parameters, MACs at an input size, residual units, shortcuts."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..io import one_line
from .blocks import ResidualUnit


@dataclass
class ModelSummary:
    params: int
    trainable_params: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    units: int
    shortcuts: dict[str, int] = field(default_factory=dict)
    placements: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        return (
            f"ModelSummary(params={self.params:,}, macs={self.macs:,} at {self.input_shape}, "
            f"units={self.units}, shortcuts={self.shortcuts})"
        )


def summarize(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> ModelSummary:
    """Count parameters and the multiply-accumulates of one forward pass of one input.

    ``input_shape`` excludes the batch dimension; by default the model's
    ``example_input_shape``. MACs are counted on the meta device, so no memory or time
    is spent on the arithmetic.
    """
    if input_shape is None:
        input_shape = getattr(model, "example_input_shape", None)
        if input_shape is None:
            raise ValueError(
                "invalid input_shape=None: this model has no example_input_shape; pass "
                "input_shape=(C, H, W) without the batch, e.g. input_shape=(3, 224, 224)"
            )
    input_shape = tuple(int(s) for s in input_shape)
    if any(s < 1 for s in input_shape):
        raise ValueError(f"invalid input_shape={input_shape}: sides must be positive")
    check = getattr(model, "check_input", None)
    if check is not None:
        check(torch.empty(1, *input_shape, device="meta"))
    meta = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        try:
            out = meta(torch.empty(1, *input_shape, device="meta"))
        except RuntimeError as err:
            example = getattr(model, "example_input_shape", None)
            hint = f"; it takes inputs such as {tuple(example)}" if example is not None else ""
            text = one_line(err, 200)
            raise ValueError(
                f"invalid input_shape={input_shape} for this model ({text}){hint}"
            ) from None
    units = [m for m in model.modules() if isinstance(m, ResidualUnit)]
    shortcuts = Counter(u.shortcut_kind for u in units)
    placements = Counter(u.placement for u in units)
    if not units:  # torchvision's blocks, or units of the branch/shortcut protocol
        from ..analysis.blocks import find_units  # analysis builds on models

        for view in find_units(model, required=False):
            m = view.module
            if view.kind == "torchvision":  # He et al. 2015: ReLU after the addition
                shortcuts["identity" if m.downsample is None else "projection"] += 1
                placements["original"] += 1
            elif view.paths is not None:  # torchvision's other units
                projection = getattr(m, "proj", None) is not None  # RegNet
                shortcuts["projection" if projection else "identity"] += 1
                if view.paths.post is not None:  # RegNet: an activation after the addition
                    placements["original"] += 1
            else:
                shortcuts["identity" if m.shortcut is None else type(m.shortcut).__name__] += 1
            units.append(m)
    return ModelSummary(
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        input_shape=input_shape,
        output_shape=tuple(out.shape[1:]),
        macs=counter.get_total_flops() // 2,
        units=len(units),
        shortcuts=dict(shortcuts),
        placements=dict(placements),
    )
