"""Bad input anywhere in the CLI: one line ``error: ...``, exit 2, no traceback, and
nothing already written lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skiplab.cli import app, main, parse_value

runner = CliRunner()

FACTORIES = """
def explodes(**options):
    raise RuntimeError("factory exploded")


def missing_key(**options):
    return {}["width"]
"""


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("explodes", "userfactories:explodes() failed: RuntimeError: factory exploded"),
        ("missing_key", "userfactories:missing_key() failed: KeyError: 'width'"),
    ],
)
def test_a_factory_that_raises_is_one_message(user_module, factory: str, needle) -> None:
    folder = user_module("userfactories", FACTORIES)
    target = f"userfactories:{factory}"
    _one_line_error(runner.invoke(app, ["summary", target, "--input-size", "3"]), needle)
    _one_line_error(runner.invoke(app, ["analyze", "paths", target]), needle)
    assert not (folder / "analyses").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[1, 2]\n", "expected a mapping of recipe fields, got list"),
        ("42\n", "expected a mapping of recipe fields, got int"),
        (b"\xff\xfe\x00", "cannot read --recipe-file"),
    ],
)
def test_recipe_file_that_is_not_a_mapping(tmp_path: Path, content, needle) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "resnet-8", "--recipe-file", str(path), "--out", str(out)]
    )
    _one_line_error(result, needle)
    assert str(path) in result.stderr and not out.exists()


def test_recipe_file_may_name_a_preset(tmp_path: Path, monkeypatch) -> None:
    """As in a study's ``recipe:``, a recipe file may start from a preset."""
    import skiplab.train as train

    seen = {}

    def fake_fit(model, data, recipe, out_dir, **kwargs):
        seen["recipe"] = recipe
        raise ValueError("stop here")

    monkeypatch.setattr(train, "fit", fake_fit)
    path = tmp_path / "recipe.yaml"
    path.write_text("preset: he2015-cifar\nepochs: 3\n")
    result = runner.invoke(app, ["train", "resnet-8", "--recipe-file", str(path), "--lr", "0.2",
                                 "--out", str(tmp_path / "run")])  # fmt: skip
    _one_line_error(result, "stop here")
    rec = seen["recipe"]
    assert (rec.name, rec.epochs, rec.lr, rec.batch_size) == ("he2015-cifar", 3, 0.2, 128)
    path.write_text("preset: nosuch\n")
    result = runner.invoke(app, ["train", "resnet-8", "--recipe-file", str(path)])
    _one_line_error(result, "unknown recipe 'nosuch'")


def test_negative_log_grad_every_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "resnet-8", "--log-grad-every", "-1", "--out", str(out)]
    _one_line_error(runner.invoke(app, args), "invalid --log-grad-every -1")
    assert not out.exists()


@pytest.mark.parametrize("command", [["train", "resnet-8", "--epochs", "1"], ["study", "--quick"]])
def test_out_that_is_a_file_is_refused(tmp_path: Path, command: list[str]) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("keep")
    for out in (keep, keep / "sub"):
        result = runner.invoke(app, [*command, "--out", str(out)])
        _one_line_error(result, f"{keep} is a file; choose a folder")
    assert keep.read_text() == "keep"


def test_out_that_cannot_be_created_is_one_message(tmp_path: Path) -> None:
    # /proc refuses new folders even to root (a read-only place for any user).
    result = runner.invoke(app, ["analyze", "paths", "resnet-8", "--out", "/proc/skiplab-x"])
    _one_line_error(result, "/proc/skiplab-x")


def test_a_run_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "nope"
    _one_line_error(
        runner.invoke(app, ["analyze", "paths", str(missing)]), f"no run folder or file {missing}"
    )


def test_options_of_identity_without_models(tmp_path: Path) -> None:
    """With no model list, an option is not taken for the models argument; ``--seeds 3``
    is one seed."""
    out = tmp_path / "o"
    args = ["analyze", "identity", "--dim", "4", "--depths", "4", "--steps", "2",
            "--tasks", "identity", "--seeds", "3", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["dim"] == 4 and result["seeds"] == [3]


@pytest.mark.parametrize("depths", ["-3", "0", "4,0"])
def test_depths_must_be_positive(tmp_path: Path, depths: str) -> None:
    args = ["analyze", "shattered", "mlp", "--depths", depths, "--out", str(tmp_path / "o")]
    _one_line_error(runner.invoke(app, args), f"invalid --depths {depths!r}")


def test_values_in_scientific_notation_are_numbers() -> None:
    # YAML 1.1 reads 1e-3 as a string; on the command line it is a number.
    assert parse_value("1e-3") == 1e-3 and parse_value("-5E+1") == -50.0
    assert parse_value("2.5e-2,1e1") == [0.025, 10.0]
    assert parse_value("e5") == "e5" and parse_value("0.5") == 0.5
    result = runner.invoke(app, ["summary", "resnet-8", "--shortcut", "scaling",
                                 "--shortcut-scale", "5e-1", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_values_are_read_as_yaml_1_2_not_1_1() -> None:
    # YAML 1.1 would turn these into True, False, 8 and 750 (base 60)
    assert parse_value("yes") == "yes" and parse_value("off") == "off"
    assert parse_value("010") == 10 and parse_value("12:30") == "12:30"
    assert parse_value("none") == "none" and parse_value("null") == "null"
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("[concat, none, 2, 0.5]") == ["concat", "none", 2, 0.5]
    assert parse_value("{n_train: 100, name: x}") == {"n_train": 100, "name": "x"}
    assert parse_value("[yes, 010]") == ["yes", 10]


def test_analysis_figure_not_overwritten(tmp_path: Path) -> None:
    """A folder holding a PNG of that name (but no result) is refused: nothing is lost."""
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "paths.png").write_bytes(b"mine")
    result = runner.invoke(app, ["analyze", "paths", "resnet-8", "--out", str(out)])
    _one_line_error(result, "paths.png")
    assert (out / "paths.png").read_bytes() == b"mine" and not (out / "result.json").exists()


def test_not_a_model_name_says_what_the_command_takes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _one_line_error(runner.invoke(app, ["summary", str(run)]), "not a run")
    _one_line_error(
        runner.invoke(app, ["train", "torchvision.models:resnet18"]), "skiplab.train.fit"
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "resnet-8", "--epochs", "abc"], "Invalid value for '--epochs'"),
        (["study", "--bogus"], "No such option: --bogus"),
        (["report"], "Missing argument"),
        (["nosuchcmd"], "No such command 'nosuchcmd'"),
    ],
)
def test_usage_errors_are_one_line(monkeypatch, capsys, argv: list[str], needle: str) -> None:
    monkeypatch.setattr(sys, "argv", ["skiplab", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_main_exit_codes(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["skiplab", "models", "--json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("[")
    monkeypatch.setattr(sys, "argv", ["skiplab", "summary", "resnet-8", "--width", "-1"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "invalid width=-1" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["skiplab", "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0 and "analyze" in capsys.readouterr().out


def test_identity_models_given_twice_is_refused(tmp_path: Path) -> None:
    args = ["analyze", "identity", "plain", "--models", "resnet", "--out", str(tmp_path / "o")]
    _one_line_error(runner.invoke(app, args), "give the models once")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["summary", "unet", "--input_size", "256"], "command's option is written --input-size"),
        (["train", "resnet-8", "--batch_size", "3"], "command's option is written --batch-size"),
        (["analyze", "paths", "resnet-8", "--data_dir", "/x"], "is written --data-dir"),
    ],
)
def test_a_command_option_written_with_underscores_is_named(tmp_path: Path, args, needle) -> None:
    _one_line_error(
        runner.invoke(app, [*args, "--out", str(tmp_path / "o")] if args[0] != "summary" else args),
        needle,
    )
    assert not (tmp_path / "o").exists()
