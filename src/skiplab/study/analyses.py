"""The analyses a study runs on each model, and its standalone experiments, behind one call.

Each returns ``(result.to_dict(), result.summary())``; an analysis that does not apply
(e.g. path gradients of a plain net, which has no residual units) is recorded as skipped
with the reason, not as a failure.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data import TensorData
from ..models.layers import check_positive_int
from .spec import ExperimentSpec

# Per-analysis defaults for study runs: small enough for a laptop, options override them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "paths": {},
    "gradflow": {"batch": 256},
    "pathgrad": {"batch": 32, "samples": 4},
    "lesion": {"draws": 5, "swaps": True},
    "landscape": {"dims": 2, "steps": 11, "span": 1.0, "images": 512},
    "nlc": {"batch": 128},
}


# Options a study draws the batch with (test images), not arguments of the analysis.
BATCH_OPTIONS: dict[str, tuple[str, ...]] = {
    "gradflow": ("batch",),
    "pathgrad": ("batch",),
    "landscape": ("images",),
    "nlc": ("batch",),
}
# Arguments the study passes itself (the model, its data, the run's seed, the device) or
# that YAML cannot hold (a loss function): not options of a study's analyses.
_PASSED = ("model", "x", "target", "data", "example_input", "seed", "loss_fn", "device")


def _functions() -> dict[str, Callable[..., Any]]:
    from .. import analysis as A

    return {
        "paths": A.path_spectrum,
        "gradflow": A.gradient_flow,
        "pathgrad": A.path_gradients,
        "lesion": A.lesion,
        "landscape": A.loss_landscape,
        "nlc": A.nonlinearity_coefficient,
        "identity": A.identity_task,
        "shattered": A.shattered_gradients,
    }


def option_names(kind: str, experiment: bool = False) -> list[str]:
    """The options a spec may give analysis ``kind``: the function's keyword arguments
    (less those the study passes itself) and, for a run analysis, ``models`` (the labels it
    runs on) and the size of the test batch it is given."""
    params = inspect.signature(_functions()[kind]).parameters
    if experiment:
        return [n for n in params if n != "device"]
    return ["models", *BATCH_OPTIONS.get(kind, ()), *(n for n in params if n not in _PASSED)]


def _checks() -> dict[str, Callable[..., object]]:
    """Each analysis' check of the arguments that need no model or data (the analysis
    itself starts with it; what a check returns is for the analysis, unused here)."""
    from ..analysis.gradflow import check_gradflow_args
    from ..analysis.identity import check_identity_args
    from ..analysis.landscape import check_landscape_args
    from ..analysis.lesion import check_lesion_args
    from ..analysis.nonlinearity import check_nlc_args
    from ..analysis.pathgrad import check_pathgrad_args
    from ..analysis.shattered import check_shattered_args

    return {
        "gradflow": check_gradflow_args,
        "pathgrad": check_pathgrad_args,
        "lesion": check_lesion_args,
        "landscape": check_landscape_args,
        "nlc": check_nlc_args,
        "identity": check_identity_args,
        "shattered": check_shattered_args,
    }


def check_options(kind: str, options: dict[str, Any], experiment: bool = False) -> None:
    """Raise ``ValueError`` for a bad option value of analysis (or experiment) ``kind``,
    with the analysis' own check of what needs no model or data, given the options over
    the study's defaults and the function's; a spec runs it on load, so a bad value fails
    before any training, not as a 'skipped' analysis after it. Option names are checked
    by the spec (``option_names``)."""
    opts = dict(options)
    if not experiment:
        opts.pop("models", None)  # checked by the spec against the group's models
        for name in BATCH_OPTIONS.get(kind, ()):
            if name in opts:
                check_positive_int(name, opts.pop(name))
    check = _checks().get(kind)
    if check is None:
        return
    params = inspect.signature(_functions()[kind]).parameters
    args = {n: p.default for n, p in params.items() if p.default is not p.empty}
    args.update({} if experiment else DEFAULTS[kind])
    args.update(opts)
    check(**{n: args[n] for n in inspect.signature(check).parameters})


def _test_batch(
    data: TensorData, n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return data.test_x[:n].to(device), data.test_y[:n].to(device)


def run_analysis(
    kind: str,
    model: nn.Module,
    data: TensorData,
    options: dict[str, Any],
    label: str,
    device: str,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """Run analysis ``kind`` on ``model`` with the study's data; returns (result, summary)."""
    from .. import analysis as A

    opts = {**DEFAULTS[kind], **(options.get(kind) or {})}
    only = opts.pop("models", None)
    if only is not None and label not in only and label.split(" ")[0] not in only:
        return {
            "skipped": f"{kind} runs only on {', '.join(only)}"
        }, f"skipped ({kind} not requested for {label})"
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        if kind == "paths":
            res = A.path_spectrum(model, data.test_x[:1].to(dev), **opts)
        elif kind == "gradflow":
            x, y = _test_batch(data, opts.pop("batch"), dev)
            res = A.gradient_flow(model, x, y, **opts)
        elif kind == "pathgrad":
            x, y = _test_batch(data, opts.pop("batch"), dev)
            res = A.path_gradients(model, x, y, seed=seed, **opts)
        elif kind == "lesion":
            res = A.lesion(model, (data.test_x.to(dev), data.test_y.to(dev)), seed=seed, **opts)
        elif kind == "landscape":
            x, y = _test_batch(data, opts.pop("images"), dev)
            res = A.loss_landscape(model, (x, y), seed=seed, **opts)
        elif kind == "nlc":
            x, _ = _test_batch(data, opts.pop("batch"), dev)
            res = A.nonlinearity_coefficient(model, x, **opts)
        else:  # pragma: no cover - the spec validates kinds
            raise ValueError(f"unknown analysis {kind!r}")
    except ValueError as err:
        return {"skipped": str(err)}, f"skipped: {err}"
    finally:
        model.train(was_training)
    return res.to_dict(), res.summary()


def run_experiment(exp: ExperimentSpec, device: str) -> tuple[dict[str, Any], str]:
    """A standalone experiment: path spectra of untrained models, the identity task, or
    shattered gradients."""
    from .. import analysis as A
    from ..models import create_model
    from ..train.trainer import resolve_device

    dev = resolve_device(device)  # the rule of a run's training: cuda without a GPU fails
    if exp.kind == "paths":
        spectra = {}
        summaries = []
        for m in exp.models:
            model = create_model(m.name, **m.options).eval()
            shape = exp.input or getattr(model, "example_input_shape", None)
            res = A.path_spectrum(model, torch.randn(1, *shape))
            spectra[m.display()] = res.to_dict()
            summaries.append(
                f"{m.display()}: min {res.min}, max {res.max} nonlinearities, linear path: {res.has_linear_path}"
            )
        return {"models": spectra}, "\n".join(summaries)
    if exp.kind == "identity":
        res = A.identity_task(**{"device": dev, **exp.options})
    elif exp.kind == "shattered":
        res = A.shattered_gradients(**{"device": dev, **exp.options})
    else:  # pragma: no cover - the spec validates kinds
        raise ValueError(f"unknown experiment {exp.kind!r}")
    return res.to_dict(), res.summary()
