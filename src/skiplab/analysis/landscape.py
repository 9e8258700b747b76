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

Three ways to evaluate the grid (``method``), all giving the same values:

- ``"inplace"`` (what ``"auto"``, the default, picks): one private copy of the model
  (``copy.deepcopy`` once, eval mode). For each grid point the moved weights
  ``w + a d1 + b d2`` are written into the copy's parameters in place with
  ``torch._foreach`` ops from float32 master copies, then an ordinary forward pass runs
  over the data under ``torch.inference_mode``. Eval-mode BN whose parameters do not
  move (``ignore="biasbn"``) is folded into the conv before it (the conv's directions
  scaled by the same per-channel factor, so the grid is unchanged); on CUDA the copy
  and 4-D inputs use channels_last. Losses and correct counts are summed on the device
  and copied to the host once, so the host never waits for the GPU between points.
  ``precision="bf16"`` runs the copy in bfloat16 (weights computed in float32, loss from
  float32 logits), for GPUs; losses agree with float32 to about 1e-2 relative.
- ``"vmap"``: the weights of ``points_per_batch`` grid points are stacked and evaluated
  with ``torch.func.functional_call`` under ``torch.func.vmap``. Every conv becomes a
  grouped conv, which is slow: on a 2-core CPU about 3x slower than ``"inplace"``.
- ``"loop"``: ``functional_call`` one point at a time, the reference.

The model is evaluated in eval mode, so BN uses its running statistics (a landscape in
train mode would depend on the batch composition and update the statistics at every
point); the model passed in is left as it was.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.layers import check_choice, check_positive_int, eval_norm_affine, invalid
from .batches import check_class_targets, class_scores, xy_batches
from .blocks import run_model, unit_kind
from .gradflow import default_loss, module_mode
from .result import Result, new_axes

log = logging.getLogger(__name__)

# Li et al. 2018, Sec. 4 and the paper's code (net_plotter.normalize_direction).
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")
IGNORES = ("biasbn", "none")
METHODS = ("auto", "inplace", "vmap", "loop")
PRECISIONS = ("fp32", "bf16")

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


def _loss_for(loss_fn: LossFn | None, y: Tensor) -> tuple[LossFn, bool]:
    """The loss (default: cross-entropy for integer class labels, else mean squared error)
    and whether the targets are class labels (then accuracy is counted too)."""
    classify = not y.is_floating_point() and not y.is_complex()
    return loss_fn or default_loss, classify


# --------------------------------------------------------------------------- evaluation


def _grid(dims: int, coords: Tensor) -> Tensor:
    """[P, dims] grid of coefficients, row-major (index i * steps + j for 2-D)."""
    if dims == 1:
        return coords[:, None]
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def _largest_activation(model: nn.Module, x: Tensor) -> int:
    """Elements per sample of the largest tensor a leaf module outputs, from a forward
    pass over two samples ``x[:2]`` (one sample would break a BatchNorm1d that keeps no
    running statistics: it normalises over the batch)."""
    x = x[:2]
    largest = [x.numel()]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            run_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return -(-largest[0] // x.shape[0])


def _memory_budget(device: torch.device) -> int:
    """Bytes one evaluation may take: a quarter of free GPU memory on CUDA, 1 GiB elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 4
    return 1 << 30


def _auto_points_per_batch(model: nn.Module, x: Tensor, num_moving: int, num_points: int) -> int:
    """Grid points per vmap call so that a chunk's activations fit a memory budget.

    The peak per point is about three times the largest activation of one forward pass
    over the batch (input, output and a temporary) plus the point's moved weights.
    """
    per_point = (3 * _largest_activation(model, x) * x.shape[0] + num_moving) * x.element_size()
    return max(1, min(num_points, _memory_budget(x.device) // max(per_point, 1)))


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
) -> tuple[Tensor, Tensor, bool]:
    """Summed loss and correct count over the batch for each grid point in ``ab`` [P, dims],
    and whether the correct counts were counted (``classify`` and ``class_scores``: a model
    returning a dict, or one score per sample, has a loss only)."""
    ab = ab.to(device=x.device)
    n = x.shape[0]
    counted = classify

    def point(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal counted
        out = torch.func.functional_call(model, {**params, **fixed}, (x,))
        loss = loss_fn(out, y) * n
        counted = counted and class_scores(out, y)
        correct = (out.argmax(dim=1) == y).sum() if counted else loss.new_zeros(())
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

    if method == "vmap" and moving:  # vmap needs a stacked tensor to map over
        loss, correct = torch.func.vmap(point)(weights(ab))
        return loss.detach(), correct.detach(), counted
    losses, corrects = [], []
    for coef in ab:
        stacked = weights(coef[None])
        loss, correct = point({k: v[0] for k, v in stacked.items()})
        losses.append(loss.detach())
        corrects.append(correct.detach())
    return torch.stack(losses), torch.stack(corrects), counted


# --------------------------------------------------------------------------- in-place method


def _fold_batchnorm(net: nn.Module, masters: dict[str, tuple[Tensor, Tensor]]) -> int:
    """Fold eval-mode BN into the conv before it, in every ``nn.Sequential`` of ``net``.

    In eval mode BN is per-channel affine, ``bn(z) = z * s + t`` with
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``, so
    ``bn(conv_W(x) + c) = conv_{W s}(x) + c s + t``. Along a grid that leaves BN's own
    parameters fixed this is linear in the moved conv weight: ``(w0 + a d1 + b d2) s =
    w0 s + a (d1 s) + b (d2 s)``, and the master copies ``masters[name] = (w0, D)`` of
    the conv's weight (and bias) are scaled the same way. Only a conv whose output
    feeds nothing but the BN is folded (``_conv_bn_pairs``: adjacent children of an
    ``nn.Sequential``, and the convs and BNs of torchvision's ResNet stem and blocks), with
    no hooks, no parametrisation, parameters not shared with another module. The BN
    becomes an ``nn.Identity``. Returns the number of folded pairs.
    """
    # Exact types: a subclass may change what forward does with the weights or the stats.
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    shared: dict[int, int] = {}
    for _, p in net.named_parameters(remove_duplicate=False):
        shared[id(p)] = shared.get(id(p), 0) + 1
    names = {id(p): n for n, p in net.named_parameters()}

    def hooked(m: nn.Module) -> bool:
        return bool(m._forward_hooks or m._forward_pre_hooks)

    folded = 0
    for parent, conv, bn_key in list(_conv_bn_pairs(net)):  # folding replaces modules
        bn = getattr(parent, bn_key)
        if (
            type(conv) not in convs
            or type(bn) not in norms
            or bn.running_mean is None
            or bn.running_var is None
            or bn.num_features != conv.out_channels
            or hooked(conv)
            or hooked(bn)
            or torch.nn.utils.parametrize.is_parametrized(conv)
            or any(shared[id(p)] > 1 for p in conv.parameters())
            or any(names.get(id(p)) in masters for p in bn.parameters())
        ):
            continue
        w = conv.weight
        s, t = eval_norm_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        s, t = s.to(w.dtype), t.to(w.dtype)
        s_w = s.view(-1, *([1] * (w.dim() - 1)))  # [out, 1, ...]: per output channel
        w_name = names[id(w)]
        if w_name in masters:
            w0, d = masters[w_name]
            masters[w_name] = (w0 * s_w, d * s_w.unsqueeze(0))
        conv.weight = nn.Parameter(w * s_w, requires_grad=False)
        if conv.bias is None:
            conv.bias = nn.Parameter(t, requires_grad=False)
        else:
            b_name = names[id(conv.bias)]
            if b_name in masters:
                b0, d = masters[b_name]
                masters[b_name] = (b0 * s + t, d * s)
            conv.bias = nn.Parameter(conv.bias * s + t, requires_grad=False)
        setattr(parent, bn_key, nn.Identity())
        folded += 1
    return folded


def _conv_bn_pairs(net: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, str]]:
    """``(parent, conv, bn_attribute)`` for each module pair where the conv's output goes
    to the BN and nowhere else: adjacent children of an ``nn.Sequential`` (one that keeps
    Sequential's forward), and in torchvision's ResNet (stem) and BasicBlock / Bottleneck
    (those that keep their class's forward) ``convK`` followed by ``bnK``."""
    from torchvision.models import ResNet

    for m in net.modules():
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            children = list(m.named_children())
            for (_, conv), (bn_key, _bn) in zip(children, children[1:], strict=False):
                yield m, conv, bn_key
        elif unit_kind(m) == "torchvision" or (
            isinstance(m, ResNet) and type(m).forward is ResNet.forward
        ):
            for k in (1, 2, 3):
                if hasattr(m, f"conv{k}") and hasattr(m, f"bn{k}"):
                    yield m, getattr(m, f"conv{k}"), f"bn{k}"


def _use_channels_last(x: Tensor) -> bool:
    """channels_last for image batches on CUDA (cuDNN's fast NHWC kernels, bf16 above all)."""
    return x.device.type == "cuda" and x.dim() == 4


class _MovedCopy:
    """One private copy of the model whose moving parameters are rewritten per grid point.

    ``set_point(coef)`` writes ``w0 + coef[0] d1 (+ coef[1] d2)`` into the copy's
    parameters in place with ``torch._foreach`` ops from master copies kept in at least
    float32 (no model copy and no new state dict per point); ``forward`` is then an
    ordinary forward pass. With ``dtype=torch.bfloat16`` the copy (and its input) is
    converted once, and the weights are computed in float32 and copied in. With
    ``channels_last`` the copy's 4-D weights and the input use that memory format.
    """

    def __init__(
        self,
        model: nn.Module,
        moving: dict[str, tuple[Tensor, Tensor]],
        *,
        num_dirs: int,
        dtype: torch.dtype | None,
        channels_last: bool,
    ) -> None:
        net = copy.deepcopy(model).eval().requires_grad_(False)
        masters = {}
        for name, (w, d) in moving.items():
            master = torch.promote_types(w.dtype, torch.float32)
            masters[name] = (w.to(master), d.to(master))
        self.folded = _fold_batchnorm(net, masters)
        if dtype is not None:
            net.to(dtype)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = net
        self.dtype = dtype
        self.channels_last = channels_last
        self.params = [net.get_parameter(name) for name in masters]
        # Masters with the strides of the parameters they are written into (foreach fast path).
        self.w0 = [
            torch.empty_like(p, dtype=w0.dtype).copy_(w0)
            for p, (w0, _) in zip(self.params, masters.values(), strict=True)
        ]
        self.dirs = [
            [
                torch.empty_like(w0).copy_(d[k])
                for w0, (_, d) in zip(self.w0, masters.values(), strict=True)
            ]
            for k in range(num_dirs)
        ]
        same = all(p.dtype == w0.dtype for p, w0 in zip(self.params, self.w0, strict=True))
        self.work = self.params if same else [torch.empty_like(w0) for w0 in self.w0]

    def prepare(self, x: Tensor) -> Tensor:
        """The input as the copy wants it (dtype, memory format); done once per batch."""
        if self.dtype is not None and x.is_floating_point():
            x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def set_point(self, coef: list[float]) -> None:
        if not self.params:  # every direction is zero (e.g. only 1-D parameters, "biasbn")
            return
        torch._foreach_copy_(self.work, self.w0)
        for c, d in zip(coef, self.dirs, strict=True):
            torch._foreach_add_(self.work, d, alpha=c)
        if self.work is not self.params:
            torch._foreach_copy_(self.params, self.work)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if self.dtype is not None and isinstance(out, Tensor) and out.is_floating_point():
            return out.float()
        return out


def _eval_inplace(
    evaluator: _MovedCopy,
    ab: list[list[float]],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    classify: bool,
    chunk: int,
    loss_acc: Tensor,
    correct_acc: Tensor,
) -> bool:
    """Add each grid point's summed loss and correct count over ``x`` to the accumulators;
    return whether correct counts were counted (``classify`` and ``class_scores``).

    Everything stays on the device: no ``.item()`` or ``.cpu()`` per point, so the host
    queues the points' forward passes without waiting for the GPU.
    """
    xs = evaluator.prepare(x).split(chunk)
    ys = y.split(chunk)
    for i, coef in enumerate(ab):
        evaluator.set_point(coef)
        for xc, yc in zip(xs, ys, strict=True):
            out = evaluator.forward(xc)
            loss_acc[i].add_(loss_fn(out, yc).detach(), alpha=xc.shape[0])
            classify = classify and class_scores(out, yc)
            if classify:
                correct_acc[i].add_((out.argmax(dim=1) == yc).sum())
    return classify


Totals = tuple[Tensor, Tensor, int, int, bool, dict[str, Any]]


def _checked_targets(
    model: nn.Module, chunks: Iterable[tuple[Tensor, Tensor]], device: torch.device
) -> tuple[Iterable[tuple[Tensor, Tensor]], str | None]:
    """``chunks`` (the same data, none of it lost) and what is wrong with their integer
    class targets for the model's number of outputs (``check_class_targets``), or None:
    all the targets of ``(x, y)`` tensors are checked, else those of the first batch (the
    data is read only once). Before any grid point."""
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return chunks, None
    rest = chunks if isinstance(chunks, list) else itertools.chain([first], it)
    x, y = first
    if y.is_floating_point():
        return rest, None
    with module_mode(model, False), torch.no_grad():
        out = run_model(model, x[:2].to(device))
    try:
        check_class_targets(out, [t for _, t in chunks] if isinstance(chunks, list) else [y],
                            "loss_landscape")  # fmt: skip
    except ValueError as err:
        return rest, str(err)
    return rest, None


def _run_inplace(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    moving: dict[str, tuple[Tensor, Tensor]],
    ab: Tensor,
    loss_fn: LossFn | None,
    precision: str,
) -> Totals:
    """``method="inplace"``: per point of ``ab`` [P, dims], the summed loss and correct
    count; then the number of samples and targets, whether they are class labels, and
    what goes into the result's config."""
    device = next(iter(model.parameters())).device
    num_points = ab.shape[0]
    evaluator: _MovedCopy | None = None
    ab_list = ab.tolist()
    loss_acc = torch.zeros(num_points, dtype=torch.float64, device=device)
    correct_acc = torch.zeros(num_points, dtype=torch.float64, device=device)
    count = targets = chunk = 0
    classify = False
    with torch.inference_mode():
        for x, y in batches:
            fn, classify = _loss_for(loss_fn, y)
            if evaluator is None:
                evaluator = _MovedCopy(
                    model,
                    moving,
                    num_dirs=ab.shape[1],
                    dtype=torch.bfloat16 if precision == "bf16" else None,
                    channels_last=_use_channels_last(x),
                )
                # Forward passes over chunks of the batch that fit a memory budget:
                # about 3 of the largest activation per sample (input, output, temp).
                x1 = evaluator.prepare(x[:2])
                per_sample = 3 * _largest_activation(evaluator.net, x1) * x1.element_size()
                chunk = max(1, _memory_budget(device) // per_sample)
                log.debug(
                    "loss_landscape: %d BN folded, forward chunks of %d samples",
                    evaluator.folded,
                    chunk,
                )
            classify = _eval_inplace(
                evaluator, ab_list, x, y, fn, classify, chunk, loss_acc, correct_acc
            )
            count += x.shape[0]
            targets += y.numel()
    extra = {}
    if evaluator is not None:
        extra = {"folded_batchnorm": evaluator.folded, "channels_last": evaluator.channels_last}
    # Copied to the host once, at the end (no sync per point).
    return loss_acc.cpu(), correct_acc.cpu(), count, targets, classify, extra


def _run_stacked(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    moving: dict[str, tuple[Tensor, Tensor]],
    ab: Tensor,
    loss_fn: LossFn | None,
    method: str,
    points_per_batch: int | None,
) -> Totals:
    """``method="vmap"``/``"loop"``: as ``_run_inplace``, with ``functional_call`` on the
    model itself (eval mode, restored afterwards)."""
    fixed: dict[str, Tensor] = {k: b for k, b in model.named_buffers()}
    fixed.update({k: w.detach() for k, w in model.named_parameters() if k not in moving})
    num_points = ab.shape[0]
    loss_sum = torch.zeros(num_points, dtype=torch.float64)
    correct = torch.zeros(num_points, dtype=torch.float64)
    count = targets = 0
    classify = False
    ppb = points_per_batch
    # Eval mode; every submodule's own flag is restored after (a frozen BN stays in eval).
    with module_mode(model, False), torch.no_grad():
        for x, y in batches:
            fn, classify = _loss_for(loss_fn, y)
            if ppb is None:  # sized on the first batch
                ppb = _auto_points_per_batch(
                    model, x, sum(w.numel() for w, _ in moving.values()), num_points
                )
                log.debug("loss_landscape: %d grid points per vmap call", ppb)
            for start in range(0, num_points, ppb):
                chunk = ab[start : start + ppb]
                lo, co, classify = _eval_chunk(
                    model, moving, fixed, chunk, x, y, fn, classify, method
                )
                loss_sum[start : start + len(chunk)] += lo.double().cpu()
                correct[start : start + len(chunk)] += co.double().cpu()
            count += x.shape[0]
            targets += y.numel()
    return loss_sum, correct, count, targets, classify, {}


def check_landscape_args(
    *,
    dims: Any,
    steps: Any,
    span: Any,
    norm: Any,
    ignore: Any,
    batch_size: Any,
    points_per_batch: Any,
    method: Any,
    precision: Any,
) -> None:
    """Raise ``ValueError`` for a bad argument of ``loss_landscape`` (none needs the model):
    ``loss_landscape`` starts with it, and a study spec checks its options with it when it
    loads."""
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in (1, 2):
        raise invalid("dims", dims, (1, 2))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise invalid("steps", steps, "must be an integer >= 2 (grid points per axis)")
    if isinstance(span, bool) or not isinstance(span, int | float) or not span > 0:
        raise invalid("span", span, "must be a positive number")
    if not math.isfinite(span):
        raise invalid("span", span, "must be a positive number")
    check_choice("norm", norm, NORMS)
    check_choice("ignore", ignore, IGNORES)
    check_choice("method", method, METHODS)
    check_choice("precision", precision, PRECISIONS)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if points_per_batch is not None:
        check_positive_int("points_per_batch", points_per_batch)
    if precision != "fp32" and method not in ("inplace", "auto"):
        raise invalid(
            "precision",
            precision,
            f"needs method='inplace' or 'auto' (got method={method!r}); "
            "use precision='fp32' with 'vmap' and 'loop'",
        )


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
    method: str = "auto",
    precision: str = "fp32",
) -> LossLandscape:
    """Loss and accuracy of ``model`` on a 1-D or 2-D grid along random directions.

    Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets": the directions are
    Gaussian, filter-normalised (``norm="filter"``) with biases and norm parameters left
    out (``ignore="biasbn"``); the grid is ``steps`` points per axis over
    ``[-span, span]``.

    Args:
        model: any ``nn.Module``; evaluated in eval mode (BN uses running statistics).
            It is left as it was: weights, mode, device, dtype and memory format.
        data: ``(x, y)`` tensors (split into ``batch_size`` chunks, default all at once)
            or an iterable of ``(x, y)`` batches; it is read once, and each batch is
            moved to the model's device once.
        loss_fn: ``loss_fn(output, target)`` returning the batch mean (default:
            cross-entropy for integer labels, which also gives accuracy; MSE otherwise).
            With ``method="vmap"`` it must be vmap-able (torch functions are).
        points_per_batch: ``method="vmap"`` only: grid points evaluated together in one
            vmap call (default: as many as fit a memory budget).
        method: how the grid points are evaluated; every method gives the same values.

            - ``"inplace"``: one private copy of the model (``copy.deepcopy``, eval
              mode); per point the moved weights are written into its parameters in
              place, then an ordinary forward pass runs over the batch (split to fit a
              memory budget). Eval-mode BatchNorm whose parameters do not move
              (``ignore="biasbn"``) is folded into the conv before it, where the two
              are adjacent in an ``nn.Sequential``; on CUDA, 4-D inputs and the copy
              use channels_last. Losses are summed on the device and copied to the
              host once. Memory: one model copy and three float32 copies of the
              moved weights (``w``, ``d1``, ``d2``).
            - ``"vmap"``: the weights of ``points_per_batch`` points stacked and run
              with ``torch.func.functional_call`` under ``torch.func.vmap`` (every conv
              becomes a grouped conv).
            - ``"loop"``: ``functional_call`` one point at a time: the reference.
            - ``"auto"`` (default): ``"inplace"`` (3x faster than ``"vmap"`` on a
              2-core CPU; on a GPU it avoids vmap's grouped convs).
        precision: ``"fp32"`` (default): the model's own dtype (float32 for most
            models), exact up to rounding. ``"bf16"`` (``method="inplace"`` or
            ``"auto"`` only): the private copy and the inputs in bfloat16; the moved
            weights are computed in float32 and rounded once per point, and the loss
            is computed from float32 logits. For GPUs (a CPU without bfloat16
            hardware runs it far slower than fp32); losses agree with fp32 to about
            1e-2 relative.

    Raises:
        ValueError: ``dims`` not 1 or 2, ``steps`` < 2, unknown ``norm``/``ignore``/
            ``method``/``precision``, ``precision="bf16"`` with ``"vmap"``/``"loop"``,
            bad ``span``, empty data, or (with the default loss) integer class targets
            outside ``0..C-1`` for a model with ``C`` outputs.
    """
    check_landscape_args(
        dims=dims, steps=steps, span=span, norm=norm, ignore=ignore, batch_size=batch_size,
        points_per_batch=points_per_batch, method=method, precision=precision,
    )  # fmt: skip

    params = dict(model.named_parameters())
    if not params:
        raise ValueError("invalid model: it has no parameters to move along")
    device = next(iter(params.values())).device
    # "auto" is "inplace" on every device: on a 2-core CPU it measured 3x faster than
    # vmap (resnet-20, 360 digits: about 30 vs 90 ms/point), on a GPU it avoids vmap's
    # grouped convs.
    method = "inplace" if method == "auto" else method
    live = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
    ]
    if live:  # eval mode cannot fix their statistics: each batch (or chunk) uses its own
        log.warning(
            "loss_landscape: %s keep no running statistics (track_running_stats=False), so "
            "they normalise each forward pass by its own batch: the values depend on "
            "batch_size (and, with method='inplace', on the memory budget's chunks)",
            ", ".join(live),
        )
    gen = torch.Generator().manual_seed(seed)
    directions = [random_direction(model, norm=norm, ignore=ignore, generator=gen)]
    if dims == 2:
        directions.append(random_direction(model, norm=norm, ignore=ignore, generator=gen))

    # Only parameters with a nonzero direction move; the rest are shared by every point.
    moving: dict[str, tuple[Tensor, Tensor]] = {}
    for name, w in params.items():
        ds = [d[name] for d in directions]
        if any(bool(d.any()) for d in ds):
            moving[name] = (w.detach(), torch.stack(ds))

    coords = torch.linspace(-float(span), float(span), steps, dtype=torch.float64)
    # The origin first (the model's own loss), then the grid.
    ab = torch.cat([torch.zeros(1, dims, dtype=torch.float64), _grid(dims, coords)])
    chunks, bad_labels = _checked_targets(model, xy_batches(data, batch_size), device)
    if bad_labels and loss_fn is None:
        raise ValueError(bad_labels)
    if bad_labels:  # the user's loss decides what the labels mean; accuracy cannot
        log.warning("%s; no accuracy is reported (the loss is the given loss_fn's)", bad_labels)
    batches = ((x.to(device), y.to(device)) for x, y in chunks)
    if method == "inplace":
        totals = _run_inplace(model, batches, moving, ab, loss_fn, precision)
    else:
        totals = _run_stacked(model, batches, moving, ab, loss_fn, method, points_per_batch)
    loss_sum, correct, count, targets, classify, extra = totals
    if count == 0:
        raise ValueError("invalid data: it holds no samples")

    losses = loss_sum / count
    accs = correct / targets if classify and not bad_labels else None

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
            "points_per_batch": points_per_batch if method == "vmap" else None,
            "method": method,
            "precision": precision,
            "model": type(model).__name__,
            "moved_parameters": sum(w.numel() for w, _ in moving.values()),
            **extra,
        },
    )
