"""Shattered gradients (Balduzzi et al. 2017): does the input gradient stay smooth with depth?

Balduzzi, Frean, Leary, Lewis, Ma, McWilliams, "The Shattered Gradients Problem: If
resnets are the answer, then what is the question?" (ICML 2017, arXiv 1702.08591).
A net with one input and one output is evaluated at 256 equally spaced points in
[-2, 2]; the gradient ``d out / d x`` at those points is a 1-D signal. In deep plain
(feedforward) nets it approaches white noise (the correlation between neighbouring
points decays like 2^-L); in resnets with batch norm it decays like 1/sqrt(L) and looks
like brown noise (Balduzzi et al. 2017, Figs. 1-3).

Two measures of the signal, as pure helpers tested on synthetic signals (a constant
signal, ``is_constant``, has neither: both are NaN, and an init whose gradient is constant
is counted and left out of the means, see ``ShatteredRow.constant_inits``):

- ``autocorrelation``: normalised autocorrelation at lags 0..L (1 at lag 0; ~0 at lags
  >= 1 for white noise, close to 1 for a smooth signal).
- ``spectral_slope``: the slope of log power against log frequency (white noise ~0,
  brown noise, the cumulative sum of white noise, ~-2).

The 256 points go through the net as one batch, so BN normalises with the statistics
of that batch, as in the paper; the gradient at each point is ``d out_i / d x_i`` with
those statistics held fixed, dropout off (see ``input_gradient``).
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import check_positive_int, invalid
from ..models.registry import create_model
from .gradflow import module_mode
from .result import Result, new_axes

log = logging.getLogger(__name__)

MLP_FAMILIES = ("mlp", "resmlp", "preact-resmlp")  # registry families built as ``NAME-depth``

ModelSpec = str | tuple[str, Mapping[str, Any]] | Callable[[int], nn.Module]

# A signal whose variance is below this fraction of its mean square is constant (is_constant).
_CONSTANT_RTOL = 1e-12


# --------------------------------------------------------------------------- pure helpers


def autocorrelation(signal: Any, max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation of ``signal`` along its last axis, lags ``0..max_lag``.

    ``r(k) = sum_t (g_t - m)(g_{t+k} - m) / sum_t (g_t - m)^2`` (the biased estimator, so
    ``r(0) = 1``). Leading axes are kept: ``[..., T] -> [..., max_lag + 1]``. A constant
    signal (``is_constant``) has no variance to normalise by: its autocorrelation is NaN
    at every lag, r(0) included.
    """
    g = np.asarray(signal, dtype=np.float64)
    n = g.shape[-1]
    max_lag = n - 1 if max_lag is None else max_lag
    if not 0 <= max_lag < n:
        raise invalid("max_lag", max_lag, f"must be in [0, {n - 1}] for a signal of length {n}")
    c = g - g.mean(axis=-1, keepdims=True)
    var = (c * c).sum(axis=-1)
    out = np.stack([(c[..., : n - k] * c[..., k:]).sum(axis=-1) for k in range(max_lag + 1)], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(is_constant(g), np.nan, var)
        return out / scale[..., None]


def is_constant(signal: Any) -> np.ndarray:
    """Whether ``signal`` is constant along its last axis, to float32 precision: its spread
    about its mean is below 1e-6 of its root mean square (variance below 1e-12 of the mean
    square), so float32 rounding of a constant is constant, and all zeros is. The test is
    relative: a signal and its rescaling by any factor (a vanishing gradient) get the same
    answer. Leading axes are kept: ``[..., T] -> [...]`` booleans."""
    g = np.asarray(signal, dtype=np.float64)
    c = g - g.mean(axis=-1, keepdims=True)
    return ~((c * c).sum(axis=-1) > _CONSTANT_RTOL * (g * g).sum(axis=-1))


def power_spectrum(signal: Any) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, power) of the mean-removed ``signal`` along its last axis.

    Frequencies are in cycles per sample, ``1/T .. 1/2`` (the zero frequency is left out);
    power is ``|rfft|^2 / T`` averaged over any leading axes.
    """
    g = np.asarray(signal, dtype=np.float64)
    n = g.shape[-1]
    c = g - g.mean(axis=-1, keepdims=True)
    p = np.abs(np.fft.rfft(c, axis=-1)) ** 2 / n
    p = p.reshape(-1, p.shape[-1]).mean(axis=0)
    f = np.fft.rfftfreq(n)
    return f[1:], p[1:]


def spectral_slope(signal: Any) -> float:
    """Least-squares slope of log power against log frequency (white noise ~0, brown ~-2).

    Spectra of signals along leading axes are averaged first, leaving out constant ones
    (``is_constant``: their spectrum is rounding noise). The fit weighs each octave
    equally (power averaged in log-spaced bins), so the many high frequencies of a linear
    grid do not dominate it. NaN for a constant signal.
    """
    g = np.asarray(signal, dtype=np.float64)
    g = g.reshape(-1, g.shape[-1])[~is_constant(g).reshape(-1)]
    if len(g) == 0:
        return math.nan
    f, p = power_spectrum(g)
    if not np.all(np.isfinite(p)) or p.max() <= 0:
        return math.nan
    edges = np.geomspace(f[0], f[-1] * (1 + 1e-9), num=max(3, int(np.log2(len(f))) * 2 + 1))
    idx = np.digitize(f, edges) - 1
    lf, lp = [], []
    for b in range(len(edges)):
        sel = idx == b
        if sel.any() and p[sel].mean() > 0:
            lf.append(np.log10(f[sel]).mean())
            lp.append(np.log10(p[sel].mean()))
    if len(lf) < 2:
        return math.nan
    slope, _ = np.polyfit(np.asarray(lf), np.asarray(lp), 1)
    return float(slope)


def _fixed_batch_norm(m: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> Tensor:
    """Forward hook: BN's output recomputed with the mean and (biased) variance of its
    input on this batch taken as constants (detached), whether or not it keeps running
    statistics."""
    z = args[0]
    dims = [0] + list(range(2, z.dim()))
    mean = z.detach().mean(dim=dims)
    var = z.detach().var(dim=dims, unbiased=False)
    return F.batch_norm(z, mean, var, m.weight, m.bias, False, 0.0, m.eps)


def input_gradient(model: nn.Module, x: Tensor) -> Tensor:
    """``d out_i / d x_i`` of a 1-input, 1-output net at each point of the batch ``x`` [N, 1].

    BN layers normalise with the statistics of this batch (Balduzzi et al. 2017 feed the
    256 points as one batch) and those statistics are held fixed for the derivative: it
    is the derivative of the function the net computes on this batch, point by point.
    (The gradient of ``sum_j out_j`` through live batch statistics would add, at each
    point, the sum of N cross terms of order 1/N: BN's backward pass removes the batch
    mean and the ``x_hat`` component of the incoming gradient, which is O(1), not small.)
    The net runs in eval mode (dropout off), so the statistics are those of the pass that
    is differentiated; BN without running statistics is treated the same way. Any BN
    running statistics and the modes of the model's modules are left as they were.
    """
    handles = [
        m.register_forward_hook(_fixed_batch_norm)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with module_mode(model, False):
            x = x.detach().clone().requires_grad_(True)
            try:
                out = model(x)
            except RuntimeError as err:
                raise ValueError(
                    f"the net fails on a batch of shape {list(x.shape)}, {x.dtype} ({err}); "
                    "shattered gradients need a net with one input feature and one output"
                ) from err
            if not isinstance(out, Tensor) or out.numel() != x.shape[0]:
                got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"the net returned {got} for {x.shape[0]} points: shattered gradients "
                    "need a net with one output (num_classes=1); the gradient of the sum "
                    "of several outputs would be reported silently"
                )
            (grad,) = torch.autograd.grad(out.sum(), x)
    finally:
        for h in handles:
            h.remove()
    return grad.detach().flatten()


# --------------------------------------------------------------------------- the analysis


@dataclass
class ShatteredRow:
    """One architecture at one depth, over ``inits`` random initialisations.

    ``constant_inits``: how many of them gave a gradient that is constant over the points
    (``is_constant``: the net is affine on the span, e.g. it has no nonlinearity, its ReLUs
    are all dead there, g = 0, or a norm cancels the input's scale).
    Such a gradient has no autocorrelation or spectrum (0/0); the means and stds are over
    the other ``inits - constant_inits`` inits, NaN when there are none.
    """

    arch: str
    depth: int
    gradients: list[list[float]]  # [inits][points]
    autocorr_mean: list[float]  # lags 0..max_lag
    autocorr_std: list[float]
    lag1_mean: float
    lag1_std: float
    slope_mean: float
    slope_std: float
    constant_inits: int = 0


@dataclass(repr=False)
class ShatteredGradients(Result):
    """Gradients of 1-D nets at equally spaced inputs, their autocorrelation and spectrum."""

    archs: list[str]
    depths: list[int]
    x: list[float]
    rows: list[ShatteredRow]
    inits: int
    seed: int
    config: dict[str, Any] = field(default_factory=dict)

    def row(self, arch: str, depth: int) -> ShatteredRow:
        for r in self.rows:
            if r.arch == arch and r.depth == depth:
                return r
        raise KeyError(f"no row for arch={arch!r}, depth={depth}")

    def lag1(self, arch: str, depth: int) -> float:
        """Mean lag-1 autocorrelation of the gradient (1: smooth; 0: white noise)."""
        return self.row(arch, depth).lag1_mean

    def __repr__(self) -> str:
        deepest = max(self.depths)
        parts = ", ".join(f"{a}={self.lag1(a, deepest):.3f}" for a in self.archs)
        return (
            f"ShatteredGradients(archs={self.archs}, depths={self.depths}, inits={self.inits}, "
            f"lag1 at depth {deepest}: {parts})"
        )

    def summary(self) -> str:
        lines = [
            f"shattered gradients (Balduzzi et al. 2017): {len(self.x)} points in "
            f"[{self.x[0]:g}, {self.x[-1]:g}], mean over {self.inits} inits",
            f"  {'arch':<22} {'depth':>5} {'lag-1 autocorr':>18} {'spectral slope':>18}",
        ]
        for r in self.rows:
            if r.constant_inits == self.inits:
                stats = f"{'n/a':>18} {'n/a':>18}  (gradient constant in every init)"
            else:
                stats = (
                    f"{r.lag1_mean:>9.3f} ± {r.lag1_std:<6.3f}"
                    f" {r.slope_mean:>9.2f} ± {r.slope_std:<6.2f}"
                )
                if r.constant_inits:
                    stats += (
                        f"  (over {self.inits - r.constant_inits} inits: "
                        f"{r.constant_inits} with a constant gradient left out)"
                    )
            lines.append(f"  {r.arch:<22} {r.depth:>5} {stats}")
        if any(r.constant_inits for r in self.rows):
            lines.append(
                "  a constant gradient (a net affine on the span: linear, every ReLU dead...) "
                "has no autocorrelation or spectrum: such inits are left out of the means"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None, kind: str = "lag1") -> Any:
        """``kind="lag1"``: lag-1 autocorrelation vs depth per arch; ``"acf"``: the
        autocorrelation functions at the largest depth; ``"gradients"``: one init's
        gradient at the largest depth (normalised to unit std)."""
        kinds = ("lag1", "acf", "gradients")
        if kind not in kinds:
            raise invalid("kind", kind, kinds)
        ax = new_axes(ax)
        deepest = max(self.depths)
        for i, arch in enumerate(self.archs):
            color = f"C{i}"
            if kind == "lag1":
                rows = [self.row(arch, d) for d in self.depths]
                ax.errorbar(
                    self.depths,
                    [r.lag1_mean for r in rows],
                    yerr=[r.lag1_std for r in rows],
                    marker="o",
                    capsize=3,
                    color=color,
                    label=arch,
                )
            elif kind == "acf":
                r = self.row(arch, deepest)
                ax.plot(range(len(r.autocorr_mean)), r.autocorr_mean, color=color, label=arch)
            else:
                g = np.asarray(self.row(arch, deepest).gradients[0])
                ax.plot(self.x, g / (g.std() or 1.0), color=color, label=arch, lw=0.8)
        if kind == "lag1":
            ax.set_xlabel("depth (weight layers)")
            ax.set_ylabel("lag-1 autocorrelation of d out / d x")
        elif kind == "acf":
            ax.set_xlabel("lag (points)")
            ax.set_ylabel(f"autocorrelation (depth {deepest})")
        else:
            ax.set_xlabel("input x")
            ax.set_ylabel(f"d out / d x, normalised (depth {deepest})")
        ax.set_title("shattered gradients (Balduzzi et al. 2017)")
        ax.legend()
        return ax


def _spec_label(spec: ModelSpec) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, tuple):
        name, opts = spec
        return name + "(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
    return getattr(spec, "__name__", type(spec).__name__)


def build(spec: ModelSpec, depth: int, **defaults: Any) -> nn.Module:
    """A model from a registry family name (``"resmlp"`` -> ``resmlp-{depth}``), a
    ``(name, options)`` pair (options override ``defaults``) or a callable ``depth -> module``."""
    named = isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)
    if isinstance(spec, str) or named:
        family, options = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        try:
            return create_model(f"{family}-{depth}", **{**defaults, **options})
        except ValueError as err:
            if family in MLP_FAMILIES:
                raise
            why = str(err).split(";")[0]
            raise ValueError(
                f"invalid model {family!r} here ({why}): these experiments build MLPs of each "
                "depth; give the family 'mlp', 'resmlp' or 'preact-resmlp', or a callable "
                "depth -> nn.Module"
            ) from None
    if callable(spec) and not isinstance(spec, nn.Module):
        model = spec(depth)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"invalid model spec {_spec_label(spec)!r}: called with depth={depth} it "
                f"returned a {type(model).__name__}, not an nn.Module"
            )
        return model
    raise ValueError(
        f"invalid model spec {spec!r}: expected a registry family name such as 'resmlp', a "
        "(name, options) pair, or a callable depth -> nn.Module (a factory, not a module: "
        "each depth and init builds a fresh one)"
    )


def build_seeded(
    spec: ModelSpec, depth: int, seed: int, device: str | torch.device, **defaults: Any
) -> nn.Module:
    """``build`` with the weights drawn from ``seed``, moved to ``device``. Built on the CPU
    from its generator alone, which ``fork_rng`` restores: the caller's RNG, CUDA generators
    included (``torch.manual_seed`` would reseed those), is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build(spec, depth, **defaults).to(device)


def model_specs(models: Sequence[ModelSpec] | Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
    """``{label: spec}`` from a mapping, or from a sequence (labels made from the specs)."""
    if isinstance(models, Mapping):
        specs = dict(models)
    elif isinstance(models, str) or (
        isinstance(models, tuple) and len(models) == 2 and isinstance(models[1], Mapping)
    ):
        specs = {_spec_label(models): models}  # a single spec
    elif callable(models) and not isinstance(models, nn.Module):
        specs = {_spec_label(models): models}  # a single factory
    else:
        specs = {}
        for spec in models:
            label = _spec_label(spec)
            if label in specs:  # two lambdas are both '<lambda>': one would be lost
                raise ValueError(
                    f"invalid models: two of them are labelled {label!r}; pass a mapping "
                    "{label: spec} to name each once"
                )
            specs[label] = spec
    if not specs:
        raise ValueError("invalid models: expected at least one model")
    return specs


def _check_depths(depths: Sequence[int]) -> list[int]:
    if isinstance(depths, numbers.Integral):
        depths = [depths]
    out = []
    for d in depths:  # no silent int(4.7) == 4, int("4") == 4 or int(True) == 1
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise invalid("depths", depths, "must be positive integers (weight-layer counts)")
        out.append(int(d))
    if not out:
        raise ValueError("invalid depths: expected at least one depth")
    return out


def _nan_mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over axis 0 of the entries that are not NaN (the inits whose gradient
    is constant have no autocorrelation); NaN where every entry is, without numpy's
    warnings about empty slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0), np.nanstd(a, axis=0)


def check_shattered_args(
    *,
    models: Any,
    depths: Any,
    points: Any,
    span: Any,
    width: Any,
    inits: Any,
    seed: Any,
    max_lag: Any,
    norm: Any,
) -> tuple[dict[str, ModelSpec], list[int]]:
    """Raise ``ValueError`` for a bad argument of ``shattered_gradients``, building each
    model at each depth (a bad name, depth or norm fails before any work): it starts with
    this, and a study spec checks its options with it when it loads. Returns the models by
    label and the depths, read once (an iterator of them is used up here)."""
    points = check_positive_int("points", points)
    if points < 4:
        raise invalid("points", points, "must be at least 4")
    check_positive_int("inits", inits)
    check_positive_int("width", width)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise invalid("seed", seed, "must be an integer (init i is seeded seed + i)")
    try:
        lo, hi = (float(s) for s in span)
    except (TypeError, ValueError):
        raise invalid("span", span, "must be two numbers (low, high)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise invalid("span", span, "must be (low, high), finite, with low < high")
    if isinstance(max_lag, bool) or not isinstance(max_lag, int) or not 1 <= max_lag < points:
        raise invalid("max_lag", max_lag, f"must be an integer in [1, {points - 1}]")
    specs = model_specs(models)
    depths = _check_depths(depths)
    check_builds(specs, depths, in_channels=1, num_classes=1, hidden=width, norm=norm)
    return specs, depths


def check_builds(specs: Mapping[str, ModelSpec], depths: Sequence[int], **defaults: Any) -> None:
    """Build each model at each depth, so that a bad name, depth or option fails before any
    work; the RNG is left as it was. (On the CPU: these MLPs build there in a few ms, faster
    than under ``torch.device("meta")``.)"""
    with torch.random.fork_rng(devices=[]):
        for spec in specs.values():
            for d in depths:
                build(spec, d, **defaults)


def shattered_gradients(
    models: Sequence[ModelSpec] | Mapping[str, ModelSpec] = ("mlp", "resmlp", "preact-resmlp"),
    depths: Sequence[int] = (4, 10, 24, 50),
    *,
    points: int = 256,
    span: tuple[float, float] = (-2.0, 2.0),
    width: int = 200,
    inits: int = 10,
    seed: int = 0,
    max_lag: int = 32,
    norm: str = "batch",
    device: str | torch.device = "cpu",
) -> ShatteredGradients:
    """Gradients ``d out / d x`` of 1-input, 1-output nets at ``points`` equally spaced
    inputs in ``span``, plain vs residual, by depth (Balduzzi et al. 2017).

    Args:
        models: registry family names (``"mlp"``, ``"resmlp"``, ``"preact-resmlp"``: built
            as ``name-{depth}`` with ``in_channels=1, num_classes=1, hidden=width,
            norm=norm``), ``(name, options)`` pairs, callables ``depth -> nn.Module``, or a
            mapping ``{label: spec}``.
        depths: weight-layer counts (2n+2 for the MLPs; the registry rejects others).
        width: hidden features (the paper used 200).
        inits: random initialisations averaged over, seeded ``seed, seed+1, ...``.
        max_lag: the autocorrelation is reported at lags ``0..max_lag``.
        norm: the MLPs' norm (``"batch"`` as in the paper, or ``"layer"``, ``"none"``...).
            The registry MLPs start with zero biases, so without batch norm their 1-D
            function is degenerate at init: with ``"none"`` it is positively homogeneous
            (two linear pieces meeting at x = 0, the gradient a step at every depth); with
            ``"layer"`` or ``"group"`` the first norm makes it nearly constant on each side
            of 0 (the gradient ~0 away from x = 0, or rounding noise). Only ``"batch"``,
            which normalises across the points, gives the paper's comparison.

    Inits whose gradient is constant over the points (``is_constant``: a linear net, or
    every ReLU dead) have no autocorrelation; they are counted in each row's
    ``constant_inits``, left out of its means, named in a logged warning and in
    ``summary()``. The global RNG is left untouched (each init runs under
    ``torch.random.fork_rng``).
    """
    # bad names / depths fail before any work
    specs, depths = check_shattered_args(
        models=models, depths=depths, points=points, span=span, width=width, inits=inits,
        seed=seed, max_lag=max_lag, norm=norm,
    )  # fmt: skip
    lo, hi = (float(s) for s in span)
    defaults = {"in_channels": 1, "num_classes": 1, "hidden": width, "norm": norm}

    x = torch.linspace(lo, hi, points, device=device)[:, None]  # [points, 1]
    rows = []
    for label, spec in specs.items():
        for depth in depths:
            grads = []
            for i in range(inits):
                model = build_seeded(spec, depth, seed + i, device, **defaults)
                try:
                    grads.append(input_gradient(model, x).cpu().double().numpy())
                except ValueError as err:
                    raise ValueError(f"{label} at depth {depth}: {err}") from err
            g = np.stack(grads)  # [inits, points]
            # A constant gradient's autocorrelation is 0/0, and is left out (NaN), not
            # scored 1 as "perfectly smooth": g = c + eps * h has the autocorrelation of
            # h for every eps > 0, so there is no limit to take, and g = 0 (every ReLU
            # dead) is a dead net, not a smooth one; scoring it 1 would make a broken
            # plain net look unshattered. The count says how many inits the means lack.
            constant = int(is_constant(g).sum())
            if constant:
                log.warning(
                    "shattered gradients: %s at depth %d: the gradient is constant over the "
                    "%d points in %d of %d inits (the net is affine on [%g, %g]: linear, every "
                    "ReLU dead...); they have no autocorrelation and are left out of the means",
                    label,
                    depth,
                    points,
                    constant,
                    inits,
                    lo,
                    hi,
                )
            acf = autocorrelation(g, max_lag)
            slopes = np.array([spectral_slope(gi) for gi in g])
            acf_mean, acf_std = _nan_mean_std(acf)
            slope_mean, slope_std = _nan_mean_std(slopes)
            log.debug("shattered %s depth %d: lag1 %.3f", label, depth, acf_mean[1])
            rows.append(
                ShatteredRow(
                    arch=label,
                    depth=depth,
                    gradients=g.tolist(),
                    autocorr_mean=acf_mean.tolist(),
                    autocorr_std=acf_std.tolist(),
                    lag1_mean=float(acf_mean[1]),
                    lag1_std=float(acf_std[1]),
                    slope_mean=float(slope_mean),
                    slope_std=float(slope_std),
                    constant_inits=constant,
                )
            )
    return ShatteredGradients(
        archs=list(specs),
        depths=depths,
        x=x.flatten().cpu().tolist(),
        rows=rows,
        inits=inits,
        seed=seed,
        config={
            "points": points,
            "span": [lo, hi],
            "width": width,
            "max_lag": max_lag,
            "norm": norm,
            "models": {k: _spec_label(v) for k, v in specs.items()},
        },
    )
