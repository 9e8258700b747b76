"""torchvision's other residual units (MobileNetV2/V3, EfficientNet, ConvNeXt, RegNet) are
found without ``blocks=[...]`` and read exactly as their classes' forward computes them."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models.mobilenetv2 import InvertedResidual

from skiplab.analysis import gradient_flow, lesion, path_gradients
from skiplab.analysis.blocks import find_units
from skiplab.models.summary import summarize

pytestmark = pytest.mark.usefixtures("one_thread")  # small inputs: threads only add overhead

# Units with a skip, from the papers' architecture tables: a stage of n blocks has n - 1
# (its first changes the width or stride), except where noted.
UNITS = {
    # MobileNetV2 Table 2: n = 1, 2, 3, 4, 3, 3, 1
    "mobilenet_v2": 0 + 1 + 2 + 3 + 2 + 2 + 0,
    # MobileNetV3-Small Table 2: 11 bnecks, a skip where input and output agree
    "mobilenet_v3_small": 6,
    # EfficientNet-B0 Table 1: n = 1, 2, 2, 3, 3, 4, 1
    "efficientnet_b0": 0 + 1 + 1 + 2 + 2 + 3 + 0,
    # ConvNeXt-T: every block, depths (3, 3, 9, 3)
    "convnext_tiny": 3 + 3 + 9 + 3,
    # RegNetX-400MF: every block, depths (1, 2, 7, 12)
    "regnet_x_400mf": 1 + 2 + 7 + 12,
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(tvm, name)(num_classes=10)
    for m in model.modules():  # BN statistics of a trained net, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name", sorted(UNITS))
def test_units_found_match_the_architecture_and_compute_the_forward(name: str) -> None:
    model = build(name)
    units = find_units(model)
    assert len(units) == UNITS[name]
    # each view computes what the unit's own forward computes, at the unit's real input
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        u.module.register_forward_pre_hook(lambda m, a, n=u.name: inputs.__setitem__(n, a[0]))
        for u in units
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        for h in handles:
            h.remove()
        for u in units:
            x = inputs[u.name]
            want = u.module(x.clone())
            got = u.finish(u.shortcut(x), u.branch(x), x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert u.post_is_identity() == (name != "regnet_x_400mf")


def test_mobilenet_lesion_equals_the_net_without_that_branch() -> None:
    # MobileNetV2 adds nothing after the addition: a deleted branch leaves the identity
    model = build("mobilenet_v2")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    units = find_units(model)[:3]
    result = lesion(model, (x, y), blocks=[u.name for u in units], metric="loss", swaps=False)
    for row, unit in zip(result.single, units, strict=True):
        handle = unit.module.register_forward_hook(lambda m, a, out: a[0])
        with torch.no_grad():
            want = F.cross_entropy(model(x), y).item()
        handle.remove()
        assert row["name"] == unit.name
        assert row["metric"] == pytest.approx(want, rel=1e-5)


def test_regnet_lesion_keeps_the_projection_and_the_activation() -> None:
    model = build("regnet_x_400mf")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    unit = find_units(model)[0]  # a projection shortcut: the stage's first block
    first = unit.module
    assert first.proj is not None
    result = lesion(model, (x, y), blocks=[unit.name], metric="loss", swaps=False)
    handle = first.register_forward_hook(lambda m, a, out: m.activation(m.proj(a[0])))
    with torch.no_grad():
        want = F.cross_entropy(model(x), y).item()
    handle.remove()
    assert result.single[0]["metric"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_x_400mf"])
def test_path_gradient_parts_sum_to_the_input_gradient(name: str) -> None:
    model = build(name).double()
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 7])
    units = [u.name for u in find_units(model)[:4]]  # RegNet's first has a projection
    result = path_gradients(model, x, y, blocks=units, samples=0)
    assert result.parts.shape[0] == len(units) + 1
    x_ = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_), y), x_)
    torch.testing.assert_close(result.parts.sum(0), grad, rtol=1e-9, atol=1e-12)


def test_path_gradients_of_one_inverted_residual_split_skip_and_branch() -> None:
    # out = x + conv(x): the skip carries dL/dout itself, the branch the rest
    torch.manual_seed(0)
    unit = InvertedResidual(8, 8, stride=1, expand_ratio=4)
    model = nn.Sequential(unit, nn.Flatten(), nn.LazyLinear(3)).double().eval()
    x, y = torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.tensor([0, 2])
    model(x)  # materialise the lazy layer
    result = path_gradients(model, x, y, samples=0)
    out = unit(x).detach().requires_grad_()
    (skip,) = torch.autograd.grad(F.cross_entropy(model[2](model[1](out)), y), out)
    torch.testing.assert_close(result.parts[0], skip, rtol=1e-10, atol=1e-12)
    x_ = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_), y), x_)
    torch.testing.assert_close(result.parts[1], grad - skip, rtol=1e-9, atol=1e-12)


def test_gradient_flow_marks_the_units_with_a_skip() -> None:
    model = build("mobilenet_v2")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    found = gradient_flow(model, x, y)
    assert [r["residual"] for r in found.units] == [True] * UNITS["mobilenet_v2"]
    named = gradient_flow(model, x, y, blocks=["features.1", "features.3"])
    assert [r["residual"] for r in named.units] == [False, True]  # features.1: no skip


def test_summary_counts_shortcuts_and_placements() -> None:
    s = summarize(build("regnet_x_400mf"), (3, 32, 32))
    # one projection at the start of each of the 4 stages; ReLU after every addition
    assert s.units == 22
    assert s.shortcuts == {"projection": 4, "identity": 18}
    assert s.placements == {"original": 22}
    s = summarize(build("mobilenet_v2"), (3, 32, 32))
    assert (s.units, s.shortcuts, s.placements) == (10, {"identity": 10}, {})


def test_a_block_without_a_skip_named_as_a_unit_is_refused() -> None:
    model = build("mobilenet_v2")
    with pytest.raises(ValueError, match=r"'features\.1'.*has no skip \(use_res_connect"):
        find_units(model, ["features.1"])


def test_a_subclass_with_a_forward_of_its_own_is_not_read_from_its_parts(caplog) -> None:
    class Logged(InvertedResidual):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(InvertedResidual(4, 4, 1, 2), Logged(4, 4, 1, 2))
    with caplog.at_level(logging.WARNING, logger="skiplab.analysis.blocks"):
        assert [u.name for u in find_units(model)] == ["0"]
    assert "1 is not analysed as a unit" in caplog.text
    with pytest.raises(ValueError, match="Logged subclasses InvertedResidual"):
        find_units(model, ["1"])
