"""The nonlinearity coefficient (NLC) of Philipp & Carbonell (arXiv 1806.00179).

    NLC(f) = sqrt( E_x tr(J(x) Σ_x J(x)^T) / tr(Σ_f) )

with Σ_x the covariance of the inputs, Σ_f the covariance of the outputs f(x) and J(x)
the input-output Jacobian. An affine map has NLC 1 (J is constant, so J Σ_x J^T = Σ_f);
the more nonlinear f is over the spread of its inputs, the larger the NLC.

Computation, without materialising J: with the centred data matrix C = X - mean ([N, D])
and its thin SVD C = U S V^T, Σ_x = C^T C / N = sum_r t_r t_r^T with tangents
t_r = s_r v_r / sqrt(N) (rank <= min(N - 1, D)), so

    tr(J Σ_x J^T) = sum_r |J t_r|^2,

one Jacobian-vector product per tangent, each evaluated at all N points at once. That
needs a model that maps each point on its own: it runs in eval mode, and a model that
still mixes the batch (BatchNorm with ``track_running_stats=False``, a mean over dim 0)
is an error, found with one vector-Jacobian product (it would give a wrong NLC, 0 for
``x - x.mean(0)``). The tangents are batched with
``torch.func.vmap`` over ``torch.func.jvp`` (forward mode); where an op has no
forward-mode rule, the JVP falls back to the double-backward trick.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.layers import check_positive_int
from .batches import quiet_vmap_fallback
from .blocks import find_units
from .gradflow import module_mode
from .pathgrad import record_units
from .result import Result, new_axes

log = logging.getLogger(__name__)


def _tangents(x: Tensor, rtol: float = 1e-10) -> Tensor:
    """Tangents t_r with sum_r t_r t_r^T = Σ_x (population covariance), ``[R, *x.shape[1:]]``."""
    n, dtype = x.shape[0], x.dtype
    if dtype not in (torch.float32, torch.float64):  # eigh/svd have no half-precision kernels
        x = x.float()
    c = (x - x.mean(0, keepdim=True)).reshape(n, -1)  # [N, D]; x may be [N] (scalar points)
    if c.shape[1] <= n:  # D small: eigen-decomposition of the D x D covariance
        cov = c.T @ c / n
        evals, evecs = torch.linalg.eigh(cov)
        keep = evals > rtol * evals.abs().max().clamp_min(torch.finfo(c.dtype).tiny)
        t = (evecs[:, keep] * evals[keep].sqrt()).T  # [R, D]
    else:
        _u, s, vh = torch.linalg.svd(c, full_matrices=False)
        keep = s > math.sqrt(rtol) * s.max().clamp_min(torch.finfo(c.dtype).tiny)
        t = s[keep, None] * vh[keep] / math.sqrt(n)  # [R, D]
    return t.reshape(-1, *x.shape[1:]).to(dtype)


def _jvp_sq_norms(f: Callable[[Tensor], Tensor], x: Tensor, tangents: Tensor, chunk: int) -> Tensor:
    """sum_r |J(x_i) t_r|^2 for each point i: ``[N]``. ``tangents`` are ``[R, *x.shape[1:]]``."""

    def one(t: Tensor) -> Tensor:
        _out, jt = torch.func.jvp(f, (x,), (t.expand_as(x),))
        return jt.detach().reshape(jt.shape[0], -1).pow(2).sum(1)  # [N]

    try:
        sq = torch.func.vmap(one, chunk_size=chunk)(tangents)  # [R, N]
        return sq.sum(0)
    except (RuntimeError, NotImplementedError) as err:
        log.info("forward-mode JVP unavailable (%s); using double-backward VJPs", err)
    # J t = d/dv <v, J t>: the VJP u(v) = J^T v is linear in v, and J t = grad_v <u(v), t>.
    total = x.new_zeros(x.shape[0])
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = f(xg)
        v = torch.zeros_like(out, requires_grad=True)
        (u,) = torch.autograd.grad(out, xg, v, create_graph=True)
        for start in range(0, tangents.shape[0], chunk):
            t = tangents[start : start + chunk]
            t = t.unsqueeze(1).expand(-1, *x.shape)  # [r, N, ...]
            (jt,) = torch.autograd.grad(u, v, t, retain_graph=True, is_grads_batched=True)
            total += jt.detach().reshape(*jt.shape[:2], -1).pow(2).sum(2).sum(0)
    return total


class NotPerPointError(ValueError):
    """A map whose output for one point depends on other points: no per-point Jacobian."""


def _unit_nlc(unit: Any, x: Tensor, chunk: int) -> float:
    """A unit's NLC; NaN, with a warning, for a unit that does not map its inputs row by
    row (a seq-first ``nn.TransformerEncoderLayer`` gets [T, N, E]): the whole model's NLC
    still stands."""
    try:
        return nlc_of(unit.module, x, chunk=chunk, what=f"unit {unit.name!r}")
    except NotPerPointError as err:
        log.warning("per-unit NLC of %r is NaN: %s", unit.name, err)
        return math.nan


def _why_not_per_sample(out: Tensor, x: Tensor) -> str:
    if out.ndim == 0 or out.shape[0] != x.shape[0]:
        return f"its output has shape {tuple(out.shape)}, not [{x.shape[0]}, ...]"
    return (
        "the output for one point changes with the other points: a layer mixes the batch "
        "(BatchNorm with track_running_stats=False, a mean over dim 0, attention or a "
        "recurrent layer run along it)"
    )


def _mixes_samples(f: Callable[[Tensor], Tensor], x: Tensor) -> bool:
    """Whether the output for the first or the last point depends on the other points (two
    VJPs; one end alone would miss a causal mix, such as a recurrent layer run over the
    batch dimension): the NLC's Jacobian is per point, and ``_jvp_sq_norms`` moves all
    points at once."""
    gen = torch.Generator().manual_seed(0)  # a random cotangent: no accidental cancellation
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = f(xg)
            if not out.requires_grad:
                return False
            grads = []
            for i in (0, len(out) - 1):
                v = torch.randn(out.shape[1:], generator=gen, dtype=out.dtype).to(out.device)
                (g,) = torch.autograd.grad(
                    (out[i] * v).sum(), xg, retain_graph=True, allow_unused=True
                )
                grads.append((i, g))
    except (RuntimeError, NotImplementedError) as err:  # no backward: the JVP decides
        log.debug("could not check that the points are independent: %s", err)
        return False
    for i, g in grads:
        if g is None:
            continue
        own = g[i].abs().max()
        others = torch.cat([g[:i], g[i + 1 :]]).abs().max()
        if (others > 1e-6 * own) if own > 0 else (others > 0):
            return True
    return False


def nlc_of(
    f: Callable[[Tensor], Tensor], x: Tensor, *, chunk: int = 16, what: str = "the model"
) -> float:
    """NLC of ``f`` over the points ``x`` (``[N, ...]``, N >= 2), which ``f`` maps sample by
    sample (Philipp & Carbonell 2018). 1 for an affine ``f``; NaN when ``f`` is constant.

    Attention runs with PyTorch's math kernel here: the fused CPU kernels have neither
    forward-mode derivatives nor double backward."""
    if x.shape[0] < 2:
        raise ValueError(f"the NLC needs at least 2 input points to estimate Σ_x, got {x.shape[0]}")
    if not x.is_floating_point():
        raise ValueError(
            f"the NLC needs floating-point inputs to {what} (it differentiates with respect "
            f"to them), got {x.dtype}"
        )
    x = x.detach()
    with torch.no_grad():
        out = f(x)
    if not isinstance(out, Tensor) or not out.is_floating_point():
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the NLC needs {what} to return a floating-point tensor, got {got}; wrap it in a "
            "module whose forward returns one tensor (e.g. the logits)"
        )
    if out.ndim == 0 or out.shape[0] != x.shape[0] or _mixes_samples(f, x):
        raise NotPerPointError(
            f"the NLC needs {what} to map each of the {x.shape[0]} input points on its own "
            f"(its Jacobian is taken per point), but {_why_not_per_sample(out, x)}; make "
            "output row i depend on input row i only (in eval mode, BatchNorm with running "
            "statistics does)"
        )
    var_out = (out - out.mean(0, keepdim=True)).reshape(len(out), -1).pow(2).sum(1).mean()
    tangents = _tangents(x)
    if tangents.shape[0] == 0:
        return math.nan
    try:
        with sdpa_kernel(SDPBackend.MATH), quiet_vmap_fallback(), warnings.catch_warnings():
            # torch.func.jvp scripts a helper of its own on first use, which warns that
            # torch.jit.script is deprecated: torch's business, not the caller's
            warnings.filterwarnings(
                "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
            )
            num = _jvp_sq_norms(f, x, tangents, chunk).detach().mean()  # E_x tr(J Σ_x J^T)
    except torch.OutOfMemoryError:
        raise  # not a missing derivative: a smaller chunk helps
    except (RuntimeError, NotImplementedError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"the NLC of {what} needs Jacobian-vector products, and an op in it has neither "
            f"a forward-mode derivative nor a double backward ({first})"
        ) from err
    if var_out <= 0:
        return math.nan
    return float((num / var_out).sqrt())


@dataclass(repr=False)
class NLC(Result):
    """The nonlinearity coefficient of the model (``value``) and of each residual unit as a
    map from its input to its output (``per_unit``: ``{"name", "nlc"}``, inputs recorded on
    the same batch), Philipp & Carbonell 2018."""

    value: float
    per_unit: list[dict[str, Any]]
    points: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"NLC(value={self.value:.4g}, units={len(self.per_unit)}, points={self.points})"

    def summary(self) -> str:
        lines = [
            f"nonlinearity coefficient {self.value:.4g} over {self.points} points "
            "(1 = affine; Philipp & Carbonell 2018)"
        ]
        if math.isnan(self.value):
            lines.append(
                "NaN: the model's output does not vary over these points (a zero-initialised "
                "last layer, as in torchvision's ViT, or a constant function), so the NLC is 0/0"
            )
        if self.value < 0.99:  # an affine map gives 1 up to rounding, so not "< 1"
            lines.append(
                "below 1: the outputs vary more across the points than the slopes at the "
                "points account for (flat near the data, steep between): not affine either"
            )
        vals = [r["nlc"] for r in self.per_unit if not math.isnan(r["nlc"])]
        if vals:
            lines.append(
                f"per unit: mean {sum(vals) / len(vals):.4g}, min {min(vals):.4g}, "
                f"max {max(vals):.4g} over {len(vals)} units"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """NLC of each unit against depth, the whole model's NLC as a dashed line."""
        ax = new_axes(ax)
        if self.per_unit:
            ax.plot([r["nlc"] for r in self.per_unit], "o-", label="unit")
        ax.axhline(self.value, color="C1", ls="--", label="whole model")
        ax.axhline(1.0, color="gray", ls=":", label="affine")
        ax.set_xlabel("unit")
        ax.set_ylabel("NLC")
        ax.set_title("nonlinearity coefficient")
        ax.legend()
        return ax


def check_nlc_args(*, chunk: Any) -> None:
    """Raise ``ValueError`` for an argument of ``nonlinearity_coefficient`` that is bad
    whatever the model: it starts with this, and a study spec checks its options with it
    when it loads."""
    check_positive_int("chunk", chunk)


def nonlinearity_coefficient(
    model: nn.Module,
    x: Tensor,
    *,
    blocks: Sequence[str | nn.Module] | None = None,
    chunk: int = 16,
) -> NLC:
    """The NLC of ``model`` over the batch ``x`` and of each residual unit (Philipp &
    Carbonell 2018, arXiv 1806.00179).

    Args:
        model: any ``nn.Module`` returning a tensor; run in eval mode (restored after).
            Units are found by ``find_units`` (plain skiplab units included) or named with
            ``blocks=[...]``, any submodules mapping a tensor to a tensor (the NLC needs
            no paths); a model without units gets an empty ``per_unit``.
        x: the input points ``[N, ...]``, N >= 2: their covariance is Σ_x. Cost: one
            forward-mode pass over the batch per tangent, min(N - 1, D) tangents.
        chunk: tangents evaluated at once (memory: ``chunk`` x the activations of x).

    Raises ``ValueError`` when the model (or a unit) does not map each point on its own
    in eval mode, or has no derivatives to take.
    """
    check_nlc_args(chunk=chunk)
    if not isinstance(x, Tensor):
        raise ValueError(
            f"invalid x of type {type(x).__name__}: the NLC takes one batch of input points "
            "[N, ...] (for a model with several inputs, wrap it in a module that takes one tensor)"
        )
    if x.ndim and len(x) >= 2 and x.is_floating_point() and bool((x == x[:1]).all()):
        raise ValueError(
            f"invalid x: all {len(x)} input points are the same, so their covariance Σ_x is "
            "0 and the NLC is 0/0; give points that differ (a batch of real or random inputs)"
        )
    if blocks is not None:
        units = find_units(model, blocks, opaque=True)
    else:
        units = find_units(model, required=False, include_plain=True, opaque=True)
    with module_mode(model, False):
        with torch.no_grad():
            records = record_units(model, units, x)[0] if units else []
        value = nlc_of(model, x, chunk=chunk)
        per_unit = [
            {
                "name": u.name,
                "nlc": _unit_nlc(u, records[i][0], chunk),
            }
            for i, u in enumerate(units)
        ]
    return NLC(
        value=value,
        per_unit=per_unit,
        points=int(x.shape[0]),
        meta={"model": type(model).__name__},
    )
