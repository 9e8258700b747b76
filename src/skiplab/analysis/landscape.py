"""Loss landscapes along random filter-normalised directions (Li et al. 2018).

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS 2018). A plot of ``L(w + a d1 + b d2)`` along random directions only means
something if the directions have the scale of the weights they move: a network with
BN is invariant to the scale of each filter, so a fixed-size step is large for small
filters and negligible for large ones. Filter normalisation (Sec. 4) scales each filter
of the random direction (for a conv weight ``[out, in, k, k]`` each output filter, for a
linear weight ``[out, in]`` each row) to the norm of the matching filter of the weights:

    d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||w_{i,j}||

With ``ignore="biasbn"`` the direction is zero on every 1-D parameter (biases, BN and
other norm scales and shifts), as in the paper's code; otherwise a 1-D parameter's
direction is the parameter itself. Buffers (BN running statistics) are never moved.

Evaluation is batched: the weights of ``points_per_batch`` grid points are stacked and
evaluated with ``torch.func.functional_call`` under ``torch.func.vmap`` (one pass over
the data per chunk of points, buffers shared), rather than one model copy and one data
pass per point. The model is evaluated in eval mode, so BN uses its running statistics
(a landscape in train mode would depend on the batch composition and update the
statistics at every point).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import check_choice, check_positive_int, invalid
from .result import Result, new_axes

log = logging.getLogger(__name__)

# Li et al. 2018, Sec. 4 and the paper's code (net_plotter.normalize_direction).
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")
IGNORES = ("biasbn", "none")
METHODS = ("vmap", "loop")

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(repr=False)
class LossLandscape(Result):
    """Loss (and accuracy) over a 1-D line or 2-D plane through the model's weights.

    ``values[i]`` (1-D) or ``values[i][j]`` (2-D) is the loss at
    ``w + coords[i] * d1 (+ coords[j] * d2)``; ``accuracy`` likewise, or ``None`` when
    the targets are not class labels. ``center_loss`` is the model's own loss.
    """

    dims: int
    coords: list[float]
    values: list[Any]
    accuracy: list[Any] | None
    center_loss: float
    center_accuracy: float | None
    seed: int
    norm: str
    ignore: str
    span: float
    num_samples: int
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shape = "x".join([str(len(self.coords))] * self.dims)
        acc = (
            "" if self.center_accuracy is None else f", center_accuracy={self.center_accuracy:.4f}"
        )
        return (
            f"LossLandscape(dims={self.dims}, grid={shape}, span={self.span:g}, "
            f"norm={self.norm!r}, ignore={self.ignore!r}, seed={self.seed}, "
            f"center_loss={self.center_loss:.4g}{acc}, "
            f"min={self.min_loss:.4g}, max={self.max_loss:.4g})"
        )

    @property
    def _flat(self) -> list[float]:
        v = torch.tensor(self.values, dtype=torch.float64).flatten()
        return [float(x) for x in v]

    @property
    def min_loss(self) -> float:
        return min(self._flat)

    @property
    def max_loss(self) -> float:
        return max(self._flat)

    def summary(self) -> str:
        shape = "x".join([str(len(self.coords))] * self.dims)
        lines = [
            f"loss landscape ({self.dims}-D, {shape} grid over [-{self.span:g}, {self.span:g}], "
            f"{self.norm}-normalised directions, ignore={self.ignore}, seed {self.seed}; "
            f"Li et al. 2018)",
            f"  centre loss {self.center_loss:.4g}; min {self.min_loss:.4g}; "
            f"max {self.max_loss:.4g} over {self.num_samples} samples",
        ]
        if self.center_accuracy is not None:
            lines.append(f"  centre accuracy {self.center_accuracy:.4f}")
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """1-D: the loss curve (accuracy on a twin axis); 2-D: contours of the loss."""
        ax = new_axes(ax)
        coords = torch.tensor(self.coords)
        if self.dims == 1:
            ax.plot(coords, self.values, color="C0", label="loss")
            ax.set_xlabel("alpha (filter-normalised direction)")
            ax.set_ylabel("loss")
            if self.accuracy is not None:
                twin = ax.twinx()
                twin.plot(coords, self.accuracy, color="C1", linestyle="--", label="accuracy")
                twin.set_ylabel("accuracy")
        else:
            v = torch.tensor(self.values, dtype=torch.float64)
            lo, hi = float(v.min()), float(v.max())
            levels = torch.linspace(lo, hi, 21).tolist() if hi > lo else None
            # values[i][j]: i along d1 (x axis), j along d2 (y axis); contour wants [y, x].
            cs = ax.contour(coords, coords, v.T.numpy(), levels=levels, cmap="viridis")
            ax.clabel(cs, inline=True, fontsize=7, fmt="%.2g")
            ax.set_xlabel("alpha (direction 1)")
            ax.set_ylabel("beta (direction 2)")
            ax.set_aspect("equal")
        ax.set_title(f"loss landscape ({self.norm} norm, Li et al. 2018)")
        return ax


# --------------------------------------------------------------------------- directions


def _normalize_direction(d: Tensor, w: Tensor, norm: str) -> Tensor:
    """Scale direction ``d`` for weight ``w`` (Li et al. 2018, Sec. 4; their code's options)."""
    if norm == "filter":
        # One filter per output unit: dim 0 of a conv [out, in, k, k] or linear [out, in].
        dn = d.flatten(1).norm(dim=1)
        wn = w.flatten(1).norm(dim=1)
        scale = torch.where(dn > 0, wn / torch.where(dn > 0, dn, 1.0), 0.0)
        return d * scale.view(-1, *([1] * (d.dim() - 1)))
    if norm == "layer":
        dn = d.norm()
        return d * (w.norm() / dn) if dn > 0 else d
    if norm == "weight":
        return d * w
    if norm == "dfilter":
        dn = d.flatten(1).norm(dim=1)
        return d / torch.where(dn > 0, dn, 1.0).view(-1, *([1] * (d.dim() - 1)))
    if norm == "dlayer":
        dn = d.norm()
        return d / dn if dn > 0 else d
    return d  # "none"


def random_direction(
    model: nn.Module,
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A random Gaussian direction in weight space, one tensor per named parameter.

    Each multi-dimensional parameter's direction is normalised by ``norm`` (``"filter"``:
    every filter gets the norm of the matching weight filter, Li et al. 2018). 1-D
    parameters (biases, norm scales and shifts) get a zero direction when
    ``ignore="biasbn"``, else the parameter itself (as in the paper's code). Random
    numbers are drawn on the CPU from ``generator``, so a seed gives the same direction
    on every device.
    """
    norm = check_choice("norm", norm, NORMS)
    ignore = check_choice("ignore", ignore, IGNORES)
    out: dict[str, Tensor] = {}
    for name, w in model.named_parameters():
        w = w.detach()
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        d = d.to(device=w.device, dtype=w.dtype)
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
        else:
            out[name] = _normalize_direction(d, w, norm)
    return out


# --------------------------------------------------------------------------- data


def _batches(
    data: Any, batch_size: int | None, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) tensors split into ``batch_size`` chunks, or an iterable of (x, y) batches."""
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"invalid data: x has {x.shape[0]} samples and y has {y.shape[0]}; "
                "expected (x, y) tensors with the same first dimension"
            )
        n = x.shape[0]
        step = n if batch_size is None else batch_size
        for i in range(0, n, step):
            yield x[i : i + step].to(device), y[i : i + step].to(device)
        return
    if not isinstance(data, Iterable):
        raise ValueError(
            f"invalid data of type {type(data).__name__}: expected (x, y) tensors or an "
            "iterable of (x, y) batches"
        )
    for batch in data:
        x, y = batch[0], batch[1]
        yield x.to(device), y.to(device)


def _default_loss(y: Tensor) -> tuple[LossFn, bool]:
    """Cross-entropy for integer class labels (with accuracy), else mean squared error."""
    if not y.is_floating_point() and not y.is_complex():
        return F.cross_entropy, True
    return F.mse_loss, False


# --------------------------------------------------------------------------- evaluation


def _grid(dims: int, coords: Tensor) -> Tensor:
    """[P, dims] grid of coefficients, row-major (index i * steps + j for 2-D)."""
    if dims == 1:
        return coords[:, None]
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def _auto_points_per_batch(model: nn.Module, x: Tensor, num_moving: int, num_points: int) -> int:
    """Grid points per vmap call so that a chunk's activations fit a memory budget.

    The peak per point is about three times the largest activation of one forward pass
    over the batch (input, output and a temporary) plus the point's moved weights. The
    budget is a quarter of free GPU memory on CUDA and 1 GiB on the CPU.
    """
    largest = [x.numel()]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    per_point = (3 * largest[0] * x.shape[0] + num_moving) * x.element_size()
    if x.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(x.device)
        budget = free // 4
    else:
        budget = 1 << 30
    return max(1, min(num_points, budget // max(per_point, 1)))


def _eval_chunk(
    model: nn.Module,
    moving: dict[str, tuple[Tensor, Tensor]],
    fixed: dict[str, Tensor],
    ab: Tensor,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    classify: bool,
    method: str,
) -> tuple[Tensor, Tensor]:
    """Summed loss and correct count over the batch for each grid point in ``ab`` [P, dims]."""
    ab = ab.to(device=x.device)
    n = x.shape[0]

    def point(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = torch.func.functional_call(model, {**params, **fixed}, (x,))
        loss = loss_fn(out, y) * n
        correct = (out.argmax(dim=1) == y).sum() if classify else loss.new_zeros(())
        return loss, correct

    def weights(coef: Tensor) -> dict[str, Tensor]:
        # coef [P, dims]: w + sum_k coef[:, k] * d_k, stacked [P, *w.shape].
        out = {}
        for name, (w, d) in moving.items():
            shape = (-1,) + (1,) * w.dim()
            s = w.unsqueeze(0) + coef[:, 0].to(w.dtype).view(shape) * d[0].unsqueeze(0)
            if d.shape[0] > 1:
                s = s + coef[:, 1].to(w.dtype).view(shape) * d[1].unsqueeze(0)
            out[name] = s
        return out

    if method == "vmap":
        loss, correct = torch.func.vmap(point)(weights(ab))
        return loss.detach(), correct.detach()
    losses, corrects = [], []
    for coef in ab:
        stacked = weights(coef[None])
        loss, correct = point({k: v[0] for k, v in stacked.items()})
        losses.append(loss.detach())
        corrects.append(correct.detach())
    return torch.stack(losses), torch.stack(corrects)


def loss_landscape(
    model: nn.Module,
    data: Any,
    *,
    dims: int = 1,
    steps: int = 51,
    span: float = 1.0,
    norm: str = "filter",
    ignore: str = "biasbn",
    seed: int = 0,
    loss_fn: LossFn | None = None,
    batch_size: int | None = None,
    points_per_batch: int | None = None,
    method: str = "vmap",
) -> LossLandscape:
    """Loss and accuracy of ``model`` on a 1-D or 2-D grid along random directions.

    Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets": the directions are
    Gaussian, filter-normalised (``norm="filter"``) with biases and norm parameters left
    out (``ignore="biasbn"``); the grid is ``steps`` points per axis over
    ``[-span, span]``.

    Args:
        model: any ``nn.Module``; evaluated in eval mode (BN uses running statistics);
            its weights and mode are restored afterwards.
        data: ``(x, y)`` tensors (split into ``batch_size`` chunks, default all at once)
            or an iterable of ``(x, y)`` batches; it is read once.
        loss_fn: ``loss_fn(output, target)`` returning the batch mean (default:
            cross-entropy for integer labels, which also gives accuracy; MSE otherwise).
            With ``method="vmap"`` it must be vmap-able (torch functions are).
        points_per_batch: grid points evaluated together in one vmap call (default:
            as many as fit a memory budget, see ``_auto_points_per_batch``).
        method: ``"vmap"`` (batched, default) or ``"loop"`` (one point at a time: the
            reference, and the fallback for models that vmap cannot run).

    Raises:
        ValueError: ``dims`` not 1 or 2, ``steps`` < 2, unknown ``norm``/``ignore``/
            ``method``, bad ``span`` or empty data.
    """
    if dims not in (1, 2) or isinstance(dims, bool):
        raise invalid("dims", dims, (1, 2))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise invalid("steps", steps, "must be an integer >= 2 (grid points per axis)")
    if isinstance(span, bool) or not isinstance(span, int | float) or not span > 0:
        raise invalid("span", span, "must be a positive number")
    if not math.isfinite(span):
        raise invalid("span", span, "must be a positive number")
    norm = check_choice("norm", norm, NORMS)
    ignore = check_choice("ignore", ignore, IGNORES)
    method = check_choice("method", method, METHODS)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if points_per_batch is not None:
        check_positive_int("points_per_batch", points_per_batch)

    params = dict(model.named_parameters())
    if not params:
        raise ValueError("invalid model: it has no parameters to move along")
    device = next(iter(params.values())).device
    gen = torch.Generator().manual_seed(seed)
    directions = [random_direction(model, norm=norm, ignore=ignore, generator=gen)]
    if dims == 2:
        directions.append(random_direction(model, norm=norm, ignore=ignore, generator=gen))

    # Parameters with a zero direction are shared by every point; the rest are stacked.
    moving: dict[str, tuple[Tensor, Tensor]] = {}
    fixed: dict[str, Tensor] = {k: b for k, b in model.named_buffers()}
    for name, w in params.items():
        ds = [d[name] for d in directions]
        if all(not bool(d.any()) for d in ds):
            fixed[name] = w.detach()
        else:
            moving[name] = (w.detach(), torch.stack(ds))

    coords = torch.linspace(-float(span), float(span), steps, dtype=torch.float64)
    # The origin first (the model's own loss), then the grid.
    ab = torch.cat([torch.zeros(1, dims, dtype=torch.float64), _grid(dims, coords)])
    num_points = ab.shape[0]
    loss_sum = torch.zeros(num_points, dtype=torch.float64)
    correct = torch.zeros(num_points, dtype=torch.float64)
    count = 0
    targets = 0
    classify = False
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in _batches(data, batch_size, device):
                if loss_fn is None:
                    fn, classify = _default_loss(y)
                else:
                    fn = loss_fn
                    classify = not y.is_floating_point() and not y.is_complex()
                ppb = points_per_batch
                if ppb is None:
                    ppb = _auto_points_per_batch(
                        model, x, sum(w.numel() for w, _ in moving.values()), num_points
                    )
                    log.debug("loss_landscape: %d grid points per vmap call", ppb)
                for start in range(0, num_points, ppb):
                    chunk = ab[start : start + ppb]
                    lo, co = _eval_chunk(model, moving, fixed, chunk, x, y, fn, classify, method)
                    loss_sum[start : start + len(chunk)] += lo.double().cpu()
                    correct[start : start + len(chunk)] += co.double().cpu()
                count += x.shape[0]
                targets += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("invalid data: it holds no samples")

    losses = loss_sum / count
    accs = correct / targets if classify else None

    def shaped(v: Tensor) -> list[Any]:
        grid = v[1:]
        return (grid if dims == 1 else grid.view(steps, steps)).tolist()

    return LossLandscape(
        dims=dims,
        coords=coords.tolist(),
        values=shaped(losses),
        accuracy=None if accs is None else shaped(accs),
        center_loss=float(losses[0]),
        center_accuracy=None if accs is None else float(accs[0]),
        seed=seed,
        norm=norm,
        ignore=ignore,
        span=float(span),
        num_samples=count,
        config={
            "steps": steps,
            "loss_fn": getattr(loss_fn, "__name__", "default") if loss_fn else "default",
            "batch_size": batch_size,
            "points_per_batch": points_per_batch,
            "method": method,
            "model": type(model).__name__,
            "moved_parameters": sum(w.numel() for w, _ in moving.values()),
        },
    )
