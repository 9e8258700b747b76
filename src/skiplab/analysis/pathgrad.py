"""Path gradients: the input gradient split exactly by path length.

Veit, Wilber & Belongie 2016 (Residual Networks Behave Like Ensembles of Relatively
Shallow Networks, arXiv 1605.06431) unravel a network of U residual units into 2^U paths;
C(U, k) of them pass through exactly k residual branches. At a fixed input every unit's
Jacobian splits as J_u = S_u + B_u (shortcut path + branch path), so the input gradient
splits exactly into U+1 parts

    dL/dx = sum_k g_k,    g_k = sum over paths through exactly k branches.

Veit et al. *sampled* single paths to estimate the gradient per path length (their
Fig. 6); here the parts are computed exactly, by walking the units backwards with a
stack of cotangents (row k: paths through k branches so far) pushed through batched
vector-Jacobian products at the actual forward point. A unit maps the stack as

    row k  ->  S_u^T row k + B_u^T row k-1,

so unit u (counted from the loss) pushes its u live rows through the branch: about
U(U+1)/2 branch VJPs in all, batched into one call per unit. ``max_length=K`` keeps rows
0..K and one remainder row R (paths through more than K branches), R -> (S_u + B_u)^T R +
B_u^T row K, which caps the stack at K+2 rows. With the model in eval mode BN is a fixed
affine map and every post-addition op (ReLU, BN after addition) is linear in its
cotangent, so nothing is approximated: ``parts.sum(0)`` is the autograd input gradient.
``precision="bf16"`` takes the unit VJPs under bfloat16 autocast instead (the forward
point and the stack stay in the input's dtype): no longer exact, and on an H100 not
cheaper either (the casts of the stack cost more than bf16 convolutions save).

Gates (He et al. 2016, Fig. 2c-d): a gated unit computes (1 - g(x)) * s(x) + g(x) * b(x)
(or + b(x) for shortcut-only gating). The gradient that flows into x through the gate
g(x) itself is counted as passing the branch (k + 1): the gate is a learned, nonlinear
function of x, so only the path through (1 - g) * s(x) counts as a shortcut path.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..models.layers import Scale, check_choice, eval_norm_affine, invalid
from .batches import quiet_vmap_fallback
from .blocks import UnitView, check_view, find_units, run_model
from .gradflow import LossFn, checked_default_loss, module_mode
from .result import Result, new_axes, to_jsonable

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


def record_units(
    model: nn.Module,
    units: Sequence[UnitView],
    x: Tensor,
    relus: dict[int, list[nn.Module]] | None = None,
) -> tuple[list[tuple[Tensor, Tensor]], Any, dict[int, list[Tensor]]]:
    """Run ``model(x)``; return each unit's (input, output), the model output, and for each
    unit ``i`` in ``relus`` the masks (output > 0) of the ReLU modules ``relus[i]`` in the
    order the unit called them.

    Raises ``ValueError`` when a unit does not run exactly once, or when a unit's input or
    output is changed in place later in the forward pass (the recorded tensors would then
    not be the values the unit saw).
    """
    records: list[tuple[Tensor, Tensor] | None] = [None] * len(units)
    versions: list[tuple[int, int]] = [(0, 0)] * len(units)
    calls = [0] * len(units)
    relus = relus or {}
    masks: dict[int, list[Tensor]] = {i: [] for i in relus}
    inside: list[int] = []  # the unit running now

    def enter(i: int) -> Callable:
        def fn(_m: nn.Module, _args: tuple) -> None:
            inside.append(i)

        return fn

    def relu_hook(_m: nn.Module, _args: tuple, out: Any) -> None:
        if inside and any(_m is r for r in relus.get(inside[-1], ())):
            masks[inside[-1]].append(out.detach() > 0)

    def hook(i: int) -> Callable:
        def fn(_m: nn.Module, args: tuple, out: Any) -> None:
            if inside and inside[-1] == i:
                inside.pop()
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
    handles += [units[i].module.register_forward_pre_hook(enter(i)) for i in relus]
    hooked = {id(r): r for rs in relus.values() for r in rs}
    handles += [r.register_forward_hook(relu_hook) for r in hooked.values()]
    try:
        out = run_model(model, x)
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
    return records, out, masks  # type: ignore[return-value]


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


def _vjp(out: Tensor, inp: Tensor, cot: Tensor) -> Tensor:
    """Batched VJP through the recorded graph: ``cot`` is ``[B, *out.shape]``; returns
    ``[B, *inp.shape]``.

    ``torch.func.vmap`` over ``autograd.grad``, not ``is_grads_batched=True``: the latter
    uses the legacy vmap prototype, which has no batching rule for convolution or batch
    norm backward and loops over the rows (about 5x slower through a conv + BN stem).
    """
    if cot.shape[0] == 0:
        return cot.new_zeros((0, *inp.shape))
    if out is inp:
        return cot

    def pull(c: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(out, inp, c, retain_graph=True, allow_unused=True)
        return torch.zeros_like(inp) if g is None else g

    return torch.func.vmap(pull)(cot)


def _batch_norm_args(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None, bool, float]:
    return input, running_mean, running_var, weight, bias, training, eps


class _EvalBatchNormAsAffine(TorchFunctionMode):
    """Eval-mode ``F.batch_norm`` computed as the per-channel affine map it is.

    Under ``vmap`` over a cotangent stack, PyTorch's batch-norm backward rule moves the
    stack dimension into the channel dimension, copying the stack in and out of every BN
    backward; the backward of ``x * scale + shift`` is one broadcast multiply that reads
    the stack in place. Used only while a unit's forward is re-run for its VJPs.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        x, mean, var, weight, bias, training, eps = _batch_norm_args(*args, **kwargs)
        if training or mean is None or var is None:
            return func(*args, **kwargs)
        scale, shift = eval_norm_affine(mean, var, weight, bias, eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)


def _chain(module: nn.Module | None) -> list[nn.Module] | None:
    """The modules of ``module`` in order (nested ``nn.Sequential`` flattened) when each is
    one whose VJP ``_LinearChain`` computes directly; None otherwise. Exact types only: a
    subclass may change what ``forward`` does."""
    if module is None:
        return []
    if type(module) is nn.Sequential:
        out: list[nn.Module] = []
        for child in module:
            sub = _chain(child)
            if sub is None:
                return None
            out += sub
        return out
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    kind = type(module)
    if kind is nn.Conv2d:
        ok = module.padding_mode == "zeros" and not isinstance(module.padding, str)
    elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        ok = not module.training and module.running_var is not None
    elif kind is nn.Dropout:
        ok = not module.training
    else:
        ok = kind in (nn.Linear, nn.ReLU, nn.Identity, Scale)
    return [module] if ok else None


class _LinearChain:
    """The VJP of a chain of Conv2d / Linear / eval-mode BN / ReLU / Scale modules at one
    input, applied to a whole stack of cotangents at once by folding the stack into the
    batch, with no autograd graph and no ``vmap``: on a GPU the functorch path spends
    more time dispatching each unit's ops than the GPU spends running them.

    The chain is a product of linear maps (convolutions, Linear) and diagonal ones (ReLU
    masks, the per-channel scales of eval BN and Scale). Diagonal maps commute, so each
    per-channel scale is folded into the weights of the nearest convolution or Linear
    (its output channels when it follows one, else the input channels of the next), once
    per call of ``path_gradients``: what is left per unit is one kernel per convolution and
    one mask multiply per ReLU. A stride-1, ungrouped convolution's VJP is itself a
    convolution (transposed, flipped weights), run as a forward convolution, the kernel
    libraries tune best; on a CPU it runs channels_last (``_channels_last``).

    ``masks``, the ReLU masks the forward pass recorded (``record_units``), spare running
    the chain again: only shapes are followed then, and ``out`` is None."""

    def __init__(
        self, modules: list[nn.Module], x: Tensor, masks: Sequence[Tensor] | None = None
    ) -> None:
        self.x_shape = x.shape
        ops: list[list[Any]] = []  # forward order: [kind, module or tensor, input shape]
        recorded = iter(masks) if masks is not None else None
        h: Tensor | None = None if recorded else x
        shape = x.shape
        with torch.no_grad():
            for m in modules:
                if isinstance(m, nn.ReLU):
                    mask = next(recorded) if recorded else h > 0  # type: ignore[operator]
                    ops.append(["mask", mask, shape])
                    if h is not None:
                        h = F.relu(h)  # never in place: h may be the unit's recorded input
                    continue
                if isinstance(m, nn.Conv2d | nn.Linear):
                    ops.append(["linear", m, shape])
                elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                    scale, _ = eval_norm_affine(m.running_mean, m.running_var, m.weight,
                                                m.bias, m.eps)  # fmt: skip
                    ops.append(["scale", scale, shape])
                elif isinstance(m, Scale):
                    ops.append(["scale", m.scale, shape])
                if h is not None:
                    h = m(h)
                    shape = h.shape
                else:
                    shape = _out_shape(m, shape)
        self.out = h
        self.channels_last = _channels_last(x)
        self.steps = self._fold(ops)

    def _fold(self, ops: list[list[Any]]) -> list[tuple[str, Any]]:
        """The VJP steps in backward order, each per-channel scale folded into a weight."""
        weights: dict[int, list[Tensor | None]] = {}  # op index -> [out scale, in scale]
        left: list[int] = []  # scales with no weight to fold into
        for i, (kind, s, shape) in enumerate(ops):
            if kind != "scale":
                continue
            scalar = s.dim() == 0
            before = [j for j in range(i) if ops[j][0] == "linear"][-1:]
            after = [j for j in range(i + 1, len(ops)) if ops[j][0] == "linear"][:1]
            if before and (scalar or _folds_into(ops[before[0]][1], shape, out=True)):
                j, side = before[0], 0
            elif after and (scalar or _folds_into(ops[after[0]][1], shape, out=False)):
                j, side = after[0], 1
            else:
                left.append(i)
                continue
            pair = weights.setdefault(j, [None, None])
            pair[side] = s if pair[side] is None else pair[side] * s
        steps: list[tuple[str, Any]] = []
        for i in range(len(ops) - 1, -1, -1):
            kind, obj, shape = ops[i]
            if kind == "mask":
                mask = obj
                if self.channels_last and mask.dim() == 4:
                    mask = mask.contiguous(memory_format=torch.channels_last)
                steps.append(("mask", mask))
            elif kind == "scale" and i in left:
                view = obj if obj.dim() == 0 else obj.view(-1, *([1] * (len(shape) - 2)))
                steps.append(("scale", view))
            elif kind == "linear":
                s_out, s_in = weights.get(i, [None, None])
                steps.append(_vjp_step(obj, shape, s_out, s_in, self.channels_last))
        return steps

    @torch.no_grad()
    def __call__(self, cot: Tensor) -> Tensor:
        """``cot`` ``[r, *out.shape]`` -> ``[r, *x.shape]``."""
        r = cot.shape[0]
        if r == 0:
            return cot.new_zeros((0, *self.x_shape))
        g = cot.reshape(r * cot.shape[1], *cot.shape[2:])
        fresh = False  # g is not a view of the caller's stack: may be written in place
        for kind, data in self.steps:
            if kind == "mask":
                v = g.reshape(r, *data.shape)
                g = (v.mul_(data) if fresh else v * data).reshape(g.shape)
            elif kind == "scale":
                g = g.mul_(data) if fresh else g * data
            elif kind == "conv":
                weight, padding = data
                if self.channels_last:
                    g = g.contiguous(memory_format=torch.channels_last)
                g = F.conv2d(g, weight, padding=padding)
            elif kind == "conv_input":
                module, weight, size = data
                if self.channels_last:
                    g = g.contiguous(memory_format=torch.channels_last)
                g = torch.nn.grad.conv2d_input((g.shape[0], *size[1:]), weight, g,
                                               module.stride, module.padding,
                                               module.dilation, module.groups)  # fmt: skip
            else:  # linear
                g = g @ data
            fresh = True
        return g.reshape(r, *self.x_shape)


def _out_shape(module: nn.Module, shape: torch.Size) -> torch.Size:
    """The output shape of a chain module (Conv2d, Linear, or shape-keeping) at ``shape``."""
    if isinstance(module, nn.Linear):
        return torch.Size((*shape[:-1], module.out_features))
    if isinstance(module, nn.Conv2d):
        size = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(shape[2:], module.padding, module.dilation,
                                     module.kernel_size, module.stride, strict=True)
        ]  # fmt: skip
        return torch.Size((shape[0], module.out_channels, *size))
    return shape


def _folds_into(module: nn.Module, shape: torch.Size, *, out: bool) -> bool:
    """Whether a per-channel scale of a tensor of ``shape`` (channels on dim 1) is a scale
    of ``module``'s output (``out``) or input channels, so it can be folded into its
    weight. A grouped convolution takes a scale of its output channels only."""
    if isinstance(module, nn.Linear):
        return len(shape) == 2
    return out or module.groups == 1


def _vjp_step(
    module: nn.Module,
    shape: torch.Size,
    s_out: Tensor | None,
    s_in: Tensor | None,
    channels_last: bool,
) -> tuple[str, Any]:
    """The VJP of ``module`` at an input of ``shape``, with per-channel scales of its
    output (``s_out``) and input (``s_in``) folded into the weight."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        if s_out is not None:
            w = w * s_out.view(-1, 1)
        if s_in is not None:
            w = w * s_in.view(1, -1)
        return "linear", w
    if s_out is not None:
        w = w * s_out.view(-1, *([1] * (w.dim() - 1)))
    if s_in is not None:
        w = w * s_in.view(1, -1, *([1] * (w.dim() - 2)))
    k, p = module.kernel_size, module.padding
    if (
        module.groups == 1
        and all(v == 1 for v in (*module.stride, *module.dilation))
        and all(pi <= ki - 1 for pi, ki in zip(p, k, strict=True))
    ):
        w = w.transpose(0, 1).flip(-2, -1)
        w = w.contiguous(memory_format=torch.channels_last) if channels_last else w.contiguous()
        return "conv", (w, tuple(ki - 1 - pi for pi, ki in zip(p, k, strict=True)))
    return "conv_input", (module, w, shape)


class _DirectPullback:
    """The VJPs of a unit ``_linear_unit`` recognised, computed by its ``_LinearChain``
    (no autograd, no ``vmap``); the interface of ``_UnitPullback``."""

    identity_shortcut, gated = True, False

    def __init__(self, chain: _LinearChain, mask: Tensor | None) -> None:
        self.chain, self.mask, self.x_shape = chain, mask, chain.x_shape

    def post(self, cot: Tensor) -> tuple[Tensor, Tensor, None]:
        g = cot if self.mask is None else cot * self.mask
        return g, g, None

    def post_and_branch(self, cot: Tensor) -> tuple[Tensor, Tensor]:
        g = self.post(cot)[0]
        return g, self.chain(g)

    def shortcut(self, cot: Tensor) -> Tensor:
        return cot

    def branch(self, cot: Tensor) -> Tensor:
        return self.chain(cot)


def _direct_modules(view: UnitView) -> tuple[list[nn.Module], bool] | None:
    """The chain of a unit whose VJPs can be taken directly, and whether a ReLU follows the
    addition: a skiplab unit (or a torchvision BasicBlock/Bottleneck) with no gate, a
    branch of known modules and nothing or a ReLU after the addition; None for any other
    unit (it goes through ``_UnitPullback``)."""
    m = view.module
    kind = view.kind
    if kind == "torchvision":  # BasicBlock / Bottleneck: relu(x + branch)
        if m.downsample is not None:
            return None
        tail = [m.relu, m.conv3, m.bn3] if hasattr(m, "conv3") else []
        mods: list[nn.Module] = [m.conv1, m.bn1, m.relu, m.conv2, m.bn2, *tail]
        parts = [_chain(nn.Sequential(*mods)), [], [], [m.relu]]
    elif kind == "skiplab" and m.gate is None and m.shortcut is not None:
        parts = [_chain(m.preact), _chain(m.branch), _chain(m.branch_scale), _chain(m.post)]
    else:
        return None
    if any(p is None for p in parts):
        return None
    pre, branch, scale, post = parts
    if any(not isinstance(p, nn.ReLU | nn.Identity) for p in post):  # type: ignore[union-attr]
        return None
    relu_after = any(isinstance(p, nn.ReLU) for p in post)  # type: ignore[union-attr]
    return pre + branch + scale, relu_after  # type: ignore[operator]


def _linear_unit(
    view: UnitView,
    x: Tensor,
    y: Tensor,
    direct: tuple[list[nn.Module], bool] | None,
    masks: Sequence[Tensor] | None = None,
) -> _DirectPullback | None:
    """The direct VJPs of a unit ``_direct_modules`` accepted (``direct``), at its recorded
    input ``x`` and output ``y``, from the ReLU masks the forward pass recorded when there
    are as many as the chain has ReLUs (else it runs the chain again); None when the
    shortcut is not the identity after all (or ``direct`` is None)."""
    if direct is None:
        return None
    modules, relu_after = direct
    x = x.detach()
    with torch.no_grad():
        if view.shortcut(x) is not x or y.shape != x.shape:
            return None
        relus = sum(isinstance(m, nn.ReLU) for m in modules)
        chain = _LinearChain(modules, x, masks[:relus] if masks and len(masks) >= relus else None)
        if chain.out is not None and chain.out.shape != x.shape:
            return None
        mask = (y.detach() > 0) if relu_after else None
        if mask is not None and chain.channels_last:
            mask = mask.contiguous(memory_format=torch.channels_last)
        return _DirectPullback(chain, mask)


class _UnitPullback:
    """The VJPs of one unit at its recorded input, each batched (``vmap``) over a stack of
    cotangents: ``post`` through what follows the addition (and the gate), ``shortcut``
    and ``branch`` through the two paths.

    Units of skiplab models (and torchvision blocks) whose parts are all known modules
    (Conv2d, Linear, eval BN, ReLU, Scale, Dropout in eval mode; identity shortcut, no
    gate, nothing or a ReLU after the addition) take their VJPs directly instead
    (``_DirectPullback``; fp32 only); the others, and any model's units, come here:
    ``torch.func.vjp`` re-runs the unit's forward once; under ``no_grad`` the outer autograd records nothing
    (function transforms ignore an outer no_grad), so each unit's graph is freed when the
    walk moves on. Both give the same parts (tested in float64).
    """

    def __init__(self, view: UnitView, x: Tensor, autocast: Any) -> None:
        x = x.detach()
        self.x_shape = x.shape
        with torch.no_grad(), autocast, _EvalBatchNormAsAffine():
            s = view.shortcut(x)
            self.identity_shortcut = s is x  # most units: no VJP to build or take
            if not self.identity_shortcut:
                s, self._vjp_s = torch.func.vjp(view.shortcut, x)
            b, self._vjp_b = torch.func.vjp(view.branch, x)
            self._branch_dtype = b.dtype  # bfloat16 under autocast
            self.gated = getattr(view.module, "gate", None) is not None
            self._vjp_f: Callable | None = None
            if self.gated:  # gates read x directly; see the module docstring
                _, self._vjp_f = torch.func.vjp(view.finish, s, b, x)
            elif not (view.post_is_identity() and s.shape == b.shape == x.shape):
                _, self._vjp_f = torch.func.vjp(lambda s_, b_: view.finish(s_, b_, x), s, b)
            # else out = s + b: the VJP hands the cotangent to both paths unchanged.

    def post(self, cot: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Cotangents of (shortcut output, branch output, gate input x)."""
        if self._vjp_f is None:
            return cot, cot, None
        with torch.no_grad():
            grads = torch.func.vmap(self._vjp_f)(cot)
        return grads[0], grads[1], grads[2] if self.gated else None

    def post_and_branch(self, cot: Tensor) -> tuple[Tensor, Tensor]:
        """``post`` and then ``branch`` in one batched call (units with an identity
        shortcut and no gate): the cotangent of the shortcut output and the branch's
        input gradient. One ``vmap`` per unit instead of two: on a GPU the walk is partly
        bound by this dispatch."""
        vjp_f, vjp_b, dtype = self._vjp_f, self._vjp_b, self._branch_dtype
        if vjp_f is None:  # out = s + b: the cotangent goes to both paths as it is
            return cot, self.branch(cot)

        def pull(c: Tensor) -> tuple[Tensor, Tensor]:
            gs, gb = vjp_f(c)
            return gs, vjp_b(gb.to(dtype))[0]

        with torch.no_grad():
            return torch.func.vmap(pull)(cot)

    def shortcut(self, cot: Tensor) -> Tensor:
        if self.identity_shortcut:
            return cot
        if cot.shape[0] == 0:
            return cot.new_zeros((0, *self.x_shape))
        with torch.no_grad():
            return torch.func.vmap(self._vjp_s)(cot)[0]

    def branch(self, cot: Tensor) -> Tensor:
        if cot.shape[0] == 0:
            return cot.new_zeros((0, *self.x_shape))
        with torch.no_grad():
            return torch.func.vmap(self._vjp_b)(cot.to(self._branch_dtype))[0]


Pullback = _UnitPullback | _DirectPullback


def _push_parts(pull: Pullback, stack: Tensor, m: int, rows: int) -> tuple[Tensor, int]:
    """Push the parts back through one unit: ``stack[:m]`` holds row k = gradient of the
    paths through k branches after the unit. Returns the stack before the unit and its
    number of live rows: m + 1, or m when it is full (``rows``: then the last row is the
    remainder, which collects everything that leaves the previous row through the branch).

    The stack is a buffer of ``rows`` rows, reused while the unit keeps the shape, so that
    a unit costs the branch VJP of its live rows and one fused add into the shifted rows.
    """
    if pull.identity_shortcut and not pull.gated:
        gx_s, gx_b = pull.post_and_branch(stack[:m])  # [m, *x.shape] each
    else:
        gs, gb, gx = pull.post(stack[:m])
        gx_s = pull.shortcut(gs)  # [m, *x.shape]
        gx_b = pull.branch(gb)  # [m, *x.shape]: row k goes to k + 1
        if gx is not None:  # the gate's gradient counts as passing the branch
            gx_b += gx
    shape = (rows, *gx_s.shape[1:])
    out = stack if stack.shape == shape else _new_stack(gx_b, rows)
    if gx_b.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
        gx_b = gx_b.clone()  # a branch that passes its cotangent on unchanged (identity)
    if out.data_ptr() != gx_s.data_ptr():
        out[0] = gx_s[0]
    torch.add(gx_s[1:m], gx_b[: m - 1], out=out[1:m])
    if m < rows:
        out[m] = gx_b[m - 1]
        return out, m + 1
    out[m - 1] += gx_b[m - 1]  # the remainder row R: (S + B)^T R + B^T (row K)
    return out, m


def _channels_last(x: Tensor) -> bool:
    """Whether the direct VJPs and the stack of parts run channels_last for feature maps
    like ``x``: on a CPU, where oneDNN's convolutions are several times faster so (16
    channels), not on a GPU, where cuDNN's fp32 NCHW kernels are as fast."""
    return x.device.type == "cpu" and x.dim() == 4


def _new_stack(like: Tensor, rows: int) -> Tensor:
    """An empty stack of ``rows`` rows shaped as ``like``'s, each row channels_last where
    ``_channels_last`` says so, so that a stack of rows folds into one batch as a view."""
    if like.dim() == 5 and _channels_last(like[0]):
        n, c, h, w = like.shape[1:]
        return like.new_empty((rows, n, h, w, c)).permute(0, 1, 4, 2, 3)
    return like.new_empty((rows, *like.shape[1:]))


def _push_paths(pull: Pullback, paths: Tensor, take_branch: Tensor) -> Tensor:
    """Push single sampled paths back through one unit: row i takes the branch where
    ``take_branch[i]`` (a CPU mask: the rows are gathered by index, with no device sync)
    and the shortcut elsewhere."""
    gs, gb, gx = pull.post(paths)
    out = paths.new_empty((paths.shape[0], *pull.x_shape))
    on_branch = take_branch.nonzero().squeeze(1).to(paths.device)
    on_shortcut = (~take_branch).nonzero().squeeze(1).to(paths.device)
    out.index_copy_(0, on_shortcut, pull.shortcut(gs.index_select(0, on_shortcut)))
    g = pull.branch(gb.index_select(0, on_branch))
    out.index_copy_(0, on_branch, g if gx is None else g + gx.index_select(0, on_branch))
    return out


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


def shortest_range(share: Sequence[float | None], fraction: float = 0.9) -> tuple[int, int]:
    """The shortest index range [lo, hi] whose shares sum to ``fraction`` (the path lengths
    that carry that much of the gradient); missing shares count as 0."""
    best = (0, len(share) - 1)
    for lo in range(len(share)):
        acc = 0.0
        for hi in range(lo, len(share)):
            acc += share[hi] or 0.0
            if acc >= fraction - 1e-12:
                if hi - lo < best[1] - best[0]:
                    best = (lo, hi)
                break
    return best


@dataclass(repr=False)
class PathGradients(Result):
    """The input gradient split by path length (number of residual branches passed).

    ``parts``: ``[U+1, *x.shape]``, the exact gradient carried by paths through k branches
    (left out of ``to_dict``: it is as big as U+1 input batches). With ``max_length=K``
    (< U) it has K+2 rows: rows 0..K as before and a last, remainder row with the exact
    gradient of all paths through more than K branches; ``parts.sum(0)`` is the input
    gradient either way. ``norms[k]`` = ``|parts[k]|`` (last: ``|remainder|`` when
    ``max_length`` is set); ``norm_share[k]`` = ``norms[k] / sum(norms)``, part k's share of
    the summed part norms: not a share of the gradient's magnitude ``grad_norm``, as the
    parts partly cancel (``sum(norms) >= grad_norm``). ``counts[k]`` =
    C(U, k), exact ints, one per row of ``parts`` (the remainder row's: sum over k > K of
    C(U, k)). ``max_length``: K, or None when ``parts`` is the full split.
    ``per_path_norm[k]`` (k = 0..U): mean gradient norm through one single path of length
    k (Veit et al. 2016, Fig. 6b; Fig. 6a is the binomial count C(U, k)), exact where
    ``per_path_exact[k]`` (all paths were taken) and otherwise a mean over ``samples``
    random paths; None with samples=0. ``total_share[k]``: Veit's "total gradient
    magnitude" per length, C(U, k) * per_path_norm[k] (Fig. 6c, the product of 6a and 6b),
    normalised to sum 1: a sum of single-path norms, which ignores how paths cancel, so
    again a share of summed norms, not of ``grad_norm``; None with samples=0. ``precision``:
    "fp32" (the VJPs in the input's dtype) or "bf16".
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
    max_length: int | None = None
    precision: str = "fp32"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: to_jsonable(v) for k, v in vars(self).items() if k != "parts"}

    def effective_lengths(self, fraction: float = 0.9) -> tuple[int, int]:
        """The shortest range of path lengths [lo, hi] that holds ``fraction`` of the share
        used: ``total_share`` (Veit's total gradient magnitude, Fig. 6c) if sampled, else
        ``norm_share`` (the summed part norms; there, with ``max_length=K``, hi = K + 1
        stands for the remainder, lengths K+1..U)."""
        share = self.total_share if self.total_share is not None else self.norm_share
        return shortest_range(share, fraction)

    def _row_label(self, k: int) -> str:
        """``k=...`` for row k of ``parts``; ``k>K`` for the remainder row."""
        remainder = self.max_length is not None and k > self.max_length
        return f"k>{self.max_length}" if remainder else f"k={k}"

    def __repr__(self) -> str:
        peak = max(range(len(self.norms)), key=self.norms.__getitem__)
        cap = "" if self.max_length is None else f", max_length={self.max_length}"
        return (
            f"PathGradients(units={len(self.units)}, grad_norm={self.grad_norm:.4g}, "
            f"largest part {self._row_label(peak)}, samples={self.samples}{cap})"
        )

    def summary(self) -> str:
        u = len(self.units)
        lo, hi = self.effective_lengths(0.9)
        sampled = self.total_share is not None
        counts = [math.comb(u, k) for k in range(u + 1)] if sampled else self.counts
        paths = sum(counts[lo : hi + 1])
        # The remainder row (max_length=K) stands for lengths K+1..U.
        top = u if not sampled and self.max_length is not None and hi > self.max_length else hi
        which = (
            "of the total gradient magnitude (C(U, k) x mean single-path norm; Veit et al. "
            "2016, Fig. 6c)"
            if sampled
            else "of the summed part norms sum_k |g_k| (exact parts; cf. Veit et al. 2016, Fig. 6c)"
        )
        peak = max(range(len(self.norms)), key=self.norms.__getitem__)
        lines = [
            f"path gradients over {u} units (2^{u} paths), |dL/dx| = {self.grad_norm:.4g}",
            f"largest part: paths through {self._row_label(peak)} branches "
            f"({self.norm_share[peak]:.1%} of the summed part norms)",
            f"90% {which} comes from paths of length {lo}-{top}: {paths / 2**u:.3g} of all paths",
        ]
        if self.max_length is not None:
            lines.append(
                f"paths through more than {self.max_length} branches are summed in one "
                f"remainder part ({self.norm_share[-1]:.1%} of the summed part norms)"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """Part norms and per-path norms against path length (log scale), with the share
        per length as bars on a second axis: ``total_share`` (Veit et al. 2016, Fig. 6c)
        if sampled, else ``norm_share``. A remainder part (``max_length``) is drawn apart,
        at K + 1."""
        ax = new_axes(ax)
        exact = len(self.norms) - (self.max_length is not None)
        ks = list(range(len(self.norms)))
        norms = [max(v, 1e-300) for v in self.norms]
        ax.semilogy(ks[:exact], norms[:exact], "o-", label="|g_k| (exact part)")
        if self.max_length is not None:
            ax.semilogy(
                ks[exact:], norms[exact:], "D", label=f"|remainder| (k > {self.max_length})"
            )
        if self.per_path_norm is not None:
            ax.semilogy(range(len(self.per_path_norm)), self.per_path_norm, "s--",
                        label="mean |g| of one path")  # fmt: skip
        ax.set_xlabel("path length k (residual branches passed)")
        ax.set_ylabel("gradient norm")
        share = self.total_share if self.total_share is not None else self.norm_share
        twin = ax.twinx()
        twin.bar(range(len(share)), share, alpha=0.25, color="gray")
        twin.set_ylabel(
            "share of total gradient magnitude (Fig. 6c)"
            if self.total_share is not None
            else "share of summed part norms"
        )
        ax.legend(loc="upper right")
        ax.set_title("gradient by path length")
        return ax


def check_pathgrad_args(*, samples: Any, max_length: Any, precision: Any) -> None:
    """Raise ``ValueError`` for an argument of ``path_gradients`` that is bad whatever the
    model: ``path_gradients`` starts with it, and a study spec checks its options with it
    when it loads."""
    check_choice("precision", precision, PRECISIONS)
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0
    ):
        raise invalid("max_length", max_length, "must be a non-negative integer or None")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise invalid("samples", samples, "must be a non-negative integer (0: no sampled paths)")


def path_gradients(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    loss_fn: LossFn | None = None,
    blocks: Sequence[str | nn.Module] | None = None,
    samples: int = 2,
    seed: int = 0,
    max_length: int | None = None,
    precision: str = "fp32",
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
            costs about as much as a k-unit backward pass: samples=s adds about 2s times
            the work of the exact parts.
        seed: seeds the path sampling (a private generator; global RNG untouched).
        max_length: K splits off the paths through 0..K branches exactly and sums all
            longer ones in one exact remainder part (``parts`` then has K+2 rows; its sum is
            still the input gradient). None, or K >= U, gives the full split.
        precision: "fp32" runs the VJPs in the input's dtype; "bf16" re-runs each unit and
            takes its VJPs under ``torch.autocast`` with bfloat16 (on the input's device
            type). The forward point, the loss gradient and the stack of parts stay in the
            input's dtype, so ``parts`` comes back in it, summing to the input gradient up
            to bf16 rounding (about 1e-2 relative) instead of exactly.

    The model runs in eval mode (the caller's mode is restored). Cost: the exact parts need
    sum over units of (rows so far) branch VJPs, U(U+1)/2 in all (1485 for ResNet-110,
    U = 54): about U/2 input-gradient backward passes, or U/6 forward + backward passes,
    of arithmetic, done in one batched call per unit; the stack of parts costs one fused
    add per unit beyond that. ``max_length=K`` caps the rows at K + 2, about (K+2)(U - K/2)
    branch VJPs (957 for K = 20), and saves more than that share of the time, as the rows
    it drops are those of the early, largest feature maps. Units of known modules take
    their VJPs directly (``_LinearChain``: BN folded into the convolution weights, one
    kernel per convolution and per ReLU mask, the masks recorded by the forward pass,
    channels_last on a CPU). Measured on a 2-core CPU (one thread), ResNet-110, fp32,
    samples=0 (benchmarks/pathgrad_cost.py): exact parts 8.5x (batch 8) to 13x (batch 16)
    one forward + backward, about the U/6 = 9x of arithmetic (27x before the direct VJPs;
    42x before the stack and batching were reworked); max_length=20 5-7x. On an H100,
    ResNet-110 at batch 128:
    exact parts 4.4-4.6x one fp32 forward + backward (partly bound by the CPU's dispatch),
    max_length=20 3.6x, both measured before the direct VJPs, which remove most of that
    dispatch and two of the elementwise passes per unit.
    """
    loss_fn = loss_fn or checked_default_loss("path_gradients")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"invalid x: {got}; path_gradients splits the gradient with respect to one "
            "floating-point input tensor (for a model with several inputs, wrap it in a "
            "module that takes one tensor)"
        )
    check_pathgrad_args(samples=samples, max_length=max_length, precision=precision)
    units = find_units(model, blocks)  # a plain net raises, naming blocks=[...]
    num = len(units)
    if max_length is not None and max_length >= num:
        log.debug("max_length=%d >= %d units: the full split", max_length, num)
        max_length = None  # no path is longer than U
    rows = num + 1 if max_length is None else max_length + 2
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with module_mode(model, False), torch.enable_grad(), quiet_vmap_fallback():
        xin = x.detach().clone().requires_grad_(True)
        # Units whose VJPs are taken directly (fp32): their ReLU masks come from this pass.
        directs = (
            {i: _direct_modules(v) for i, v in enumerate(units)} if precision == "fp32" else {}
        )
        relus = {i: [m for m in d[0] if isinstance(m, nn.ReLU)] for i, d in directs.items() if d}
        records, out, masks = record_units(model, units, xin, relus)
        for view, (x_u, y_u) in zip(units, records, strict=True):
            check_view(view, x_u, y_u)  # units known by their 'branch'/'shortcut' only
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
                    "such units with blocks=[...], in the order the forward pass runs them)"
                )
        (g,) = torch.autograd.grad(loss, records[-1][1], retain_graph=True)
        mask, lengths, exact = _sample_paths(num, samples, seed)
        stack, m = g.unsqueeze(0), 1  # [m, *shape]; row k: paths through k branches so far
        paths = g.unsqueeze(0).expand(mask.shape[0], *g.shape)  # single sampled paths
        for u in range(num - 1, -1, -1):
            x_u = records[u][0]
            direct = _linear_unit(units[u], x_u, records[u][1], directs.get(u), masks.get(u))
            pull = direct or _UnitPullback(units[u], x_u, autocast)
            stack, m = _push_parts(pull, stack, m, rows)
            if len(paths):
                paths = _push_paths(pull, paths, mask[:, u])
            # Back through the non-unit code to the previous unit's output (or the input).
            prev = records[u - 1][1] if u > 0 else xin
            if x_u is not prev:
                stack = _vjp(x_u, prev, stack[:m])
                paths = _vjp(x_u, prev, paths)
    parts = stack[:m].detach().contiguous()  # [rows, *x.shape] (channels_last rows on a CPU)
    path_norms = paths.detach().flatten(1).norm(dim=1).tolist()
    norms = parts.flatten(1).norm(dim=1).tolist()
    total = sum(norms)
    counts = [math.comb(num, k) for k in range(num + 1)]
    row_counts = counts if max_length is None else counts[: max_length + 1]
    if max_length is not None:
        row_counts.append(sum(counts[max_length + 1 :]))
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
        counts=row_counts,
        per_path_norm=per_path,
        per_path_exact=exact,
        total_share=total_share,
        grad_norm=float(parts.sum(0).norm()),
        loss=float(loss.detach()),
        samples=samples,
        max_length=max_length,
        precision=precision,
        meta={"model": type(model).__name__, "batch": int(x.shape[0]), "seed": seed},
    )
