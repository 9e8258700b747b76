"""The model registry: names are aliases for option sets; options override them.

A name is either exact (``resnet50``, ``unet``) or a family with a depth (``resnet-D``:
``resnet-20``, ``resnet-1001``, any valid D). ``list_models()`` lists the exact names
and each family at the depths the papers use.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import mlp as _mlp
from . import resnet as _resnet
from . import unet as _unet

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered name: ``name`` is exact, or a family pattern ending in ``-D``."""

    name: str
    builder: Builder
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    examples: tuple[int, ...] = ()  # depths listed for a family

    @property
    def is_family(self) -> bool:
        return self.name.endswith("-D")

    def options(self) -> dict[str, Any]:
        """Every option the name accepts with its default (alias values included)."""
        params = inspect.signature(self.builder).parameters
        out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        out.update(self.defaults)
        if self.is_family:
            out.pop("depth", None)
        return out

    def fixes_depth(self) -> bool:
        """Whether the name itself sets the depth (``resnet-20``, ``resnet50``)."""
        return self.is_family or "depth" in self.defaults


class Registry:
    """Maps names to builders; registering a name twice raises."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def register(
        self,
        name: str,
        builder: Builder,
        description: str,
        examples: Iterable[int] = (),
        **defaults: Any,
    ) -> None:
        if name in self._entries:
            raise ValueError(f"model name {name!r} is already registered")
        self._entries[name] = ModelEntry(
            name, builder, description, dict(defaults), tuple(examples)
        )

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def names(self, pattern: str | None = None) -> list[str]:
        names = []
        for e in self._entries.values():
            if e.is_family:
                names += [f"{e.name[:-2]}-{d}" for d in e.examples]
            else:
                names.append(e.name)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def lookup(self, name: str) -> tuple[ModelEntry, dict[str, Any]]:
        """The entry for ``name`` and the options the name stands for."""
        if not isinstance(name, str):
            raise ValueError(f"invalid model name {name!r}: expected a string such as 'resnet-20'")
        if name in self._entries:
            e = self._entries[name]
            if e.is_family:
                depths = ", ".join(f"{name[:-2]}-{d}" for d in e.examples[:4])
                raise ValueError(
                    f"invalid model name {name!r}: it names a family, D is the depth; give one, "
                    f"e.g. {depths}"
                )
            return e, dict(e.defaults)
        m = re.fullmatch(r"(.+)-(\d+)", name)
        if m and f"{m.group(1)}-D" in self._entries:
            e = self._entries[f"{m.group(1)}-D"]
            return e, {**e.defaults, "depth": int(m.group(2))}
        candidates = self.names() + [e.name for e in self._entries.values() if e.is_family]
        close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown model {name!r}: {hint}`skiplab models` lists every name")

    def create(self, name: str, **options: Any) -> nn.Module:
        entry, kwargs = self.lookup(name)
        allowed = inspect.signature(entry.builder).parameters
        for key in options:
            if key == "depth" and entry.fixes_depth():
                fix = (
                    f"name it {entry.name[:-2]}-{options[key]} instead"
                    if entry.is_family
                    else "use the name of the depth you want (`skiplab models` lists them)"
                )
                raise ValueError(
                    f"invalid option depth={options[key]!r} for model {name!r}: the name sets "
                    f"the depth; {fix}"
                )
            if key not in allowed:
                names = [k for k in allowed if not (k == "depth" and entry.fixes_depth())]
                close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                raise ValueError(
                    f"unknown option {key!r} for model {name!r}{hint}; allowed: " + ", ".join(names)
                )
        kwargs.update(options)
        try:
            return entry.builder(**kwargs)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None


CIFAR_DEPTHS = (20, 32, 44, 56, 110, 164, 1001, 1202)
PLAIN_DEPTHS = (20, 32, 44, 56, 110)
MLP_DEPTHS = (4, 8, 16, 32, 64)


def default_registry() -> Registry:
    """The built-in models (a fresh registry each call: no global state to mutate)."""
    r = Registry()
    r.register("plain-D", _resnet.cifar_resnet, "CIFAR plain net, no shortcuts (He et al. 2015)",
               PLAIN_DEPTHS, shortcut="none")  # fmt: skip
    r.register("resnet-D", _resnet.cifar_resnet,
               "CIFAR ResNet, original post-activation unit (He et al. 2015)", CIFAR_DEPTHS)  # fmt: skip
    r.register("preact-resnet-D", _resnet.cifar_resnet,
               "CIFAR ResNet, full pre-activation unit (He et al. 2016)", CIFAR_DEPTHS,
               placement="full-preact")  # fmt: skip
    for d in (18, 34, 50, 101, 152):
        r.register(f"resnet{d}", _resnet.imagenet_resnet,
                   f"ImageNet ResNet-{d} (torchvision v1.5 layout)", depth=d)  # fmt: skip
        r.register(f"preact-resnet{d}", _resnet.imagenet_resnet,
                   f"ImageNet pre-activation ResNet-{d} (He et al. 2016)", depth=d,
                   placement="full-preact")  # fmt: skip
    for d in (18, 34):
        r.register(f"plain{d}", _resnet.imagenet_resnet, f"ImageNet plain-{d} (He et al. 2015)",
                   depth=d, shortcut="none")  # fmt: skip
    r.register("unet", _unet.unet, "U-Net (Ronneberger et al. 2015), long skips")
    r.register("mlp-D", _mlp.mlp, "fully connected plain net", MLP_DEPTHS, shortcut="none")
    r.register("resmlp-D", _mlp.mlp, "fully connected ResNet, original unit", MLP_DEPTHS)
    r.register("preact-resmlp-D", _mlp.mlp, "fully connected ResNet, full pre-activation unit",
               MLP_DEPTHS, placement="full-preact")  # fmt: skip
    return r


_REGISTRY = default_registry()  # built once at import; read-only in library code


def register_model(
    name: str,
    builder: Builder,
    description: str = "",
    examples: Iterable[int] = (),
    **defaults: Any,
) -> None:
    """Add a name to the built-in registry (raises if the name is taken)."""
    _REGISTRY.register(name, builder, description, examples, **defaults)


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a model by name; ``options`` override the name's own (see ``skiplab models``).

    >>> create_model("preact-resnet-110", shortcut="projection")  # doctest: +SKIP
    """
    return _REGISTRY.create(name, **options)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names (families at the papers' depths), optionally filtered by a glob."""
    return _REGISTRY.names(pattern)


def model_entries() -> list[ModelEntry]:
    return _REGISTRY.entries()


def model_options(name: str) -> dict[str, Any]:
    """The options a name accepts, with the defaults the name implies."""
    family = next((e for e in _REGISTRY.entries() if e.is_family and e.name == name), None)
    if family is not None:  # ``resnet-D``: the family's options, the depth left open
        return family.options()
    entry, implied = _REGISTRY.lookup(name)
    opts = entry.options()
    opts.update({k: v for k, v in implied.items() if k != "depth" or not entry.is_family})
    return opts


def data_options(name: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """``in_channels``/``num_classes`` that fit a data set: MLPs take flattened inputs, so
    their ``in_channels`` is the number of input features."""
    entry, _ = _REGISTRY.lookup(name)
    flat = entry.builder is _mlp.mlp
    in_channels = 1
    for s in input_shape if flat else input_shape[:1]:
        in_channels *= int(s)
    return {"in_channels": in_channels, "num_classes": int(num_classes)}
