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
        (["paths", "preact-resnet-20"], lambda r: r["min"] == 1),
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
            ["shattered", "mlp,resmlp", "--depths", "4", "--inits", "1"],
            lambda r: len(r["rows"]) == 2,
        ),
        (
            ["identity", "mlp", "--depths", "4", "--steps", "10", "--tasks", "identity"],
            lambda r: "rows" in r or r,
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
