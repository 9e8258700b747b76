"""lesion and loss_landscape: integer class targets outside 0..C-1 are one clear
ValueError before any full pass; the checks run once; the model's modes are kept; models
with a BatchNorm1d that keeps no running statistics work."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skiplab
from skiplab.analysis.landscape import loss_landscape
from skiplab.analysis.lesion import lesion

# The module (skiplab.analysis.lesion is also the name of the function).
lesion_module = importlib.import_module("skiplab.analysis.lesion")


def five_classes() -> nn.Module:
    torch.manual_seed(0)
    return skiplab.create_model("resmlp-8", hidden=6, in_channels=4, num_classes=5)


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
TOO_LARGE = labels(0, 1, 2, 3, 4, 9)
NEGATIVE = labels(0, 1, -1, 3, 4, 2)
IN_RANGE = labels(0, 1, 2, 3, 4, 2)


def forwards(model: nn.Module) -> list[int]:
    """Count forward passes of ``model`` (a hook the caller removes with the model)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    return calls


def run(analysis: str, model: nn.Module, data, **kw):
    if analysis == "lesion":
        return lesion(model, data, k_values=[1], draws=1, **kw)
    return loss_landscape(model, data, steps=3, **kw)


CASES = [
    ("lesion", {"metric": "accuracy"}),
    ("lesion", {"metric": "loss"}),
    ("landscape", {"method": "inplace"}),
    ("landscape", {"method": "loop"}),
    ("landscape", {"method": "vmap"}),
]


@pytest.mark.parametrize(("analysis", "kw"), CASES)
def test_labels_out_of_range_are_one_clear_message(analysis: str, kw: dict) -> None:
    model = five_classes()
    calls = forwards(model)
    with pytest.raises(
        ValueError,
        match=r"largest label is 9, but the model has 5 outputs \(classes 0\.\.4\); "
        r"build the model with num_classes=10, or pass class labels in 0\.\.4",
    ):
        run(analysis, model, (X, TOO_LARGE), **kw)
    assert len(calls) == 1  # one forward pass of two samples, before any full pass
    with pytest.raises(ValueError, match=r"smallest label is -1, but the model has 5 outputs"):
        run(analysis, model, (X, NEGATIVE), **kw)


@pytest.mark.parametrize(("analysis", "kw"), CASES)
def test_labels_in_range_still_work(analysis: str, kw: dict) -> None:
    model = five_classes().eval()
    r = run(analysis, model, (X, IN_RANGE), **kw)
    with torch.no_grad():
        out = model(X)
    loss, acc = (
        float(F.cross_entropy(out, IN_RANGE)),
        float((out.argmax(1) == IN_RANGE).mean(dtype=torch.float64)),
    )
    if analysis == "lesion":
        assert r.baseline == pytest.approx(acc if kw["metric"] == "accuracy" else loss, rel=1e-6)
    else:
        assert r.center_loss == pytest.approx(loss, rel=1e-5)
        assert r.center_accuracy == pytest.approx(acc)


def test_every_target_is_checked_where_the_data_is_in_memory() -> None:
    # The bad label is in the second batch / chunk: lesion lists its batches, and
    # loss_landscape checks all the targets of (x, y) tensors, whatever the batch_size.
    model = five_classes()
    batches = [(X[:3], IN_RANGE[:3]), (X[3:], TOO_LARGE[3:])]
    with pytest.raises(
        ValueError, match="lesion: class targets out of range: the largest label is 9"
    ):
        lesion(model, batches)
    with pytest.raises(ValueError, match="loss_landscape: .*the largest label is 9"):
        loss_landscape(model, (X, TOO_LARGE), steps=3, batch_size=2)


def test_segmentation_labels_are_checked_per_pixel() -> None:
    torch.manual_seed(0)
    model = skiplab.create_model("unet", depth=1, base_width=4)  # 2 classes
    x = torch.randn(2, 1, 8, 8)
    y = torch.zeros(2, 8, 8, dtype=torch.int64)
    y[1, 3, 4] = 2
    with pytest.raises(ValueError, match=r"largest label is 2, but the model has 2 outputs"):
        loss_landscape(model, (x, y), steps=2)
    y[1, 3, 4] = 1
    r = loss_landscape(model, (x, y), steps=2)
    assert r.center_accuracy is not None


def test_a_custom_loss_or_float_targets_are_not_checked(caplog: pytest.LogCaptureFixture) -> None:
    model = five_classes()
    # The user's loss decides what its targets mean (here: one regression target per class).
    r = loss_landscape(model, (X, torch.randn(6, 5)), steps=3)
    assert r.center_accuracy is None
    loss = lambda out, y: (out.sum(1) - y).pow(2).mean()  # noqa: E731
    with caplog.at_level("WARNING", logger="skiplab.analysis.landscape"):
        r = loss_landscape(model, (X, TOO_LARGE), steps=3, loss_fn=loss)
    assert r.center_loss > 0
    # ...but labels beyond the outputs are no classes: no accuracy, and a warning says why.
    assert r.center_accuracy is None and r.accuracy is None
    assert "largest label" in caplog.text and "no accuracy" in caplog.text
    r = loss_landscape(model, (X, IN_RANGE), steps=3, loss_fn=loss)
    assert r.center_accuracy is not None  # labels in range: counted as ever


def test_lesion_checks_the_output_once_per_lesion(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    check = lesion_module._check_output
    monkeypatch.setattr(lesion_module, "_check_output", lambda *a: (calls.append(1), check(*a))[1])
    model = five_classes()  # 3 units
    batches = [(X[:2], IN_RANGE[:2]), (X[2:4], IN_RANGE[2:4]), (X[4:], IN_RANGE[4:])]
    r = lesion(model, batches, k_values=[1], swaps=False)
    passes = 1 + len(r.single) + r.random_k[0]["draws"]
    assert passes == 7
    # Every batch of the intact model's pass, the first batch of each lesioned one.
    assert len(calls) == len(batches) + passes - 1


def test_stacked_methods_keep_each_submodule_mode() -> None:
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25)
    model.train()
    frozen = model.stages[0][0].branch  # e.g. a frozen part, left in eval mode
    frozen.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for method in ("loop", "vmap", "inplace"):
        loss_landscape(model, (x, y), steps=2, method=method)
        assert {n: m.training for n, m in model.named_modules()} == modes, method


class Unit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6, track_running_stats=False))
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.branch(x)


def test_batchnorm1d_without_running_stats() -> None:
    # Such a BN normalises over the batch, so it cannot run on one sample.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), Unit(), Unit(), nn.Linear(6, 3)).eval()
    y = labels(0, 1, 2, 0, 1, 2)
    with torch.no_grad():
        out = net(X)
    loss = float(F.cross_entropy(out, y))
    for method in ("inplace", "loop"):
        assert loss_landscape(net, (X, y), steps=2, method=method).center_loss == pytest.approx(
            loss, rel=1e-5
        )
    r = lesion(net, (X, y), blocks=["1", "2"], metric="loss")
    assert r.baseline == pytest.approx(loss, rel=1e-6)


def test_landscape_dims_must_be_an_int() -> None:
    with pytest.raises(ValueError, match=r"invalid dims=1\.0"):
        loss_landscape(five_classes(), (X, IN_RANGE), dims=1.0)


@pytest.mark.parametrize("analysis", ["gradient_flow", "path_gradients"])
def test_gradient_analyses_name_labels_out_of_range(analysis: str) -> None:
    """The default loss of gradient_flow and path_gradients checks the labels first: one
    clear error, not cross-entropy's IndexError (a device-side assert on a GPU)."""
    import skiplab.analysis as A

    model = skiplab.create_model("resnet-8", width=0.25, num_classes=5).eval()
    x = torch.randn(4, 3, 8, 8)
    fn = getattr(A, analysis)
    with pytest.raises(ValueError, match=rf"{analysis}: .*largest label is 7.* 5 outputs"):
        fn(model, x, torch.tensor([0, 1, 7, 2]))
    assert fn(model, x, torch.tensor([0, 1, 4, 2])) is not None  # in range: runs


def test_lesion_in_chunks_gives_the_same_metrics() -> None:
    """``batch_size`` splits (x, y) tensors into chunks: the same accuracy and loss (each
    sample weighted once), only less memory at a time."""
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25).eval()
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 10, (10,))
    for metric in ("accuracy", "loss"):
        whole = lesion(model, (x, y), metric=metric, k_values=[1], draws=2)
        parts = lesion(model, (x, y), metric=metric, k_values=[1], draws=2, batch_size=3)
        assert parts.baseline == pytest.approx(whole.baseline, rel=1e-6)
        assert [r["metric"] for r in parts.single] == pytest.approx(
            [r["metric"] for r in whole.single], rel=1e-6
        )
    with pytest.raises(ValueError, match="batch_size"):
        lesion(model, (x, y), batch_size=0)


def test_lesion_loss_of_a_bf16_model_is_taken_in_float32() -> None:
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25).to(torch.bfloat16).eval()
    x, y = torch.randn(16, 3, 8, 8, dtype=torch.bfloat16), torch.randint(0, 10, (16,))
    res = lesion(model, (x, y), metric="loss", k_values=[1], draws=1, swaps=False)
    with torch.no_grad():
        want = F.cross_entropy(model(x).float(), y).item()
    assert res.baseline == pytest.approx(want, rel=1e-6)
