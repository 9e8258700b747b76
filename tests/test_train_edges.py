"""Training edge cases: resume after an exception mid-epoch is exact (dropout shortcuts,
label smoothing, step/cosine schedules, segmentation), checkpoints with tensors of the wrong
dtype or shape and recipes with nonsense fields are one clear error, and nothing is written
before such an error."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import skiplab
from interrupt import Stop, StopAfter
from skiplab.data import load_dataset
from skiplab.train import fit, get_recipe, load_checkpoint, load_model, save_checkpoint
from skiplab.train.recipe import from_dict

TIMING = {"time_s", "train_time_s", "test_time_s", "train_img_s"}
RESNET = {"in_channels": 1, "width": 0.25}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(128, 32)


def _rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def _run_files_parse(run: Path) -> None:
    json.loads((run / "run.json").read_text())
    _rows(run)
    load_checkpoint(run / "checkpoint.safetensors")


@pytest.mark.parametrize(
    ("case", "recipe"),
    [
        ("dropout", {"preset": "quick", "epochs": 2, "batch_size": 64}),
        (
            "smoothing",
            {
                "preset": "quick",
                "epochs": 2,
                "batch_size": 32,
                "label_smoothing": 0.1,
                "schedule": "step",
            },
        ),  # fmt: skip
        ("unet", {"preset": "quick-seg", "epochs": 2, "batch_size": 16}),
    ],
)
def test_resume_after_an_exception_mid_epoch_is_bit_identical(
    tmp_path: Path, digits, case: str, recipe: dict
) -> None:
    data = load_dataset("shapes", size=16, n_train=48, n_test=16) if case == "unet" else digits
    if case == "unet":
        make: Callable[[], nn.Module] = lambda: skiplab.create_model(  # noqa: E731
            "unet", depth=2, base_width=4, norm="batch", in_channels=1, num_classes=4
        )
    else:
        shortcut = "dropout" if case == "dropout" else "identity"
        make = lambda: skiplab.create_model("resnet-8", shortcut=shortcut, **RESNET)  # noqa: E731
    rec = get_recipe(recipe.pop("preset"), **recipe)
    steps = -(-data.train_x.shape[0] // rec.batch_size)  # per epoch
    torch.manual_seed(0)
    fit(StopAfter(make()), data, rec, tmp_path / "full", seed=2)
    torch.manual_seed(0)
    with pytest.raises(Stop):  # in the second step of epoch 2
        fit(StopAfter(make(), steps + 1), data, rec, tmp_path / "cut", seed=2)
    _run_files_parse(tmp_path / "cut")
    torch.manual_seed(99)  # another init and RNG state: the checkpoint must replace both
    fit(StopAfter(make()), data, rec, tmp_path / "cut", seed=2, resume=True)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _run_files_parse(tmp_path / "cut")


def _stopped_run(out: Path, data) -> None:
    """resnet-8 stopped after its first of 3 epochs, with a checkpoint to resume from."""

    def stop(row: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        fit(skiplab.create_model("resnet-8", **RESNET), data, _recipe(), out,
            model_name="resnet-8", model_options=RESNET, on_epoch=stop)  # fmt: skip


def _recipe():
    return get_recipe("quick", epochs=3, batch_size=64)


def _rewrite(path: Path, change: Callable[[dict, dict], object]) -> None:
    ckpt = load_checkpoint(path)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "version")}
    tensors = dict(ckpt.tensors)
    change(meta, tensors)
    save_checkpoint(path, tensors, meta)


W, NBT, MOM = (
    "model.stem.conv.weight",
    "model.stem.norm.num_batches_tracked",
    "optim.0.momentum_buffer",
)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m, t: t.update({W: t[W].half()}), r"dtype mismatches \(e.g. stem.conv.weight float16 vs float32\)"),
        (lambda m, t: t.update({W: t[W].to(torch.int32)}), "stem.conv.weight int32 vs float32"),
        (lambda m, t: t.update({NBT: t[NBT].float()}), "num_batches_tracked float32 vs int64"),
        (lambda m, t: t.update({W: t[W][:1]}), r"shape mismatches \(e.g. stem.conv.weight \(1, 1, 3, 3\)"),
        (lambda m, t: [t.update({k[6:]: t.pop(k)}) for k in list(t) if k.startswith("model.")],
         r"holds no model weights \(no model.\* tensors\)"),
        (lambda m, t: t.update({MOM: t[MOM].flatten()[:3]}),
         r"optimizer state does not fit this model \(optim.0.momentum_buffer: \(3,\) float32 for a parameter \(4, 1, 3, 3\)"),
        (lambda m, t: t.update({MOM: t[MOM].double()}), "momentum_buffer: \\(4, 1, 3, 3\\) float64 for a parameter"),
        (lambda m, t: t.pop("rng.torch"), r"no random number generator state \(rng.torch\)"),
        (lambda m, t: m.pop("optimizer"), r"no optimizer state.*; delete it to restart the run"),
    ],
)  # fmt: skip
def test_resume_checkpoint_with_wrong_tensors_is_refused_before_writing(
    tmp_path: Path, digits, change, match: str
) -> None:
    """load_state_dict casts a wrong dtype without a word (integer weights truncated) and a
    momentum buffer of another shape fails only in the first step, after the run folder was
    rewritten: each is one error naming the file and the tensor, and nothing changes."""
    out = tmp_path / "r"
    _stopped_run(out, digits)
    _rewrite(out / "checkpoint.safetensors", change)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=match) as err:
        fit(skiplab.create_model("resnet-8", **RESNET), digits, _recipe(), out, resume=True,
            model_name="resnet-8", model_options=RESNET)  # fmt: skip
    assert str(out / "checkpoint.safetensors") in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_model_refuses_weights_of_another_dtype(tmp_path: Path, digits) -> None:
    out = tmp_path / "r"
    _stopped_run(out, digits)
    _rewrite(out / "checkpoint.safetensors", lambda m, t: t.update({W: t[W].double()}))
    with pytest.raises(ValueError, match=r"float64 vs float32.*model.to\(dtype\)"):
        load_model(out / "checkpoint.safetensors")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"lr": -0.1}, r"recipe.lr=-0.1"),
        ({"epochs": 0}, r"recipe.epochs=0"),
        ({"optimizer": "rmsprop"}, r"recipe.optimizer='rmsprop'"),
        ({"schedule": "linear"}, r"recipe.schedule='linear' \(did you mean 'cosine'\?\)"),
        ({"label_smoothing": 1.5}, r"recipe.label_smoothing=1.5: must be in \[0, 1\)"),
        ({"momentum": 1.5}, r"recipe.momentum=1.5: must be in \[0, 1\)"),
        ({"gamma": 0}, r"recipe.gamma=0: must be positive"),
        ({"warmup_epochs": 20}, r"recipe.warmup_epochs=20: must be at most recipe.epochs \(15\)"),
        ({"milestones": 0.5}, r"recipe.milestones=0.5: must be a list"),
        ({"milestones": "0.5"}, r"recipe.milestones='0.5': must be a list"),
        ({"grad_clip": True}, r"recipe.grad_clip=True"),
        ({"nesterov": "no"}, r"recipe.nesterov='no': must be true or false"),
        ({"channels_last": "no"}, r"recipe.channels_last='no'"),
        ({"augment": "crop-flop"}, r"recipe.augment='crop-flop' \(did you mean 'crop-flip'"),
        ({"extra": [1]}, r"recipe.extra=\[1\]: must be a mapping"),
        ({"lr": "1e-3"}, r"recipe.lr='1e-3'.*YAML reads 1e-3 as text: write 1.0e-3"),
    ],
)
def test_recipe_nonsense_is_one_error_naming_the_field(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_recipe("quick", **fields)


def test_sensible_recipe_edges_are_accepted() -> None:
    assert get_recipe("he2016-cifar", epochs=1).warmup_epochs == 1.0  # `--epochs 1` on CIFAR
    assert get_recipe("quick", milestones=[], grad_clip=1, label_smoothing=0.0).grad_clip == 1
    assert from_dict({"augment": "crop2-flip", "epochs": 2}).augment == "crop2-flip"


def test_mask_augmentation_on_classification_is_refused_before_writing(
    tmp_path: Path, digits
) -> None:
    """'seg-flip' failed in the first step, leaving a run folder that blocked the rerun."""
    rec = get_recipe("quick", epochs=1, augment="seg-flip")
    with pytest.raises(ValueError, match=r"recipe.augment='seg-flip' for 'digits'"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, rec, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_batch_larger_than_the_data_warns(tmp_path: Path, digits, caplog) -> None:
    rec = get_recipe("quick", epochs=1, batch_size=4096)
    with caplog.at_level(logging.WARNING, logger="skiplab.train.trainer"):
        result = fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, rec, tmp_path / "r")
    assert result.status == "finished"
    assert "recipe.batch_size=4096 is larger than the 128 training examples" in caplog.text


def test_resume_on_another_device_or_thread_count_warns(tmp_path: Path, digits, caplog) -> None:
    """Another thread count reorders float sums: the resumed run matches to rounding only."""
    out = tmp_path / "r"
    _stopped_run(out, digits)
    run = json.loads((out / "run.json").read_text())
    run["provenance"]["device"] = "cpu (x86_64, 64 threads)"
    (out / "run.json").write_text(json.dumps(run))
    with caplog.at_level(logging.WARNING, logger="skiplab.train.trainer"):
        fit(skiplab.create_model("resnet-8", **RESNET), digits, _recipe(), out, resume=True,
            model_name="resnet-8", model_options=RESNET)  # fmt: skip
    assert "ran on cpu (x86_64, 64 threads) and resumes on cpu" in caplog.text
    assert "not bit for bit" in caplog.text


def test_tensorboard_missing_is_refused_before_writing(tmp_path: Path, monkeypatch, digits) -> None:
    """Without the tensorboard package, --tensorboard failed after run.json was written
    (status 'running'), and that half-made run refused the rerun without --tensorboard."""
    import sys

    from typer.testing import CliRunner

    from skiplab.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails
    rec = get_recipe("quick", epochs=1)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, rec, tmp_path / "r",
            tensorboard=True)  # fmt: skip
    assert not (tmp_path / "r").exists()
    args = ["train", "resnet-8", "--width", "0.25", "--epochs", "1", "--out", "x5"]
    result = CliRunner().invoke(app, [*args, "--tensorboard"])
    assert result.exit_code == 2 and "pip install tensorboard" in result.stderr
    assert not (tmp_path / "x5").exists()
    result = CliRunner().invoke(app, args)  # the rerun without --tensorboard
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "x5" / "run.json").read_text())["status"] == "finished"
