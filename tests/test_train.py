"""Training: recipes, safe checkpoints, run folders, divergence, resume after a real kill, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

import skiplab
from interrupt import Stop, StopAfter
from skiplab.cli import app
from skiplab.data import load_dataset
from skiplab.train import Recipe, fit, get_recipe, load_checkpoint, load_model, save_checkpoint
from skiplab.train.recipe import from_dict

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_recipe(**kw) -> Recipe:
    return get_recipe("quick", **{"epochs": 2, "batch_size": 128, **kw})


# --------------------------------------------------------------------------- recipes


def test_he2015_schedule() -> None:
    r = get_recipe("he2015-cifar")
    spe = 391  # 50,000 / 128, rounded up
    assert r.epochs * spe == pytest.approx(64_000, rel=0.01)  # He et al. 2015: stop at 64k
    assert r.lr_at(0, spe) == 0.1
    assert r.lr_at(31_900, spe) == 0.1 and r.lr_at(32_100, spe) == pytest.approx(0.01)  # /10 at 32k
    assert r.lr_at(48_100, spe) == pytest.approx(0.001)  # and at 48k
    w = get_recipe("he2015-cifar-warmup")
    assert w.lr_at(0, spe) == 0.01 and w.lr_at(391, spe) == 0.1  # 0.01 warm-up, ~400 iterations
    c = get_recipe("quick")
    assert c.lr_at(0, 10) == c.lr and c.lr_at(c.epochs * 10 - 1, 10) < 0.01 * c.lr


def test_recipe_validation() -> None:
    with pytest.raises(ValueError, match="unknown recipe field 'learning_rate'"):
        from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="recipe.epochs"):
        Recipe(epochs=0)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        Recipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="milestones"):
        Recipe(milestones=(0.75, 0.5))
    with pytest.raises(ValueError, match="unknown recipe 'he2017'"):
        get_recipe("he2017")
    assert from_dict(Recipe(lr=0.3).to_dict()) == Recipe(lr=0.3)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_and_atomic(tmp_path: Path) -> None:
    t = {"model.w": torch.randn(3, 4), "rng.torch": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c.safetensors", t, {"epoch": 3, "big": 2**200})
    ck = load_checkpoint(tmp_path / "c.safetensors")
    assert ck.meta["epoch"] == 3 and ck.meta["big"] == 2**200
    torch.testing.assert_close(ck.tensors["model.w"], t["model.w"], rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temp files left


@pytest.mark.parametrize("kind", ["pickle", "truncated", "garbage", "foreign", "missing"])
def test_bad_checkpoints_raise_value_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.safetensors"
    if kind == "pickle":
        torch.save({"w": torch.zeros(2)}, path)
        match = "never unpickles"
    elif kind == "truncated":
        save_checkpoint(path, {"model.w": torch.zeros(100)}, {"epoch": 1})
        path.write_bytes(path.read_bytes()[:-50])
        match = "truncated or corrupt"
    elif kind == "garbage":
        path.write_bytes(b"\x07" * 64)
        match = "not a valid safetensors"
    elif kind == "foreign":
        save_file({"w": torch.zeros(2)}, str(path))
        match = "not a skiplab checkpoint"
    else:
        match = "does not exist"
    with pytest.raises(ValueError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_pickles_are_told_from_safetensors_by_more_than_one_byte(tmp_path: Path) -> None:
    """A raw pickle is refused as one; a checkpoint whose header length starts with the
    byte 0x80 (as a pickle does) is a checkpoint (1 in 256 of them did not load)."""
    import pickle

    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"w": [0.0]}, protocol=4))
    with pytest.raises(ValueError, match="looks like a Python pickle"):
        load_checkpoint(raw)
    path = tmp_path / "c.safetensors"
    for pad in range(256):
        save_checkpoint(path, {"model.w": torch.ones(2)}, {"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert load_checkpoint(path).meta["pad"] == "x" * pad


@pytest.mark.parametrize("where", ["first tensor", "last tensor", "metadata"])
def test_checkpoint_with_damaged_bytes_is_refused(tmp_path: Path, where: str) -> None:
    """safetensors has no checksum of its own: a flipped bit in a tensor loaded as a wrong
    weight. The checkpoint's CRC-32 catches it, and a digit changed in the metadata too."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model.a": torch.ones(64), "model.b": torch.ones(64)}, {"epoch": 3})
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # tensor bytes follow the JSON header
    if where == "metadata":
        at = data.index(b'\\"epoch\\": 3') + len(b'\\"epoch\\": ')
        data[at : at + 1] = b"4"  # still valid JSON
    else:
        data[start + 3 if where == "first tensor" else len(data) - 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: its contents do not match the checksum"):
        load_checkpoint(path)


def test_checkpoint_metadata_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"skiplab": "[1, 2]"})
    with pytest.raises(ValueError, match="corrupt skiplab metadata: a JSON list"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="is a folder; pass the .safetensors file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"model": "resnet-21"}, "names a model this skiplab cannot build .*depth=21"),
        ({"model": "resnet-8", "model_options": {"colour": 1}}, "cannot build .*'colour'"),
        ({"model": "resnet-8", "model_options": [1]}, "model_options is not a mapping"),
    ],
)
def test_load_model_with_bad_model_metadata(tmp_path: Path, meta: dict, match: str) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"model.w": torch.zeros(2)}, meta)
    with pytest.raises(ValueError, match=match) as err:
        load_model(path)
    assert str(path) in str(err.value)


def _interrupted_run(out: Path, data, recipe: Recipe) -> None:
    """A run stopped after its first epoch, with a checkpoint to resume from."""

    def stop(row: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, recipe, out, on_epoch=stop)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m, t: m.pop("epoch"), "epoch=None, expected an integer in \\[0, 3\\]"),
        (lambda m, t: m.update(epoch=7), "epoch=7"),
        (lambda m, t: m.update(epoch=-1), "epoch=-1"),
        (lambda m, t: m.update(history=5), "one row per epoch"),
        (lambda m, t: t.update({"rng.torch": torch.zeros(3, dtype=torch.uint8)}), "generator"),
        (lambda m, t: t.update({"optim.x.momentum_buffer": torch.zeros(1)}), "optimizer state"),
        (lambda m, t: m.update(optimizer={"param_groups": "x"}), "optimizer state"),
    ],
)
def test_resume_checkpoint_with_bad_metadata_is_refused(tmp_path: Path, digits, change, match):
    out, data, recipe = tmp_path / "r", digits.subset(64, 32), tiny_recipe(epochs=3)
    _interrupted_run(out, data, recipe)
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "version")}
    tensors = dict(ckpt.tensors)
    change(meta, tensors)
    save_checkpoint(out / "checkpoint.safetensors", tensors, meta)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=match) as err:
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, recipe, out, resume=True)
    assert str(out / "checkpoint.safetensors") in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 10)), "the forward pass failed"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), r"output \[2, 5\] does not fit 10 classes"),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(64, 20)),
            r"output \[2, 20\] does not fit 10 classes",
        ),
    ],
)
def test_model_that_does_not_fit_the_data_is_refused_before_writing(
    tmp_path: Path, digits, model: nn.Module, match: str
) -> None:
    """A model built for other data is one clear error, and leaves no run folder behind
    (one would block the corrected run: 'already holds a run')."""
    with pytest.raises(ValueError, match=match) as err:
        fit(model, digits.subset(64, 32), tiny_recipe(epochs=1), tmp_path / "r")
    assert "in_channels=1" in str(err.value) and "num_classes=10" in str(err.value)
    assert not (tmp_path / "r").exists()


def test_resume_logs_each_steps_gradients_once(tmp_path: Path, digits) -> None:
    """Gradient rows of the epoch a kill cut short are logged again after resuming: the
    first copies go."""

    def model(steps: int) -> nn.Module:
        return StopAfter(skiplab.create_model("resnet-8", in_channels=1, width=0.25), steps)

    out, data, recipe = tmp_path / "r", digits.subset(256, 32), tiny_recipe(batch_size=64)
    with pytest.raises(Stop):  # 4 steps per epoch: stopped in step 3 of epoch 2
        fit(model(6), data, recipe, out, log_grad_every=1)
    fit(model(10**6), data, recipe, out, log_grad_every=1, resume=True)
    rows = [json.loads(x) for x in (out / "grad_norms.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(8))
    assert [r["epoch"] for r in rows] == [1] * 4 + [2] * 4


def test_checkpoint_for_another_model_is_refused(tmp_path: Path, digits) -> None:
    run = tmp_path / "run"
    model = skiplab.create_model("resnet-8", in_channels=1, width=0.25)
    fit(model, digits.subset(64, 32), tiny_recipe(epochs=1), run, model_name="resnet-8",
        model_options={"in_channels": 1, "width": 0.25})  # fmt: skip
    other = skiplab.create_model("resnet-14", in_channels=1, width=0.25)
    from skiplab.train import load_model_state

    with pytest.raises(ValueError, match="does not fit this model"):
        load_model_state(other, load_checkpoint(run / "model.safetensors").model_state, "x")


# --------------------------------------------------------------------------- fit


def test_fit_writes_the_run_folder(tmp_path: Path, digits) -> None:
    torch.manual_seed(0)
    opts = {"in_channels": 1, "width": 0.5}
    model = skiplab.create_model("preact-resnet-8", **opts)
    res = fit(model, digits, tiny_recipe(batch_size=64), tmp_path / "r", seed=1, model_name="preact-resnet-8",
              model_options=opts, log_grad_every=5)  # fmt: skip
    assert res.status == "finished"
    out = tmp_path / "r"
    assert {
        "run.json",
        "metrics.jsonl",
        "model.safetensors",
        "checkpoint.safetensors",
        "grad_norms.jsonl",
    } <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["model"] == "preact-resnet-8" and run["seed"] == 1
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(rows[0])
    # Each epoch's time, split: the training loop, its rate, the test pass, the whole epoch.
    n_train = digits.train_x.shape[0]
    for r in rows:
        assert r["train_time_s"] > 0 and r["test_time_s"] > 0
        assert r["train_time_s"] + r["test_time_s"] <= r["time_s"] + 1e-3
        assert r["train_img_s"] == pytest.approx(n_train / r["train_time_s"], rel=1e-2)
    assert sum(r["time_s"] for r in rows) == pytest.approx(run["duration_s"], abs=0.05)
    assert run["final_metrics"]["test_acc"] == rows[-1]["test_acc"] > 0.5
    assert run["provenance"]["torch"] == torch.__version__
    grads = json.loads((out / "grad_norms.jsonl").read_text().splitlines()[0])
    assert len(grads["unit_grad_norms"]) == 3
    # The saved weights rebuild the model and reproduce the recorded test accuracy.
    rebuilt, meta = load_model(out / "model.safetensors")
    from skiplab.train import evaluate

    acc = evaluate(rebuilt, digits, tiny_recipe(), torch.device("cpu"), None)["test_acc"]
    assert acc == pytest.approx(rows[-1]["test_acc"])
    assert meta["recipe"]["epochs"] == 2


def test_segmentation_run_reports_miou(tmp_path: Path) -> None:
    shapes = load_dataset("shapes", size=16, n_train=64, n_test=16)
    model = skiplab.create_model("unet", depth=2, base_width=4, in_channels=shapes.in_channels,
                                 num_classes=shapes.num_classes)  # fmt: skip
    res = fit(model, shapes, tiny_recipe(epochs=1, batch_size=16), tmp_path / "u")
    assert res.status == "finished"
    assert 0.0 <= res.final["test_miou"] <= 1.0 and 0.0 <= res.final["test_dice"] <= 1.0


class Exploding(nn.Module):
    """A model whose output becomes NaN after ``after`` training forwards."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.calls > self.after else out


def test_divergence_stops_with_status_and_keeps_last_checkpoint(tmp_path: Path, digits) -> None:
    data = digits.subset(256, 64)
    res = fit(Exploding(after=3), data, tiny_recipe(epochs=3), tmp_path / "d")  # 2 steps/epoch
    assert res.status == "diverged" and "diverged at epoch 2" in res.message
    run = json.loads((tmp_path / "d" / "run.json").read_text())
    assert run["status"] == "diverged"
    assert load_checkpoint(tmp_path / "d" / "checkpoint.safetensors").meta["epoch"] == 1
    assert not (tmp_path / "d" / "model.safetensors").exists()


def test_negative_log_grad_every_is_refused(tmp_path: Path, digits) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="log_grad_every=-1"):
        fit(net, digits.subset(64, 32), tiny_recipe(epochs=1), tmp_path / "r", log_grad_every=-1)
    assert not (tmp_path / "r").exists()


def test_out_dir_with_another_run_is_never_overwritten(tmp_path: Path, digits) -> None:
    out = tmp_path / "r"
    data = digits.subset(64, 32)
    fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, tiny_recipe(epochs=1), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="already holds a run"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, tiny_recipe(epochs=1), out)
    # only the field that differs is named, not the two whole recipes
    with pytest.raises(
        ValueError, match=r"it differs \(recipe\.epochs: run has 1, asked for 5\); "
    ):
        fit(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
            data,
            tiny_recipe(epochs=5),
            out,
            resume=True,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        fit(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
            data,
            tiny_recipe(epochs=1),
            tmp_path / "junk",
        )


# --------------------------------------------------------------------------- CLI


def test_cli_bad_input_exit_2(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["train", "resnet-8", "--data", "imagenet-9000", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 2 and "imagenet-9000" in r.stderr
    bad = tmp_path / "recipe.yaml"
    bad.write_text("lr: 0.1\nmomentumm: 0.9\n")
    r = runner.invoke(
        app, ["train", "resnet-8", "--recipe-file", str(bad), "--out", str(tmp_path / "y")]
    )
    assert r.exit_code == 2 and "momentumm" in r.stderr and "did you mean 'momentum'" in r.stderr
    r = runner.invoke(app, ["train", "resnet-8", "--recipe", "fast", "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "unknown recipe 'fast'" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


TRAIN = [sys.executable, "-m", "skiplab", "train", "resnet-8", "--data", "digits", "--epochs", "4",
         "--batch-size", "64", "--device", "cpu", "--width", "0.5", "--shortcut", "dropout", "--seed", "3"]  # fmt: skip


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path) -> None:
    """A run killed with SIGKILL mid-epoch and resumed ends with the same weights, bit for bit,
    as an uninterrupted run (dropout shortcuts make the global RNG state matter too)."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    first = subprocess.run(
        [*TRAIN, "--out", str(full)], check=True, env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    # Output to a pipe: no progress bar, a line per epoch instead.
    epochs = [line for line in first.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"epoch {i}/4" for i in range(1, 5)]
    assert all("train_loss" in line and "img/s" in line for line in epochs)
    assert "━" not in first.stdout + first.stderr
    proc = subprocess.Popen([*TRAIN, "--out", str(killed)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.15)  # into the third epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    done = subprocess.run([*TRAIN, "--out", str(killed), "--resume"], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    timing = {"time_s", "train_time_s", "test_time_s", "train_img_s"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(rows(full)) == strip(rows(killed))


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "skiplab", "train", "resnet-8", "--data", "digits", "--epochs", "1", "--width", "0.25",
           "--device", "cpu", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["world_size"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "model.safetensors").exists()


@pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode != 0,
                    reason="needs git")  # fmt: skip
def test_provenance_commit_is_skiplabs_own_not_an_enclosing_repository(tmp_path: Path) -> None:
    """skiplab installed into a virtual environment inside the user's project repository
    must not record the project's commit as its own."""
    from skiplab.provenance import git_commit

    def git(*args: str) -> str:
        cmd = ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args]
        return subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "the user's project")
    pkg = tmp_path / "venv" / "skiplab"
    pkg.mkdir(parents=True)
    (pkg / "provenance.py").write_text("# installed copy\n")
    assert git_commit(pkg) is None
    git("add", "venv/skiplab/provenance.py")
    git("commit", "-q", "-m", "a skiplab checkout")
    assert git_commit(pkg) == git("rev-parse", "HEAD").strip()


def test_fit_problem_reads_class_scores_of_both_tasks() -> None:
    """The one check behind `fit` and `skiplab analyze`: what the forward pass gives is
    class scores for the data's classes ([N, C], or [N, C, H, W] no larger than the input)."""
    from skiplab.analysis.blocks import fit_problem

    x = torch.randn(4, 3, 8, 8)
    conv = nn.Conv2d(3, 5, 3)  # 'valid': [N, 5, 6, 6], smaller than the input
    assert fit_problem(conv, x, 5, segmentation=True, exact=True) is None
    up = nn.ConvTranspose2d(3, 5, 3)  # [N, 5, 10, 10]: larger than the masks
    assert fit_problem(up, x, 5, segmentation=True)[0] == "output"
    head = nn.Sequential(nn.Flatten(), nn.Linear(192, 7))
    assert fit_problem(head, x, 5) is None  # more outputs than classes: analyses can run
    kind, why = fit_problem(head, x, 5, exact=True)  # training needs exactly the classes
    assert kind == "output" and "[2, 7]" in why and "[N, 5]" in why
    kind, why = fit_problem(head, torch.randn(4, 1, 8, 8), 5)
    assert kind == "input" and "(2, 1, 8, 8)" in why

    class Scores(nn.Module):
        def forward(self, x: torch.Tensor) -> dict:
            return {"out": x.flatten(1)}

    assert fit_problem(Scores(), x, 5) is None  # not a tensor: the analysis's loss decides
    assert fit_problem(Scores(), x, 5, exact=True) == (
        "output",
        "its output dict is not class scores [N, 5]",
    )
    head.train()
    fit_problem(head, x, 5)
    assert head.training  # the mode is restored


def test_fixup_resnet_checkpoint_roundtrip(tmp_path: Path, digits) -> None:
    """A Fixup downsampling unit's shortcut reads the branch's first bias: the bias is one
    tensor in the state dict (safetensors refuses two names for one tensor)."""
    opts = {"in_channels": 1, "width": 0.25, "init": "fixup", "norm": "none"}
    model = skiplab.create_model("resnet-8", **opts)
    res = fit(model, digits.subset(64, 32), tiny_recipe(epochs=1), tmp_path / "r",
              model_name="resnet-8", model_options=opts)  # fmt: skip
    assert res.status == "finished"
    loaded, _ = load_model(tmp_path / "r" / "model.safetensors")
    x = digits.test_x[:4]
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
