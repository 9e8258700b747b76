"""`skiplab analyze`: every kind writes result.json and a figure; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skiplab.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["paths", "resnet-20"], lambda r: r["min"] == 10 and r["max"] == 19 and r["total"] == 512),
        (["paths", "preact-resnet-20"], lambda r: r["min"] == 2),
        (["gradflow", "resnet-8", "--width", "0.5"], lambda r: len(r["units"]) == 3),
        (["pathgrad", "resnet-8", "--batch", "4"], lambda r: len(r["norms"]) == 4),
        (
            ["pathgrad", "resnet-20", "--batch", "4", "--max-length", "3", "--samples", "0"],
            lambda r: r["max_length"] == 3 and len(r["norms"]) == 5 and r["per_path_norm"] is None,
        ),
        (["lesion", "resnet-8"], lambda r: len(r["single"]) == 3),
        (
            ["nlc", "resmlp-4", "--act", "identity", "--norm", "none"],
            lambda r: abs(r["value"] - 1) < 1e-3,
        ),
        (
            ["landscape", "resnet-8", "--dims", "1", "--steps", "3", "--batch", "16"],
            lambda r: len(r["values"]) == 3,
        ),
        (
            ["shattered", "mlp,resmlp", "--depths", "4", "--inits", "1", "--seed", "7"],
            lambda r: len(r["rows"]) == 2 and r["seed"] == 7,
        ),
        (
            ["identity", "mlp", "--depths", "4", "--steps", "10", "--tasks", "identity"],
            lambda r: r["config"]["steps"] == 10 and len(r["runs"]) == 1,
        ),
    ],
)
def test_analyze_kinds(tmp_path: Path, args: list[str], check) -> None:
    out = tmp_path / "o"
    result = runner.invoke(app, ["analyze", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "result.json").read_text())
    assert check(data)
    assert (out / f"{args[0]}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bogus", "resnet-20"], "unknown analysis 'bogus'"),
        (["pathgrad", "plain-20"], "blocks=[...]"),
        (["paths", "resnt-20"], "did you mean 'resnet-20'"),
        (["paths"], "needs a model name"),
        (["paths", "resnet-20", "--until", "stages.9"], "stages.9"),
        (["lesion", "resnet-8", "--max-length", "3"], "--max-length is for pathgrad, not lesion"),
        (["landscape", "resnet-8", "--precision", "fp16"], "allowed: 'fp32', 'bf16'"),
        # options another analysis reads are errors, not silently ignored
        (["landscape", "resnet-8", "--blocks", "x"], "--blocks is for paths, gradflow,"),
        (["shattered", "mlp", "--batch", "3"], "--batch is for gradflow, pathgrad,"),
        (["paths", "resnet-8", "--steps", "3"], "--steps is for landscape, identity, not paths"),
        (["identity", "mlp", "--data", "shapes"], "--data is for paths,"),
        (["identity", "mlp", "--data-option", "size=8"], "--data-option is for paths,"),
        (["gradflow", "resnet-8", "--batch", "0"], "invalid --batch 0: must be at least 1"),
        (["nlc", "resnet-8", "--batch", "1"], "must be at least 2"),
        (["shattered", "mlp", "--depths", "4,x"], "invalid --depths '4,x'"),
        # a model built for other data fails before the analysis, naming the option
        (["gradflow", "resnet-8", "--in-channels", "3"], "fit 'digits' data: the forward pass"),
        (["pathgrad", "resnet-8", "--num-classes", "5"], "output [2, 5] does not fit 10 classes"),
        (["pathgrad", "resnet-8", "--num-classes", "5"], "drop --num-classes (or set it to 10)"),
        (["pathgrad", "unet"], "--blocks NAME,NAME"),
        (["pathgrad", "resnet-8", "--blocks", ","], "blocks=[] names no units"),
    ],
)
def test_analyze_bad_input(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["analyze", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output


def test_analyze_refuses_a_pickle(tmp_path: Path) -> None:
    import torch

    bad = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(1)}, bad)
    result = runner.invoke(app, ["analyze", "nlc", str(bad)])
    assert result.exit_code == 2 and "never unpickles" in result.stderr


def _write_run(run: Path, data_options: dict | None = None) -> None:
    """A run folder as skiplab's trainer leaves it (weights + the metadata they carry)."""
    import torch

    import skiplab
    from skiplab.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    opts = {"in_channels": 1, "width": 0.5}
    model = skiplab.create_model("resnet-8", **opts)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"model": "resnet-8", "model_options": opts, "data": "digits",
            "data_options": data_options or {}}  # fmt: skip
    run.mkdir(parents=True)
    save_checkpoint(run / "model.safetensors", state, meta)


def test_analyze_keeps_what_is_written(tmp_path: Path, monkeypatch) -> None:
    """Default folders are named after the run; a folder holding another analysis or
    another model's result is refused (nothing overwritten); a rerun replaces its own
    result; an --out that is a file is refused before the analysis runs."""
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path / "runs" / "a")
    _write_run(tmp_path / "runs" / "b")
    for run in ("a", "b"):
        result = runner.invoke(app, ["analyze", "nlc", f"runs/{run}/model.safetensors"])
        assert result.exit_code == 0, result.output
    a, b = (tmp_path / "analyses" / f"nlc-{r}" / "result.json" for r in "ab")
    assert "runs/a" in json.loads(a.read_text())["target"]
    assert "runs/b" in json.loads(b.read_text())["target"]
    before = a.read_bytes()
    out = str(a.parent)
    for args in (["gradflow", "runs/a"], ["nlc", "runs/b"]):  # another kind / another model
        result = runner.invoke(app, ["analyze", *args, "--out", out])
        assert result.exit_code == 2 and "already holds the nlc analysis" in result.stderr
        assert a.read_bytes() == before and not (a.parent / "gradflow.png").exists()
    result = runner.invoke(app, ["analyze", "nlc", "runs/a", "--out", out, "--batch", "8"])
    assert result.exit_code == 2 and "with another batch" in result.stderr
    assert a.read_bytes() == before
    again = ["analyze", "nlc", str((tmp_path / "runs" / "a").resolve()), "--out", out]
    result = runner.invoke(app, again)  # the same analysis (the run by another path): replaced
    assert result.exit_code == 0, result.output
    assert json.loads(a.read_text())["invocation"]["target"].endswith("a/model.safetensors")
    result = runner.invoke(app, ["analyze", "gradflow", "runs/a", "--seed", "3"])
    assert result.exit_code == 2 and "--seed changes nothing in gradflow" in result.stderr
    # a model built with other options is another analysis: refused, not overwritten
    assert runner.invoke(app, ["analyze", "paths", "resnet-8"]).exit_code == 0
    result = runner.invoke(app, ["analyze", "paths", "resnet-8", "--width", "0.5"])
    assert result.exit_code == 2 and "with another model_options" in result.stderr
    (tmp_path / "file").write_text("keep")
    for bad in ("file", "file/sub"):
        result = runner.invoke(app, ["analyze", "paths", "resnet-8", "--out", bad])
        assert result.exit_code == 2 and "is a file" in result.stderr
    assert (tmp_path / "file").read_text() == "keep"


def test_analyze_checkpoint_on_other_data(tmp_path: Path) -> None:
    """A run's data options apply to its own data set only: --data picks another one
    without them."""
    _write_run(tmp_path / "r", data_options={"test_size": 0.5})
    result = runner.invoke(
        app, ["analyze", "nlc", str(tmp_path / "r"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["analyze", "paths", str(tmp_path / "r"), "--data", "shapes", "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 0, result.output  # before: unknown option 'test_size'
    assert "trained" in json.loads((tmp_path / "p" / "result.json").read_text())["target"]


MYNET = """
from torch import nn


class Unit(nn.Module):  # the branch/shortcut protocol: out = x + branch(x)
    def __init__(self, c):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(c, c, 3, padding=1))
        self.shortcut = None

    def forward(self, x):
        return x + self.branch(x)


def build(width=4, units=3):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), *[Unit(width) for _ in range(units)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


instance = build()
number = 3


def not_a_model():
    return 3
"""


@pytest.fixture
def mynet(user_module):
    """A user's model file in the working directory (not on sys.path: the CLI looks there)."""
    return user_module("mynet", MYNET)


def test_analyze_a_users_model_from_module_and_factory(mynet: Path) -> None:
    # `module:factory`, imported from the working directory, called with the options.
    import math

    tmp_path = mynet
    res = runner.invoke(app, ["analyze", "paths", "mynet:build", "--units", "5"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "analyses" / "paths-mynet_build" / "result.json").read_text())
    # 5 units, one ReLU per branch, identity shortcuts: C(5, k) paths with k ReLUs
    assert {int(k): v for k, v in r["counts"].items()} == {k: math.comb(5, k) for k in range(6)}
    res = runner.invoke(app, ["analyze", "pathgrad", "mynet:instance", "--batch", "2"])
    assert res.exit_code == 0, res.output
    # torchvision's own class: resnet18, 8 basic blocks, stem ReLU + max-pool, a ReLU after
    # every addition: C(8, k) paths with 10 + k nonlinearities
    res = runner.invoke(app, ["analyze", "paths", "torchvision.models:resnet18", "--data",
                              "random", "--num-classes", "10"])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(next((tmp_path / "analyses").glob("paths-torchvision*/result.json")).read_text())
    assert {int(k): v for k, v in r["counts"].items()} == {
        10 + k: math.comb(8, k) for k in range(9)
    }
    # Data of the shape a model takes: noise images via --data-option.
    res = runner.invoke(app, ["analyze", "gradflow", "mynet:build", "--data", "random",
                              "--data-option", "channels=1", "--data-option", "size=12",
                              "--batch", "3", "--out", "gf"])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "gf" / "result.json").read_text())
    assert r["invocation"]["data_option"] == ["channels=1", "size=12"] and len(r["units"]) == 3
    res = runner.invoke(app, ["analyze", "gradflow", "mynet:build", "--data", "random"])
    assert res.exit_code == 2 and "--data-option channels=C" in res.stderr


@pytest.mark.parametrize(
    ("target", "extra", "needle"),
    [
        ("nosuchmodule:build", [], "cannot import 'nosuchmodule'"),
        ("mynet:nothing", [], "'mynet' has no 'nothing'"),
        ("mynet:number", [], "not a model factory to call (its type is int)"),
        ("mynet:not_a_model", [], "must return a torch nn.Module; it returned type int"),
        ("mynet:build", ["--depth", "3"], "mynet:build(depth=3) failed"),
        ("mynet:instance", ["--width", "3"], "a module instance, not a factory"),
        ("mynet:build", ["--data-option", "bogus=1"], "unknown option 'bogus' for data set"),
        ("mynet:build", ["--data-option", "size"], "invalid --data-option 'size': use KEY=VALUE"),
    ],
)
def test_analyze_a_users_model_bad_input(mynet: Path, target, extra, needle) -> None:
    tmp_path = mynet
    res = runner.invoke(app, ["analyze", "paths", target, *extra])
    assert res.exit_code == 2 and needle in res.stderr, res.output
    assert "Traceback" not in res.output and not (tmp_path / "analyses").exists()


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (["paths", "resnet-8"], ["--data", "digits"]),
        (["gradflow", "resnet-8", "--width", "0.25"], ["--batch", "64"]),
        (["pathgrad", "resnet-8", "--width", "0.25", "--batch", "2"],
         ["--samples", "2", "--precision", "fp32"]),
        (["landscape", "resnet-8", "--width", "0.25", "--batch", "4", "--steps", "3"],
         ["--dims", "2", "--precision", "fp32"]),
        (["shattered", "mlp", "--inits", "1", "--points", "32", "--max-lag", "4", "--width", "8"],
         ["--depths", "4,10,24,50"]),
    ],
)  # fmt: skip
def test_analyze_a_default_given_explicitly_is_the_same_analysis(
    tmp_path: Path, first: list[str], again: list[str]
) -> None:
    """`analyze paths resnet-20 --data digits` after `analyze paths resnet-20` was refused
    ("already holds ... with another data"): the invocation held the flags, not the values."""
    out = ["--out", str(tmp_path / "o")]
    assert runner.invoke(app, ["analyze", *first, *out]).exit_code == 0
    before = json.loads((tmp_path / "o" / "result.json").read_text())["invocation"]
    result = runner.invoke(app, ["analyze", *first, *again, *out])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "result.json").read_text())["invocation"] == before
    flags = dict(zip(again[::2], again[1::2], strict=True))
    recorded = {f"--{k}": v for k, v in before.items()}
    assert {k: str(recorded[k]).replace(" ", "").strip("[]") for k in flags} == flags


def test_analyze_replaces_a_result_whose_invocation_holds_flags_only(tmp_path: Path) -> None:
    """Results written before invocations recorded defaults: the same analysis replaces
    them, another one is still refused."""
    out = ["--out", str(tmp_path / "o")]
    path = tmp_path / "o" / "result.json"
    assert (
        runner.invoke(app, ["analyze", "nlc", "resnet-8", "--width", "0.25", *out]).exit_code == 0
    )
    doc = json.loads(path.read_text())
    assert doc["invocation"]["batch"] == 64 and doc["invocation"]["data"] == "digits"
    old = {k: doc["invocation"][k] for k in ("analysis", "target", "model_options", "seed")}
    path.write_text(json.dumps({**doc, "invocation": old}))
    result = runner.invoke(app, ["analyze", "nlc", "resnet-8", "--width", "0.25", "--batch", "8",
                                 *out])  # fmt: skip
    assert result.exit_code == 2 and "with another batch" in result.stderr
    result = runner.invoke(app, ["analyze", "nlc", "resnet-8", "--width", "0.25", "--data",
                                 "digits", *out])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(path.read_text())["invocation"]["batch"] == 64


def test_analyze_without_a_target_writes_to_analyses_kind(tmp_path: Path, monkeypatch) -> None:
    """`analyze shattered` wrote to analyses/shattered-shattered; --models a,b is the
    argument a,b (one folder, one analysis)."""
    from skiplab.cli import _analysis_out

    monkeypatch.chdir(tmp_path)
    small = ["--depths", "4", "--inits", "1", "--points", "32", "--max-lag", "4", "--width", "8"]
    assert runner.invoke(app, ["analyze", "shattered", *small]).exit_code == 0
    assert (tmp_path / "analyses" / "shattered" / "result.json").exists()
    assert _analysis_out(None, "identity", None) == Path("analyses/identity")
    assert runner.invoke(app, ["analyze", "shattered", "mlp,resmlp", *small]).exit_code == 0
    result = runner.invoke(app, ["analyze", "shattered", "--models", "mlp,resmlp", *small])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "analyses").iterdir()) == [
        "shattered",
        "shattered-mlp_resmlp",
    ]


TINY_VIT = """
from torchvision.models.vision_transformer import VisionTransformer


def build(layers=2):
    return VisionTransformer(image_size=16, patch_size=8, num_layers=layers, num_heads=2,
                             hidden_dim=8, mlp_dim=16, num_classes=3)
"""


def test_analyze_splits_transformer_blocks_on_request(user_module) -> None:
    # ViT's blocks hold two additions each: without --split-sublayers one clear message,
    # with it a lesion of each attention and MLP sublayer
    tmp_path = user_module("tinyvit", TINY_VIT)
    data = ["--data", "random", "--data-option", "size=16", "--data-option", "classes=3",
            "--data-option", "n_test=8"]  # fmt: skip
    res = runner.invoke(app, ["analyze", "lesion", "tinyvit:build", *data])
    assert res.exit_code == 2 and "--split-sublayers" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["analyze", "lesion", "tinyvit:build", *data, "--split-sublayers"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "analyses" / "lesion-tinyvit_build" / "result.json").read_text())
    assert [row["name"] for row in r["single"]] == [
        f"encoder.layers.encoder_layer_{i}.{s}" for i in (0, 1) for s in ("attn", "mlp")
    ]
    assert r["invocation"]["split_sublayers"] is True
    res = runner.invoke(app, ["analyze", "landscape", "tinyvit:build", *data, "--split-sublayers"])
    assert res.exit_code == 2 and "--split-sublayers is for" in res.stderr
