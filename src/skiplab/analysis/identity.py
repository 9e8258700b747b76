"""The identity task: do skip connections make f(x) = x (or f(x) = Ax) easy to learn?

He et al. 2015 (arXiv 1512.03385, Sec. 3.1) motivate residual learning by the identity:
"if identity mappings are optimal, it is easier to push the residual to zero than to fit
an identity mapping by a stack of nonlinear layers". Yet in the original unit every
addition feeds a ReLU (He et al. 2016, arXiv 1603.05027, Sec. 3-4), so no path from input
to output is free of nonlinearities. This analysis measures what happens: each
architecture is trained to output its input (``task="identity"``) or a fixed random
linear map (``task="linear"``) as depth grows.

Design, and why:

- Inputs are SIGNED: x ~ N(0, I) in ``dim`` dimensions. On non-negative inputs a ReLU is
  itself the identity and the experiment would flatter every net.
- Every net has a linear stem and a linear head, so every net can represent the map in
  principle: a ReLU layer of width >= 2*dim carries a signed vector as
  [relu(x), relu(-x)] and the head recombines it. ``hidden`` defaults to 4*dim so that
  each architecture has room to do so; with ``hidden < 2*dim`` the nets whose every
  path crosses a ReLU cannot represent the map exactly. What is measured is how fast and
  how well it is *learned*, not whether it is representable.
- The linear map A is a seeded random orthogonal matrix (QR of a Gaussian matrix, signs
  fixed), so ``||Ax|| = ||x||``: both tasks have the same target scale and the loss of
  the zero predictor is 1.0 on both. The two tasks differ only in whether the target is
  the identity.
- Online regression: each step draws a fresh minibatch (``batch_size``), so the loss on
  it, taken before the update, is an unbiased estimate of the expected loss (nothing can
  be memorised). The loss is the MSE per output coordinate. Adam (``lr``).
- Curves are logged every ``log_every`` steps as the mean training loss over that
  window; ``steps_to_threshold`` is the first logged step whose window mean is at or
  below ``threshold`` (None if never). ``final_loss`` is the MSE of the trained net in
  eval mode (BN running statistics) on a held-out set of ``eval_points`` fresh inputs.
- Default architectures: plain MLP, post-activation residual MLP (He et al. 2015, ReLU
  after the addition), pre-activation residual MLP (He et al. 2016) and the same
  pre-activation MLP with ``init="zero-last-norm"`` (Goyal et al. 2017; its branch ends
  on a linear layer, which is zeroed), which starts every unit as exactly its shortcut. The zero-init
  variant changes only the initialisation of the pre-activation net, so the two differ
  in one thing.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.layers import check_choice, check_positive_float, check_positive_int, invalid
from .result import Result, new_axes
from .shattered import (
    ModelSpec,
    _check_depths,
    _spec_label,
    build_seeded,
    check_builds,
    model_specs,
)

log = logging.getLogger(__name__)

TASKS = ("identity", "linear")


def default_identity_models() -> dict[str, ModelSpec]:
    """The four architectures compared by default (a fresh dict on every call)."""
    return {
        "plain": "mlp",
        "resnet (post-act)": "resmlp",
        "resnet (pre-act)": "preact-resmlp",
        "resnet (pre-act, zero-init)": ("preact-resmlp", {"init": "zero-last-norm"}),
    }


def random_orthogonal(dim: int, seed: int) -> Tensor:
    """A random orthogonal ``[dim, dim]`` matrix (Haar: QR of a Gaussian, signs fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.float()


@dataclass
class IdentityRun:
    """One training run: an architecture at one depth on one task with one seed."""

    arch: str
    depth: int
    task: str
    seed: int
    curve: list[float]  # window-mean training loss at each of IdentityTask.log_steps
    steps_to_threshold: int | None
    final_loss: float


@dataclass
class IdentityStat:
    """Mean ± std over seeds for one (arch, depth, task)."""

    arch: str
    depth: int
    task: str
    final_loss_mean: float
    final_loss_std: float
    steps_mean: float | None  # over the seeds that reached the threshold
    steps_std: float | None
    reached: int  # how many seeds reached the threshold
    seeds: int


@dataclass(repr=False)
class IdentityTask(Result):
    """Loss curves, steps to threshold and final loss per (arch, depth, task, seed)."""

    archs: list[str]
    depths: list[int]
    tasks: list[str]
    seeds: list[int]
    log_steps: list[int]
    threshold: float
    runs: list[IdentityRun]
    stats: list[IdentityStat]
    config: dict[str, Any] = field(default_factory=dict)

    def stat(self, arch: str, depth: int, task: str = "identity") -> IdentityStat:
        for s in self.stats:
            if (s.arch, s.depth, s.task) == (arch, depth, task):
                return s
        raise KeyError(
            f"no result for arch={arch!r}, depth={depth}, task={task!r}; measured: archs "
            f"{self.archs}, depths {self.depths}, tasks {self.tasks}"
        )

    def __repr__(self) -> str:
        deepest = max(self.depths)
        parts = ", ".join(
            f"{a}={self.stat(a, deepest, self.tasks[0]).final_loss_mean:.3g}" for a in self.archs
        )
        return (
            f"IdentityTask(tasks={self.tasks}, depths={self.depths}, seeds={len(self.seeds)}, "
            f"final {self.tasks[0]} loss at depth {deepest}: {parts})"
        )

    def summary(self) -> str:
        lines = [
            f"identity task: MSE per coordinate (zero predictor = 1.0), threshold "
            f"{self.threshold:g}, {self.log_steps[-1]} steps, {len(self.seeds)} seed(s)",
            f"  {'task':<9} {'arch':<28} {'depth':>5} {'final loss':>20} {'steps to thr.':>18}",
        ]
        for s in self.stats:
            steps = (
                "never"
                if s.steps_mean is None
                else f"{s.steps_mean:.0f} ± {s.steps_std:.0f} ({s.reached}/{s.seeds})"
            )
            lines.append(
                f"  {s.task:<9} {s.arch:<28} {s.depth:>5} "
                f"{s.final_loss_mean:>10.3g} ± {s.final_loss_std:<8.2g} {steps:>18}"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None, metric: str = "final_loss") -> Any:
        """Final loss (log scale, ``metric="final_loss"``) or steps to threshold
        (``"steps"``) against depth, one line per architecture (solid: identity,
        dashed: linear), error bars: std over seeds."""
        check_choice("metric", metric, ("final_loss", "steps"))
        ax = new_axes(ax)
        for i, arch in enumerate(self.archs):
            for task in self.tasks:
                rows = [self.stat(arch, d, task) for d in self.depths]
                if metric == "final_loss":
                    y = [r.final_loss_mean for r in rows]
                    err = [r.final_loss_std for r in rows]
                else:
                    y = [math.nan if r.steps_mean is None else r.steps_mean for r in rows]
                    err = [0.0 if r.steps_std is None else r.steps_std for r in rows]
                ax.errorbar(
                    self.depths,
                    y,
                    yerr=err,
                    marker="o",
                    capsize=3,
                    color=f"C{i}",
                    linestyle="-" if task == "identity" else "--",
                    label=f"{arch} ({task})" if len(self.tasks) > 1 else arch,
                )
        ax.set_xlabel("depth (weight layers)")
        if metric == "final_loss":
            ax.set_yscale("log")
            ax.set_ylabel("final MSE (zero predictor = 1)")
        else:
            ax.set_ylabel(f"steps to MSE <= {self.threshold:g}")
        ax.set_title("learning the identity on signed inputs")
        ax.legend(fontsize=7)
        return ax


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        return math.nan, math.nan
    return float(a.mean()), float(a.std())


def check_identity_args(
    *,
    models: Any,
    depths: Any,
    dim: Any,
    tasks: Any,
    hidden: Any,
    steps: Any,
    lr: Any,
    batch_size: Any,
    threshold: Any,
    log_every: Any,
    eval_points: Any,
    seeds: Any,
) -> tuple[dict[str, ModelSpec], list[int]]:
    """Raise ``ValueError`` for a bad argument of ``identity_task``, building each model at
    each depth (a bad name or depth fails before any training): it starts with this, and a
    study spec checks its options with it when it loads. Returns the models by label and
    the depths, read once (an iterator of them is used up here)."""
    specs = model_specs(default_identity_models() if models is None else models)
    depths = _check_depths(depths)
    if not isinstance(tasks, str | Sequence) or not tasks:
        raise invalid("tasks", tasks, TASKS)
    for t in [tasks] if isinstance(tasks, str) else tasks:
        check_choice("tasks", t, TASKS)
    dim = check_positive_int("dim", dim)
    hidden = 4 * dim if hidden is None else check_positive_int("hidden", hidden)
    check_positive_int("steps", steps)
    check_positive_float("lr", lr)
    check_positive_int("batch_size", batch_size)
    check_positive_float("threshold", threshold)
    check_positive_int("log_every", log_every)
    check_positive_int("eval_points", eval_points)
    if (
        isinstance(seeds, str)
        or not isinstance(seeds, Sequence)
        or not seeds
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds)
    ):
        raise invalid("seeds", seeds, "expected a non-empty list of integers")
    check_builds(specs, depths, in_channels=dim, num_classes=dim, hidden=hidden)
    return specs, depths


def identity_task(
    models: Sequence[ModelSpec] | Mapping[str, ModelSpec] | None = None,
    depths: Sequence[int] = (4, 10, 34),
    *,
    dim: int = 16,
    tasks: str | Sequence[str] = ("identity", "linear"),
    hidden: int | None = None,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 128,
    threshold: float = 0.05,
    log_every: int = 10,
    eval_points: int = 2048,
    seeds: Sequence[int] = (0,),
    device: str | torch.device = "cpu",
) -> IdentityTask:
    """Train each architecture to output f(x) = x (and f(x) = Ax, A random orthogonal) on
    signed inputs x ~ N(0, I_dim), for each depth, task and seed (see the module docstring
    for the design).

    Args:
        models: registry family names (``"mlp"``, ``"resmlp"``, ``"preact-resmlp"``; built
            as ``name-{depth}`` with ``in_channels=num_classes=dim, hidden=hidden``),
            ``(name, options)`` pairs, callables ``depth -> nn.Module`` (taking ``dim``
            features in and out), or a mapping ``{label: spec}``. Default:
            ``default_identity_models()``.
        depths: weight-layer counts (2n+2 for the MLPs; the registry rejects others).
        tasks: ``"identity"``, ``"linear"`` or both.
        hidden: hidden width of registry MLPs (default ``4 * dim``).
        steps, lr, batch_size: Adam on fresh minibatches each step.
        threshold: MSE per coordinate counted as "learned" (the zero predictor scores 1).
        seeds: each seed sets the init, the data and (for ``"linear"``) the map A.

    Raises:
        ValueError: unknown task, bad numbers, or (from the registry) an unknown model
            name or invalid depth, before any training.
    """
    # bad names / depths fail before any training
    specs, depths = check_identity_args(
        models=models, depths=depths, dim=dim, tasks=tasks, hidden=hidden, steps=steps, lr=lr,
        batch_size=batch_size, threshold=threshold, log_every=log_every,
        eval_points=eval_points, seeds=seeds,
    )  # fmt: skip
    task_list = [tasks] if isinstance(tasks, str) else list(tasks)
    hidden = 4 * dim if hidden is None else hidden
    lr = float(lr)
    threshold = float(threshold)
    seed_list = [int(s) for s in seeds]
    defaults = {"in_channels": dim, "num_classes": dim, "hidden": hidden}

    log_steps = list(range(log_every, steps + 1, log_every))
    if not log_steps or log_steps[-1] != steps:
        log_steps.append(steps)
    runs: list[IdentityRun] = []
    for task in task_list:
        for seed in seed_list:
            a = torch.eye(dim) if task == "identity" else random_orthogonal(dim, 10_000 + seed)
            a = a.to(device)
            for label, spec in specs.items():
                for depth in depths:
                    runs.append(
                        _train_one(
                            label,
                            spec,
                            depth,
                            task,
                            seed,
                            a,
                            defaults,
                            steps,
                            lr,
                            batch_size,
                            threshold,
                            log_steps,
                            eval_points,
                            device,
                        )  # fmt: skip
                    )
                    log.info(
                        "identity %s %s depth %d seed %d: final %.3g",
                        task, label, depth, seed, runs[-1].final_loss,
                    )  # fmt: skip

    stats = []
    for task in task_list:
        for label in specs:
            for depth in depths:
                rs = [r for r in runs if (r.arch, r.depth, r.task) == (label, depth, task)]
                fm, fs = _mean_std([r.final_loss for r in rs])
                reached = [r.steps_to_threshold for r in rs if r.steps_to_threshold is not None]
                sm, ss = _mean_std(reached) if reached else (None, None)
                stats.append(
                    IdentityStat(label, depth, task, fm, fs, sm, ss, len(reached), len(rs))
                )
    return IdentityTask(
        archs=list(specs),
        depths=depths,
        tasks=task_list,
        seeds=seed_list,
        log_steps=log_steps,
        threshold=threshold,
        runs=runs,
        stats=stats,
        config={
            "dim": dim,
            "hidden": hidden,
            "steps": steps,
            "lr": lr,
            "batch_size": batch_size,
            "log_every": log_every,
            "eval_points": eval_points,
            "optimizer": "adam",
            "inputs": "N(0, I) fresh each step",
            "linear_map": "random orthogonal, seed 10000 + seed",
            "models": {k: _spec_label(v) for k, v in specs.items()},
        },
    )


def _train_one(
    label: str,
    spec: ModelSpec,
    depth: int,
    task: str,
    seed: int,
    a: Tensor,
    defaults: dict[str, Any],
    steps: int,
    lr: float,
    batch_size: int,
    threshold: float,
    log_steps: list[int],
    eval_points: int,
    device: str | torch.device,
) -> IdentityRun:
    dim = a.shape[0]
    model = build_seeded(spec, depth, seed, device, **defaults)
    data = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    curve: list[float] = []
    window: list[float] = []
    reached: int | None = None
    for step in range(1, steps + 1):
        x = torch.randn(batch_size, dim, generator=data).to(device)
        loss = F.mse_loss(model(x), x @ a.T)  # y = A x
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if step in log_steps:
            mean = float(np.mean(window)) if window else math.nan
            window = []
            curve.append(mean if math.isfinite(mean) else math.inf)
            if reached is None and mean <= threshold:
                reached = step
    model.eval()
    eval_gen = torch.Generator().manual_seed(1_000_000 + seed)
    x = torch.randn(eval_points, dim, generator=eval_gen).to(device)
    with torch.no_grad():
        final = float(F.mse_loss(model(x), x @ a.T))
    return IdentityRun(
        arch=label,
        depth=depth,
        task=task,
        seed=seed,
        curve=curve,
        steps_to_threshold=reached,
        final_loss=final if math.isfinite(final) else math.inf,
    )
