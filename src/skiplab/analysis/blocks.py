"""Finding residual units in any model, and a uniform view of their two paths.

A unit is found automatically when it is a skiplab ``ResidualUnit`` with a shortcut, one of
torchvision's residual units (ResNet's ``BasicBlock``/``Bottleneck``; MobileNetV2/V3's
``InvertedResidual`` and EfficientNet's ``MBConv``/``FusedMBConv`` where they have a skip,
ConvNeXt's ``CNBlock``, RegNet's ``ResBottleneckBlock``), or any module with ``branch`` and
``shortcut`` attributes. Other models name their units with ``blocks=[...]`` (module names as
in ``model.named_modules()``, or the modules themselves).

Every unit is seen through ``UnitView``:

    out = view.finish(view.shortcut(x), view.branch(x), x)

where ``shortcut`` is the skip path, ``branch`` the residual branch (for pre-activation
units it includes the pre-activation) and ``finish`` combines them (the addition, gates,
and whatever the unit does after the addition).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..io import one_line
from ..models.blocks import ResidualUnit

log = logging.getLogger(__name__)


@functools.cache  # unit_kind asks for every module of a model
def torchvision_unit_types() -> tuple[type, ...]:
    """torchvision's ResNet units, ``(BasicBlock, Bottleneck)``."""
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (BasicBlock, Bottleneck)


@functools.cache
def torchvision_other_unit_types() -> tuple[type, ...]:
    """torchvision's other residual units: MobileNetV2's and MobileNetV3's
    ``InvertedResidual``, EfficientNet's ``MBConv`` and ``FusedMBConv``, ConvNeXt's
    ``CNBlock`` and RegNet's ``ResBottleneckBlock`` (see ``TorchvisionPaths``)."""
    try:
        from torchvision.models.convnext import CNBlock
        from torchvision.models.efficientnet import FusedMBConv, MBConv
        from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
        from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
        from torchvision.models.regnet import ResBottleneckBlock
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (
        InvertedResidualV2,
        InvertedResidualV3,
        MBConv,
        FusedMBConv,
        CNBlock,
        ResBottleneckBlock,
    )


def keeps_forward(module: nn.Module, types: tuple[type, ...]) -> bool:
    """``module`` is one of ``types``, subclasses included as long as they keep the forward."""
    return isinstance(module, types) and type(module).forward in [t.forward for t in types]


def unit_kind(module: nn.Module) -> str | None:
    """ "skiplab" for skiplab's ``ResidualUnit``, "torchvision" for torchvision's
    ``BasicBlock``/``Bottleneck``, "torchvision-other" for its other residual units
    (``torchvision_other_unit_types``), subclasses included as long as they keep that
    class's ``forward`` (the analyses read a unit's paths from its parts, assuming that
    forward); None otherwise (other units follow the ``branch``/``shortcut`` protocol)."""
    if isinstance(module, ResidualUnit):
        return "skiplab" if type(module).forward is ResidualUnit.forward else None
    if keeps_forward(module, torchvision_unit_types()):
        return "torchvision"
    if keeps_forward(module, torchvision_other_unit_types()):
        return "torchvision-other"
    return None


@dataclass(frozen=True)
class TorchvisionPaths:
    """One of torchvision's other residual units as its class's forward computes it:
    ``post(shortcut(x) + branch(x))`` when ``skip``, else ``branch(x)`` alone.

    - MobileNetV2 ``InvertedResidual``: ``x + conv(x)`` when ``use_res_connect``;
    - MobileNetV3 ``InvertedResidual``, EfficientNet ``MBConv``/``FusedMBConv``:
      ``x + stochastic_depth(block(x))`` when ``use_res_connect`` (stochastic depth is the
      identity in eval mode);
    - ConvNeXt ``CNBlock``: ``x + stochastic_depth(layer_scale * block(x))``;
    - RegNet ``ResBottleneckBlock``: ``activation(proj(x) + f(x))``, ``proj`` the identity
      when None.

    All but RegNet's add nothing after the addition (MobileNetV2's linear bottlenecks)."""

    skip: bool
    shortcut: Callable[[Tensor], Tensor]
    branch: Callable[[Tensor], Tensor]
    post: nn.Module | None = None

    @classmethod
    def of(cls, m: nn.Module) -> TorchvisionPaths:
        """The paths of ``m``, a unit of kind "torchvision-other"."""
        from torchvision.models.convnext import CNBlock
        from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
        from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
        from torchvision.models.regnet import ResBottleneckBlock

        def identity(x: Tensor) -> Tensor:
            return x

        if isinstance(m, ResBottleneckBlock):
            return (
                cls(True, identity, m.f, m.activation)
                if m.proj is None
                else cls(True, m.proj, m.f, m.activation)
            )
        if isinstance(m, CNBlock):
            return cls(True, identity, lambda x: m.stochastic_depth(m.layer_scale * m.block(x)))
        if isinstance(m, InvertedResidualV2):
            return cls(bool(m.use_res_connect), identity, m.conv)
        if isinstance(m, InvertedResidualV3):
            return cls(bool(m.use_res_connect), identity, m.block)
        # EfficientNet's MBConv / FusedMBConv: stochastic depth where there is a skip
        if m.use_res_connect:
            return cls(True, identity, lambda x: m.stochastic_depth(m.block(x)))
        return cls(False, identity, m.block)


def overrides_forward(module: nn.Module) -> bool:
    """A subclass of skiplab's or torchvision's units with a ``forward`` of its own: its
    paths cannot be read from its parts (even a wrapper that logs and calls
    ``super().forward`` is not known to compute what its parts say)."""
    return isinstance(module, _known_unit_types()) and unit_kind(module) is None


def _known_unit_types() -> tuple[type, ...]:
    return (ResidualUnit, *torchvision_unit_types(), *torchvision_other_unit_types())


def is_unit(module: nn.Module, include_plain: bool = False) -> bool:
    """Whether ``module`` is a residual unit skiplab recognises without being told
    (``include_plain``: also skiplab's plain units, whose shortcut is ``None``)."""
    kind = unit_kind(module)
    if kind == "skiplab":
        return include_plain or module.shortcut is not None
    if kind == "torchvision":
        return True
    if kind == "torchvision-other":
        return TorchvisionPaths.of(module).skip
    if isinstance(module, _known_unit_types()):  # with a forward of its own
        return False
    return isinstance(getattr(module, "branch", None), nn.Module) and hasattr(module, "shortcut")


@dataclass
class UnitView:
    """One residual unit: its name in the model, the module, and its two paths."""

    name: str
    module: nn.Module
    # Read once (``unit_kind``; the paths of torchvision's other units): the methods below
    # run per batch (lesion, path gradients).
    kind: str | None = field(init=False, repr=False, compare=False)
    paths: TorchvisionPaths | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.kind = unit_kind(self.module)
        other = self.kind == "torchvision-other"
        self.paths = TorchvisionPaths.of(self.module) if other else None

    def shortcut(self, x: Tensor) -> Tensor:
        m = self.module
        if self.kind == "skiplab":
            return m.shortcut_path(x)
        if self.kind == "torchvision":
            return x if m.downsample is None else m.downsample(x)
        if self.paths is not None:
            return self.paths.shortcut(x)
        return x if m.shortcut is None else m.shortcut(x)

    def branch(self, x: Tensor) -> Tensor:
        m = self.module
        if self.kind == "skiplab":
            return m.branch_path(x)
        if self.kind == "torchvision":
            out = m.relu(m.bn1(m.conv1(x)))
            out = m.bn2(m.conv2(out))
            if hasattr(m, "conv3"):
                out = m.bn3(m.conv3(m.relu(out)))
            return out
        if self.paths is not None:
            return self.paths.branch(x)
        return m.branch(x)

    def finish(self, shortcut: Tensor, branch: Tensor, x: Tensor) -> Tensor:
        """Combine the two paths as the unit does (``x`` is the unit input, for gates)."""
        m = self.module
        if self.kind == "skiplab":
            return m.combine(shortcut, branch, x)
        if self.kind == "torchvision":
            return m.relu(shortcut + branch)
        post = self._post()
        out = shortcut + branch
        return post(out) if callable(post) else out

    def post_is_identity(self) -> bool:
        """True when the unit adds nothing after the addition (pre-activation units)."""
        m = self.module
        if self.kind == "skiplab":
            return isinstance(m.post, nn.Identity) and m.gate is None
        if self.kind == "torchvision":
            return False
        return self._post() is None

    def _post(self) -> Any:
        """What a unit of torchvision's other kinds or of the ``branch``/``shortcut``
        protocol does after the addition (None: nothing)."""
        if self.paths is not None:
            return self.paths.post
        return getattr(self.module, "post", None)


def find_units(
    model: nn.Module,
    blocks: Sequence[str | nn.Module] | None = None,
    *,
    required: bool = True,
    include_plain: bool = False,
    opaque: bool = False,
) -> list[UnitView]:
    """The residual units of ``model`` in module order (the order of ``named_modules``).

    ``blocks`` names them explicitly. ``include_plain`` also returns skiplab's plain units
    (``shortcut is None``: ``UnitView.shortcut`` then gives zeros), so plain and residual
    nets can be compared unit by unit. ``opaque``: the caller uses each unit only as a
    map from its input to its output (gradient flow, the NLC), never its paths, so
    subclasses of known units with a ``forward`` of their own are found too, and named
    blocks may be any submodules. Raises ``ValueError`` when none is found and
    ``required``, naming the remedy.
    """
    names = {id(m): n for n, m in model.named_modules()}
    if isinstance(blocks, str):
        raise ValueError(
            f"invalid blocks={blocks!r}: give a list of module names, e.g. blocks=[{blocks!r}]"
        )
    if isinstance(blocks, nn.Module):
        raise ValueError(
            f"invalid blocks: one {type(blocks).__name__}; give a list of modules or module "
            "names, e.g. blocks=[model.layer1[0], ...]"
        )
    if blocks is not None and len(blocks) == 0:
        raise ValueError(
            "blocks=[] names no units; give the residual units' module names, or leave "
            "blocks out to find skiplab's and torchvision's units"
        )
    if blocks is not None:
        by_name = dict(model.named_modules())
        views = []
        for b in blocks:
            if isinstance(b, str):
                if b not in by_name:
                    raise ValueError(
                        f"invalid blocks entry {b!r}: no such module in {type(model).__name__}; "
                        "use names from model.named_modules()"
                    )
                views.append(UnitView(b, by_name[b]))
            elif isinstance(b, nn.Module) and id(b) in names:
                views.append(UnitView(names[id(b)], b))
            else:
                raise ValueError(
                    f"invalid blocks entry {b!r}: give module names or submodules of the model"
                )
        for v in views:
            if opaque:
                break
            if overrides_forward(v.module):
                raise ValueError(_overridden(v.module, f"invalid blocks entry {v.name!r}"))
            if unit_kind(v.module) == "torchvision-other" and not is_unit(v.module):
                raise ValueError(
                    f"invalid blocks entry {v.name!r}: this {type(v.module).__name__} has no "
                    "skip (use_res_connect is False: its input and output differ in shape or "
                    "stride), so it is not a residual unit; name only units with a skip"
                )
            if not is_unit(v.module):
                raise ValueError(
                    f"invalid blocks entry {v.name!r}: {type(v.module).__name__} has no "
                    "'branch' and 'shortcut' attributes; skiplab needs out = shortcut(x) + branch(x)"
                )
        return views

    def found(m: nn.Module) -> bool:
        if opaque and overrides_forward(m):
            return include_plain or getattr(m, "shortcut", True) is not None
        return is_unit(m, include_plain)

    views = [UnitView(n, m) for n, m in model.named_modules() if found(m)]
    for n, m in model.named_modules():
        if overrides_forward(m) and views and not opaque:
            log.warning("%s is not analysed as a unit: %s", n, _overridden(m, n).split(": ", 1)[1])
    # Units nested inside other units (not in skiplab's models) would double count.
    views = [
        v for v in views if not any(v.name.startswith(o.name + ".") for o in views if o is not v)
    ]
    if not views and required:
        custom = next((m for m in model.modules() if overrides_forward(m)), None)
        if custom is not None:
            raise ValueError(
                _overridden(custom, f"no residual units found in {type(model).__name__}")
            )
        if any(isinstance(m, ResidualUnit) for m in model.modules()):
            raise ValueError(
                f"{type(model).__name__} is a plain net: its units have no shortcut "
                "(shortcut='none'), so there are no residual units to analyse; units of "
                "other kinds can be named with blocks=[...] (skiplab analyze: --blocks NAME,NAME)"
            )
        from .sublayers import transformer_block_types

        if any(isinstance(m, transformer_block_types()) for m in model.modules()):
            raise ValueError(
                f"no residual units found in {type(model).__name__}: its transformer blocks "
                "hold two residual additions each; analyse split_sublayers(model) instead "
                "(skiplab.analysis), whose attn and mlp sublayers are units; skiplab analyze: "
                "--split-sublayers"
            )
        raise ValueError(
            f"no residual units found in {type(model).__name__}: skiplab finds its own units and "
            "torchvision's residual units (ResNet, MobileNet, EfficientNet, ConvNeXt, RegNet); "
            "name others with blocks=[...] (modules with "
            "'branch' and 'shortcut' attributes; skiplab analyze: --blocks NAME,NAME)"
        )
    return views


def check_view(view: UnitView, x: Tensor, y: Tensor) -> None:
    """Raise ``ValueError`` when a unit known only by its ``branch`` and ``shortcut``
    attributes does not compute ``post(shortcut(x) + branch(x))``: its recorded output
    ``y`` at input ``x`` differs from what ``view`` computes (a forward with a
    ``F.relu`` after the addition and no ``post`` attribute would otherwise give
    silently wrong lesions and path gradients). skiplab's and torchvision's units are
    read from their own forward and need no check. Call in eval mode."""
    if unit_kind(view.module) is not None or not isinstance(y, Tensor):
        return
    with torch.no_grad():
        x = x.detach().clone()  # a branch may write into its input
        out = view.finish(view.shortcut(x), view.branch(x), x)
        y = y.detach()
        if not isinstance(out, Tensor) or out.shape != y.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            err = f"shape {got} instead of {tuple(y.shape)}"
        else:
            rtol = max(1e-4, 50 * torch.finfo(y.dtype).eps) if y.is_floating_point() else 0.0
            diff = float((out - y).abs().max()) if y.numel() else 0.0
            if diff <= rtol * max(float(y.abs().max()) if y.numel() else 0.0, 1e-6):
                return
            err = f"values differ by up to {diff:.3g}"
    raise ValueError(
        f"unit {view.name!r} ({type(view.module).__name__}) does not compute "
        f"post(shortcut(x) + branch(x)) from its 'shortcut' and 'branch' attributes ({err}); "
        "skiplab reads a unit's paths from those parts, so give it a 'post' attribute for "
        "what its forward does after the addition (e.g. self.post = nn.ReLU()), or name "
        "other modules with blocks=[...]"
    )


def _overridden(module: nn.Module, what: str) -> str:
    base = next(t for t in _known_unit_types() if isinstance(module, t))
    return (
        f"{what}: {type(module).__name__} subclasses {base.__name__} but has a forward of its "
        "own, so skiplab cannot tell its paths from its parts; keep the base forward (log "
        "with hooks instead), or give the unit 'branch' and 'shortcut' modules computing "
        "post(shortcut(x) + branch(x)) without subclassing"
    )


def run_model(model: nn.Module, *inputs: Tensor) -> Any:
    """``model(*inputs)``, with a forward pass that fails on these inputs (a wrong shape,
    channel count or number of inputs) turned into one ``ValueError`` that names the input
    shapes and, for skiplab models, the shape they take."""
    try:
        return model(*inputs)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError, IndexError, AssertionError) as err:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, Tensor))
        expected = getattr(model, "example_input_shape", None)
        want = (
            f"; {type(model).__name__} takes inputs like [N, {', '.join(map(str, expected))}]"
            if expected
            else ""
        )
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"the forward pass failed on an input of shape {shapes} ({first}){want}"
        ) from err


def fit_problem(
    model: nn.Module,
    x: Tensor,
    num_classes: int,
    *,
    segmentation: bool = False,
    exact: bool = False,
    amp: torch.dtype | None = None,
) -> tuple[str, str] | None:
    """Why ``model`` does not fit data with inputs like ``x`` and ``num_classes`` classes,
    found by running two examples (eval mode, no gradients, nothing updated): ``("input",
    why)`` when the forward pass fails on them, ``("output", why)`` when the output is not
    class scores ``[N, C]`` (``[N, C, H, W]`` for ``segmentation``; no larger than the input
    there, as U-Net 'valid' outputs are cropped) with C at least ``num_classes`` (exactly,
    with ``exact``); ``None`` when it fits. Callers add the fix their user can make.

    Without ``exact`` an output that is not a tensor of that rank passes: an analysis with
    a loss function of its own may read it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            out = run_model(model, x[:2])
    except ValueError as err:  # run_model's message, or the model's own
        return "input", one_line(err, 300)
    finally:
        model.train(was_training)
    k = num_classes
    want = f"[N, {k}, H, W]" if segmentation else f"[N, {k}]"
    shape = list(out.shape) if isinstance(out, Tensor) else None
    if shape is None or len(shape) != (4 if segmentation else 2):
        if not exact:
            return None
        got = shape if shape is not None else type(out).__name__
        return "output", f"its output {got} is not class scores {want}"
    too_large = segmentation and (shape[2] > x.shape[-2] or shape[3] > x.shape[-1])
    if shape[1] < k or (exact and shape[1] != k) or too_large:
        return "output", f"its output {shape} does not fit {k} classes (expected {want})"
    return None
