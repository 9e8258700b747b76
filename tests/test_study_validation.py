"""Study specs check option values and model/data fit on load, not after the training:
a bad value is one message naming the field's path; the CLI exits 2 and writes nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from skiplab.analysis import gradient_flow, identity_task, lesion, shattered_gradients
from skiplab.cli import app
from skiplab.models import create_model
from skiplab.study import SpecError, parse_spec

runner = CliRunner()

BASE = {
    "name": "v",
    "groups": [{"name": "g", "data": "digits", "models": ["resnet-8"]}],
}


def group(**fields: object) -> dict:
    spec = copy.deepcopy(BASE)
    spec["groups"][0].update(fields)
    return spec


def spec_error(spec: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    return str(err.value)


@pytest.mark.parametrize(
    ("kind", "options", "needle"),
    [
        ("lesion", {"draws": -1}, "lesion.draws: invalid draws=-1: must be a positive integer"),
        ("lesion", {"k_values": 3}, "lesion.k_values: invalid k_values=3: give a list of ints"),
        ("lesion", {"k_values": "3"}, "lesion.k_values: invalid k_values='3'"),
        ("lesion", {"k_values": [0, 2]}, "lesion.k_values: invalid k_values [0]"),
        ("lesion", {"metric": "acc"}, "lesion.metric: invalid metric='acc'"),
        ("lesion", {"batch_size": 0}, "lesion.batch_size: invalid batch_size=0"),
        ("lesion", {"swaps": "no"}, "lesion.swaps: invalid swaps='no'"),
        ("landscape", {"dims": 3}, "landscape.dims: invalid dims=3"),
        ("landscape", {"steps": 1}, "landscape.steps: invalid steps=1: must be an integer >= 2"),
        ("landscape", {"span": -1}, "landscape.span: invalid span=-1"),
        ("landscape", {"norm": "filtr"}, "landscape.norm: invalid norm='filtr' (did you mean"),
        ("landscape", {"ignore": "bn"}, "landscape.ignore: invalid ignore='bn'"),
        ("landscape", {"method": "fast"}, "landscape.method: invalid method='fast'"),
        (
            "landscape",
            {"method": "vmap", "precision": "bf16"},
            "landscape.precision: invalid precision='bf16': needs method='inplace' or 'auto'",
        ),
        ("landscape", {"images": 0}, "landscape.images: invalid images=0"),
        ("pathgrad", {"samples": -1}, "pathgrad.samples: invalid samples=-1"),
        ("pathgrad", {"max_length": -2}, "pathgrad.max_length: invalid max_length=-2"),
        ("pathgrad", {"precision": "fp16"}, "pathgrad.precision: invalid precision='fp16'"),
        ("pathgrad", {"batch": -1}, "pathgrad.batch: invalid batch=-1"),
        ("gradflow", {"train": "no"}, "gradflow.train: invalid train='no'"),
        ("gradflow", {"batch": 0}, "gradflow.batch: invalid batch=0"),
        ("nlc", {"chunk": 0}, "nlc.chunk: invalid chunk=0"),
    ],
)
def test_bad_analysis_option_value_fails_on_load(kind: str, options: dict, needle: str) -> None:
    msg = spec_error(group(analysis_options={kind: options}))
    assert msg.startswith("groups[0].analysis_options.")
    assert needle in msg


def test_good_analysis_options_load() -> None:
    spec = parse_spec(
        group(
            analysis_options={
                "lesion": {"draws": 2, "k_values": [1, 2], "metric": "loss", "swaps": False},
                "landscape": {"dims": 2, "steps": 5, "span": 0.5, "precision": "bf16"},
                "pathgrad": {"samples": 0, "max_length": 3, "batch": 8},
                "gradflow": {"train": True, "models": ["resnet-8"]},
                "nlc": {"chunk": 4},
            }
        )
    )
    assert spec.runs()[0].analysis_options["lesion"]["draws"] == 2


def test_option_rules_live_in_the_analysis() -> None:
    """The spec's check is the analysis' own: the analyses refuse the same values."""
    model = create_model("resnet-8", in_channels=1, num_classes=10)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="invalid swaps='no'"):
        lesion(model, (x, y), swaps="no")
    with pytest.raises(ValueError, match="invalid k_values"):
        lesion(model, (x, y), k_values=[4])  # 3 units: the bound needs the model
    with pytest.raises(ValueError, match="invalid train='no'"):
        gradient_flow(model, x, y, train="no")
    with pytest.raises(ValueError, match="invalid seeds=3"):
        identity_task(seeds=3)  # was a TypeError
    with pytest.raises(ValueError, match="invalid seed='a'"):
        shattered_gradients(seed="a")  # was a TypeError


@pytest.mark.parametrize(
    ("experiment", "needle"),
    [
        (
            {"kind": "identity", "options": {"depths": [2]}},
            "experiments[0].options: mlp-2: invalid depth=2",
        ),
        (
            {"kind": "identity", "options": {"tasks": ["identiy"]}},
            "experiments[0].options.tasks: invalid tasks='identiy' (did you mean",
        ),
        (
            {"kind": "identity", "options": {"steps": 0}},
            "experiments[0].options.steps: invalid steps=0",
        ),
        (
            {"kind": "identity", "options": {"models": ["resnet"]}},
            "experiments[0].options: invalid model 'resnet' here",
        ),
        (
            {"kind": "shattered", "options": {"points": 3}},
            "experiments[0].options.points: invalid points=3: must be at least 4",
        ),
        (
            {"kind": "shattered", "options": {"points": 8}},  # the default max_lag=32 is too big
            "experiments[0].options: invalid max_lag=32: must be an integer in [1, 7]",
        ),
        (
            {"kind": "shattered", "options": {"span": [1, -1]}},
            "experiments[0].options.span: invalid span=[1, -1]",
        ),
        (
            {"kind": "shattered", "options": {"norm": "btach"}},
            "experiments[0].options.norm: mlp-4: invalid norm='btach' (did you mean 'batch'?)",
        ),
    ],
)
def test_bad_experiment_option_value_fails_on_load(experiment: dict, needle: str) -> None:
    assert needle in spec_error({"name": "v", "experiments": [experiment]})


def test_model_that_does_not_fit_its_data_fails_on_load() -> None:
    msg = spec_error(group(models=["resnet-8", "unet"]))
    assert msg.startswith("groups[0].models[1]: the model does not fit 'digits'")
    assert "cannot be halved" in msg
    # a model's own options override the data set's: 5 classes do not fit 10
    msg = spec_error(group(models=[{"name": "resnet-8", "options": {"num_classes": 5}}]))
    assert msg.startswith("groups[0].models[0]: the model does not fit 'digits'")
    assert "does not fit 10 classes" in msg
    # a classifier on a segmentation set, the second of the group's data sets
    msg = spec_error(group(data=["digits", "shapes"]))
    assert msg.startswith("groups[0].models[0]: the model does not fit 'shapes'")
    # a grid point that does not fit
    spec = group(models=[{"name": "unet", "options": {"depth": 2}}], data="shapes",
                 data_options={"n_train": 4, "n_test": 2},
                 grid={"num_classes": [4, 3]})  # fmt: skip
    assert spec_error(spec).startswith("groups[0].models[0]: the model does not fit 'shapes'")


def test_bad_data_option_value_fails_on_load() -> None:
    msg = spec_error(group(data="shapes", data_options={"size": 3}))
    assert msg.startswith("groups[0].data_options.size: invalid size=3")
    msg = spec_error(group(data_options={"test_size": 5.0}))
    assert msg.startswith("groups[0].data_options.test_size: invalid test_size=5.0")


def test_fit_check_builds_each_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import skiplab.data.datasets as datasets
    import skiplab.train.trainer as trainer

    checked, loaded = [], []
    check, load = trainer.check_model_fits_data, datasets.load_dataset
    monkeypatch.setattr(trainer, "check_model_fits_data",
                        lambda model, data, amp: checked.append(data.name) or check(model, data, amp))  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, **kw: loaded.append(name) or load(name, **kw))  # fmt: skip
    spec = copy.deepcopy(BASE)
    spec["seeds"] = [0, 1, 2]
    spec["groups"] = [
        {"name": "a", "data": "digits", "models": ["resnet-8", "plain-8"]},
        {"name": "b", "data": ["digits", "cifar10"], "models": ["resnet-8"]},
        {"name": "c", "data": "digits", "models": [{"name": "resnet-8", "label": "r"}]},
    ]
    state = torch.get_rng_state()
    study = parse_spec(spec)
    assert len(study.runs()) == 3 * (2 + 2 + 1)
    # one load of digits, none of cifar10 (read from files: left to the run), and one
    # check per distinct (model, options, data set) however many seeds, groups or labels
    assert loaded == ["digits"]
    assert checked == ["digits", "digits"]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def test_bad_value_in_cli_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for spec in (
        group(analysis_options={"lesion": {"draws": -1}}),
        {"name": "v", "experiments": [{"kind": "identity", "options": {"depths": [2]}}]},
        group(models=["unet"]),
    ):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        result = runner.invoke(app, ["study", str(path), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "\n" not in result.stderr.strip() and "Traceback" not in result.stderr
        assert any(p in result.stderr for p in ("groups[0].", "experiments[0]."))
        assert not out.exists()
