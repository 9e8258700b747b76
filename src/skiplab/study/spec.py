"""Study specs: a YAML file of training groups (models x options x data x seeds, a recipe,
the analyses to run on each freshly initialised and trained model) and standalone
experiments, validated on load with messages that name the field's path.

    name: why-skip
    seeds: [0, 1]
    recipe: {preset: quick, epochs: 8}
    groups:
      - name: degradation
        data: digits
        models: [plain-20, resnet-20, {name: resnet-20, options: {shortcut: projection}}]
        grid: {placement: [original, full-preact]}     # optional: options x models
        analyses: {init: [gradflow], trained: [gradflow, pathgrad, lesion]}
    experiments:
      - {kind: paths, models: [resnet-20, preact-resnet-20], input: [3, 32, 32]}
      - {kind: identity, options: {depths: [4, 10]}}
    quick: {seeds: [0], recipe: {epochs: 2}}            # applied by --quick
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..io import one_line

RUN_ANALYSES = ("paths", "gradflow", "pathgrad", "lesion", "landscape", "nlc")
EXPERIMENTS = ("paths", "identity", "shattered")
TOP_FIELDS = (
    "name",
    "description",
    "reproduces",
    "seeds",
    "recipe",
    "groups",
    "experiments",
    "quick",
    "report",
)
GROUP_FIELDS = ("name", "description", "data", "data_options", "models", "grid", "recipe", "seeds",
                "analyses", "analysis_options", "subset")  # fmt: skip
EXPERIMENT_FIELDS = ("name", "kind", "models", "input", "options")
PUBLISHED_FIELDS = ("label", "metric", "value", "source")
# More runs than this is a typo or a job for several studies (each run is validated on load).
MAX_RUNS = 2000


class SpecError(ValueError):
    """A bad study spec: the message names the field's path and what is allowed."""


def _fail(path: str, message: str) -> None:
    raise SpecError(f"{path}: {message}" if path else message)  # path '': the spec itself


def _check_keys(path: str, mapping: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        _fail(
            path,
            f"expected a mapping with fields {', '.join(allowed)}, got {type(mapping).__name__}",
        )
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(
                f"{path}.{key}" if path else str(key),
                f"unknown field{hint}; allowed: {', '.join(allowed)}",
            )
    return mapping


@dataclass(frozen=True)
class ModelSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def display(self) -> str:
        if self.label:
            return self.label
        if not self.options:
            return self.name
        return f"{self.name} " + " ".join(f"{k}={_short(v)}" for k, v in self.options.items())


def _short(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study, with the analyses to run on it."""

    group: str
    model: ModelSpec
    data: str
    data_options: dict[str, Any]
    seed: int
    recipe: dict[str, Any]
    analyses_init: tuple[str, ...]
    analyses_trained: tuple[str, ...]
    analysis_options: dict[str, Any]
    subset: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", self.model.display())
        return f"{self.group}/{slug}/{self.data}/s{self.seed}"


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    kind: str
    models: tuple[ModelSpec, ...]
    input: tuple[int, ...] | None
    options: dict[str, Any]

    @property
    def exp_id(self) -> str:
        return f"experiment/{self.name}"


@dataclass
class StudySpec:
    name: str
    description: str
    reproduces: str
    seeds: list[int]
    recipe: dict[str, Any]
    groups: list[dict[str, Any]]
    experiments: list[dict[str, Any]]
    report: dict[str, Any]
    raw: dict[str, Any]
    source: str = ""

    def runs(self) -> list[RunSpec]:
        out: list[RunSpec] = []
        for g in self.groups:
            combos = _grid_points(g.get("grid") or {})
            recipe = {**self.recipe, **(g.get("recipe") or {})}
            analyses = g.get("analyses") or {}
            for seed in g.get("seeds") or self.seeds:
                for m in g["models"]:
                    for combo in combos:
                        model = _at(m, combo)
                        for data in g["data"]:
                            out.append(RunSpec(
                                group=g["name"], model=model, data=data,
                                data_options=dict(g.get("data_options") or {}), seed=int(seed), recipe=recipe,
                                analyses_init=tuple(analyses.get("init") or ()),
                                analyses_trained=tuple(analyses.get("trained") or ()),
                                analysis_options=dict(g.get("analysis_options") or {}),
                                subset=g.get("subset"),
                            ))  # fmt: skip
        return out

    def experiment_specs(self) -> list[ExperimentSpec]:
        return [
            ExperimentSpec(
                e["name"],
                e["kind"],
                tuple(e.get("models") or ()),
                tuple(e["input"]) if e.get("input") else None,
                dict(e.get("options") or {}),
            )  # fmt: skip
            for e in self.experiments
        ]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a group's grid values (one empty point without a grid)."""
    points = [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())]
    return points or [{}]


def _at(m: ModelSpec, point: dict[str, Any]) -> ModelSpec:
    """Model ``m`` at one grid point: a label names the model only off the grid."""
    return ModelSpec(m.name, {**m.options, **point}, "" if point else m.label)


def _models(path: str, value: Any) -> list[ModelSpec]:

    if not isinstance(value, list) or not value:
        _fail(path, "expected a non-empty list of model names or {name, options, label} mappings")
    out = []
    for i, m in enumerate(value):
        p = f"{path}[{i}]"
        if isinstance(m, str):
            spec = ModelSpec(m)
        else:
            _check_keys(p, m, ("name", "options", "label"))
            if "name" not in m:
                _fail(p, "missing field 'name'")
            opts = m.get("options") or {}
            if not isinstance(opts, dict):
                _fail(f"{p}.options", "expected a mapping of model options")
            spec = ModelSpec(str(m["name"]), dict(opts), str(m.get("label") or ""))
        out.append(spec)
    return out


def _validate_model(path: str, spec: ModelSpec, extra: dict[str, Any]) -> None:
    """Build the model once on the meta device, so a bad name or option fails at load time."""
    import torch

    from ..models import create_model

    try:
        with torch.device("meta"):
            create_model(spec.name, **{**spec.options, **extra})
    except ValueError as err:
        _fail(path, str(err))


def _int_list(path: str, value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        _fail(path, "expected a non-empty list of integers, e.g. [0, 1]")
    return list(value)


def _recipe_mapping(path: str, value: Any) -> dict[str, Any]:
    """A recipe as a mapping of fields: none is ``{}``, a string names a preset."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"preset": value}
    if not isinstance(value, dict):
        _fail(path, "expected a preset name or a mapping of recipe fields (with optional 'preset')")
    return value


def _recipe(path: str, value: Any) -> dict[str, Any]:
    from ..train.recipe import PRESETS, get_recipe

    value = _recipe_mapping(path, value)
    if not value:
        return {}
    try:
        fields = {k: v for k, v in value.items() if k != "preset"}
        get_recipe(value.get("preset", "quick"), **fields)
    except ValueError as err:
        known = value.get("preset", "quick") in PRESETS  # else the error lists them already
        _fail(path, f"{err}; presets: {', '.join(PRESETS)}" if known else str(err))
    return dict(value)


def _data_options(path: str, value: Any, datasets: list[str]) -> None:
    """Option names are checked when the spec loads, not when each run starts."""
    from ..data.datasets import get_dataset_entry

    if value is None:
        return
    if not isinstance(value, dict):
        _fail(path, "expected a mapping of data set options, e.g. {n_train: 20000}")
    for d in datasets:
        allowed = get_dataset_entry(d).options()
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(allowed) if allowed else "none"
                _fail(
                    f"{path}.{key}", f"unknown option for data set {d!r}{hint}; allowed: {listed}"
                )


def _quick(raw: dict[str, Any], apply: bool) -> None:
    """Check the spec's ``quick`` section (always: a typo there must not wait for the first
    ``--quick``) and, with ``apply``, patch ``raw`` with it in place."""
    q = _check_keys("quick", raw["quick"], ("seeds", "recipe", "groups", "experiments"))
    if "recipe" in q:
        base = raw.get("recipe") or {}
        base = {"preset": base} if isinstance(base, str) else base
        patch = {"preset": q["recipe"]} if isinstance(q["recipe"], str) else q["recipe"]
        if not isinstance(patch, dict):
            _fail("quick.recipe", "expected a preset name or a mapping of recipe fields")
        if apply and isinstance(base, dict):  # a bad base recipe is reported as 'recipe'
            raw["recipe"] = {**base, **patch}
    if "seeds" in q:
        _int_list("quick.seeds", q["seeds"])
        if apply:
            raw["seeds"] = q["seeds"]
    for section in ("groups", "experiments"):
        patches = q.get(section) or {}
        if not isinstance(patches, dict):
            _fail(
                f"quick.{section}", f"expected a mapping of {section[:-1]} name -> fields to change"
            )
        items = raw.get(section) if isinstance(raw.get(section), list) else []
        items = [item for item in items if isinstance(item, dict)]
        # an experiment's name defaults to its kind
        names = [i.get("name", i.get("kind") if section == "experiments" else None) for i in items]
        for name, patch in patches.items():
            if not isinstance(patch, dict):
                _fail(
                    f"quick.{section}.{name}",
                    f"expected a mapping of the {section[:-1]}'s fields to change",
                )
            if name not in names:
                known = ", ".join(str(n) for n in names if n is not None) or "none"
                _fail(
                    f"quick.{section}.{name}",
                    f"no {section[:-1]} of that name; the spec has: {known}",
                )
            if apply:
                for item, n in zip(items, names, strict=True):
                    if n == name:
                        item.update(patch)


def parse_spec(raw: Any, source: str = "<spec>", quick: bool = False) -> StudySpec:
    """Validate a spec mapping (from YAML) and return a ``StudySpec``; raises ``SpecError``."""
    from ..data import list_datasets

    raw = _check_keys("", raw, TOP_FIELDS)
    raw = copy.deepcopy(raw)
    if raw.get("quick") is not None:
        _quick(raw, apply=quick)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        got = "missing" if name is None else "empty" if name == "" else f"not text ({name!r})"
        _fail("name", f"{got}; give the study a name (quote it if it looks like a number)")
    seeds = _int_list("seeds", raw.get("seeds", [0]))
    recipe = _recipe("recipe", raw.get("recipe"))
    groups = raw.get("groups") or []
    experiments = raw.get("experiments") or []
    if not isinstance(groups, list) or not isinstance(experiments, list):
        _fail("groups" if not isinstance(groups, list) else "experiments", "expected a list")
    if not groups and not experiments:
        _fail("groups", "a study needs at least one group or experiment")
    datasets = list_datasets()
    seen: set[str] = set()
    fits: dict[str, Any] = {}  # data sets loaded and models checked against them
    n_runs = 0
    for i, g in enumerate(groups):
        p = f"groups[{i}]"
        _check_keys(p, g, GROUP_FIELDS)
        if not isinstance(g.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", g["name"]):
            _fail(f"{p}.name", "missing or invalid; use letters, digits, '-', '_', '.'")
        if g["name"] in seen:
            _fail(f"{p}.name", f"duplicate group name {g['name']!r}")
        seen.add(g["name"])
        data = g.get("data", "digits")
        data = [data] if isinstance(data, str) else data
        if not isinstance(data, list) or not data:
            _fail(f"{p}.data", "expected a data set name or a list of them")
        for j, d in enumerate(data):
            if d not in datasets:
                close = difflib.get_close_matches(str(d), datasets, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                _fail(
                    f"{p}.data[{j}]" if len(data) > 1 else f"{p}.data",
                    f"unknown data set {d!r}{hint}; allowed: {', '.join(datasets)}",
                )
        g["data"] = data
        _data_options(f"{p}.data_options", g.get("data_options"), data)
        g["models"] = _models(f"{p}.models", g.get("models"))
        grid = g.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            _fail(f"{p}.grid", "expected a mapping of option -> non-empty list of values")
        if "seeds" in g:
            _int_list(f"{p}.seeds", g["seeds"])
        # counted before anything is expanded: a typo'd grid can mean millions of runs
        n_runs += (
            len(g.get("seeds") or seeds)
            * len(g["models"])
            * len(data)
            * math.prod(map(len, grid.values()))
        )
        if n_runs > MAX_RUNS:
            _fail(f"{p}.grid" if grid else p,
                  f"the study expands to {n_runs:,} runs so far (seeds x models x grid x data sets), "
                  f"more than the {MAX_RUNS:,} a study may hold; shrink the grid or split the study")  # fmt: skip
        combos = _grid_points(grid)
        for j, m in enumerate(g["models"]):
            for combo in combos:
                _validate_model(f"{p}.models[{j}]", _at(m, combo), {})
        _check_fits(p, g, combos, fits)
        if "recipe" in g:
            own = _recipe_mapping(f"{p}.recipe", g["recipe"] or None)
            g["recipe"] = _recipe(
                f"{p}.recipe",
                {**({"preset": recipe["preset"]} if "preset" in recipe else {}), **own},
            )
        analyses = _check_keys(f"{p}.analyses", g.get("analyses") or {}, ("init", "trained"))
        for phase, kinds in analyses.items():
            if not isinstance(kinds, list):
                _fail(
                    f"{p}.analyses.{phase}",
                    f"expected a list of analyses from {', '.join(RUN_ANALYSES)}",
                )
            for j, k in enumerate(kinds):
                if k not in RUN_ANALYSES:
                    close = difflib.get_close_matches(str(k), RUN_ANALYSES, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    _fail(
                        f"{p}.analyses.{phase}[{j}]",
                        f"unknown analysis {k!r}{hint}; allowed: {', '.join(RUN_ANALYSES)}",
                    )
                if k in kinds[:j]:
                    _fail(f"{p}.analyses.{phase}[{j}]", f"{k!r} is listed twice; list it once")
        if "analysis_options" in g:
            # what run_analysis matches 'models' against: a run's label or its first word
            shown = [_at(m, c).display() for m in g["models"] for c in combos]
            labels = {*shown, *(x.split(" ")[0] for x in shown)}
            _analysis_options(f"{p}.analysis_options", g["analysis_options"], labels)
        if "subset" in g:
            for key, n in _check_keys(f"{p}.subset", g["subset"], ("n_train", "n_test")).items():
                if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                    _fail(f"{p}.subset.{key}", f"expected a positive number of examples, got {n!r}")
    for i, e in enumerate(experiments):
        p = f"experiments[{i}]"
        _check_keys(p, e, EXPERIMENT_FIELDS)
        if e.get("kind") not in EXPERIMENTS:
            _fail(
                f"{p}.kind",
                f"unknown experiment {e.get('kind')!r}; allowed: {', '.join(EXPERIMENTS)}",
            )
        e.setdefault("name", e["kind"])
        if not isinstance(e["name"], str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", e["name"]):
            # it makes the job's id (experiment/NAME): a '/' would look like a run's
            _fail(f"{p}.name", f"invalid {e['name']!r}; use letters, digits, '-', '_', '.'")
        if e["kind"] == "paths":
            e["models"] = _models(f"{p}.models", e.get("models"))
            for j, m in enumerate(e["models"]):
                _validate_model(f"{p}.models[{j}]", m, {})
            if "input" in e and (
                not isinstance(e["input"], list)
                or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in e["input"]
                )
            ):
                _fail(f"{p}.input", "expected the input shape without the batch, e.g. [3, 32, 32]")
        elif "models" in e:
            _fail(f"{p}.models", f"{e['kind']} experiments choose their models in options")
        if not isinstance(e.get("options") or {}, dict):
            _fail(f"{p}.options", "expected a mapping of the analysis' keyword arguments")
        if e.get("options"):
            from .analyses import option_names

            if e["kind"] == "paths":
                _fail(
                    f"{p}.options",
                    "paths experiments take no options; give the input shape as 'input'",
                )
            _check_keys(
                f"{p}.options", e["options"], tuple(option_names(e["kind"], experiment=True))
            )
            _option_values(f"{p}.options", e["kind"], e["options"], experiment=True)
    _report(raw.get("report"))
    spec = StudySpec(
        name=name, description=str(raw.get("description") or ""), reproduces=str(raw.get("reproduces") or ""),
        seeds=seeds, recipe=recipe, groups=groups, experiments=experiments,
        report=dict(raw.get("report") or {}), raw=raw, source=source,
    )  # fmt: skip
    check_unique(spec)
    return spec


def check_unique(spec: StudySpec) -> None:
    """Every job (run or experiment) and every model of a paths experiment must be told
    apart: two jobs with one id would share a row of study.db and a run folder. Raises
    ``SpecError``; ``run_study`` checks again (a spec may be changed in Python after
    ``parse_spec``)."""
    seen: set[str] = set()
    index = {g["name"]: i for i, g in enumerate(spec.groups)}
    for run in spec.runs():
        if run.run_id in seen:
            _fail(
                f"groups[{index[run.group]}]",
                f"run {run.run_id} appears twice (the same model, options, data set and seed); "
                "remove the duplicate, or give the models distinct labels",
            )
        seen.add(run.run_id)
    for i, e in enumerate(spec.experiment_specs()):
        if e.exp_id in seen:
            _fail(f"experiments[{i}].name", f"duplicate experiment name {e.name!r}")
        seen.add(e.exp_id)
        labels = [m.display() for m in e.models]
        dup = next((x for x in labels if labels.count(x) > 1), None)
        if dup is not None:
            _fail(
                f"experiments[{i}].models",
                f"{dup!r} appears twice; remove the duplicate, or give the models distinct labels",
            )


def _report(value: Any) -> None:
    """The ``report`` section: ``published`` numbers to put beside the measured ones."""
    if value is None:
        return
    pub = _check_keys("report", value, ("published",)).get("published") or []
    if not isinstance(pub, list):
        _fail("report.published", "expected a list of {label, metric, value, source} mappings")
    for i, p in enumerate(pub):
        _check_keys(f"report.published[{i}]", p, PUBLISHED_FIELDS)
        if not isinstance(p.get("label"), str):
            _fail(f"report.published[{i}].label", "missing; give the label of the model it is for")
        v = p.get("value")
        if not isinstance(v, int | float) or isinstance(v, bool):
            _fail(f"report.published[{i}].value", f"expected the published number, got {v!r}")


def _analysis_options(path: str, value: Any, labels: set[str]) -> None:
    """Per-analysis options: known analyses, known option names, ``models`` naming models
    of the group (a typo there would silently skip the analysis on every run)."""
    from .analyses import option_names

    for kind, opts in _check_keys(path, value, RUN_ANALYSES).items():
        if opts is None:
            continue
        if not isinstance(opts, dict):
            _fail(
                f"{path}.{kind}", f"expected a mapping of options: {', '.join(option_names(kind))}"
            )
        _check_keys(f"{path}.{kind}", opts, tuple(option_names(kind)))
        _option_values(f"{path}.{kind}", kind, opts, experiment=False)
        only = opts.get("models")
        if only is None:
            continue
        if not isinstance(only, list) or not all(isinstance(x, str) for x in only):
            _fail(f"{path}.{kind}.models", "expected a list of model labels, e.g. [resnet-20]")
        for j, x in enumerate(only):
            if x not in labels:
                close = difflib.get_close_matches(x, sorted(labels), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                _fail(
                    f"{path}.{kind}.models[{j}]",
                    f"{x!r} is not a model of this group{hint}; the group has: {', '.join(sorted(labels))}",
                )


def _option_path(path: str, options: dict[str, Any], err: ValueError) -> str:
    """``path.NAME`` when the message is about option NAME (``invalid NAME=...``, the
    one format of a bad option, perhaps after the name of a model built with it), else
    ``path``."""
    m = re.search(r"(?:^|: )invalid (\w+)\b", str(err))
    return f"{path}.{m.group(1)}" if m and m.group(1) in options else path


def _option_values(path: str, kind: str, options: dict[str, Any], *, experiment: bool) -> None:
    """Option values are checked on load, by the analysis' own check (``check_options``):
    a bad one fails here, not after the training as a 'skipped' analysis."""
    from .analyses import check_options

    try:
        check_options(kind, options, experiment=experiment)
    except ValueError as err:
        _fail(_option_path(path, options, err), str(err))


def run_model_options(model: ModelSpec, data: Any) -> dict[str, Any]:
    """The options a run builds ``model`` with on ``data`` (a ``TensorData``): the data
    set's ``in_channels``/``num_classes``, then the spec's own options."""
    from ..models.registry import data_options

    return {**data_options(model.name, data.input_shape, data.num_classes), **model.options}


def _check_fits(
    path: str, group: dict[str, Any], combos: list[dict[str, Any]], seen: dict[str, Any]
) -> None:
    """Build each model of a group for each of its embedded data sets as a run builds it,
    and run two training examples through it (``check_model_fits_data``), so that a model
    that does not fit its data fails on load. Each data set (with its options) is loaded,
    and each model built, once per spec (``seen``); the sets read from files are left to
    the run (their folder is the runner's, and reading them takes seconds)."""
    import torch

    from ..data.datasets import get_dataset_entry, load_dataset
    from ..models import create_model
    from ..train.trainer import check_model_fits_data

    options = group.get("data_options") or {}
    for d in group["data"]:
        if not get_dataset_entry(d).embedded:
            continue
        data_key = json.dumps([d, options], sort_keys=True, default=repr)
        if data_key not in seen:
            try:
                seen[data_key] = load_dataset(d, **options)
            except ValueError as err:
                _fail(_option_path(f"{path}.data_options", options, err), str(err))
        data = seen[data_key]
        for j, m in enumerate(group["models"]):
            for combo in combos:
                spec = _at(m, combo)
                key = json.dumps([spec.name, spec.options, data_key], sort_keys=True, default=repr)
                if key in seen:
                    continue
                seen[key] = True
                try:
                    with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
                        model = create_model(spec.name, **run_model_options(spec, data))
                    check_model_fits_data(model, data, None)
                except ValueError as err:
                    _fail(f"{path}.models[{j}]", str(err))


def load_spec(path: str | Path | None = None, *, quick: bool = False) -> StudySpec:
    """Load a spec from a YAML file, or a built-in study by name (``why-skip``, ...)."""
    from .builtin import builtin_path

    if path is None:
        path = builtin_path("why-skip")
    p = Path(path)
    if not p.exists():
        candidate = builtin_path(str(path), missing_ok=True)
        if candidate is None:
            from .builtin import list_builtin

            raise SpecError(
                f"study spec {path} not found; give a YAML file or a built-in study: {', '.join(list_builtin())}"
            )
        p = candidate
    if p.is_dir():
        raise SpecError(f"study spec {p} is a folder; give a YAML file or a built-in study name")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"{p}: not a UTF-8 text file ({err}); save the study spec as UTF-8"
        ) from None
    except OSError as err:
        raise SpecError(f"cannot read study spec {p}: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader, see below
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML ({_yaml_problem(err)})") from None
    if raw is None:
        raise SpecError(
            f"{p}: the file is empty; a study spec needs a name and at least one group or experiment"
        )
    if not isinstance(raw, dict):
        hint = " (TOML is not read: write the spec in YAML or JSON)" if p.suffix == ".toml" else ""
        raise SpecError(
            f"{p}: a study spec is a YAML (or JSON) mapping of fields such as name and groups, "
            f"but this file holds a {type(raw).__name__}{hint}"
        )
    try:
        return parse_spec(raw, source=str(p), quick=quick)
    except SpecError as err:
        raise SpecError(f"{p}: {err}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong, and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or not problem:
        return one_line(err)
    context = getattr(err, "context", None)
    return (
        f"line {mark.line + 1}, column {mark.column + 1}: "
        + (f"{context}: " if context else "")
        + problem
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: plain YAML
    keeps the last one, silently dropping (say) a first ``groups:`` section."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                continue  # unhashable: let PyYAML report it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"the key {key!r} is given twice; keep one", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
