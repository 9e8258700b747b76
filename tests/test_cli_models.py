"""The CLI's model commands: output, options and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from skiplab.cli import app, parse_options

runner = CliRunner()


def test_models_lists_families_and_options() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    names = {e["name"] for e in json.loads(result.stdout)}
    assert {"resnet-D", "preact-resnet-D", "plain-D", "unet", "resnet50", "mlp-D"} <= names
    result = runner.invoke(app, ["models", "preact-resnet-110", "--json"])
    assert json.loads(result.stdout)["placement"] == "full-preact"


def test_summary_with_options() -> None:
    result = runner.invoke(app, ["summary", "resnet-20", "--shortcut", "projection", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["params"] == 272_474 and s["units"] == 9
    assert s["shortcuts"] == {"identity": 7, "projection": 2}
    assert s["macs"] > 40_000_000
    result = runner.invoke(
        app,
        [
            "summary",
            "unet",
            "--skip",
            "concat,none,add,add",
            "--base-width=8",
            "--input-size",
            "64",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output_shape"] == [2, 64, 64]


def test_summary_of_any_model_by_module_and_factory() -> None:
    # torchvision's own ResNet-50: 16 bottlenecks, 4 with a projection (the first of each
    # stage), ReLU after each addition; 25,557,032 parameters, 4.09 GMACs at 224x224.
    result = runner.invoke(app, ["summary", "torchvision.models:resnet50", "--input-size",
                                 "3,224,224", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["params"] == 25_557_032 and s["output_shape"] == [1000]
    assert s["units"] == 16 and s["shortcuts"] == {"projection": 4, "identity": 12}
    assert s["placements"] == {"original": 16}
    assert 4.0e9 < s["macs"] < 4.2e9
    result = runner.invoke(app, ["summary", "torchvision.models:resnet18", "--num-classes", "7",
                                 "--input-size", "3,32,32", "--json"])  # fmt: skip
    assert json.loads(result.stdout)["output_shape"] == [7]
    result = runner.invoke(app, ["summary", "torchvision.models:resnet18"])
    assert result.exit_code == 2 and "give --input-size C,H,W" in result.stderr


def test_parse_options() -> None:
    assert parse_options(["--gate-bias", "-6", "--branch-scale=rezero", "--width", "0.5"]) == {
        "gate_bias": -6, "branch_scale": "rezero", "width": 0.5}  # fmt: skip
    assert parse_options(["--skip", "[concat, none]"]) == {"skip": ["concat", "none"]}
    with pytest.raises(ValueError, match="needs a value"):
        parse_options(["--width"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["summary", "resnet-21"], "depth=21"),
        (["summary", "resnt-20"], "did you mean 'resnet-20'"),
        (["summary", "resnet-20", "--placement", "pre"], "placement='pre'"),
        (["summary", "resnet-20", "--init", "fixup"], "norm='none'"),
        (["summary", "unet", "--input-size", "100"], "multiple of 16"),
        (["models", "nope-20"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and needle in err
    assert "\n" not in err and "Traceback" not in result.output


def test_console_script_exit_code_and_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "skiplab", "summary", "resnet-20", "--shortcut", "bogus"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "shortcut='bogus'" in proc.stderr


def test_models_table_says_what_a_none_default_means() -> None:
    """shortcut_scale, shortcut_dropout and gate_bias showed as None; the values shown are
    the ones a unit takes (checked against the built model)."""
    import torch
    from torch import nn

    import skiplab
    from skiplab.cli import _none_means
    from skiplab.models.blocks import Gate
    from skiplab.models.layers import Scale

    none_means = _none_means()
    result = runner.invoke(app, ["models", "resnet-20"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for k in ("shortcut_scale", "shortcut_dropout", "gate_bias", "block", "shortcut"):
        assert none_means[k] in result.stdout
    shown = {k: float(none_means[k].split("(")[1].split()[0]) for k in
             ("shortcut_scale", "shortcut_dropout", "gate_bias")}  # fmt: skip

    def parts(shortcut: str, kind: type) -> list:
        model = skiplab.create_model("resnet-8", shortcut=shortcut)
        return [m for m in model.modules() if isinstance(m, kind)]

    assert {m.scale.item() for m in parts("scaling", Scale)} == {shown["shortcut_scale"]}
    assert {m.p for m in parts("dropout", nn.Dropout)} == {shown["shortcut_dropout"]}
    for gating in ("exclusive-gating", "shortcut-only-gating"):
        biases = torch.cat([m.bias.detach() for m in parts(gating, Gate)])
        assert biases.eq(shown["gate_bias"]).all()
