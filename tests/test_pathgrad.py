"""path_gradients: the parts sum to the input gradient; on a linear net each part is the
brute-force sum over its 2^U paths (closed form)."""

from __future__ import annotations

import itertools
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import skiplab
from skiplab.analysis.pathgrad import PathGradients, path_gradients
from skiplab.models.layers import Scale

pytestmark = pytest.mark.usefixtures("one_thread")


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.eval()
    x = x.clone().requires_grad_(True)
    out = model(x)
    loss = F.cross_entropy(out, y) if not y.is_floating_point() else F.mse_loss(out, y)
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.parametrize(
    "name, options",
    [
        ("resnet-8", {}),
        ("resnet-20", {}),
        ("preact-resnet-20", {}),
        ("resnet-8", {"shortcut": "exclusive-gating", "gate_bias": -1.0}),
        ("resnet-8", {"placement": "bn-after-add", "shortcut": "projection"}),
    ],
)
def test_parts_sum_to_input_gradient(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = skiplab.create_model(name, width=0.25, **options).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (2,))
    r = path_gradients(model, x, y, samples=1)
    units = len(r.units)
    assert r.parts.shape == (units + 1, *x.shape)
    torch.testing.assert_close(r.parts.sum(0), input_grad(model, x, y), rtol=1e-10, atol=1e-13)
    assert r.counts == [math.comb(units, k) for k in range(units + 1)]
    assert r.per_path_norm is not None and len(r.per_path_norm) == units + 1
    assert sum(r.total_share) == pytest.approx(1.0)
    assert sum(r.norm_share) == pytest.approx(1.0)


def test_torchvision_resnet18_parts_sum() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([2])
    r = path_gradients(model, x, y, samples=0)
    assert len(r.units) == 8 and r.per_path_norm is None and r.total_share is None
    torch.testing.assert_close(r.parts.sum(0), input_grad(model, x, y), rtol=1e-10, atol=1e-13)


class LinearUnit(nn.Module):
    """out = x + W x: branch Linear, identity shortcut, nothing after the addition."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.branch = nn.Linear(d, d, bias=False)
        self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class LinearNet(nn.Module):
    def __init__(self, d: int = 4, units: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(5, d)
        self.units = nn.Sequential(*(LinearUnit(d) for _ in range(units)))
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)))


def test_linear_net_parts_are_brute_force_path_sums() -> None:
    torch.manual_seed(0)
    net = LinearNet().double()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)  # float target: MSE
    r = path_gradients(net, x, y, blocks=[f"units.{i}" for i in range(3)], samples=3)

    # dL/d(last unit output) from the head, then every path S: branch W_u^T for u in S,
    # identity otherwise, then the stem W_s^T.
    h = net.units(net.stem(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.mse_loss(net.head(h), y), h)
    ws = [u.branch.weight.detach() for u in net.units]
    expected = torch.zeros(4, *x.shape, dtype=torch.float64)
    per_path: list[list[float]] = [[] for _ in range(4)]
    for s in itertools.product([0, 1], repeat=3):
        v = g
        for u in reversed(range(3)):
            v = v @ ws[u] if s[u] else v
        v = v @ net.stem.weight.detach()
        expected[sum(s)] += v
        per_path[sum(s)].append(float(v.norm()))
    torch.testing.assert_close(r.parts, expected, rtol=1e-12, atol=1e-14)
    # samples=3 >= C(3, k): every path is taken, so the per-path means are exact.
    assert r.per_path_exact == [True] * 4
    assert r.per_path_norm == pytest.approx([sum(p) / len(p) for p in per_path], rel=1e-12)
    assert r.norms == pytest.approx([float(e.norm()) for e in expected], rel=1e-12)

    # max_length=1: parts 0 and 1, then one remainder with the paths through 2 or 3 branches.
    r1 = path_gradients(net, x, y, blocks=[f"units.{i}" for i in range(3)], max_length=1)
    torch.testing.assert_close(r1.parts[:2], expected[:2], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(r1.parts[2], expected[2] + expected[3], rtol=1e-12, atol=1e-14)
    assert r1.counts == [1, 3, 4] and r1.max_length == 1


def test_resmlp_identity_act_matches_brute_force_total() -> None:
    torch.manual_seed(0)
    net = skiplab.create_model("resmlp-8", act="identity", norm="none", hidden=6, in_channels=5)
    net = net.double()
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    r = path_gradients(net, x, y, samples=0)
    assert len(r.units) == 3
    torch.testing.assert_close(r.parts.sum(0), input_grad(net, x, y), rtol=1e-12, atol=1e-14)
    # Linear units: part k = sum over the C(3, k) products (compare part 3: all branches).
    h = net.units(net.stem(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net.head(h), y), h)
    for u in reversed(net.units):
        g = g @ u.branch.conv2.weight.detach() @ u.branch.conv1.weight.detach()
    g = g @ net.stem.fc.weight.detach()
    torch.testing.assert_close(r.parts[3], g, rtol=1e-12, atol=1e-14)


def test_plain_net_raises_naming_blocks() -> None:
    model = skiplab.create_model("plain-8", width=0.25)
    with pytest.raises(ValueError, match=r"blocks=\[\.\.\.\]"):
        path_gradients(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))


class Bypass(LinearNet):
    """The head also reads the first unit's output: the units do not form a chain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.units[0](self.stem(x))
        return self.head(self.units[2](self.units[1](h0)) + h0)


def test_units_that_are_not_a_chain_raise() -> None:
    net = Bypass()
    with pytest.raises(ValueError, match="chain"):
        path_gradients(
            net, torch.randn(2, 5), torch.randn(2, 2), blocks=["units.0", "units.1", "units.2"]
        )


def test_mode_restored_grads_untouched_result_contract() -> None:
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = path_gradients(model, torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(r, PathGradients)
    d = r.to_dict()
    assert "parts" not in d and json.loads(json.dumps(d))["counts"] == [1, 3, 3, 1]
    assert "PathGradients(" in repr(r) and "Veit" in r.summary()
    lo, hi = r.effective_lengths(1.0)
    assert (lo, hi) == (0, 3) or sum(r.total_share[lo : hi + 1]) >= 1.0 - 1e-9
    ax = r.plot()
    assert ax.get_xlabel().startswith("path length")


@pytest.mark.parametrize(
    "name, options",
    [
        ("resnet-20", {}),  # ReLU after the addition, zero-pad shortcuts
        ("preact-resnet-20", {"shortcut": "projection"}),  # nothing after the addition
        ("resnet-8", {"shortcut": "exclusive-gating", "gate_bias": -1.0}),
    ],
)
@pytest.mark.parametrize("max_length", [0, 2])
def test_max_length_remainder_is_the_sum_of_the_longer_parts(
    name: str, options: dict, max_length: int
) -> None:
    torch.manual_seed(0)
    model = skiplab.create_model(name, width=0.25, **options).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (2,))
    full = path_gradients(model, x, y, samples=0)
    r = path_gradients(model, x, y, samples=1, max_length=max_length)
    units = len(r.units)
    k = max_length
    assert r.parts.shape == (k + 2, *x.shape) and r.max_length == k
    torch.testing.assert_close(r.parts[: k + 1], full.parts[: k + 1], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(r.parts[-1], full.parts[k + 1 :].sum(0), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(r.parts.sum(0), input_grad(model, x, y), rtol=1e-10, atol=1e-13)
    assert r.counts[: k + 1] == full.counts[: k + 1] and sum(r.counts) == 2**units
    assert r.norms == pytest.approx([float(p.norm()) for p in r.parts], rel=1e-12)
    # The sampled single paths do not depend on max_length.
    assert r.per_path_norm is not None and len(r.per_path_norm) == units + 1
    assert "remainder" in r.summary() and f"max_length={k}" in repr(r)
    assert r.to_dict()["max_length"] == k
    assert r.plot().get_xlabel().startswith("path length")


def test_max_length_at_least_units_is_the_full_split() -> None:
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1])
    full = path_gradients(model, x, y, samples=0)
    for k in (3, 10):
        r = path_gradients(model, x, y, samples=0, max_length=k)
        assert r.max_length is None and r.counts == [1, 3, 3, 1]
        torch.testing.assert_close(r.parts, full.parts, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_length": -1}, "max_length"),
        ({"max_length": 1.5}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"max_length": "3"}, "max_length"),
        ({"precision": "fp16"}, "'fp32', 'bf16'"),
        ({"precision": None}, "precision"),
        ({"samples": -1}, "invalid samples=-1: must be a non-negative integer"),
        ({"samples": 1.5}, "samples=1.5"),
    ],
)
def test_bad_max_length_or_precision_raises(kwargs: dict, match: str) -> None:
    model = skiplab.create_model("resnet-8", width=0.25)
    with pytest.raises(ValueError, match=match):
        path_gradients(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), **kwargs)


@pytest.mark.parametrize(
    "name, options",
    [("resnet-8", {}), ("preact-resnet-8", {"shortcut": "all-projection"})],
)
def test_bf16_parts_close_to_fp32_in_input_dtype(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = skiplab.create_model(name, width=0.5, **options)
    x = torch.randn(2, 3, 8, 8)
    y = torch.tensor([3, 4])
    full = path_gradients(model, x, y, samples=0)
    r = path_gradients(model, x, y, samples=1, precision="bf16", max_length=1)
    assert r.parts.dtype == torch.float32 and r.precision == "bf16"
    # bf16 rounding and ReLU masks recomputed in bf16: a plain bf16 autocast input gradient
    # of these nets is off by about 10% too.
    g = input_grad(model, x, y)
    assert float((r.parts.sum(0) - g).norm() / g.norm()) < 0.15
    assert float((r.parts[:2] - full.parts[:2]).norm() / full.parts[:2].norm()) < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_parts_sum_and_bf16() -> None:
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    torch.manual_seed(0)
    model = skiplab.create_model("resnet-20", width=0.5).cuda()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (4,), device="cuda")
    g = input_grad(model, x, y)
    r = path_gradients(model, x, y, samples=1)
    assert r.parts.device.type == "cuda" and r.parts.dtype == torch.float32
    assert rel(r.parts.sum(0), g) < 1e-2  # TF32 convolutions
    k = path_gradients(model, x, y, samples=0, max_length=3)
    assert rel(k.parts[:4], r.parts[:4]) < 1e-2 and rel(k.parts[4], r.parts[4:].sum(0)) < 1e-2
    b = path_gradients(model, x, y, samples=0, precision="bf16")
    assert b.parts.dtype == torch.float32 and rel(b.parts.sum(0), g) < 0.2


def direct_and_general(monkeypatch, model, x, y, samples):
    """path_gradients with the direct VJPs and with the torch.func path only; and, per
    unit, what the direct path made of it (None: the unit went through torch.func)."""
    import skiplab.analysis.pathgrad as pg

    used = []
    real = pg._linear_unit
    monkeypatch.setattr(pg, "_linear_unit", lambda *a: used.append(real(*a)) or used[-1])
    direct = path_gradients(model, x, y, samples=samples)
    monkeypatch.setattr(pg, "_linear_unit", lambda *a: None)
    return direct, path_gradients(model, x, y, samples=samples), used


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet-20", {}),
        ("preact-resnet-20", {}),
        ("resnet-20", {"placement": "bn-after-add"}),
        ("resnet-20", {"placement": "relu-before-add"}),
        ("resnet-20", {"placement": "relu-only-preact"}),
        ("resnet-20", {"branch_scale": 0.5}),
        ("resnet-20", {"shortcut": "projection"}),
        ("preact-resnet-164", {"width": 0.25}),
        ("resmlp-8", {}),
    ],
)
def test_direct_vjps_equal_the_functorch_path(monkeypatch, name, options) -> None:
    """Units made of known modules take their VJPs directly (no autograd, no vmap); the
    parts are those of the general torch.func path, to float64 precision."""
    torch.manual_seed(0)
    model = skiplab.create_model(name, **options).double()
    for m in model.modules():  # BN statistics away from 0/1, so the BN scale matters
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    if name.startswith("resmlp"):
        x = torch.randn(3, 64, dtype=torch.float64)
    else:
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (x.shape[0],))
    direct, general, used = direct_and_general(monkeypatch, model, x, y, samples=2)
    torch.testing.assert_close(direct.parts, general.parts, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(direct.per_path_norm, general.per_path_norm, rtol=1e-9, atol=0)
    if options.get("placement") != "bn-after-add":  # BN after the addition: general path
        assert sum(u is not None for u in used) >= len(used) - 3  # all but transitions
    # from the ReLU masks the forward pass recorded, without running the chains again
    assert all(u.chain.out is None for u in used if u is not None)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_direct_vjps_of_torchvision_blocks(monkeypatch, arch) -> None:
    """torchvision BasicBlock / Bottleneck without downsample take the direct VJPs too."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=5).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(1, 3, 32, 32, dtype=torch.float64), torch.tensor([2])
    direct, general, used = direct_and_general(monkeypatch, model, x, y, samples=0)
    torch.testing.assert_close(direct.parts, general.parts, rtol=1e-10, atol=1e-13)
    assert sum(u is not None for u in used) == len(used) - (3 if arch == "resnet18" else 4)
    assert all(u.chain.out is None for u in used if u is not None)  # recorded masks


class HalfBlock(torchvision.models.resnet.BasicBlock):
    """A BasicBlock whose forward halves the branch: not the computation the direct VJPs
    assume for BasicBlock."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(x + 0.5 * out)


class TaggedBlock(torchvision.models.resnet.BasicBlock):
    """A BasicBlock subclass that keeps its forward."""


def test_subclassed_units(monkeypatch) -> None:
    """A subclass that keeps BasicBlock's forward is a BasicBlock (direct VJPs, exact
    parts); one that overrides it is not read as one (its paths are not BasicBlock's):
    it is not found as a unit, and naming it is refused, saying why."""
    from skiplab.analysis.blocks import find_units

    torch.manual_seed(0)
    model = nn.Sequential(TaggedBlock(4, 4), TaggedBlock(4, 4)).double().eval()
    x, y = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6).double()
    direct, general, used = direct_and_general(monkeypatch, model, x, y, samples=0)
    assert all(u is not None for u in used)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.mse_loss(model(xg), y), xg)
    torch.testing.assert_close(direct.parts.sum(0), g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(direct.parts, general.parts, rtol=1e-10, atol=1e-13)
    half = nn.Sequential(HalfBlock(4, 4), HalfBlock(4, 4)).double().eval()
    assert find_units(half, required=False) == []
    with pytest.raises(ValueError, match="no residual units found.*HalfBlock subclasses"):
        path_gradients(half, x, y)
    with pytest.raises(ValueError, match="'0': HalfBlock subclasses BasicBlock but has a forward"):
        path_gradients(half, x, y, blocks=["0", "1"])


def test_identity_branches_and_overridden_units(caplog) -> None:
    """A branch that passes its cotangent on unchanged (here Dropout in eval mode) is a
    branch like any other; parts come back contiguous; a ResidualUnit subclass with a
    forward of its own is refused by name, and so is blocks=[]."""
    from skiplab.models.blocks import ResidualUnit

    torch.manual_seed(0)
    model = skiplab.create_model("resnet-20", in_channels=1, placement="relu-before-add")
    units = [u for u in model.modules() if isinstance(u, ResidualUnit)]
    for u in units[:3]:
        if isinstance(u.shortcut, nn.Identity):
            u.branch = nn.Sequential(nn.Dropout())
    model = model.double().eval()
    x, y = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 7])
    r = path_gradients(model, x, y, samples=0)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    torch.testing.assert_close(r.parts.sum(0), g, rtol=1e-10, atol=1e-13)
    assert r.parts.is_contiguous()

    class Logged(ResidualUnit):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    units[0].__class__ = Logged  # not read as a unit: its paths count as the stem's
    with caplog.at_level(logging.WARNING, logger="skiplab.analysis.blocks"):
        r = path_gradients(model, x, y, samples=0)
    assert "stages.0.0 is not analysed as a unit: Logged subclasses" in caplog.text
    assert len(r.units) == 8 and "stages.0.0" not in r.units
    torch.testing.assert_close(r.parts.sum(0), g, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="Logged subclasses ResidualUnit but has a forward"):
        path_gradients(model, x, y, blocks=[units[0]])
    with pytest.raises(ValueError, match=r"blocks=\[\] names no units"):
        path_gradients(model, x, y, blocks=[])


def _bn(channels: int, dim: int = 2) -> nn.Module:
    bn = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(channels).double().eval()
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    return bn


@pytest.mark.parametrize(
    "chain",
    [
        # BN scales folded into the convolution before them and after them (pre-activation)
        lambda: [
            _bn(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            _bn(6),
            nn.ReLU(),
            nn.Conv2d(6, 4, 3, padding=1, bias=False),
            Scale(0.3),
        ],
        # strided, dilated, grouped and unpadded convolutions: the conv2d_input path
        lambda: [
            nn.Conv2d(4, 8, 3, stride=2, padding=1),
            _bn(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
            _bn(8),
            nn.ReLU(),
            nn.Conv2d(8, 4, 1),
            nn.Conv2d(4, 4, (3, 1), padding=0),
        ],
        # no weight at all: the BN scale stays a multiply
        lambda: [_bn(4), nn.ReLU(), Scale(2.0), _bn(4)],
        # feature vectors: Linear with BatchNorm1d on both sides
        lambda: [_bn(5, dim=1), nn.Linear(5, 7), _bn(7, dim=1), nn.ReLU(), nn.Linear(7, 3)],
    ],
)
def test_linear_chain_vjp_equals_autograd(chain) -> None:
    """The direct VJP of a chain of known modules (scales folded into weights, stride-1
    convolutions as flipped forward convolutions, channels_last on the CPU) is autograd's
    VJP at the same input, for a whole stack of cotangents."""
    from skiplab.analysis.pathgrad import _LinearChain

    torch.manual_seed(0)
    modules = [m.double().eval() for m in chain()]
    net = nn.Sequential(*modules)
    shape = (2, 5) if isinstance(modules[0], nn.BatchNorm1d) else (2, 4, 9, 11)
    x = torch.randn(*shape, dtype=torch.float64)
    direct = _LinearChain(modules, x)
    out, vjp = torch.func.vjp(net, x)
    torch.testing.assert_close(direct.out, out, rtol=1e-12, atol=1e-12)
    cot = torch.randn(3, *out.shape, dtype=torch.float64)
    want = torch.stack([vjp(c)[0] for c in cot])
    torch.testing.assert_close(direct(cot), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(direct(cot[:0]), want[:0])
    # From the ReLU masks a forward pass recorded (only shapes followed): the same VJP.
    masks, h = [], x
    for m in modules:
        if isinstance(m, nn.ReLU):
            masks.append(h > 0)
        h = m(h)
    recorded = _LinearChain(modules, x, masks)
    assert recorded.out is None
    torch.testing.assert_close(recorded(cot), want, rtol=1e-10, atol=1e-12)


def test_pathgrad_summary_names_its_shares() -> None:
    """The summary says what its shares are (of the summed part norms, or Veit et al.'s
    total gradient magnitude, Fig. 6c), not "the gradient magnitude"."""
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 2])
    exact = path_gradients(model, x, y, samples=0)
    # The parts cancel: their norms sum to more than the gradient's norm, so norm_share is
    # a share of the summed part norms, not of the gradient magnitude.
    assert sum(exact.norms) > exact.grad_norm * (1 + 1e-6)
    text = exact.summary()
    assert "90% of the summed part norms" in text and "of the gradient magnitude" not in text
    sampled = path_gradients(model, x, y, samples=1).summary()
    assert "90% of the total gradient magnitude" in sampled and "Fig. 6c" in sampled
