"""lesion: deleting a branch is running the net without it (identity units); the model is
left as it was; a net with every branch deleted is its shortcut paths (closed form)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skiplab
from skiplab.analysis.lesion import Lesion, lesion


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))


def perturb_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_deleting_identity_unit_equals_removing_it() -> None:
    # preact-resnet-14: two units per stage; units [0.1] and [1.1] keep their shape and have
    # identity shortcuts and nothing after the addition, so deleting the branch = removing the unit.
    x, y = data()
    model = skiplab.create_model("preact-resnet-14", width=0.25)
    perturb_bn(model)
    res = {
        m: lesion(model, (x, y), metric=m, k_values=[1], draws=1, swaps=False)
        for m in ("loss", "accuracy")
    }
    for stage, idx in ((0, 1), (1, 1), (2, 1)):
        removed = copy.deepcopy(model).eval()
        seq = removed.stages[stage]
        removed.stages[stage] = nn.Sequential(*(u for i, u in enumerate(seq) if i != idx))
        with torch.no_grad():
            out = removed(x)
        name = f"stages.{stage}.{idx}"
        row = {m: next(r for r in res[m].single if r["name"] == name) for m in res}
        assert row["loss"]["metric"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)
        assert row["accuracy"]["metric"] == pytest.approx(
            float((out.argmax(1) == y).float().mean())
        )


def test_model_left_unchanged() -> None:
    x, y = data()
    model = skiplab.create_model("resnet-14", width=0.25)
    perturb_bn(model)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    r = lesion(model, (x, y), k_values=[2, 6], draws=3)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(m._forward_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert [row["k"] for row in r.random_k] == [2, 6]
    assert r.random_k[1]["draws"] == 1 and r.random_k[1]["std"] == 0.0  # C(6, 6) = 1
    assert r.random_k[0]["draws"] == 3


def test_swap_equals_swapped_model() -> None:
    x, y = data()
    model = skiplab.create_model("resnet-14", width=0.25)
    perturb_bn(model)
    r = lesion(model, (x, y), metric="loss", k_values=[1], draws=1)
    # Only stages.0.0 / stages.0.1 share their input and output shapes.
    assert [s["units"] for s in r.swaps] == [["stages.0.0", "stages.0.1"]]
    swapped = copy.deepcopy(model).eval()
    s0 = swapped.stages[0]
    swapped.stages[0] = nn.Sequential(s0[1], s0[0])
    with torch.no_grad():
        expected = float(F.cross_entropy(swapped(x), y))
    assert r.swaps[0]["metric"] == pytest.approx(expected, rel=1e-6)


def test_all_branches_deleted_leaves_shortcut_paths() -> None:
    # Original units, no norm: a deleted unit outputs relu(x + 0) = relu(x); the stem ends
    # with a ReLU already, so the whole net becomes head.fc(relu(stem.fc(x))).
    torch.manual_seed(0)
    net = skiplab.create_model("resmlp-8", norm="none", hidden=6, in_channels=5, num_classes=3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    r = lesion(net, (x, y), metric="loss", k_values=[3], draws=5, swaps=False)
    with torch.no_grad():
        hand = F.cross_entropy(net.head.fc(torch.relu(net.stem.fc(x))), y)
    assert r.random_k[0]["mean"] == pytest.approx(float(hand), rel=1e-6)


def test_batches_and_plain_net() -> None:
    x, y = data(8)
    model = skiplab.create_model("resnet-8", width=0.25)
    one = lesion(model, (x, y), metric="loss", k_values=[1], swaps=False)
    batches = lesion(
        model, [(x[:3], y[:3]), (x[3:], y[3:])], metric="loss", k_values=[1], swaps=False
    )
    gen = lesion(
        model,
        ((x[i : i + 4], y[i : i + 4]) for i in (0, 4)),
        metric="loss",
        k_values=[1],
        swaps=False,
    )
    assert batches.baseline == pytest.approx(one.baseline, rel=1e-6)
    assert gen.single[2]["metric"] == pytest.approx(one.single[2]["metric"], rel=1e-6)
    with pytest.raises(ValueError, match=r"blocks=\[\.\.\.\]"):
        lesion(skiplab.create_model("plain-8", width=0.25), (x, y))
    with pytest.raises(ValueError, match="metric"):
        lesion(model, (x, y), metric="top5")
    with pytest.raises(ValueError, match="k_values"):
        lesion(model, (x, y), k_values=[4])
    with pytest.raises(ValueError, match="invalid draws=0: must be a positive integer"):
        lesion(model, (x, y), draws=0)
    with pytest.raises(ValueError, match=r"a single tensor of shape \(8, 3, 8, 8\).*\(x, y\)"):
        lesion(model, x)
    with pytest.raises(ValueError, match=r"blocks=\['stages.0.0'\]"):
        lesion(model, (x, y), blocks="stages.0.0")


def test_result_contract() -> None:
    x, y = data()
    r = lesion(skiplab.create_model("resnet-8", width=0.25), (x, y), draws=2)
    assert isinstance(r, Lesion)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["metric"] == "accuracy" and len(d["single"]) == 3
    assert "Lesion(" in repr(r) and "Veit" in r.summary()
    for which in ("single", "random_k", "swaps"):
        assert r.plot(which=which).get_ylabel() == "accuracy"


def test_bad_data_is_one_clear_message() -> None:
    x, y = data(8)
    model = skiplab.create_model("resnet-8", width=0.25)
    with pytest.raises(ValueError, match="x has 8 samples and y has 5"):
        lesion(model, (x, y[:5]))
    with pytest.raises(ValueError, match="expected \\(x, y\\) tensors or an iterable"):
        lesion(model, 3)
