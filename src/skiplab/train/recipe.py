"""Training recipes: one typed config per run, validated at the edge, saved with every run.

Presets reproduce the papers' CIFAR recipes and a quick one for the embedded data sets.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from ..data.augment import AUGMENT_KINDS, parse_augment
from ..models.layers import check_choice, check_positive_int, invalid

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """How to train. Epoch-based; the learning rate is a pure function of the step.

    ``milestones`` are fractions of training at which the step schedule multiplies the
    rate by ``gamma`` (He et al. 2015: /10 at 32k and 48k of 64k iterations = 0.5, 0.75).
    ``warmup_epochs`` trains at ``warmup_lr`` first (He et al. 2015 used 0.01 for
    ResNet-110 until training error < 80%, about 400 iterations, i.e. one epoch).
    ``augment=None`` uses the data set's standard augmentation.
    """

    name: str = "custom"
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    epochs: int = 164
    batch_size: int = 128
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.01
    label_smoothing: float = 0.0
    augment: str | None = None
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    grad_clip: float | None = None
    eval_batch_size: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("recipe.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("recipe.schedule", self.schedule, SCHEDULES)
        check_choice("recipe.precision", self.precision, PRECISIONS)
        if not isinstance(self.name, str):
            raise invalid("recipe.name", self.name, "must be a string")
        for name in ("nesterov", "channels_last", "compile"):
            v = getattr(self, name)
            if not isinstance(v, bool):  # "no" would be true
                raise invalid(f"recipe.{name}", v, "must be true or false")
        if not isinstance(self.extra, dict):
            raise invalid("recipe.extra", self.extra, "must be a mapping")
        if self.augment is not None:
            try:
                parse_augment(self.augment)
            except ValueError:
                raise invalid("recipe.augment", self.augment, AUGMENT_KINDS) from None
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_positive_int(f"recipe.{name}", getattr(self, name))
        for name in (
            "lr",
            "momentum",
            "weight_decay",
            "gamma",
            "warmup_epochs",
            "warmup_lr",
            "label_smoothing",
        ):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not math.isfinite(v)
                or v < 0
            ):
                raise invalid(f"recipe.{name}", v, "must be a non-negative number" + _yaml_hint(v))
        if self.lr <= 0:
            raise invalid("recipe.lr", self.lr, "must be positive")
        if self.gamma <= 0:
            raise invalid(
                "recipe.gamma", self.gamma, "must be positive (the step schedule's factor)"
            )
        for name in ("momentum", "label_smoothing"):
            if getattr(self, name) >= 1:
                raise invalid(f"recipe.{name}", getattr(self, name), "must be in [0, 1)")
        if self.warmup_epochs > self.epochs:
            raise invalid(
                "recipe.warmup_epochs",
                self.warmup_epochs,
                f"must be at most recipe.epochs ({self.epochs}); 0: no warm-up",
            )
        if not isinstance(self.milestones, list | tuple):
            raise invalid(
                "recipe.milestones", self.milestones, "must be a list of fractions in (0, 1)"
            )
        ms = tuple(self.milestones)
        if any(
            isinstance(m, bool) or not isinstance(m, int | float) or not 0 < m < 1 for m in ms
        ) or list(ms) != sorted(ms):
            raise invalid(
                "recipe.milestones", list(ms), "must be increasing fractions of training in (0, 1)"
            )
        object.__setattr__(self, "milestones", tuple(float(m) for m in ms))
        if self.grad_clip is not None and (
            isinstance(self.grad_clip, bool)
            or not isinstance(self.grad_clip, int | float)
            or not 0 < self.grad_clip < math.inf
        ):
            raise invalid(
                "recipe.grad_clip",
                self.grad_clip,
                "must be a positive number or null" + _yaml_hint(self.grad_clip),
            )

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based)."""
        total = self.epochs * steps_per_epoch
        if step < self.warmup_epochs * steps_per_epoch:
            return self.warmup_lr
        t = step / total
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * t))
        return self.lr * self.gamma ** sum(t >= m for m in self.milestones)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def replace(self, **changes: Any) -> Recipe:
        return from_dict({**self.to_dict(), **changes})


def _yaml_hint(value: Any) -> str:
    """YAML 1.1 reads 1e-3 (no dot) as a string: say so where a number was meant."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (a string; YAML reads 1e-3 as text: write 1.0e-3)"


def from_dict(data: dict[str, Any]) -> Recipe:
    """A recipe from a mapping (a YAML file, a checkpoint); unknown fields are an error."""
    if not isinstance(data, dict):
        raise ValueError(f"invalid recipe {data!r}: expected a mapping of recipe fields")
    names = [f.name for f in dataclasses.fields(Recipe)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=2, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(f"unknown recipe field {key!r}{hint}; allowed: {', '.join(names)}")
    data = dict(data)
    if "milestones" in data and isinstance(data["milestones"], list):
        data["milestones"] = tuple(data["milestones"])
    try:
        return Recipe(**data)
    except TypeError as err:  # pragma: no cover - guarded by the field check
        raise ValueError(f"invalid recipe: {err}") from None


# He et al. 2015, Sec. 4.2: SGD, momentum 0.9, wd 1e-4, batch 128, lr 0.1, /10 at 32k and
# 48k iterations, stop at 64k (= 164 epochs of 391 iterations on CIFAR-10).
_HE2015 = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, epochs=164,
               schedule="step", milestones=(0.5, 0.75))  # fmt: skip
# The 0.01 warm-up for the first ~400 iterations (He et al. 2015 for ResNet-110; He et al.
# 2016, Sec. 5, for the deep nets).
_WARMUP = dict(warmup_epochs=1.0, warmup_lr=0.01)

PRESETS: dict[str, dict[str, Any]] = {
    "he2015-cifar": _HE2015,
    "he2015-cifar-warmup": {**_HE2015, **_WARMUP},
    "he2016-cifar": {**_HE2015, **_WARMUP},  # Identity Mappings: the 2015 recipe with warm-up
    # The embedded data sets on a laptop: short cosine schedule.
    "quick": dict(
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=64,
        epochs=15,
        schedule="cosine",
        nesterov=True,
    ),
    # Segmentation on the embedded shapes scenes: AdamW with a short cosine schedule.
    "quick-seg": dict(
        optimizer="adamw", lr=0.01, weight_decay=1e-4, batch_size=32, epochs=12, schedule="cosine"
    ),
}


def get_recipe(name: str | Recipe, **overrides: Any) -> Recipe:
    """A preset by name (see ``PRESETS``) with field overrides."""
    if isinstance(name, Recipe):
        return name.replace(**overrides) if overrides else name
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=2, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown recipe {name!r}{hint}; allowed: {', '.join(PRESETS)}")
    return from_dict({"name": name, **PRESETS[name], **overrides})
