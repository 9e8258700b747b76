"""gradient_flow and unit_grad_norms: the numbers are the autograd ones; any model works."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import skiplab
from skiplab.analysis.blocks import find_units
from skiplab.analysis.gradflow import GradientFlow, default_loss, gradient_flow, unit_grad_norms


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))


@pytest.mark.parametrize("name", ["resnet-8", "plain-8"])
def test_unit_rows_match_autograd(name: str) -> None:
    x, y = batch()
    model = skiplab.create_model(name, width=0.25)
    r = gradient_flow(model, x, y)
    assert [u["name"] for u in r.units] == ["stages.0.0", "stages.1.0", "stages.2.0"]
    assert all(u["residual"] == (name == "resnet-8") for u in r.units)

    # Reference: the same quantities by hand, in eval mode.
    model.eval()
    outs = {}
    hooks = [
        model.get_submodule(u["name"]).register_forward_hook(
            lambda m, a, o, n=u["name"]: outs.__setitem__(n, o)
        )
        for u in r.units
    ]
    loss = F.cross_entropy(model(x), y)
    for h in hooks:
        h.remove()
    names = [u["name"] for u in r.units]
    grads = torch.autograd.grad(loss, [outs[n] for n in names], retain_graph=True)
    unit = model.get_submodule(names[1])
    wgrads = torch.autograd.grad(loss, list(unit.parameters()))
    assert r.loss == pytest.approx(float(loss.detach()))
    for row, g in zip(r.units, grads, strict=True):
        assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
        assert row["act_std"] == pytest.approx(float(outs[row["name"]].detach().std()), rel=1e-5)
    expected = float(torch.sqrt(sum(g.pow(2).sum() for g in wgrads)))
    assert r.units[1]["weight_grad_norm"] == pytest.approx(expected, rel=1e-5)
    # Layers: every module that owns parameters, with its kind.
    kinds = {row["kind"] for row in r.layers}
    assert {"Conv2d", "BatchNorm2d", "Linear"} <= kinds
    fc = next(row for row in r.layers if row["name"] == "head.fc")
    assert fc["weight_grad_norm"] > 0 and fc["act_std"] > 0


def test_torchvision_resnet_and_unitless_model() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=5)
    r = gradient_flow(tv, torch.randn(2, 3, 16, 16), torch.tensor([0, 3]))
    assert len(r.units) == 8 and all(u["grad_norm"] > 0 and u["residual"] for u in r.units)

    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    target = torch.randn(6, 3)  # float target: MSE
    r = gradient_flow(mlp, torch.randn(6, 5), target)
    assert r.units == [] and [row["name"] for row in r.layers] == ["0", "2"]
    assert [row["kind"] for row in r.layers] == ["Linear", "Linear"]
    assert r.layers[0]["act_std"] > 0 and r.layers[1]["weight_grad_norm"] > 0


def test_default_loss_choices() -> None:
    logits = torch.randn(2, 4, 3, 3)
    seg = torch.randint(0, 4, (2, 3, 3))
    assert torch.equal(default_loss(logits, seg), F.cross_entropy(logits, seg))
    out, t = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.equal(default_loss(out, t), F.mse_loss(out, t))
    with pytest.raises(ValueError, match="cross-entropy"):
        default_loss(torch.randn(3, 4), torch.randint(0, 4, (3, 2)))
    with pytest.raises(ValueError, match="MSE"):
        default_loss(torch.randn(3, 4), torch.randn(3))


def test_model_left_unchanged_and_train_mode() -> None:
    x, y = batch()
    model = skiplab.create_model("resnet-8", width=0.25)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r_eval = gradient_flow(model, x, y)
    r_train = gradient_flow(model, x, y, train=True)
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats restored after train=True
    assert r_eval.mode == "eval" and r_train.mode == "train"
    model.train()
    assert r_train.loss == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-5)


def test_unit_grad_norms_reads_grad() -> None:
    x, y = batch()
    model = skiplab.create_model("resnet-8", width=0.25)
    units = find_units(model, include_plain=True)
    assert unit_grad_norms(model, units) == {u.name: 0.0 for u in units}
    F.cross_entropy(model(x), y).backward()
    norms = unit_grad_norms(model, units)
    for u in units:
        expected = torch.sqrt(sum(p.grad.pow(2).sum() for p in u.module.parameters()))
        assert norms[u.name] == pytest.approx(float(expected), rel=1e-6)
    assert unit_grad_norms(model) == pytest.approx(norms)


def test_result_contract() -> None:
    x, y = batch()
    r = gradient_flow(skiplab.create_model("resnet-8", width=0.25), x, y)
    assert isinstance(r, GradientFlow)
    d = json.loads(json.dumps(r.to_dict()))
    assert set(d["units"][0]) == {"name", "residual", "grad_norm", "act_std", "weight_grad_norm"}
    assert "GradientFlow(" in repr(r) and "He et al. 2015" in r.summary()
    assert r.plot().get_xlabel() == "unit"


def test_named_blocks_and_overriding_units_are_kept() -> None:
    # Gradient flow needs only each unit's output: any submodule can be named, and a
    # unit subclass with its own forward is still found (path analyses refuse both).
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    r = gradient_flow(mlp, x, y, blocks=["0", "2"])
    h = mlp[0](x)
    (g,) = torch.autograd.grad(F.cross_entropy(mlp[2](mlp[1](h)), y), h)
    assert [u["name"] for u in r.units] == ["0", "2"]
    assert not any(u["residual"] for u in r.units)
    assert r.units[0]["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)

    class Logged(type(skiplab.create_model("resnet-8").stages[0][0])):
        def forward(self, x):  # noqa: ANN001, ANN201
            return super().forward(x)

    model = skiplab.create_model("resnet-8", width=0.25)
    model.stages[1][0].__class__ = Logged
    x, y = batch()
    assert [u["name"] for u in gradient_flow(model, x, y).units] == [
        "stages.0.0",
        "stages.1.0",
        "stages.2.0",
    ]
    assert len(find_units(model)) == 2  # the path analyses' view: its paths are unknown


def test_unit_output_changed_in_place_later() -> None:
    # A ReLU(inplace=True) after a unit overwrites the unit's output tensor: the gradient
    # reported is still the one with respect to the output the unit returned.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    r = gradient_flow(net, x, y, blocks=["1"])
    h = net[1](net[0](x))
    (g,) = torch.autograd.grad(F.cross_entropy(net[3](torch.relu(h)), y), h)
    assert r.units[0]["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert r.units[0]["act_std"] == pytest.approx(float(h.detach().std()), rel=1e-5)
    with torch.no_grad():
        assert r.loss == pytest.approx(float(F.cross_entropy(net(x), y)), rel=1e-6)
