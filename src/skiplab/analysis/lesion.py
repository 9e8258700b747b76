"""Lesion studies: delete residual branches, or swap neighbouring units, and measure.

Veit, Wilber & Belongie 2016 (arXiv 1605.06431), Figs. 3-5: deleting one unit of a
ResNet-110 (other than a downsampling one) changes its error little, the error rises
smoothly as more units are deleted, and reordering neighbouring units is tolerated;
deleting one layer of a VGG net drops it to chance. Deleting a unit here means removing
its residual branch and keeping its shortcut: the unit outputs
``view.finish(view.shortcut(x), 0, x)`` (for a pre-activation unit, exactly its input).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.layers import check_positive_int, invalid
from .batches import check_class_targets, class_scores, xy_batches
from .blocks import UnitView, check_view, find_units, run_model
from .gradflow import default_loss, module_mode
from .result import Result, new_axes

log = logging.getLogger(__name__)

METRICS = ("accuracy", "loss")


def _evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    metric: str,
    device: Any,
    check_all: bool = False,
) -> float:
    """The metric over all batches, summed on the device and read once at the end. The
    output is checked on the first batch (``check_all``: on every batch, for the pass
    over the intact model; a lesioned model's outputs keep the intact model's shapes)."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(batches):
            x, y = x.to(device), y.to(device)
            out = run_model(model, x)
            if check_all or i == 0:
                _check_output(model, out, y, metric)
            if metric == "accuracy":
                total += (out.argmax(1) == y).sum()
            else:
                low = out.dtype in (torch.float16, torch.bfloat16)  # float32 at least
                total += default_loss(out.float() if low else out, y).double() * y.numel()
            count += y.numel()
    if count == 0:
        raise ValueError("lesion got no data: pass (x, y) tensors or an iterable of batches")
    return float(total) / count


def _check_output(model: nn.Module, out: Any, y: Tensor, metric: str) -> None:
    """One clear message for outputs the metric cannot read (before argmax or the loss
    fail on them, or compare floats with floats)."""
    if not isinstance(out, Tensor):
        raise ValueError(
            f"lesion needs a model that returns a tensor, but {type(model).__name__} returned "
            f"{type(out).__name__}; wrap it in a module whose forward returns the logits"
        )
    if metric != "accuracy":
        return
    if y.is_floating_point() or not class_scores(out, y):
        raise ValueError(
            f"metric='accuracy' needs class logits [N, C, ...] and integer class targets "
            f"[N, ...], got an output of shape {tuple(out.shape)} and targets of shape "
            f"{tuple(y.shape)} ({y.dtype}); use metric='loss' for other targets"
        )


def _deleted_hook(view: UnitView) -> Callable:
    """Forward hook that replaces the unit's output by its shortcut path alone."""

    def fn(_m: nn.Module, args: tuple, _out: Tensor) -> Tensor:
        x = args[0]
        s = view.shortcut(x)
        return view.finish(s, torch.zeros((), dtype=s.dtype, device=s.device), x)

    return fn


def _swap_hook(other: nn.Module) -> Callable:
    """Forward hook that runs ``other`` on this unit's input instead (``forward`` directly,
    so ``other``'s own swap hook does not fire again)."""

    def fn(_m: nn.Module, args: tuple, _out: Tensor) -> Tensor:
        return other.forward(*args)

    return fn


@dataclass(repr=False)
class Lesion(Result):
    """Metric of the intact model and of lesioned versions.

    ``baseline``: the intact model. ``single``: one row per unit, ``{"name", "metric"}``
    with that unit's branch deleted. ``random_k``: per k, ``{"k", "mean", "std",
    "draws"}`` over sets of k deleted units (all C(U, k) sets where that is no more than
    ``draws``, else ``draws`` random ones). ``swaps``: ``{"units": [a, b], "metric"}`` for
    each pair of neighbouring units with equal input and output shapes, exchanged.
    """

    metric: str
    baseline: float
    single: list[dict[str, Any]]
    random_k: list[dict[str, Any]]
    swaps: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Lesion(metric={self.metric!r}, baseline={self.baseline:.4g}, "
            f"units={len(self.single)}, k={[r['k'] for r in self.random_k]}, "
            f"swaps={len(self.swaps)})"
        )

    def summary(self) -> str:
        worse = max if self.metric == "loss" else min
        lines = [f"lesion ({self.metric}): intact {self.baseline:.4g}"]
        if self.single:
            row = worse(self.single, key=lambda r: r["metric"])
            values = [r["metric"] for r in self.single]
            lines.append(
                f"one unit deleted: median {statistics.median(values):.4g}, worst "
                f"{row['metric']:.4g} ({row['name']}) (Veit et al. 2016, Fig. 3)"
            )
        if self.random_k:
            lines.append(
                "k units deleted: "
                + ", ".join(f"k={r['k']}: {r['mean']:.3g}±{r['std']:.2g}" for r in self.random_k)
                + " (Fig. 4)"
            )
        if self.swaps:
            values = [r["metric"] for r in self.swaps]
            lines.append(
                f"neighbours swapped: median {statistics.median(values):.4g} over "
                f"{len(values)} pairs (Fig. 5)"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None, which: str = "single") -> Any:
        """``which="single"``: metric per deleted unit (Veit Fig. 3); ``"random_k"``: mean ±
        std against the number of deleted units (Fig. 4); ``"swaps"``: per swapped pair.
        The intact model is the dashed line."""
        ax = new_axes(ax)
        if which == "single":
            ax.plot([r["metric"] for r in self.single], "o-", label="unit deleted")
            ax.set_xlabel("deleted unit")
        elif which == "random_k":
            ax.errorbar(
                [r["k"] for r in self.random_k],
                [r["mean"] for r in self.random_k],
                yerr=[0.0 if math.isnan(r["std"]) else r["std"] for r in self.random_k],
                fmt="o-",
                capsize=3,
                label="k random units deleted",
            )
            ax.set_xlabel("number of deleted units k")
        elif which == "swaps":
            ax.plot([r["metric"] for r in self.swaps], "o-", label="neighbours swapped")
            ax.set_xlabel("swapped pair (first unit)")
        else:
            raise ValueError(f"invalid which={which!r}; allowed: 'single', 'random_k', 'swaps'")
        ax.axhline(self.baseline, color="gray", ls="--", label="intact")
        ax.set_ylabel(self.metric)
        ax.set_title("lesion")
        ax.legend()
        return ax


def _default_k(num: int) -> list[int]:
    if num <= 10:
        return list(range(1, num + 1))
    return sorted({max(1, round(num * i / 10)) for i in range(1, 11)})


def check_lesion_args(
    *, metric: Any, k_values: Any, draws: Any, swaps: Any, batch_size: Any
) -> None:
    """Raise ``ValueError`` for an argument of ``lesion`` that is bad whatever the model:
    ``lesion`` starts with it, and a study spec checks its options with it when it loads.
    That each k is at most the model's number of units is checked by ``lesion``."""
    if metric not in METRICS:
        raise ValueError(f"invalid metric={metric!r}; allowed: {', '.join(map(repr, METRICS))}")
    check_positive_int("draws", draws)
    if k_values is not None:
        if isinstance(k_values, str) or not isinstance(k_values, Sequence):
            raise ValueError(
                f"invalid k_values={k_values!r}: give a list of ints, e.g. k_values=[{k_values!r}]"
            )
        bad_k = [k for k in k_values if isinstance(k, bool) or not isinstance(k, int) or k < 1]
        if bad_k:
            raise ValueError(f"invalid k_values {bad_k}: each k must be an int >= 1 (units)")
    if not isinstance(swaps, bool):
        raise invalid("swaps", swaps, "must be True or False")
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)


def lesion(
    model: nn.Module,
    data: Any,
    *,
    blocks: Sequence[str | nn.Module] | None = None,
    metric: str = "accuracy",
    k_values: Sequence[int] | None = None,
    draws: int = 10,
    seed: int = 0,
    swaps: bool = True,
    batch_size: int | None = None,
) -> Lesion:
    """Delete residual branches (keeping shortcuts) and swap neighbouring units; measure the
    metric each time (Veit et al. 2016, Figs. 3-5).

    Args:
        model: any ``nn.Module`` with residual units (found by ``find_units`` or named with
            ``blocks=[...]``); run in eval mode, left exactly as it was.
        data: ``(x, y)`` tensors, or an iterable of ``(x, y)`` batches (moved to the
            model's device).
        metric: ``"accuracy"`` (argmax over dim 1 equals the target; per pixel for
            segmentation) or ``"loss"`` (cross-entropy for integer targets, MSE for float).
            Integer targets are class labels in ``0..C-1`` for a model with ``C``
            outputs; others raise ``ValueError`` before the first full pass.
        k_values: numbers of units to delete together; default every k up to 10 units,
            else ten values spread over 1..U. draws: random sets per k. seed: seeds them
            (a private generator).
        swaps: also exchange each pair of neighbouring units whose input and output shapes
            all agree.
        batch_size: forward passes over ``(x, y)`` tensors in chunks of this many samples
            (default: all at once), for a test set too large for the device at once.
    """
    check_lesion_args(
        metric=metric, k_values=k_values, draws=draws, swaps=swaps, batch_size=batch_size
    )
    units = find_units(model, blocks)  # a plain net raises, naming blocks=[...]
    num = len(units)
    k_values = _default_k(num) if k_values is None else list(k_values)
    bad_k = [k for k in k_values if k > num]
    if bad_k:
        raise ValueError(f"invalid k_values {bad_k}: each k must be an int in 1..{num} (units)")
    batches = xy_batches(data, batch_size, reiterable=True)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rng = random.Random(seed)

    def run(hooks: list[tuple[nn.Module, Callable]]) -> float:
        handles = [m.register_forward_hook(h) for m, h in hooks]
        try:
            # The intact model's pass checks every batch's output and targets.
            return _evaluate(model, batches, metric, device, check_all=not hooks)
        finally:
            for h in handles:
                h.remove()

    def deleted(idx: Iterable[int]) -> float:
        return run([(units[i].module, _deleted_hook(units[i])) for i in idx])

    with module_mode(model, False):
        # Two samples: the units' shapes (and their parts checked), and the number of
        # classes the targets are checked against before any full pass.
        shapes, out = _unit_shapes(model, units, batches, device)
        check_class_targets(out, [y for _, y in batches], "lesion")
        baseline = run([])
        single = [{"name": u.name, "metric": deleted([i])} for i, u in enumerate(units)]
        random_rows = []
        for k in k_values:
            if math.comb(num, k) <= draws:
                sets = [list(c) for c in itertools.combinations(range(num), k)]
            else:
                sets = [rng.sample(range(num), k) for _ in range(draws)]
            values = [deleted(s) for s in sets]
            random_rows.append(
                {
                    "k": k,
                    "mean": statistics.fmean(values),
                    "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                    "draws": len(values),
                }
            )
        swap_rows = []
        if swaps and num > 1:
            for i in range(num - 1):
                a, b = units[i], units[i + 1]
                if len({*shapes[i], *shapes[i + 1]}) != 1:
                    continue
                value = run([(a.module, _swap_hook(b.module)), (b.module, _swap_hook(a.module))])
                swap_rows.append({"units": [a.name, b.name], "metric": value})
    return Lesion(
        metric=metric,
        baseline=baseline,
        single=single,
        random_k=random_rows,
        swaps=swap_rows,
        meta={"model": type(model).__name__, "units": num, "draws": draws, "seed": seed},
    )


def _unit_shapes(
    model: nn.Module,
    units: Sequence[UnitView],
    batches: Iterable[tuple[Tensor, Tensor]],
    device: Any,
) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...]]], Any]:
    """(input shape, output shape) of each unit without the batch dim, from two samples of
    the first batch, and the model's output for it; raises ``ValueError``
    (``check_view``) when a unit's output is not what its parts compute, as deleting its
    branch would then be wrong."""
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())] * len(units)
    seen: list[tuple[Tensor, Tensor] | None] = [None] * len(units)

    def hook(i: int) -> Callable:
        def fn(_m: nn.Module, args: tuple, out: Tensor) -> None:
            shapes[i] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))
            if seen[i] is None:
                seen[i] = (args[0].detach().clone(), out.detach().clone())

        return fn

    batch = next(iter(batches), None)
    if batch is None:
        raise ValueError("lesion got no data: pass (x, y) tensors or an iterable of batches")
    handles = [u.module.register_forward_hook(hook(i)) for i, u in enumerate(units)]
    try:
        with torch.no_grad():
            # Two samples: one would break a BatchNorm1d that keeps no running statistics.
            out = run_model(model, batch[0][:2].to(device))
    finally:
        for h in handles:
            h.remove()
    for u, rec in zip(units, seen, strict=True):
        if rec is not None:
            check_view(u, *rec)
    return shapes, out
