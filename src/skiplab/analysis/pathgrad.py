"""Path gradients: the input gradient split exactly by path length.

Veit, Wilber & Belongie 2016 (Residual Networks Behave Like Ensembles of Relatively
Shallow Networks, arXiv 1605.06431) unravel a network of U residual units into 2^U paths;
C(U, k) of them pass through exactly k residual branches. At a fixed input every unit's
Jacobian splits as J_u = S_u + B_u (shortcut path + branch path), so the input gradient
splits exactly into U+1 parts

    dL/dx = sum_k g_k,    g_k = sum over paths through exactly k branches.

Veit et al. *sampled* single paths to estimate the gradient per path length (their
Fig. 6); here the parts are computed exactly, by walking the units backwards with a
stack of cotangents (one per k) pushed through batched vector-Jacobian products at the
actual forward point. With the model in eval mode BN is a fixed affine map and every
post-addition op (ReLU, BN after addition) is linear in its cotangent, so nothing is
approximated: ``parts.sum(0)`` is the autograd input gradient.

Gates (He et al. 2016, Fig. 2c-d): a gated unit computes (1 - g(x)) * s(x) + g(x) * b(x)
(or + b(x) for shortcut-only gating). The gradient that flows into x through the gate
g(x) itself is counted as passing the branch (k + 1): the gate is a learned, nonlinear
function of x, so only the path through (1 - g) * s(x) counts as a shortcut path.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import UnitView, find_units
from .gradflow import LossFn, default_loss, module_mode
from .result import Result, new_axes, to_jsonable

log = logging.getLogger(__name__)


def record_units(
    model: nn.Module, units: Sequence[UnitView], x: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], Any]:
    """Run ``model(x)``; return each unit's (input, output) and the model output.

    Raises ``ValueError`` when a unit does not run exactly once, or when a unit's input or
    output is changed in place later in the forward pass (the recorded tensors would then
    not be the values the unit saw).
    """
    records: list[tuple[Tensor, Tensor] | None] = [None] * len(units)
    versions: list[tuple[int, int]] = [(0, 0)] * len(units)
    calls = [0] * len(units)

    def hook(i: int) -> Callable:
        def fn(_m: nn.Module, args: tuple, out: Any) -> None:
            calls[i] += 1
            if not args or not isinstance(args[0], Tensor) or not isinstance(out, Tensor):
                raise ValueError(
                    f"unit {units[i].name!r} must take a tensor and return a tensor; "
                    "name single-tensor residual blocks with blocks=[...]"
                )
            records[i] = (args[0], out)
            versions[i] = (args[0]._version, out._version)

        return fn

    handles = [u.module.register_forward_hook(hook(i)) for i, u in enumerate(units)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    bad = [(u.name, c) for u, c in zip(units, calls, strict=True) if c != 1]
    if bad:
        raise ValueError(
            f"units must each run once per forward pass, but {bad} (name, calls) did not; "
            "name the units that form a chain with blocks=[...]"
        )
    for u, (xi, yi), (vx, vy) in zip(units, records, versions, strict=True):  # type: ignore[misc]
        if xi._version != vx or yi._version != vy:
            raise ValueError(
                f"the input or output of unit {u.name!r} is modified in place later in the "
                "forward pass; use out-of-place ops (e.g. ReLU(inplace=False)) after units"
            )
    return records, out  # type: ignore[return-value]


def _reaches(root: Tensor, stop: Tensor | None, target: Any) -> bool:
    """Whether the autograd graph of ``root`` reaches node ``target`` other than through
    ``stop`` (the graph search stops at ``stop``'s node)."""
    stop_node = stop.grad_fn if stop is not None else None
    todo = [root.grad_fn]
    seen: set[Any] = set()
    while todo:
        node = todo.pop()
        if node is None or node is stop_node or node in seen:
            continue
        if node is target:
            return True
        seen.add(node)
        todo.extend(f for f, _ in node.next_functions)
    return False


def _vjp(out: Tensor, inp: Tensor, cot: Tensor, retain: bool = False) -> Tensor:
    """Batched VJP: ``cot`` is ``[B, *out.shape]``; returns ``[B, *inp.shape]``."""
    if cot.shape[0] == 0:
        return cot.new_zeros((0, *inp.shape))
    if out is inp:
        return cot
    (g,) = torch.autograd.grad(
        out, inp, cot, retain_graph=retain, is_grads_batched=True, allow_unused=True
    )
    return g if g is not None else cot.new_zeros((cot.shape[0], *inp.shape))


def _unit_vjp(view: UnitView, x: Tensor, cot: Tensor, m: int, take_branch: Tensor) -> Tensor:
    """Push a cotangent stack back through one unit, split by path.

    ``cot[:m]`` is the parts stack (row k: paths through k branches so far); it comes back
    with m + 1 rows (shortcut keeps k, branch and gate give k + 1). ``cot[m:]`` are single
    sampled paths; row i takes the branch where ``take_branch[i]`` and the shortcut
    elsewhere. Returns ``[m + 1 + n, *x.shape]``.

    The VJPs are ``torch.func.vjp`` pulled back under ``vmap`` over the stack, which
    batches eval-mode BN and conv backward into single calls.
    """
    x = x.detach()
    identity = [False]

    def shortcut(t: Tensor) -> Tensor:
        out = view.shortcut(t)
        identity[0] = out is t
        return out

    # Under no_grad the outer autograd records nothing (the parameters require grad, and
    # the stacks would otherwise keep every unit's batched backward alive); torch.func.vjp
    # still differentiates, as function transforms ignore an outer no_grad.
    with torch.no_grad():
        s, vjp_s = torch.func.vjp(shortcut, x)
        b, vjp_b = torch.func.vjp(view.branch, x)
        gated = getattr(view.module, "gate", None) is not None
        if gated:  # gates read x directly; see the module docstring
            y, vjp_f = torch.func.vjp(view.finish, s, b, x)
        else:
            y, vjp_f = torch.func.vjp(lambda s_, b_: view.finish(s_, b_, x), s, b)
        if not gated and view.post_is_identity() and s.shape == b.shape == y.shape:
            gs, gb, gx = cot, cot, None  # out = s + b: the VJP copies the cotangent to both
        else:
            grads = torch.func.vmap(vjp_f)(cot)
            gs, gb = grads[0], grads[1]
            gx = grads[2] if gated else None
        tb = take_branch
        # One batched VJP per path kind: parts rows + the sampled paths that take it here.
        cs = torch.cat([gs[:m], gs[m:][~tb]])
        gx_s = cs if identity[0] else torch.func.vmap(vjp_s)(cs)[0]
        gx_b = torch.func.vmap(vjp_b)(torch.cat([gb[:m], gb[m:][tb]]))[0]
        if gx is not None:
            gx_b = gx_b + torch.cat([gx[:m], gx[m:][tb]])
        n = cot.shape[0] - m
        new = x.new_zeros((m + 1 + n, *x.shape))
        new[:m] += gx_s[:m]
        new[1 : m + 1] += gx_b[:m]
        paths = new[m + 1 :]
        paths[~tb] = gx_s[m:]
        paths[tb] = gx_b[m:]
        return new


def _sample_paths(num_units: int, samples: int, seed: int) -> tuple[Tensor, list[int], list[bool]]:
    """Paths as ``[n, U]`` booleans (True: through the branch), their lengths, and per k
    whether all C(U, k) paths were taken (exact) rather than ``samples`` random ones."""
    gen = torch.Generator().manual_seed(seed)
    rows: list[Tensor] = []
    lengths: list[int] = []
    exact: list[bool] = []
    for k in range(num_units + 1):
        if samples <= 0:
            exact.append(False)
            continue
        if math.comb(num_units, k) <= samples:
            subsets = [list(c) for c in itertools.combinations(range(num_units), k)]
            exact.append(True)
        else:
            subsets = [
                torch.randperm(num_units, generator=gen)[:k].tolist() for _ in range(samples)
            ]
            exact.append(False)
        for sub in subsets:
            row = torch.zeros(num_units, dtype=torch.bool)
            row[sub] = True
            rows.append(row)
            lengths.append(k)
    mask = torch.stack(rows) if rows else torch.zeros((0, num_units), dtype=torch.bool)
    return mask, lengths, exact


@dataclass(repr=False)
class PathGradients(Result):
    """The input gradient split by path length (number of residual branches passed).

    ``parts``: ``[U+1, *x.shape]``, the exact gradient carried by paths through k branches
    (left out of ``to_dict``: it is as big as U+1 input batches). ``norms[k]`` =
    ``|parts[k]|``; ``norm_share[k]`` = ``norms[k] / sum(norms)``. ``counts[k]`` = C(U, k),
    exact ints. ``per_path_norm[k]``: mean gradient norm through one single path of
    length k (Veit et al. 2016, Fig. 6a), exact where ``per_path_exact[k]`` (all paths
    were taken) and otherwise a mean over ``samples`` random paths; None with samples=0.
    ``total_share[k]``: Veit's total gradient magnitude per length, counts[k] *
    per_path_norm[k], normalised to sum 1 (Fig. 6b); None with samples=0.
    """

    units: list[str]
    parts: Tensor
    norms: list[float]
    norm_share: list[float]
    counts: list[int]
    per_path_norm: list[float] | None
    per_path_exact: list[bool]
    total_share: list[float] | None
    grad_norm: float
    loss: float
    samples: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: to_jsonable(v) for k, v in vars(self).items() if k != "parts"}

    def effective_lengths(self, fraction: float = 0.9) -> tuple[int, int]:
        """The shortest range of path lengths [lo, hi] that holds ``fraction`` of the
        gradient magnitude (``total_share`` if sampled, else ``norm_share``)."""
        share = self.total_share if self.total_share is not None else self.norm_share
        best = (0, len(share) - 1)
        for lo in range(len(share)):
            acc = 0.0
            for hi in range(lo, len(share)):
                acc += share[hi]
                if acc >= fraction - 1e-12:
                    if hi - lo < best[1] - best[0]:
                        best = (lo, hi)
                    break
        return best

    def __repr__(self) -> str:
        peak = max(range(len(self.norms)), key=self.norms.__getitem__)
        return (
            f"PathGradients(units={len(self.units)}, grad_norm={self.grad_norm:.4g}, "
            f"largest part k={peak}, samples={self.samples})"
        )

    def summary(self) -> str:
        u = len(self.units)
        lo, hi = self.effective_lengths(0.9)
        paths = sum(self.counts[lo : hi + 1])
        which = "sampled single paths" if self.total_share is not None else "exact parts"
        peak = max(range(len(self.norms)), key=self.norms.__getitem__)
        return "\n".join(
            [
                f"path gradients over {u} units (2^{u} paths), |dL/dx| = {self.grad_norm:.4g}",
                f"largest part: paths through k={peak} branches ({self.norm_share[peak]:.1%} "
                "of the summed part norms)",
                f"90% of the gradient magnitude ({which}) comes from paths of length "
                f"{lo}-{hi}: {paths / 2**u:.3g} of all paths (Veit et al. 2016, Fig. 6)",
            ]
        )

    def plot(self, ax: Any = None) -> Any:
        """Part norms and per-path norms against path length (log scale), with the share
        of the total gradient per length as bars on a second axis (Veit et al. 2016, Fig. 6)."""
        ax = new_axes(ax)
        ks = list(range(len(self.norms)))
        ax.semilogy(ks, [max(v, 1e-300) for v in self.norms], "o-", label="|g_k| (exact part)")
        if self.per_path_norm is not None:
            ax.semilogy(ks, self.per_path_norm, "s--", label="mean |g| of one path")
        ax.set_xlabel("path length k (residual branches passed)")
        ax.set_ylabel("gradient norm")
        share = self.total_share if self.total_share is not None else self.norm_share
        twin = ax.twinx()
        twin.bar(ks, share, alpha=0.25, color="gray")
        twin.set_ylabel("share of total gradient")
        ax.legend(loc="upper right")
        ax.set_title("gradient by path length")
        return ax


def path_gradients(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    loss_fn: LossFn | None = None,
    blocks: Sequence[str | nn.Module] | None = None,
    samples: int = 2,
    seed: int = 0,
) -> PathGradients:
    """Split the input gradient of the loss exactly by path length (Veit et al. 2016).

    Args:
        model: any ``nn.Module`` whose residual units form a chain (each unit's input
            depends on earlier units only through the previous unit's output; the stem,
            transitions and head in between may be any differentiable code). Units are
            found by ``find_units`` or named with ``blocks=[...]``.
        x, target: one batch; loss_fn as in ``gradient_flow`` (default cross-entropy for
            integer targets, MSE for float ones).
        samples: single paths sampled per length k for ``per_path_norm`` (all C(U, k)
            paths where that is no more than ``samples``); 0 skips them. Each sampled path
            costs about as much as a k-unit backward pass.
        seed: seeds the path sampling (a private generator; global RNG untouched).

    The model runs in eval mode (the caller's mode is restored). Cost: the exact parts need
    sum over units of (k rows so far) branch VJPs, about U/2 input-gradient backward passes
    of work, done in O(U) batched calls (one VJP per unit and path kind). Measured on an H100,
    ResNet-110 (U = 54): 5.4x one forward + backward at batch 16 and 7.5x at batch 128 for
    the parts; 6.2x and 14x with samples=2 (benchmarks/pathgrad_cost.py).
    """
    loss_fn = loss_fn or default_loss
    units = find_units(model, blocks)  # a plain net raises, naming blocks=[...]
    num = len(units)
    with module_mode(model, False), torch.enable_grad():
        xin = x.detach().clone().requires_grad_(True)
        records, out = record_units(model, units, xin)
        loss = loss_fn(out, target)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        leaf = xin.view_as(xin).grad_fn.next_functions[0][0]  # xin's AccumulateGrad node
        # Units must form a chain: no path from the input may reach unit u's input, or the
        # loss, without passing the previous unit's output.
        for u in range(num, 0, -1):
            root = loss if u == num else records[u][0]
            prev = records[u - 1][1]
            if root is not prev and _reaches(root, prev, leaf):
                where = "the loss" if u == num else f"the input of unit {units[u].name!r}"
                raise ValueError(
                    f"units do not form a chain: {where} depends on the input other than "
                    f"through unit {units[u - 1].name!r}; path_gradients needs each unit's "
                    "input to depend on earlier units only through the previous unit (name "
                    "such units with blocks=[...])"
                )
        (g,) = torch.autograd.grad(loss, records[-1][1], retain_graph=True)
        mask, lengths, exact = _sample_paths(num, samples, seed)
        n = mask.shape[0]
        mask = mask.to(g.device)
        stack = torch.cat([g.unsqueeze(0), g.unsqueeze(0).expand(n, *g.shape)])
        m = 1  # parts rows; the rest are single sampled paths
        for u in range(num - 1, -1, -1):
            x_u = records[u][0]
            stack = _unit_vjp(units[u], x_u, stack, m, mask[:, u])
            m += 1
            # Back through the non-unit code to the previous unit's output (or the input).
            prev = records[u - 1][1] if u > 0 else xin
            stack = _vjp(x_u, prev, stack, retain=True)
    parts = stack[:m].detach()  # [U+1, *x.shape]
    path_norms = stack[m:].detach().flatten(1).norm(dim=1).tolist()
    norms = parts.flatten(1).norm(dim=1).tolist()
    total = sum(norms)
    counts = [math.comb(num, k) for k in range(num + 1)]
    per_path: list[float] | None = None
    total_share: list[float] | None = None
    if samples > 0:
        sums = [0.0] * (num + 1)
        for k, v in zip(lengths, path_norms, strict=True):
            sums[k] += v
        per_path = [sums[k] / lengths.count(k) for k in range(num + 1)]
        # counts can exceed float range (U > ~1000): combine in logs.
        logs = [
            math.log(c) + math.log(p) if p > 0 else -math.inf
            for c, p in zip(counts, per_path, strict=True)
        ]
        top = max(logs)
        weights = [math.exp(v - top) for v in logs]
        total_share = [w / sum(weights) for w in weights]
    return PathGradients(
        units=[v.name for v in units],
        parts=parts,
        norms=norms,
        norm_share=[v / total if total > 0 else 0.0 for v in norms],
        counts=counts,
        per_path_norm=per_path,
        per_path_exact=exact,
        total_share=total_share,
        grad_norm=float(parts.sum(0).norm()),
        loss=float(loss.detach()),
        samples=samples,
        meta={"model": type(model).__name__, "batch": int(x.shape[0]), "seed": seed},
    )
