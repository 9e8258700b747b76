"""The ``skiplab`` command line: parses and validates at the edge, then calls the API.

Errors in user input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from .io import one_line

app = typer.Typer(
    help="skiplab: a laboratory for skip connections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(2)


def user_errors(fn: F) -> F:
    """Turn a ``ValueError`` from the library, or an ``OSError`` from a path the user gave
    (an ``--out`` in a read-only place), into one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            fail(str(err))
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            fail(f"{where}{err.strerror or err}; check that the path exists and is writable")

    return wrapper  # type: ignore[return-value]


_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(
    r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def _scalar(text: str) -> Any:
    """One option value as YAML 1.2 reads it: ``true``/``false``, decimal numbers
    (``1e-3``, ``010`` is ten), anything else a string (``yes``, ``on``, ``none`` stay
    words, as YAML 1.1 would not keep them)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text.replace(".inf", "inf").replace(".nan", "nan").lower())
    return text


def _typed(value: Any) -> Any:
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return _scalar(value)


def parse_value(text: str) -> Any:
    """A CLI option value: a scalar (``0.5``, ``true``, ``1e-3``), a YAML flow list or
    mapping (``[concat, none]``, ``{n_train: 100}``), or a comma-separated list
    (``concat,none,add,add``)."""
    stripped = text.strip()
    if "," in text and not stripped.startswith(("[", "{")):
        return [parse_value(t) for t in text.split(",")]
    if stripped.startswith(("[", "{")):
        try:  # the structure from YAML, every scalar read as text and typed as above
            return _typed(yaml.load(stripped, Loader=yaml.BaseLoader))
        except yaml.YAMLError:
            return text
    return _scalar(stripped)


def parse_options(args: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs into model options (dashes become underscores)."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ValueError(
                f"unexpected argument {arg!r}: model options look like --placement full-preact"
            )
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ValueError(f"option --{key} needs a value, e.g. --{key} VALUE")
            value = args[i + 1]
            i += 1
        options[key.replace("-", "_")] = parse_value(value)
        i += 1
    return options


def model_options_of(ctx: typer.Context, args: list[str]) -> dict[str, Any]:
    """The model options among ``args``; an option of the command itself written with
    underscores (``--input_size``), which click leaves to the model, is named."""
    options = parse_options(args)
    own = {p.name: p for p in ctx.command.params}
    for key in options:
        if key in own and own[key].param_type_name == "option":
            raise ValueError(
                f"--{key} is not a model option; this command's option is written "
                f"{own[key].opts[0]}"
            )
    return options


def parse_data_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--data-option``) into data set options."""
    options: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"invalid --data-option {item!r}: use KEY=VALUE, e.g. n_train=20000")
        options[key.replace("-", "_")] = parse_value(value)
    return options


def check_out_folder(out: Path) -> Path:
    """Refuse an ``--out`` that is a file or lies under one, before anything runs."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"invalid --out {out}: {p} is a file; choose a folder")
            break
    return out


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(
            f"invalid --input-size {text!r}: give C,H,W (e.g. 3,32,32) or H (e.g. 64)"
        ) from None
    return shape


def _none_means() -> dict[str, str]:
    """How `skiplab models NAME` shows an option whose default is None: what picks its
    value, or the value a unit takes where the option applies."""
    from .models.blocks import DEFAULT_GATE_BIAS, DEFAULT_SHORTCUT_DROPOUT, DEFAULT_SHORTCUT_SCALE

    return {
        "block": "(by depth)",
        "shortcut": "(by block)",
        "shortcut_scale": f"None ({DEFAULT_SHORTCUT_SCALE:g} with shortcut='scaling')",
        "shortcut_dropout": f"None ({DEFAULT_SHORTCUT_DROPOUT:g} with shortcut='dropout')",
        "gate_bias": f"None ({DEFAULT_GATE_BIAS:g} with a gating shortcut)",
    }


@app.command("models")
@user_errors
def models_cmd(
    name: str = typer.Argument(None, help="show the options of one model"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List model names, or one model's options and defaults."""
    from .models import model_entries, model_options

    console = Console()
    if name is not None:
        opts = model_options(name)
        if as_json:
            print(json.dumps({k: v if not callable(v) else str(v) for k, v in opts.items()}))
            return
        table = Table(title=f"{name}: options (defaults)")
        table.add_column("option")
        table.add_column("default")
        none_means = _none_means()
        for k, v in opts.items():
            table.add_row(k, none_means.get(k, "None") if v is None else repr(v))
        console.print(table)
        return
    entries = model_entries()
    if as_json:
        out = [
            {
                "name": e.name,
                "description": e.description,
                "examples": list(e.examples),
                "options": list(e.options()),
            }
            for e in entries
        ]
        print(json.dumps(out))
        return
    table = Table(title="skiplab models (D = depth; options: skiplab models NAME)")
    table.add_column("name")
    table.add_column("description")
    table.add_column("depths")
    for e in entries:
        table.add_row(e.name, e.description, ", ".join(map(str, e.examples)))
    console.print(table)


@app.command("summary", context_settings=EXTRA)
@user_errors
def summary_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="model name (e.g. resnet-20) or MODULE:FACTORY"),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W (or H) for the MAC count"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Parameters, MACs, residual units and shortcut kinds of NAME [--option value ...]."""
    from .models import create_model, summarize

    options = model_options_of(ctx, ctx.args)
    if not _is_import(name) and _is_run(name) and not _is_model_name(name):
        raise ValueError(
            f"summary takes a model name or MODULE:FACTORY, not a run ({name}); give the run's "
            "model name and options (its run.json names them)"
        )
    model = _import_model(name, options) if _is_import(name) else create_model(name, **options)
    shape = parse_shape(input_size)
    example = getattr(model, "example_input_shape", None)
    if shape is not None and len(shape) == 1 and example is not None and len(example) == 3:
        shape = (example[0], shape[0], shape[0])
    if shape is None and example is None:
        raise ValueError(f"{name} does not say what input it takes; give --input-size C,H,W")
    s = summarize(model, shape)
    if as_json:
        print(json.dumps({"name": name, "options": options, **s.to_dict()}))
        return
    table = Table(title=f"{name} {' '.join(ctx.args)}".strip(), show_header=False)
    table.add_row("parameters", f"{s.params:,}")
    table.add_row("input", "x".join(map(str, s.input_shape)))
    table.add_row("output", "x".join(map(str, s.output_shape)))
    table.add_row("MACs", f"{s.macs:,} ({s.macs / 1e9:.3g} G)")
    table.add_row("units", str(s.units))
    table.add_row("shortcuts", ", ".join(f"{k}: {v}" for k, v in s.shortcuts.items()) or "-")
    table.add_row("placements", ", ".join(f"{k}: {v}" for k, v in s.placements.items()) or "-")
    Console().print(table)


def default_out(name: str, data: str, seed: int) -> Path:
    return Path("runs") / f"{name}-{data}-s{seed}"


@app.command("train", context_settings=EXTRA)
@user_errors
def train_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="model name, e.g. preact-resnet-20"),
    data: str = typer.Option("digits", "--data", help="data set (digits, shapes, cifar10, ...)"),
    data_option: list[str] = typer.Option(
        None, "--data-option", help="data set option KEY=VALUE, repeatable (e.g. n_train=20000)"
    ),
    recipe: str = typer.Option(
        None,
        "--recipe",
        help="preset: quick (digits), quick-seg (shapes), he2015-cifar, he2015-cifar-warmup, "
        "he2016-cifar (default elsewhere)",
    ),
    recipe_file: Path = typer.Option(
        None, "--recipe-file", help="YAML file of recipe fields (and optionally preset: NAME)"
    ),
    epochs: int = typer.Option(None, "--epochs", help="overrides the recipe's"),
    lr: float = typer.Option(None, "--lr", help="overrides the recipe's"),
    batch_size: int = typer.Option(None, "--batch-size", help="overrides the recipe's"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    out: Path = typer.Option(None, "--out", help="run folder (default runs/NAME-DATA-sSEED)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
    data_dir: Path = typer.Option(None, "--data-dir", help="where downloaded data sets live"),
    tensorboard: bool = typer.Option(False, "--tensorboard"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model"),
    cuda_graphs: bool = typer.Option(
        None,
        "--cuda-graphs/--no-cuda-graphs",
        help="replay each step from a CUDA graph (default: on a single GPU without --compile)",
    ),
    log_grad_every: int = typer.Option(
        0, "--log-grad-every", help="log per-unit gradient norms every N steps"
    ),
) -> None:
    """Train NAME on --data with a recipe; model options follow as --option value."""
    import logging

    import torch

    from .data import load_dataset
    from .models import create_model
    from .models.registry import data_options
    from .train import fit, get_recipe
    from .train.distributed import DistInfo
    from .train.recipe import from_dict

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if _is_import(name):
        raise ValueError(
            f"train takes a model name (`skiplab models` lists them), not {name}; to train your "
            "own model, call skiplab.train.fit(model, data, recipe, out_dir) in Python"
        )
    if _is_run(name) and not _is_model_name(name):
        raise ValueError(
            f"train takes a model name, not a run ({name}); to continue a run, give its model "
            "name with --out RUN --resume"
        )
    if log_grad_every < 0:
        raise ValueError(
            f"invalid --log-grad-every {log_grad_every}: give N >= 1 steps, or 0 (off)"
        )
    options = model_options_of(ctx, ctx.args)
    overrides = {
        k: v
        for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size))
        if v is not None
    }
    if compile:
        overrides["compile"] = True
    if recipe_file is not None:
        if recipe is not None:
            raise ValueError("give --recipe or --recipe-file, not both")
        try:
            fields = yaml.safe_load(recipe_file.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read --recipe-file {recipe_file}: {err}") from None
        if not isinstance(fields, dict):
            raise ValueError(
                f"invalid --recipe-file {recipe_file}: expected a mapping of recipe fields, "
                f"got {type(fields).__name__} (e.g. epochs: 30, or preset: quick)"
            )
        if "preset" in fields:  # as in a study's recipe: a preset and the fields it changes
            rec = get_recipe(fields.pop("preset"), **{**fields, **overrides})
        else:
            rec = from_dict({**fields, **overrides})
    else:
        default = {"digits": "quick", "shapes": "quick-seg"}.get(data, "he2016-cifar")
        rec = get_recipe(recipe or default, **overrides)
    out_dir = check_out_folder(out or default_out(name, data, seed))
    dataset = load_dataset(data, data_dir=data_dir, **parse_data_options(data_option or []))
    options = {**data_options(name, dataset.input_shape, dataset.num_classes), **options}
    torch.manual_seed(seed)
    model = create_model(name, **options)
    result = fit(model, dataset, rec, out_dir, seed=seed, device=device, resume=resume, model_name=name,
                 model_options=options, tensorboard=tensorboard, progress=True,
                 log_grad_every=log_grad_every, cuda_graphs=cuda_graphs)  # fmt: skip
    if not DistInfo.from_env().is_main:
        return
    if result.status != "finished":
        typer.echo(f"error: {result.message}", err=True)
        raise typer.Exit(1)
    final = result.final
    shown = ", ".join(
        f"{k} {final[k]:.4f}" for k in ("train_loss", "test_acc", "test_miou") if k in final
    )
    typer.echo(
        f"{name} on {data}: {shown} ({len(result.metrics)} epoch{'s' * (len(result.metrics) != 1)}) -> {out_dir}"
    )


ANALYSES = ("paths", "gradflow", "pathgrad", "lesion", "identity", "shattered", "landscape", "nlc")
# The options of `skiplab analyze` each kind reads; any other one would be silently ignored.
_DATA = ("data", "data_dir", "data_option")
ANALYZE_OPTIONS: dict[str, tuple[str, ...]] = {
    "paths": (*_DATA, "until", "blocks", "split_sublayers"),
    "gradflow": (*_DATA, "batch", "blocks", "split_sublayers"),
    "pathgrad": (
        *_DATA,
        "batch",
        "blocks",
        "split_sublayers",
        "precision",
        "max_length",
        "samples",
    ),
    "lesion": (*_DATA, "blocks", "split_sublayers"),
    "landscape": (*_DATA, "batch", "dims", "steps", "precision"),
    "nlc": (*_DATA, "batch", "blocks", "split_sublayers"),
    "identity": ("depths", "steps"),
    "shattered": ("depths",),
}
ANALYZE_BATCH = 64  # --batch when not given
ANALYZE_GRID = {"dims": 2, "steps": 21}  # landscape's --dims and --steps when not given


def _load_for_analysis(
    target: str,
    options: dict[str, Any],
    data: str | None,
    data_dir: Path | None,
    seed: int,
    data_opts: dict[str, Any] | None = None,
) -> tuple[Any, Any, str, str]:
    """(model, data set, label, data set name) for an analysis of a registry name, a
    ``MODULE:FACTORY`` or a run's weights file; ``data_opts`` (``--data-option``) go to
    the data set, over a run's own."""
    data_opts = data_opts or {}
    import torch

    from .data import load_dataset
    from .models import create_model
    from .models.registry import data_options
    from .train import load_model

    if _is_run(target):
        path = _run_file(target)
        if options:
            raise ValueError(
                "model options apply to model names, not to checkpoints (the checkpoint names its options)"
            )
        model, meta = load_model(path)
        own = meta.get("data") or "digits"
        name = data or own
        # The run's data options (e.g. a subset size) belong to its own data set only.
        extra = (meta.get("data_options") or {}) if name == own else {}
        dataset = load_dataset(name, data_dir=data_dir, **{**extra, **data_opts})
        return model, dataset, f"{meta.get('model')} (trained, {path})", name
    if not _is_import(target) and ("/" in target or os.sep in target):  # no model name has one
        raise ValueError(
            f"no run folder or file {target}: give an existing run folder, a .safetensors "
            "file, or a model name (`skiplab models` lists them)"
        )
    name = data or ("shapes" if target == "unet" else "digits")
    dataset = load_dataset(name, data_dir=data_dir, **data_opts)
    torch.manual_seed(seed)
    if _is_import(target):  # the user's own model: options go to its factory unchanged
        return _import_model(target, options), dataset, f"{target} (initialisation)", name
    options = {**data_options(target, dataset.input_shape, dataset.num_classes), **options}
    return create_model(target, **options), dataset, f"{target} (initialisation)", name


_IMPORT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _is_import(target: str) -> bool:
    """``package.module:factory``: a model built by the user's own code."""
    return bool(_IMPORT.match(target)) and not Path(target).exists()


def _import_model(target: str, options: dict[str, Any]) -> Any:
    """Import ``module:factory`` (from the working directory too, as ``python -c`` would)
    and call the factory with the model options; it must return an ``nn.Module``."""
    import importlib

    from torch import nn

    module_name, _, attr = target.partition(":")
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(
                f"cannot import {module_name!r} for {target}: no such module here; run from "
                f"the folder that holds {module_name.split('.')[0]}.py, or install its package"
            ) from None
        raise ValueError(f"importing {module_name!r} for {target} failed: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's module: say what broke, no traceback
        raise ValueError(
            f"importing {module_name!r} for {target} failed: {type(err).__name__}: {err}"
        ) from None
    finally:
        sys.path.remove(cwd)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise ValueError(
                f"{module_name!r} has no {attr!r} (for {target}); it has: {', '.join(public)}"
            )
        factory = getattr(factory, part)
    if isinstance(factory, nn.Module):
        if options:
            raise ValueError(f"{target} is a module instance, not a factory: it takes no options")
        return factory
    if not callable(factory):
        raise ValueError(
            f"{target} is not a model factory to call (its type is {type(factory).__name__})"
        )
    try:
        model = factory(**options)
    except TypeError as err:
        raise ValueError(f"{target}({_kwargs(options)}) failed: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's code: say what broke, no traceback
        raise ValueError(
            f"{target}({_kwargs(options)}) failed: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"{target}() must return a torch nn.Module; it returned type {type(model).__name__}"
        )
    return model


def _kwargs(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _is_model_name(name: str) -> bool:
    """Whether ``name`` is in skiplab's registry (``resnet-20``, ``unet``, ...)."""
    from .models import model_options

    try:
        model_options(name)
    except ValueError:
        return False
    return True


def _is_run(target: str | None) -> bool:
    """Whether an analysis target names a run (folder or weights file), not a model."""
    if not target:
        return False
    path = Path(target)
    return path.suffix == ".safetensors" or path.is_file() or path.is_dir()


def _run_file(target: str) -> Path:
    """The weights file of a run target: a run folder's model.safetensors, or the file."""
    path = Path(target)
    return path / "model.safetensors" if path.is_dir() else path


def _check_fit(model: Any, dataset: Any, x: Any, label: str, data: str, trained: bool) -> None:
    """One forward pass on two examples: a model built for other data (``--in-channels``,
    ``--num-classes``, another data set's checkpoint) fails here with one clear message,
    before any analysis runs."""
    from .analysis.blocks import fit_problem

    k = dataset.num_classes
    problem = fit_problem(model, x, k, segmentation=dataset.task == "segmentation")
    if problem is None:
        return
    kind, why = problem
    if trained:
        fix = "choose a --data set like the one the run trained on"
    elif kind == "output":
        fix = f"drop --num-classes (or set it to {k})"
    else:
        fix = (
            "drop model options such as --in-channels that set another input, or choose a "
            "--data set that fits the model (--data random --data-option size=S "
            "--data-option channels=C: noise of any shape)"
        )
    raise ValueError(f"{label} does not fit {data!r} data: {why}; {fix}")


def _analysis_out(out: Path | None, kind: str, target: str | None) -> Path:
    """The output folder (default ``analyses/KIND-NAME``, NAME the model name or the run
    folder's; ``analyses/KIND`` for identity/shattered's default models), refused up front
    when it cannot be a folder."""
    if out is None:
        name = target
        if _is_run(target):  # a run's model.safetensors / checkpoint.safetensors: the run's name
            path = _run_file(target).resolve()  # type: ignore[arg-type]
            name = path.parent.name if path.stem in ("model", "checkpoint") else path.stem
        folder = f"{kind}-{name}" if name else kind
        out = Path("analyses") / folder.replace(",", "_").replace(":", "_")
    return check_out_folder(out)


def _analyze_defaults(kind: str) -> dict[str, Any]:
    """The value each option KIND reads takes when it is not given: the CLI's own (a batch
    of 64, a 2-D landscape of 21x21 points), else the analysis function's default."""
    import inspect

    from . import analysis as A

    fn = {"pathgrad": A.path_gradients, "landscape": A.loss_landscape,
          "identity": A.identity_task, "shattered": A.shattered_gradients}.get(kind)  # fmt: skip
    params = inspect.signature(fn).parameters if fn is not None else {}
    reads = ANALYZE_OPTIONS[kind]
    defaults = {k: p.default for k, p in params.items()
                if k in reads and p.default not in (None, p.empty)}  # fmt: skip
    if "batch" in reads:
        defaults["batch"] = ANALYZE_BATCH
    if kind == "landscape":
        defaults.update(ANALYZE_GRID)
    return defaults


def _invocation(
    base: dict[str, Any], given: dict[str, Any], resolved: dict[str, Any]
) -> dict[str, Any]:
    """What makes two results the same analysis (a rerun of it replaces its result): the
    target, options and seed, with every option the kind reads at the value it took, so
    that a default given explicitly (``--batch 64``, ``--data digits``) is no other
    analysis than one that leaves it out."""
    values = {k: v for k, v in given.items() if v is not None}
    values = {**_analyze_defaults(base["analysis"]), **resolved, **values}
    if isinstance(values.get("depths"), str):
        values["depths"] = _int_list("--depths", values["depths"])
    return json.loads(json.dumps({**base, **values}, default=str))


def _check_replace(
    out_dir: Path, base: dict[str, Any], given: dict[str, Any], resolved: dict[str, Any]
) -> dict[str, Any]:
    """The invocation (``_invocation``) of this analysis. Rerunning an analysis (same kind,
    model or run, options, data and seed) replaces its own result; a folder holding any
    other result is refused, so nothing is lost. A result written before invocations
    recorded defaults (its flags only) is compared with the defaults filled in."""
    invocation = _invocation(base, given, resolved)
    path = out_dir / "result.json"
    figure = out_dir / f"{invocation['analysis']}.png"
    if not path.exists():
        if figure.exists():  # not skiplab's (it writes result.json first): keep it
            raise ValueError(
                f"{out_dir} already holds {figure.name} and no result.json; choose another "
                "--out (or move that file)"
            )
        return invocation
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    inv = old.get("invocation") if isinstance(old, dict) else None
    if isinstance(inv, dict) and inv.get("analysis") == invocation["analysis"]:
        try:  # an older result: its flags only, the defaults left out
            base = {k: inv[k] for k in ("analysis", "target", "model_options", "seed") if k in inv}
            given = {k: v for k, v in inv.items() if k not in base}
            inv = _invocation(base, given, resolved)
        except ValueError:
            pass
    if inv == invocation:
        return invocation
    if isinstance(old, dict) and old.get("analysis"):
        what = f"the {old.get('analysis')} analysis of {old.get('target')}"
        if isinstance(inv, dict) and inv.get("analysis") == invocation["analysis"]:
            diff = sorted(k for k in {*inv, *invocation} if inv.get(k) != invocation.get(k))
            what += f" with another {', '.join(diff)}"
    else:
        what = "a result.json of something else"
    raise ValueError(
        f"{out_dir} already holds {what}; choose another --out (or delete that folder)"
    )


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(
            f"invalid {flag} {text!r}: give comma-separated positive integers, e.g. {flag} 4,10,34"
        )
    return values


@app.command("analyze", context_settings=EXTRA)
@user_errors
def analyze_cmd(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help=f"one of: {', '.join(ANALYSES)}"),
    target: str = typer.Argument(
        None,
        help="model name, MODULE:FACTORY, run folder or model.safetensors (identity/shattered: "
        "models, comma-separated)",
    ),
    data: str = typer.Option(
        None, "--data", help="data set for the batch (default: the run's, or digits)"
    ),
    data_dir: Path = typer.Option(None, "--data-dir"),
    data_option: list[str] = typer.Option(
        None, "--data-option", help="data set option KEY=VALUE, repeatable (e.g. size=64)"
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="output folder (default analyses/KIND-NAME, NAME the model or run; analyses/KIND "
        "for identity/shattered's default models)",
    ),
    batch: int = typer.Option(None, "--batch", help="examples in the batch (default 64)"),
    seed: int = typer.Option(
        None, "--seed", help="seeds initialisation, sampled paths, lesion draws, directions (0)"
    ),
    until: str = typer.Option(None, "--until", help="paths: end at this module's output"),
    blocks: str = typer.Option(
        None, "--blocks", help="comma-separated module names of the residual units"
    ),
    split: bool = typer.Option(
        False,
        "--split-sublayers",
        help="split transformer blocks into attn and mlp units (skiplab.analysis.split_sublayers)",
    ),
    dims: int = typer.Option(None, "--dims", help="landscape: 1 or 2 (default 2)"),
    steps: int = typer.Option(
        None,
        "--steps",
        help="landscape: grid points per axis (default 21); identity: training steps (300)",
    ),
    depths: str = typer.Option(None, "--depths", help="identity/shattered: comma-separated depths"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    precision: str = typer.Option(
        None, "--precision", help="pathgrad, landscape: fp32 (default, exact) or bf16"
    ),
    max_length: int = typer.Option(
        None, "--max-length", help="pathgrad: exact parts up to K branches, then one remainder"
    ),
    samples: int = typer.Option(
        None, "--samples", help="pathgrad: single paths sampled per length (default 2; 0: none)"
    ),
) -> None:
    """Run one analysis of TARGET [--option value ...]; write result.json and a figure."""
    from . import analysis as A
    from .io import atomic_write_text
    from .provenance import provenance

    args = list(ctx.args)
    if target is not None and target.startswith("--"):  # an option click took for TARGET
        args.insert(0, target)
        target = None

    if kind not in ANALYSES:
        import difflib

        close = difflib.get_close_matches(kind, ANALYSES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown analysis {kind!r}{hint}; allowed: {', '.join(ANALYSES)}")
    from .train.trainer import resolve_device

    given = {"data": data, "data_dir": data_dir, "data_option": data_option or None,
             "batch": batch, "until": until,
             "blocks": blocks, "split_sublayers": True if split else None,
             "dims": dims, "steps": steps, "depths": depths,
             "precision": precision, "max_length": max_length, "samples": samples}  # fmt: skip
    wrong = [k for k, v in given.items() if v is not None and k not in ANALYZE_OPTIONS[kind]]
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        users = [a for a, opts in ANALYZE_OPTIONS.items() if wrong[0] in opts]
        raise ValueError(f"{flag} is for {', '.join(users)}, not {kind}")
    if batch is not None and batch < (2 if kind == "nlc" else 1):
        least = "2 (nlc needs the inputs' covariance)" if kind == "nlc" else "1"
        raise ValueError(f"invalid --batch {batch}: must be at least {least}")
    trained = _is_run(target)
    if seed is not None and trained and kind in ("paths", "gradflow", "nlc"):
        raise ValueError(
            f"--seed changes nothing in {kind} of a trained model (it seeds a model's "
            "initialisation, sampled paths, lesion draws and landscape directions)"
        )
    seed = 0 if seed is None else seed
    options = model_options_of(ctx, args)
    if kind in ("identity", "shattered") and "models" in options:
        if target:
            raise ValueError(
                f"give the models once: as the argument ({target}) or as --models "
                f"({options['models']}), not both"
            )
        models = options["models"]
        if isinstance(models, str) or (
            isinstance(models, list) and all(isinstance(m, str) for m in models)
        ):  # --models a,b is the argument a,b: one folder, one invocation
            target = models if isinstance(models, str) else ",".join(models)
            del options["models"]
    block_list = [b.strip() for b in blocks.split(",") if b.strip()] if blocks else None
    out_dir = _analysis_out(out, kind, target)
    base = {"analysis": kind, "target": str(_run_file(target).resolve()) if trained else target,
            "model_options": options, "seed": seed}  # fmt: skip
    dev = resolve_device(device)
    extra = {k: given[k] for k in ("precision", "max_length", "samples") if given[k] is not None}
    if kind in ("identity", "shattered"):
        invocation = _check_replace(out_dir, base, given, {})
        kwargs: dict[str, Any] = {"device": dev, **options}
        if target:
            kwargs["models"] = target.split(",")
        if depths:
            kwargs["depths"] = _int_list("--depths", depths)
        if steps is not None:
            kwargs["steps"] = steps
        if kind == "identity":
            kwargs.setdefault("seeds", [seed])
            if not isinstance(kwargs["seeds"], list):  # --seeds 3: one seed
                kwargs["seeds"] = [kwargs["seeds"]]
        else:
            kwargs.setdefault("seed", seed)
        label = f"{kind} ({target or 'default models'})"
        try:
            res = (
                A.identity_task(**kwargs) if kind == "identity" else A.shattered_gradients(**kwargs)
            )
        except TypeError as err:
            raise ValueError(f"invalid option for {kind}: {err}") from None
    else:
        if not target:
            raise ValueError(
                f"{kind} needs a model name or a checkpoint, e.g. skiplab analyze {kind} resnet-20"
            )
        data_opts = parse_data_options(data_option or [])
        model, dataset, label, data_name = _load_for_analysis(
            target, options, data, data_dir, seed, data_opts
        )
        invocation = _check_replace(out_dir, base, given, {"data": data_name})
        model.eval().to(dev)
        n = ANALYZE_BATCH if batch is None else batch
        x, y = dataset.test_x[:n].to(dev), dataset.test_y[:n].to(dev)
        _check_fit(model, dataset, x, label, data_name, trained)
        if split:
            model = A.split_sublayers(model)
        if kind == "paths":
            res = A.path_spectrum(model, x[:1], until=until, blocks=block_list)
        elif kind == "gradflow":
            res = A.gradient_flow(model, x, y, blocks=block_list)
        elif kind == "pathgrad":
            res = A.path_gradients(model, x, y, blocks=block_list, seed=seed, **extra)
        elif kind == "lesion":
            test = (dataset.test_x.to(dev), dataset.test_y.to(dev))
            res = A.lesion(model, test, blocks=block_list, seed=seed)
        elif kind == "landscape":
            grid = {k: invocation[k] for k in ANALYZE_GRID}
            res = A.loss_landscape(model, (x, y), seed=seed, **grid, **extra)
        else:
            res = A.nonlinearity_coefficient(model, x, blocks=block_list)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"analysis": kind, "target": label, **res.to_dict(), "invocation": invocation,
           "provenance": provenance()}  # fmt: skip
    atomic_write_text(out_dir / "result.json", json.dumps(doc, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    ax = res.plot()
    ax.figure.savefig(out_dir / f"{kind}.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
    typer.echo(f"{label}\n{res.summary()}\n-> {out_dir}/result.json, {out_dir}/{kind}.png")


@app.command("study")
@user_errors
def study_cmd(
    spec: str = typer.Argument(None, help="study YAML file or built-in name (default: why-skip)"),
    out: Path = typer.Option(None, "--out", help="study folder (default studies/NAME[-quick])"),
    quick: bool = typer.Option(False, "--quick", help="fewer seeds and epochs"),
    workers: int = typer.Option(
        0,
        "--workers",
        help="runs at once; 0: one per core (max 4) on CPU, 1 on GPU; with --executor ray, "
        "from the cluster (one per GPU or CPU)",
    ),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    data_dir: Path = typer.Option(None, "--data-dir", help="where downloaded data sets live"),
    executor: str = typer.Option("local", "--executor", help="local or ray"),
    address: str = typer.Option(
        None, "--address", help="Ray cluster address (with --executor ray)"
    ),
) -> None:
    """Run a study (a grid of runs and analyses) and write its report."""
    import logging

    from .study import load_spec, run_study

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # A progress bar on a terminal; elsewhere (a log file, CI) a line per finished job,
    # told apart as fit's progress is (rich's terminal detection).
    bar = Console().is_terminal
    if not bar:
        logging.getLogger("skiplab.study.runner").setLevel(logging.INFO)
    if workers < 0:
        raise ValueError(f"invalid --workers {workers}: must be 0 (auto) or a positive number")
    if executor not in ("local", "ray"):
        raise ValueError(f"invalid --executor {executor!r}; allowed: 'local', 'ray'")
    if address is not None and executor != "ray":
        raise ValueError("--address only applies to --executor ray")
    study = load_spec(spec, quick=quick)
    if workers == 0 and executor == "local":  # Ray takes the count from the cluster
        from .study.runner import auto_workers

        workers = auto_workers(device)
    out_dir = check_out_folder(out or Path("studies") / (study.name + ("-quick" if quick else "")))
    ex = None
    if executor == "ray":
        from .study.ray_executor import RayExecutor

        ex = RayExecutor(address=address, workers=workers, device=device)
    try:
        store = run_study(
            study,
            out_dir,
            workers=workers,
            device=device,
            data_dir=data_dir,
            executor=ex,
            progress=bar,
        )
    finally:
        if ex is not None:
            ex.close()  # a Ray instance this command started, also when the study failed
    runs = store.runs()
    bad = [r for r in runs if r["status"] != "finished"]
    typer.echo(
        f"{study.name}: {len(runs) - len(bad)}/{len(runs)} runs finished -> {out_dir / 'report.html'}"
    )
    for r in bad:
        typer.echo(
            f"  {r['id']}: {r['status']} {(r['error'] or '').splitlines()[0] if r['error'] else ''}",
            err=True,
        )


@app.command("report")
@user_errors
def report_cmd(folder: Path = typer.Argument(..., help="a study folder")) -> None:
    """Re-render a study's report from its study.db."""
    from .report import write_report
    from .study.runner import write_results_json
    from .study.store import Store

    store = Store.open_existing(folder)
    write_results_json(store, folder)
    path = write_report(store, folder)
    typer.echo(f"report -> {path}")


@app.command("demo")
@user_errors
def demo_cmd() -> None:
    """A short tour of what is built: the skip designs side by side."""
    from .models import create_model, summarize

    console = Console()
    table = Table(title="skip designs from one set of parts")
    for col in ("model", "options", "params", "MACs (M)", "units", "shortcuts"):
        table.add_column(col)
    rows = [
        ("plain-20", {}),
        ("resnet-20", {}),
        ("resnet-20", {"shortcut": "projection"}),
        ("preact-resnet-20", {}),
        ("resnet-20", {"shortcut": "exclusive-gating", "gate_bias": -6}),
        ("resnet-20", {"init": "zero-last-norm"}),
        ("resnet-110", {}),
        ("preact-resnet-164", {}),
        ("resnet50", {}),
        ("unet", {}),
        ("unet", {"block": "residual", "skip": "add", "base_width": 16}),
        ("resmlp-8", {}),
    ]
    for name, opts in rows:
        s = summarize(create_model(name, **opts))
        table.add_row(
            name,
            " ".join(f"{k}={v}" for k, v in opts.items()) or "-",
            f"{s.params:,}",
            f"{s.macs / 1e6:,.1f}",
            str(s.units),
            ", ".join(f"{k}: {v}" for k, v in s.shortcuts.items()) or "-",
        )
    console.print(table)
    console.print("Next: skiplab summary NAME --option value; skiplab models NAME")


def main() -> None:
    import warnings

    # torch.func raises this from inside torch; it says nothing about the user's work.
    warnings.filterwarnings(
        "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
    )
    os.environ.setdefault(
        "PYTHONWARNINGS", "ignore:`torch.jit.script` is deprecated:FutureWarning"
    )  # workers
    try:
        code = app(prog_name="skiplab", standalone_mode=False)
    except typer.TyperException as err:  # click's own checks (typer's copy of click)
        if type(err).__name__ == "NoArgsIsHelpError":  # plain `skiplab`: the help
            err.show()  # type: ignore[attr-defined]
        else:  # one line, as for every bad input
            ctx = getattr(err, "ctx", None)
            see = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {one_line(err.format_message())}{see}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
