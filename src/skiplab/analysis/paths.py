"""Path spectra: how many input-to-output paths cross how many nonlinearities.

A network's computation is a graph of tensors. A *path* is a chain of data-dependent
tensors from the input to the output; its *length* here is the number of nonlinear
operations on it. Veit et al. 2016 ("Residual networks behave like ensembles of
relatively shallow networks") count 2^n paths through n residual units, C(n, k) of which
cross k residual branches; He et al. 2016 ("Identity mappings in deep residual
networks") show that full pre-activation units leave a purely linear path from any unit
to any later one; Ronneberger et al. 2015 (U-Net) join encoder and decoder with long
skips, so the top skip carries the paths with the fewest nonlinearities.

``path_spectrum`` counts all paths exactly, by the number of nonlinearities, with
dynamic programming over the traced graph (never enumerating them): the spectrum of an
op's output is the sum of the spectra of its data-dependent inputs, shifted by one when
the op is nonlinear. Counts are Python ints (a 1001-layer ResNet has 2^333 paths).

Paths join tensors, not their elements: a slice carries all the paths of the tensor it
was cut from. So ``torch.cat([x[:, :2], x[:, 2:]], 1)`` has 2 paths with 0
nonlinearities (though each of its elements is reached by one), and
``torch.cat([relu(x[:, :2]), x[:, 2:]], 1)`` has one path with 0 and one with 1, though no
element has both. Splitting a tensor into n pieces and joining them again multiplies its
paths by n. Likewise a conv or linear layer passes each path on once, not once per
weight: the spectrum is that of the graph of tensor ops (Veit et al.'s unravelled view),
not of the scalar computation graph.

Tracing runs the model once on the example input under a ``TorchFunctionMode`` that sees
every torch function and tensor method, so it works on any ``nn.Module`` with any Python
control flow (shape checks, in-place ``out += identity``, ``ReLU(inplace=True)``).
Parameters, buffers and tensors created from constants carry no paths.

What counts as nonlinear (DESIGN.md, Analyses): activation functions, max-pooling,
softmax, products or quotients of two data-dependent tensors (gates), and normalisation
that divides by a statistic of its own input (LayerNorm, GroupNorm, InstanceNorm,
BatchNorm in training mode). Linear: conv, linear, BatchNorm in eval mode (InstanceNorm
too, with running statistics), add/sub/cat, reshapes, slicing, splitting and indexing,
unfold/fold (im2col), average pooling, up-sampling, transposed conv, padding,
dropout (its mask does not depend on the input), embedding lookups (one-hot times a
matrix), max-unpooling (a scatter, see ``UNPOOL``), and products with constants or
parameters. Fused ops count as written out: ``addmm(c, a, b)`` as ``c + a @ b``, attention
(``scaled_dot_product_attention``, ``nn.MultiheadAttention``) as ``softmax(q k^T) v``, two
products and a softmax. Comparisons, signs, rounding and integers computed from the
data (``h > 0``, ``round``, ``argmax``, the indices of ``max_pool2d(...,
return_indices=True)``) give masks: step functions of the input that carry no paths, so
an op that reads one is a gate (``h * (h > 0)`` counts as one ReLU). Any other op on
data-dependent tensors is *unknown*: it is listed in the result and counted as
nonlinear. Recurrent layers (``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and their cells) are such
ops, one for all their time steps and gates; the summary says so, and how to count them
(write the cell out).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import operator
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..models.unet import UNet
from .blocks import run_model
from .result import Result, new_axes

log = logging.getLogger(__name__)

# A spectrum is (offset, counts): counts[i] paths with offset + i nonlinearities. The
# offset makes the shift of a nonlinear op O(1), and linear ops share the same tuple.
Spectrum = tuple[int, tuple[int, ...]]
UNIT: Spectrum = (0, (1,))

# --------------------------------------------------------------------------- op classes


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Linear jointly in all their tensor inputs: the output's paths are the union of the inputs'.
SUM_LINEAR = _names("add sub rsub cat concat concatenate stack hstack vstack dstack column_stack")
# Linear in each data-dependent input: linear when one input depends on the data,
# a product (nonlinear) when several do (x * y, q @ k, conv with a computed weight, x[idx]).
LINEAR = _names(
    """
    mul multiply matmul mm bmm einsum tensordot dot inner outer
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d interpolate upsample upsample_nearest upsample_bilinear
    pixel_shuffle pixel_unshuffle channel_shuffle pad constant_pad_nd unfold fold im2col col2im
    as_strided bilinear
    dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
    view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes
    embedding swapdims movedim moveaxis squeeze unsqueeze expand expand_as repeat repeat_interleave
    tile broadcast_to contiguous clone detach to float double half bfloat16 type type_as
    long int short
    cpu cuda getitem narrow select index_select gather take take_along_dim split
    split_with_sizes chunk unbind tensor_split hsplit vsplit roll flip fliplr flipud rot90
    diagonal diag tril triu sum mean nansum cumsum neg negative positive trace
    T mT H mH data real imag conj
    """
)
# Nonlinear, whatever their inputs.
NONLINEAR = _names(
    """
    relu relu6 leaky_relu prelu rrelu elu selu celu gelu silu mish hardswish hardsigmoid
    hardtanh softplus softsign tanh sigmoid logsigmoid tanhshrink softshrink hardshrink
    threshold glu softmax log_softmax softmin gumbel_softmax
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
    max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices
    adaptive_max_pool3d_with_indices fractional_max_pool2d fractional_max_pool3d
    lp_pool1d lp_pool2d max min amax amin maximum minimum
    layer_norm group_norm local_response_norm normalize rms_norm
    exp exp2 log log2 log10 log1p expm1 sqrt rsqrt reciprocal pow square abs
    clamp clip clamp_min clamp_max sin cos tan norm std var std_mean var_mean prod cumprod rpow
    logsumexp erf erfc erfinv logit sinh cosh asin acos atan asinh acosh atanh
    special_erf special_erfc special_erfinv special_expit special_logit special_softmax
    special_log_softmax linalg_vector_norm linalg_norm cdist cosine_similarity
    pairwise_distance
    """
)
# Piecewise-constant results (comparisons, signs, rounding, indices of extremes): *masks*. They
# depend on the input but carry none of its paths (a step has no slope), so ``h * (h > 0)``
# has the one path of ``relu(h)``; an op that reads a mask is a gate (nonlinear), except a
# sum, where the mask is an offset. Anything computed from masks alone is a mask.
MASKS = _names(
    """
    gt lt ge le eq ne greater less greater_equal less_equal sign sgn signbit heaviside
    round floor ceil trunc fix bucketize searchsorted
    argmax argmin isnan isinf isfinite isposinf isneginf isclose
    logical_and logical_or logical_xor logical_not and or xor invert
    bitwise_and bitwise_or bitwise_xor bitwise_not
    """
)
# Ops that read only the shape or dtype of their second tensor argument.
SHAPE_OF = _names("view_as reshape_as expand_as type_as")
# Results that do not depend on the input's values.
CONSTANT = _names(
    """
    zeros_like ones_like empty_like full_like rand_like randn_like randint_like
    new_zeros new_ones new_empty new_full
    """
)
# In-place ops that overwrite their target with a constant.
OVERWRITE = _names("zero_ fill_ normal_ uniform_ random_ bernoulli_ exponential_")
# max_unpool(v, indices) scatters v to the positions of the maxima that max_pool chose:
# linear in v. The indices are the pool's own switch, already counted at the pool, so they
# do not gate again: unpool(pool(x)) = x * (x == local max) counts one nonlinearity, as
# written either way, and a SegNet decoder's unpooling adds none (Badrinarayanan 2017).
UNPOOL = _names("max_unpool1d max_unpool2d max_unpool3d")
DIVISION = _names("div divide true_divide truediv")
# input + (product of two factors): linear in the input, the product as ``mul`` or ``div``.
FUSED_ADD = {
    **dict.fromkeys(_names("addmm addbmm baddbmm addcmul addr addmv"), False),
    "addcdiv": True,
}
# Fused attention, counted as written out: softmax(q k^T) v (see Tracer._attention).
ATTENTION = _names("scaled_dot_product_attention multi_head_attention_forward")
REVERSED = {"radd": "add", "rsub": "sub", "rmul": "mul", "rmatmul": "matmul"}


# Fused recurrent layers (nn.RNN, nn.GRU, nn.LSTM and their cells): one op for all time
# steps and gates, so they cannot be counted inside; unknown, with a hint in the summary.
RECURRENT = _names(
    "rnn_tanh rnn_relu gru lstm rnn_tanh_cell rnn_relu_cell gru_cell lstm_cell quantized_lstm"
)


# Tensor methods that hand the data to Python or NumPy: what comes back into torch has no
# trace of the input, so the paths through it would silently vanish.
LEAVES_TORCH = frozenset({"numpy", "tolist", "array", "array_wrap", "dlpack"})


def op_name(func: Any) -> str:
    """The canonical name of a torch function or tensor method (``__iadd__`` -> ``add``)."""
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a tensor property such as .T or .data
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in ("add", "sub", "mul", "truediv", "div", "matmul"):
            name = name[1:]
        name = REVERSED.get(name, name)
    elif name.endswith("_") and name not in OVERWRITE and name != "copy_":
        name = name[:-1]
    return name.lstrip("_")


def _tensors(value: Any) -> Iterator[Tensor]:
    """The tensors in ``value``: a tensor, or nested lists, tuples and dicts of them."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _is_real(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


# --------------------------------------------------------------------------- spectra


def merge(spectra: Sequence[Spectrum | None]) -> Spectrum | None:
    """The sum of several spectra (paths that reach an op through any of its inputs)."""
    present = [s for s in spectra if s is not None]
    if not present:
        return None
    lo = min(s[0] for s in present)
    hi = max(s[0] + len(s[1]) for s in present)
    out: Sequence[int] = ()
    for off, counts in present:
        padded = (0,) * (off - lo) + counts + (0,) * (hi - off - len(counts))
        out = padded if not out else tuple(map(operator.add, out, padded))  # C-speed loop
    return (lo, tuple(out))


def convolve(a: Spectrum, b: Spectrum) -> Spectrum:
    """Paths from the input to a point (``a``) joined with paths from it onwards (``b``)."""
    out = [0] * (len(a[1]) + len(b[1]) - 1)
    for i, x in enumerate(a[1]):
        if x:
            for j, y in enumerate(b[1]):
                out[i + j] += x * y
    return (a[0] + b[0], tuple(out))


def as_counts(s: Spectrum | None) -> dict[int, int]:
    if s is None:
        return {}
    return {s[0] + i: c for i, c in enumerate(s[1]) if c}


def describe(counts: dict[int, int]) -> tuple[int, int | None, int | None, float | None]:
    """(total, min, max, mean) of a spectrum given as {nonlinearities: paths}."""
    total = sum(counts.values())
    if not total:
        return 0, None, None, None
    weighted = sum(k * c for k, c in counts.items())
    return total, min(counts), max(counts), weighted / total  # int / int: exact rounding


def format_count(n: int) -> str:
    """An exact int as text, in scientific notation past 10^9 (no float overflow)."""
    if n < 10**9:
        return f"{n:,}"
    digits = str(n)
    return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"


# --------------------------------------------------------------------------- results


@dataclass
class PathCounts(Result):
    """The spectrum of a subset of the paths (through one long skip, one module's output)."""

    name: str
    counts: dict[int, int]
    total: int
    min: int | None
    max: int | None
    mean: float | None
    note: str = ""

    @classmethod
    def of(cls, name: str, counts: dict[int, int], note: str = "") -> PathCounts:
        return cls(name, counts, *describe(counts), note=note)

    def __repr__(self) -> str:
        if not self.total:
            return f"PathCounts({self.name!r}: no paths{', ' + self.note if self.note else ''})"
        return (
            f"PathCounts({self.name!r}: {format_count(self.total)} "
            f"path{'s' if self.total != 1 else ''}, nonlinearities "
            f"min {self.min}, max {self.max}, mean {self.mean:.2f})"
        )


@dataclass
class PathSpectrum(Result):
    """Exact input-to-output path counts by number of nonlinearities.

    ``counts[k]`` is the number of paths that cross exactly ``k`` nonlinear ops (Python
    ints; JSON keeps them exact). ``levels`` (U-Nets) holds the spectrum of the paths
    through each long skip, top level first; ``through`` the paths through the output of
    each module named in ``blocks``.
    """

    model: str
    end: str
    training: bool
    counts: dict[int, int]
    total: int
    min: int
    max: int
    mean: float
    has_linear_path: bool
    unknown_ops: list[str]
    nonlinear_ops: dict[str, int]
    num_ops: int
    levels: list[PathCounts] | None = None
    through: list[PathCounts] = field(default_factory=list)

    def __repr__(self) -> str:
        parts = [
            f"model={self.model!r}",
            f"end={self.end!r}",
            f"total={format_count(self.total)}",
            f"min={self.min}",
            f"max={self.max}",
            f"mean={self.mean:.2f}",
            f"has_linear_path={self.has_linear_path}",
            f"unknown_ops={self.unknown_ops}",
        ]
        if self.levels is not None:
            parts.append(f"levels={[lv.min for lv in self.levels]} (min per level)")
        return f"PathSpectrum({', '.join(parts)})"

    def summary(self) -> str:
        lines = [
            f"path spectrum of {self.model} (input -> {self.end}, "
            f"{'training' if self.training else 'eval'} mode, {self.num_ops} ops traced)",
            f"  paths: {format_count(self.total)}; nonlinearities per path: min {self.min}, "
            f"max {self.max}, mean {self.mean:.2f}",
            "  a linear path exists (min 0)"
            if self.has_linear_path
            else f"  no linear path: every path crosses at least {self.min} "
            f"nonlinearit{'y' if self.min == 1 else 'ies'}",
        ]
        if self.nonlinear_ops:
            kinds = ", ".join(f"{k} x{v}" for k, v in sorted(self.nonlinear_ops.items()))
            lines.append(f"  nonlinear ops: {kinds}")
        if self.unknown_ops:
            lines.append(f"  unknown ops (counted as nonlinear): {', '.join(self.unknown_ops)}")
        recurrent = [op for op in self.unknown_ops if op in RECURRENT]
        if recurrent:
            lines.append(
                f"  not counted: the paths inside the recurrent layers ({', '.join(recurrent)}), "
                "each counted as one nonlinear op for all its time steps and gates; for a count, "
                "write the cell out as a loop over the time steps with torch ops (gates as "
                "sigmoid/tanh and products, as in the nn.LSTM docs)"
            )
        for group in (self.levels or []), self.through:
            lines.extend(f"  {p!r}" for p in group)
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """log10(number of paths) against the number of nonlinearities (bars), with the
        long-skip spectra of a U-Net as lines."""
        ax = new_axes(ax)
        ks = sorted(self.counts)
        # math.log10 takes Python ints of any size; float(count) overflows past 1e308.
        ax.bar(ks, [math.log10(self.counts[k]) for k in ks], width=1.0, label="all paths")
        for part in (self.levels or []) + self.through:
            pk = sorted(part.counts)
            if pk:
                ax.plot(pk, [math.log10(part.counts[k]) for k in pk], marker=".", label=part.name)
        ax.set_xlabel("nonlinearities on the path")
        ax.set_ylabel("log10(number of paths)")
        ax.set_title(f"path spectrum: {self.model}")
        if self.levels or self.through:
            ax.legend(fontsize="small")
        return ax


# --------------------------------------------------------------------------- tracing


class _Stop(Exception):
    """Raised from a hook to end the forward pass once the ``until`` output is known."""


class Tracer(TorchFunctionMode):
    """Records the graph of data-dependent tensors while a model runs.

    Node ``i`` is one tensor value: ``spectra[i]`` counts the paths reaching it,
    ``inputs[i]`` are the nodes it was computed from and ``nonlinear[i]`` says whether the
    op that made it is nonlinear. Tensors are matched by identity (weak references, so a
    freed tensor's id cannot be mistaken for a new one); an in-place op gives its tensor
    a new node.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spectra: list[Spectrum] = []
        self.inputs: list[tuple[int, ...]] = []
        self.nonlinear: list[bool] = []
        self.ops: list[str] = []
        self.unknown: set[str] = set()
        self.tensors: dict[int, tuple[weakref.ref, int]] = {}
        self.masks: dict[int, weakref.ref] = {}  # data-dependent tensors with no paths

    # nodes -----------------------------------------------------------------------
    def node(self, t: Any) -> int | None:
        if not isinstance(t, Tensor):
            return None
        entry = self.tensors.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1]

    def add_node(self, inputs: Sequence[int], nonlinear: bool, op: str) -> int:
        s = merge([self.spectra[i] for i in inputs])
        assert s is not None
        if nonlinear:
            s = (s[0] + 1, s[1])
        self.spectra.append(s)
        self.inputs.append(tuple(inputs))
        self.nonlinear.append(nonlinear)
        self.ops.append(op)
        return len(self.spectra) - 1

    def source(self, node: int) -> int:
        """The op node a piece of a multi-output op (``o, h = gru(x)``) was cut from."""
        return self.inputs[node][0] if self.ops[node] == "piece" else node

    def bind(self, t: Tensor, node: int) -> None:
        self.tensors[id(t)] = (weakref.ref(t), node)
        self.masks.pop(id(t), None)

    def bind_mask(self, t: Tensor) -> None:
        self.masks[id(t)] = weakref.ref(t)
        self.tensors.pop(id(t), None)

    def forget(self, t: Tensor) -> None:
        self.tensors.pop(id(t), None)
        self.masks.pop(id(t), None)

    def has_mask(self, value: Any) -> bool:
        """Whether ``value`` (a tensor, or nested lists/dicts) holds a mask."""
        for t in _tensors(value):
            ref = self.masks.get(id(t))
            if ref is not None and ref() is t:
                return True
        return False

    def add_input(self, t: Tensor) -> None:
        self.spectra.append(UNIT)
        self.inputs.append(())
        self.nonlinear.append(False)
        self.ops.append("input")
        self.bind(t, len(self.spectra) - 1)

    def nodes_in(self, value: Any) -> list[int]:
        """Nodes of the tracked tensors in ``value`` (a tensor, or nested lists/dicts)."""
        return [n for t in _tensors(value) if (n := self.node(t)) is not None]

    # the mode ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        data = [*args, *(v for k, v in kwargs.items() if k != "out")]
        found = self.nodes_in(data)
        gated = self.has_mask(data)
        name = op_name(func) if found or gated else ""
        if name in SHAPE_OF:  # x.view_as(y) reads only y's shape
            found, gated = self.nodes_in(args[0]), self.has_mask(args[0])
        if found and name in LEAVES_TORCH:
            raise ValueError(
                f"the forward pass takes a tensor out of torch ({name}()) on a path from the "
                "input: path_spectrum follows torch operations only, and the paths through "
                "that code would be lost; write that part with torch operations, or end the "
                "spectrum before it with until=..."
            )
        out = func(*args, **kwargs)
        if not found and not gated:
            return out
        if name == "setitem":  # x[key] = value: x now also carries value's paths
            self._setitem(args)
            return out
        if name in OVERWRITE or name == "copy_":
            target = args[0]
            src = args[1] if name == "copy_" and len(args) > 1 else None
            nodes = self.nodes_in(src)
            if nodes:
                self.bind(target, self.add_node(sorted(set(nodes)), False, "copy"))
            elif self.has_mask(src):
                self.bind_mask(target)
            else:
                self.forget(target)
            return out
        outputs = [
            o for o in (out if isinstance(out, list | tuple) else (out,)) if isinstance(o, Tensor)
        ]
        if not outputs or name in CONSTANT:
            return out
        if not found or name in MASKS:  # a step function of the data: a mask, no paths
            for o in outputs:
                self.bind_mask(o)
            return out
        if not all(_is_real(o) for o in outputs) and any(
            self.node(t) is not None and _is_real(t) for t in _tensors(data)
        ):
            # Integers computed from real data (the indices of max_pool2d(...,
            # return_indices=True), of x.max(dim) or topk, x.long()) are step functions of
            # it, like argmax: masks, with none of its paths.
            for o in outputs:
                if not _is_real(o):
                    self.bind_mask(o)
            outputs = [o for o in outputs if _is_real(o)]
            if not outputs:
                return out
        if name in ATTENTION:
            self._attention(name, args, kwargs, outputs)
            return out
        if name in FUSED_ADD:
            node = self._fused_add(name, args, kwargs)
            for o in outputs:
                self.bind(o, node)
            return out
        nonlinear = self._is_nonlinear(name, args, kwargs, found, gated)
        node = self.add_node(sorted(set(found)), nonlinear, name)
        if len(outputs) == 1:
            self.bind(outputs[0], node)
            return out
        # Several results (x.chunk(3), x.unbind(0)): each is a tensor of its own, as the
        # slices x[0], x[1], x[2] are, so ``q, k, v = qkv.chunk(3)`` counts as ``qkv[i]``.
        for o in outputs:
            self.bind(o, self.add_node([node], False, "piece"))
        return out

    def _is_nonlinear(
        self, name: str, args: tuple, kwargs: dict, found: list[int], gated: bool
    ) -> bool:
        if name in SUM_LINEAR:
            return False
        if name in UNPOOL:  # a scatter: linear in the values, the indices do not gate
            return len(found) > 1
        if name in NONLINEAR or gated:  # a mask selects or scales the paths: a gate
            return True
        if name == "batch_norm":  # batch statistics divide by the input's own variance
            return bool(_arg(args, kwargs, 5, "training", False))
        if name == "instance_norm":  # eval mode with running statistics: affine
            return bool(_arg(args, kwargs, 5, "use_input_stats", True))
        if name in DIVISION or name in ("rdiv", "rtruediv"):
            divisor = args[0] if name.startswith("r") else _arg(args, kwargs, 1, "other", None)
            return self.node(divisor) is not None
        if name == "where":  # where(cond, a, b): a gate when cond depends on the data
            return bool(self.nodes_in(_arg(args, kwargs, 0, "condition", None)))
        if name == "lerp":  # a + w (b - a): a gate when the weight depends on the data
            weight = _arg(args, kwargs, 2, "weight", None)
            return self.node(weight) is not None or self.has_mask(weight)
        if name == "masked_fill":
            return bool(self.nodes_in(args[1:]) + self.nodes_in(list(kwargs.values())))
        if name in LINEAR:
            return len(found) > 1
        self.unknown.add(name)
        return True

    def _fused_add(self, name: str, args: tuple, kwargs: dict) -> int:
        """``addmm(c, a, b)`` = beta c + alpha a @ b (and addcmul, baddbmm, ...): c's paths
        pass linearly; the product's paths as in ``mul`` (``div`` for addcdiv)."""
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        base, factors = tensors[:1], tensors[1:]  # input first, by position or keyword
        nodes = self.nodes_in(factors)
        inputs = self.nodes_in(base)
        if nodes:
            divisor = factors[-1] if FUSED_ADD[name] else None
            nonlinear = (
                self.node(divisor) is not None
                if divisor is not None
                else len(nodes) > 1 or self.has_mask(factors)
            )
            inputs.append(self.add_node(sorted(set(nodes)), nonlinear, name))
        return self.add_node(sorted(set(inputs)), False, name)

    def _attention(self, name: str, args: tuple, kwargs: dict, outputs: list[Tensor]) -> None:
        """A fused attention op as its parts: scores q k^T (a product when both depend on
        the data), softmax, weights times v (a product likewise). nn.MultiheadAttention
        projects query, key and value separately, so ``mha(x, x, x)`` has the paths of the
        written-out version; masks or weights computed from the input join the scores."""
        parts = [_arg(args, kwargs, i, n, None) for i, n in enumerate(("query", "key", "value"))]
        rest = [a for a in (*args[3:], *kwargs.values()) if all(a is not p for p in parts)]
        q, k, v = (sorted(set(self.nodes_in(p))) for p in parts)
        if name == "multi_head_attention_forward":  # its own projections: distinct nodes
            q, k, v = ([self.add_node(n, False, "linear")] if n else [] for n in (q, k, v))
        scores = sorted(set(q + k) | set(self.nodes_in(rest)))
        weights = None
        if scores:
            s = self.add_node(scores, bool(q and k) or self.has_mask(rest), "matmul")
            weights = self.add_node([s], True, "softmax")
        product = weights is not None or self.has_mask(rest)  # a mask alone gates v
        if v:
            node = self.add_node(([weights] if weights is not None else []) + v, product, "matmul")
        else:  # constant values: linear in the weights
            node = self.add_node([weights], False, "matmul")
        self.bind(outputs[0], node)
        for o in outputs[1:]:  # nn.MultiheadAttention's attention weights
            if weights is not None:
                self.bind(o, weights)

    def _setitem(self, args: tuple) -> None:
        target, key, value = args[0], args[1], args[2]
        inputs = self.nodes_in(target) + self.nodes_in(value)
        gate = self.nodes_in(key)
        if not inputs and not gate:  # only masks: written into a mask, or with a mask key
            self.bind_mask(target)
            return
        nonlinear = bool(gate) or self.has_mask(key)
        self.bind(target, self.add_node(sorted(set(inputs + gate)), nonlinear, "setitem"))


# --------------------------------------------------------------------------- reverse DP


def suffixes(tracer: Tracer, end: int) -> list[Spectrum | None]:
    """For every node, the spectrum of the paths from it to ``end`` (not counting the
    node's own op): dynamic programming backwards over the recorded graph."""
    suffix: list[Spectrum | None] = [None] * (end + 1)
    suffix[end] = UNIT
    for v in range(end, -1, -1):
        s = suffix[v]
        if s is None:
            continue
        if tracer.nonlinear[v]:
            s = (s[0] + 1, s[1])
        for u in tracer.inputs[v]:
            suffix[u] = s if suffix[u] is None else merge([suffix[u], s])
    return suffix


def through_edges(
    tracer: Tracer, suffix: list[Spectrum | None], node: int, exclude: Sequence[int] = ()
) -> dict[int, int]:
    """Paths through ``node`` that leave it by any consumer not in ``exclude``."""
    parts = []
    for c in range(node + 1, len(suffix)):
        s = suffix[c]
        if s is None or c in exclude or node not in tracer.inputs[c]:
            continue
        parts.append((s[0] + 1, s[1]) if tracer.nonlinear[c] else s)
    after = merge(parts)
    if node == len(suffix) - 1:
        after = merge([after, UNIT])  # the node is the end itself
    return {} if after is None else as_counts(convolve(tracer.spectra[node], after))


def through_any(tracer: Tracer, nodes: set[int], end: int) -> dict[int, int]:
    """Paths to ``end`` through at least one of ``nodes``: all paths less those that avoid
    them (a forward pass of the dynamic programme with ``nodes`` removed), so a path
    through two of them counts once."""
    avoid: list[Spectrum | None] = []
    for v in range(end + 1):
        s = None if v in nodes else merge([avoid[u] for u in tracer.inputs[v]])
        if not tracer.inputs[v] and v not in nodes:  # an input
            s = tracer.spectra[v]
        elif s is not None and tracer.nonlinear[v]:
            s = (s[0] + 1, s[1])
        avoid.append(s)
    rest = as_counts(avoid[end])
    counts = as_counts(tracer.spectra[end])
    return {k: c - rest.get(k, 0) for k, c in counts.items() if c != rest.get(k, 0)}


# --------------------------------------------------------------------------- the analysis


def _module_by_name(model: nn.Module, name: str, option: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ValueError(
        f"invalid {option}={name!r}: no module of that name in {type(model).__name__}"
        f"{hint} (use names from model.named_modules())"
    )


def _resolve_blocks(
    model: nn.Module, blocks: Sequence[str | nn.Module]
) -> list[tuple[str, nn.Module]]:
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for b in blocks:
        if isinstance(b, str):
            out.append((b, _module_by_name(model, b, "blocks entry")))
        elif isinstance(b, nn.Module) and id(b) in names:
            out.append((names[id(b)], b))
        else:
            raise ValueError(
                f"invalid blocks entry {b!r}: give module names or submodules of the model"
            )
    return out


def _first_node(tracer: Tracer, output: Any, what: str) -> int:
    nodes = sorted(set(tracer.nodes_in(output)))
    if not nodes and tracer.has_mask(output):
        raise ValueError(
            f"{what} depends on the input only through step functions (comparisons, signs, "
            "argmax, integer casts such as x.long()), which carry no paths; pass integer "
            "data (token ids) as an integer input, or end the spectrum before the step "
            "with until=..."
        )
    if not nodes:
        raise ValueError(
            f"{what} does not depend on the input: no path from the input reaches it "
            "(is the input used, and does the model run only torch ops on it?)"
        )
    if len(nodes) == 1:
        return nodes[0]
    return tracer.add_node(nodes, False, "outputs")  # several outputs: paths to any


def path_spectrum(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor],
    until: str | None = None,
    blocks: Sequence[str | nn.Module] | None = None,
) -> PathSpectrum:
    """Count the input-to-output paths of ``model`` by number of nonlinearities, exactly.

    Args:
        model: any ``nn.Module``; it runs once, in its current mode (call ``model.eval()``
            first: in training mode BatchNorm divides by batch statistics and counts as
            nonlinear). Buffers it updates in training mode are restored afterwards.
        example_input: one input tensor (or a tuple of positional inputs) of the shape
            the model takes, batch dimension included.
        until: end the paths at the output of this module (a name from
            ``model.named_modules()``, first call) instead of the model's output.
        blocks: modules (names or submodules) whose output to report in ``through``: the
            spectrum of the paths that pass through each one's output (each must run once).

    For a skiplab ``UNet`` (Ronneberger et al. 2015) ``levels`` holds, per level (top
    first), the paths that take that level's long skip: the paths from the input to the
    encoder feature, joined with the paths from where it enters the decoder to the output.

    Closed forms (Veit et al. 2016; He et al. 2016): a post-activation CIFAR ResNet with
    n basic units has C(n, k) paths with n + 1 + k nonlinearities (the stem's ReLU, a ReLU
    after every addition, one more inside each branch taken); a full pre-activation one
    has C(n, k) paths with 1 + 2k (two ReLUs per branch taken, and the final BN-ReLU).

    Raises ``ValueError`` on an input the model rejects, an unknown ``until`` name, or an
    output that does not depend on the input.
    """
    inputs = tuple(example_input) if isinstance(example_input, list | tuple) else (example_input,)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise ValueError("invalid example_input: give a tensor (or a tuple of tensors)")
    inputs = tuple(x.detach().clone() for x in inputs)  # the model may write in place
    end_module = _module_by_name(model, until, "until") if until is not None else None
    named_blocks = _resolve_blocks(model, blocks) if blocks is not None else []

    is_unet = isinstance(model, UNet) and until is None
    tracer = Tracer()
    captured: dict[str, list[list[int]]] = {}  # per call, the nodes of the module's output
    pooled: dict[int, int] = {}  # U-Net: encoder feature node -> its max-pool node
    handles = []

    def capture(key: str, stop: bool = False):  # noqa: ANN202
        def hook(_m: nn.Module, _args: tuple, out: Any) -> None:
            nodes = sorted({tracer.source(n) for n in tracer.nodes_in(out)})
            captured.setdefault(key, []).append(nodes)
            if stop:
                captured[key][-1] = [_first_node(tracer, out, f"the output of {until!r}")]
                raise _Stop

        return hook

    def pool_hook(_m: nn.Module, args: tuple, out: Any) -> None:
        src, dst = tracer.node(args[0]), tracer.node(out)
        if src is not None and dst is not None:
            pooled[src] = dst

    # any submodule in training mode may update buffers (BN statistics), even in an eval model
    training = any(m.training for m in model.modules())
    saved = [(b, b.detach().clone()) for b in model.buffers()] if training else []
    try:
        if end_module is not None:
            handles.append(end_module.register_forward_hook(capture("until", stop=True)))
        for name, m in named_blocks:
            handles.append(m.register_forward_hook(capture("block:" + name)))
        if is_unet:
            for lvl, enc in enumerate(model.encoder):
                handles.append(enc.register_forward_hook(capture(f"level:{lvl}")))
            handles.append(model.pool.register_forward_hook(pool_hook))
        output = None
        with torch.no_grad(), tracer:
            for x in inputs:
                tracer.add_input(x)
            with contextlib.suppress(_Stop):  # the forward stops at `until`
                output = run_model(model, *inputs)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)

    if until is not None:
        if "until" not in captured:
            raise ValueError(f"invalid until={until!r}: that module did not run in the forward")
        end = captured["until"][0][0]
    else:
        end = _first_node(tracer, output, "the model's output")

    counts = as_counts(tracer.spectra[end])
    total, lo, hi, mean = describe(counts)
    live = _ancestors(tracer, end)
    kinds = Counter(tracer.ops[v] for v in live if tracer.nonlinear[v])
    if "batch_norm" in kinds:
        kinds["batch_norm (training)"] = kinds.pop("batch_norm")

    levels = None
    through: list[PathCounts] = []
    if is_unet or named_blocks:
        suffix = suffixes(tracer, end)
        if is_unet:
            levels = _unet_levels(model, tracer, suffix, captured, pooled)
        for name, _m in named_blocks:
            calls = captured.get("block:" + name, [])
            if len(calls) != 1:
                raise ValueError(
                    f"invalid blocks entry {name!r}: it ran {len(calls)} times before the end "
                    "of the paths; each block must run exactly once"
                )
            nodes = [n for n in calls[0] if n <= end]
            if len(nodes) > 1:  # several outputs, maybe one computed from another
                part = through_any(tracer, set(nodes), end)
            else:
                part = through_edges(tracer, suffix, nodes[0]) if nodes else {}
            through.append(PathCounts.of(name, part))

    unknown = sorted(tracer.unknown & {tracer.ops[v] for v in live})
    if any(op in RECURRENT for op in unknown):
        log.warning(
            "path_spectrum: the recurrent layers of %s are counted as one nonlinear op each; "
            "the paths through their time steps and gates are not counted (see the summary)",
            type(model).__name__,
        )
    log.debug("path_spectrum: %d nodes traced, %d on paths to the end", len(tracer.ops), len(live))
    return PathSpectrum(
        model=type(model).__name__,
        end=until if until is not None else "output",
        training=model.training,
        counts=counts,
        total=total,
        min=lo,
        max=hi,
        mean=mean,
        has_linear_path=lo == 0,
        unknown_ops=unknown,
        nonlinear_ops=dict(sorted(kinds.items())),
        num_ops=sum(tracer.ops[v] not in ("input", "outputs", "piece") for v in live),
        levels=levels,
        through=through,
    )


def _ancestors(tracer: Tracer, end: int) -> list[int]:
    """The nodes on some path from the input to ``end``."""
    seen = [False] * (end + 1)
    seen[end] = True
    for v in range(end, -1, -1):
        if seen[v]:
            for u in tracer.inputs[v]:
                seen[u] = True
    return [v for v in range(end + 1) if seen[v]]


def _unet_levels(
    model: nn.Module,
    tracer: Tracer,
    suffix: list[Spectrum | None],
    captured: dict[str, list[list[int]]],
    pooled: dict[int, int],
) -> list[PathCounts]:
    """Per level, top first: the paths through the long skip (encoder feature -> decoder)."""
    levels = []
    for lvl, skip in enumerate(model.skips):
        name = f"level {lvl} ({skip} skip)"
        calls = captured.get(f"level:{lvl}", [])
        node = calls[-1][-1] if calls and calls[-1] else None
        if skip == "none" or node is None:
            levels.append(PathCounts.of(name, {}, note="no long skip at this level"))
            continue
        down = [pooled[node]] if node in pooled else []
        levels.append(PathCounts.of(name, through_edges(tracer, suffix, node, exclude=down)))
    return levels
