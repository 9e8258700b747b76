"""Gradient flow: how large the loss gradient and the forward signal are, unit by unit and
layer by layer.

He et al. 2015 (Deep Residual Learning, Fig. 7) plot the std of each layer's response and
find it smaller in ResNets than in plain nets; the vanishing/exploding-gradient argument
for skip connections is about the norm of the loss gradient at each unit's output. Both
are measured here in one forward and one backward pass, on any ``nn.Module``.

Also home to the small helpers the other gradient analyses share: the default loss
(``default_loss``) and a context manager that sets the train/eval mode and restores the
caller's flags (``module_mode``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.blocks import ResidualUnit
from .batches import LABEL_DTYPES, check_class_targets, class_scores
from .blocks import (
    UnitView,
    find_units,
    is_unit,
    run_model,
    torchvision_other_unit_types,
    torchvision_unit_types,
)
from .result import Result, new_axes

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer targets (logits ``[N, C]`` with targets ``[N]``, or
    ``[N, C, H, W]`` with ``[N, H, W]`` for segmentation); mean squared error for float
    targets (same shape as the output). Mean over all elements."""
    if not isinstance(output, Tensor):
        raise ValueError(
            f"the model returned {type(output).__name__}, not a tensor; pass loss_fn=... "
            "that takes (output, target) and returns a scalar"
        )
    if target.dtype in LABEL_DTYPES:
        if not class_scores(output, target):
            raise ValueError(
                f"integer target of shape {tuple(target.shape)} does not fit logits of shape "
                f"{tuple(output.shape)}: cross-entropy needs logits [N, C, ...] and class "
                "indices [N, ...]; pass loss_fn=... for anything else"
            )
        return F.cross_entropy(output, target.long())
    if output.shape != target.shape:
        raise ValueError(
            f"float target of shape {tuple(target.shape)} does not match the output "
            f"{tuple(output.shape)}: the default loss for float targets is MSE; give integer "
            "class indices for cross-entropy, or pass loss_fn=..."
        )
    return F.mse_loss(output, target.to(output.dtype))


def checked_default_loss(analysis: str) -> LossFn:
    """``default_loss`` that first checks integer class targets against the number of
    outputs (``check_class_targets``: one clear error, not cross-entropy's IndexError or a
    device-side assert) — for analyses that call the loss once or twice, as it reads the
    targets' range back to the host each call."""

    def loss(output: Tensor, target: Tensor) -> Tensor:
        check_class_targets(output, [target], analysis)
        return default_loss(output, target)

    return loss


@contextmanager
def module_mode(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """Set ``model.train(train)`` inside the block; restore every submodule's own flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics, counters) when the block ends, so a
    forward in training mode leaves the model as it was."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _std(t: Any) -> float:
    if not isinstance(t, Tensor) or t.numel() < 2 or not t.is_floating_point():
        return math.nan
    return float(t.detach().float().std())


def _norm(tensors: Sequence[Tensor | None]) -> float:
    sq = [g.detach().float().pow(2).sum() for g in tensors if g is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _weight_norm(params: Sequence[nn.Parameter], grads: dict[int, Tensor | None]) -> float:
    """Norm of the gradient of the trainable ``params``; NaN when none is trainable (a
    frozen layer has no weight gradient, which is not a gradient of 0)."""
    trainable = [p for p in params if p.requires_grad]
    return _norm([grads.get(id(p)) for p in trainable]) if trainable else math.nan


@dataclass(repr=False)
class GradientFlow(Result):
    """Per-unit and per-layer gradient and activation magnitudes at one batch.

    ``units``: one row per unit in model order (skiplab's plain units included): ``name``,
    ``residual`` (False for a plain unit), ``grad_norm`` (norm of dLoss/d unit output),
    ``act_std`` (std of the unit output), ``weight_grad_norm`` (norm of dLoss/d the unit's
    parameters). ``layers``: one row per module that owns parameters (conv, linear, norm,
    ...): ``name``, ``kind`` (class name), ``weight_grad_norm`` (its own parameters),
    ``act_std`` (std of its output; He et al. 2015, Fig. 7). ``weight_grad_norm`` is NaN
    where no parameter requires grad (frozen). ``loss``: the loss value.
    """

    units: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    loss: float
    mode: str = "eval"
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"GradientFlow(loss={self.loss:.4g}, units={len(self.units)}, "
            f"layers={len(self.layers)}, mode={self.mode!r})"
        )

    def summary(self) -> str:
        lines = [f"gradient flow ({self.mode} mode): loss {self.loss:.4g}"]
        rows = self.units or self.layers
        what = "unit output gradient" if self.units else "layer weight gradient"
        key = "grad_norm" if self.units else "weight_grad_norm"
        g = [r[key] for r in rows if r[key] > 0]
        if g:
            lines.append(
                f"{what} norm: first {rows[0][key]:.3g}, last {rows[-1][key]:.3g}, "
                f"max/min {max(g) / min(g):.3g} over {len(rows)} {'units' if self.units else 'layers'}"
            )
        stds = [r["act_std"] for r in self.layers if not math.isnan(r["act_std"])]
        if stds:
            lines.append(
                f"layer response std: mean {sum(stds) / len(stds):.3g}, "
                f"min {min(stds):.3g}, max {max(stds):.3g} (He et al. 2015, Fig. 7)"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """Gradient norm per unit (or per layer, when there are no units) and response std,
        on a log scale against depth."""
        ax = new_axes(ax)
        if self.units:
            ax.semilogy([r["grad_norm"] for r in self.units], "o-", label="|dL/d unit output|")
            ax.semilogy([r["act_std"] for r in self.units], "s--", label="std of unit output")
            ax.set_xlabel("unit")
        else:
            ax.semilogy([r["weight_grad_norm"] for r in self.layers], "o-", label="|dL/dW|")
            ax.semilogy([r["act_std"] for r in self.layers], "s--", label="std of layer output")
            ax.set_xlabel("layer")
        ax.set_title("gradient flow")
        ax.legend()
        return ax


def check_gradflow_args(*, train: Any) -> None:
    """Raise ``ValueError`` for an argument of ``gradient_flow`` that is bad whatever the
    model: it starts with this, and a study spec checks its options with it when it loads."""
    if not isinstance(train, bool):  # 'no' would be true: training mode
        raise ValueError(f"invalid train={train!r}: must be True or False")


def gradient_flow(
    model: nn.Module,
    x: Tensor | Sequence[Tensor],
    target: Tensor,
    *,
    loss_fn: LossFn | None = None,
    blocks: Sequence[str | nn.Module] | None = None,
    train: bool = False,
) -> GradientFlow:
    """Norm of the loss gradient at each unit's output and each layer's parameters, and the
    std of the forward responses (He et al. 2015, Fig. 7), from one forward/backward pass.

    Args:
        model: any ``nn.Module``; its units are found with ``find_units`` (plain skiplab
            units included, so plain and residual nets compare unit by unit), or named with
            ``blocks=[...]``, any submodules returning a tensor (only their outputs are
            read). A model without units still gets its ``layers`` rows.
        x, target: one batch (``x``: a tuple of tensors for a model with several
            inputs). loss_fn: ``(output, target) -> scalar``; default
            ``default_loss`` (cross-entropy for integer targets, MSE for float ones).
        train: measure in training mode (batch statistics in BN, as the optimiser sees at
            init); the BN running statistics are restored afterwards. Default: eval mode.

    Gradients are taken with ``torch.autograd.grad``: the parameters' ``.grad`` are not
    touched and the model is left as it was.
    """
    check_gradflow_args(train=train)
    loss_fn = loss_fn or checked_default_loss("gradient_flow")
    inputs = _inputs(x)
    if blocks is not None:
        units = find_units(model, blocks, opaque=True)
    else:
        units = find_units(model, required=False, include_plain=True, opaque=True)
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None
    ]

    unit_out: list[Tensor | None] = [None] * len(units)
    unit_version = [0] * len(units)
    unit_std = [math.nan] * len(units)
    layer_std = [math.nan] * len(layers)
    copied: set[int] = set()  # units whose output the model later changes in place

    def unit_hook(i: int) -> Callable:
        def fn(_m: nn.Module, _args: tuple, out: Any) -> Any:
            unit_out[i] = out if isinstance(out, Tensor) else None
            unit_version[i] = out._version if isinstance(out, Tensor) else 0
            unit_std[i] = _std(out)
            # The model gets a copy, so that an in-place op after the unit (a following
            # ReLU(inplace=True)) leaves the recorded output, and its gradient, as it was.
            return out.clone() if i in copied and isinstance(out, Tensor) else None

        return fn

    def layer_hook(i: int) -> Callable:
        def fn(_m: nn.Module, _args: tuple, out: Any) -> None:
            layer_std[i] = _std(out)  # now: a later in-place op may change the tensor

        return fn

    handles = [u.module.register_forward_hook(unit_hook(i)) for i, u in enumerate(units)]
    handles += [m.register_forward_hook(layer_hook(i)) for i, (_, m) in enumerate(layers)]
    params = [_own_params(m) for _, m in layers]
    flat = [p for ps in params for p in ps]
    try:
        buffers = frozen_buffers(model) if train else nullcontext()
        with module_mode(model, train), buffers, torch.enable_grad():
            # An input that requires grad puts the units' outputs in the graph even when
            # the parameters before them are frozen; the model gets a copy (it may write
            # in place).
            xin = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
            loss = loss_fn(run_model(model, *(t.clone() for t in xin)), target)
            copied.update(
                i for i, t in enumerate(unit_out) if t is not None and t._version != unit_version[i]
            )
            if copied:  # once more, with copies of the outputs changed in place
                loss = loss_fn(run_model(model, *(t.clone() for t in xin)), target)
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
            if not loss.requires_grad:
                raise ValueError(
                    "the loss does not depend on anything that requires grad: no parameter "
                    "of the model requires grad and the input is not floating-point; "
                    "unfreeze some parameters (model.requires_grad_(True))"
                )
            outs = [t for t in unit_out if t is not None and t.requires_grad]
            grads = torch.autograd.grad(loss, outs + flat, allow_unused=True) if outs + flat else ()
    finally:
        for h in handles:
            h.remove()

    out_grads = dict(zip(map(id, outs), grads[: len(outs)], strict=True))
    param_grads = dict(zip(map(id, flat), grads[len(outs) :], strict=True))
    unit_rows = []
    for i, u in enumerate(units):
        t = unit_out[i]
        g = out_grads.get(id(t)) if t is not None else None
        unit_rows.append(
            {
                "name": u.name,
                "residual": _is_residual(u),
                "grad_norm": _norm([g]) if g is not None else math.nan,
                "act_std": unit_std[i],
                "weight_grad_norm": _weight_norm(list(u.module.parameters()), param_grads),
            }
        )
    layer_rows = [
        {
            "name": name,
            "kind": type(m).__name__,
            "weight_grad_norm": _weight_norm(list(m.parameters(recurse=False)), param_grads),
            "act_std": layer_std[i],
        }
        for i, (name, m) in enumerate(layers)
    ]
    return GradientFlow(
        units=unit_rows,
        layers=layer_rows,
        loss=float(loss.detach()),
        mode="train" if train else "eval",
        meta={"model": type(model).__name__, "batch": int(inputs[0].shape[0])},
    )


def _inputs(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The model's positional inputs: one tensor, or a tuple or list of tensors."""
    inputs = tuple(x) if isinstance(x, list | tuple) else (x,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise ValueError(
            f"invalid x of type {type(x).__name__}: give the input tensor, or a tuple of "
            "tensors for a model with several inputs"
        )
    return inputs


def _is_residual(unit: UnitView) -> bool:
    """Whether the unit has a skip: skiplab's units with a shortcut, torchvision's residual
    units (with ``use_res_connect`` where they have it), units of the ``branch``/``shortcut``
    protocol (a None shortcut is the identity there); a named submodule of another kind
    (``blocks=["0", ...]``) has none."""
    m = unit.module
    if isinstance(m, ResidualUnit):
        return m.shortcut is not None
    if isinstance(m, torchvision_other_unit_types()):  # subclasses with a forward of their own too
        return bool(getattr(m, "use_res_connect", True))
    return isinstance(m, torchvision_unit_types()) or is_unit(m)


def unit_grad_norms(model: nn.Module, units: Sequence[UnitView] | None = None) -> dict[str, float]:
    """Norm of each unit's parameter gradient, read from ``.grad`` after ``loss.backward()``.

    Cheap (no extra forward or backward; one device sync), for a trainer to log every N
    steps::

        loss.backward()
        if step % 100 == 0:
            log_metrics(step, unit_grad_norms(model, units))  # units = find_units(...) once
        optimizer.step()

    ``units`` defaults to every unit ``find_units`` sees (plain units included); pass the
    list once to avoid searching the model at each call. Units whose parameters have no
    gradient yet report 0.
    """
    if units is None:
        units = find_units(model, required=False, include_plain=True, opaque=True)
    sq = []
    for u in units:
        gs = [
            p.grad.detach().float().pow(2).sum()
            for p in u.module.parameters()
            if p.grad is not None
        ]
        sq.append(torch.stack(gs).sum() if gs else torch.zeros(()))
    if not sq:
        return {}
    devices = {t.device for t in sq}
    if len(devices) > 1:
        sq = [t.cpu() for t in sq]
    values = torch.stack(sq).sqrt().tolist()  # one sync for all units
    return dict(zip((u.name for u in units), values, strict=True))
