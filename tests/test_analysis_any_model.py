"""The analyses on models that are not skiplab's: functional activations written with
masks, units known only by their 'branch'/'shortcut' attributes, frozen parameters,
several inputs, dict outputs, attention. Closed forms where there are, one clear
ValueError where the analysis cannot run, and the model left as it was either way."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import skiplab
from skiplab.analysis import (
    gradient_flow,
    lesion,
    loss_landscape,
    nonlinearity_coefficient,
    path_gradients,
    path_spectrum,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def state(model: nn.Module) -> tuple:
    """Everything an analysis must leave as it was: weights and buffers, train/eval flags,
    requires_grad flags, hooks, .grad."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [(p.requires_grad, p.grad is None) for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    )


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    after = state(model)
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


# --------------------------------------------------------------------------- path spectrum


class MaskedRelu(nn.Module):
    """A linear layer and a ReLU written in one of the ways people write it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc, self.kind = nn.Linear(4, 4), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "relu":
            return F.relu(h)
        if self.kind == "mul":
            return h * (h > 0)
        if self.kind == "mul_float":
            return h * (h > 0).float()
        if self.kind == "sign":
            return h * (h.sign() + 1) / 2
        if self.kind == "masked_fill":
            return h.masked_fill(h < 0, 0.0)
        if self.kind == "setitem":
            h = h.clone()
            h[h < 0] = 0
            return h
        if self.kind == "where_zero":
            return torch.where(h > 0, h, torch.zeros_like(h))
        return torch.where(h > 0, h, 0.1 * h)  # leaky ReLU: two paths, one per side


@pytest.mark.parametrize(
    "kind", ["relu", "mul", "mul_float", "sign", "masked_fill", "setitem", "where_zero"]
)
def test_relu_written_with_a_mask_has_the_paths_of_relu(kind: str) -> None:
    """A comparison's result is a step function of the input: it makes the op that reads
    it a gate (nonlinear) but carries no path of its own, so three layers of
    ``h * (h > 0)`` have the one path of three ReLUs, not 2^3."""
    model = nn.Sequential(*[MaskedRelu(kind) for _ in range(3)])
    r = path_spectrum(model, torch.randn(2, 4))
    assert r.counts == {3: 1}
    assert r.unknown_ops == [] and not any(op in r.nonlinear_ops for op in ("gt", "lt", "sign"))


def test_where_counts_both_sides_but_not_the_condition() -> None:
    model = nn.Sequential(*[MaskedRelu("where") for _ in range(3)])
    assert path_spectrum(model, torch.randn(2, 4)).counts == {3: 8}  # 2 sides per layer


class MaskOffset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        m = (h > 0).float()
        return h + m.mean() + self.fc.weight.new_zeros(4).expand_as(h)  # offsets, no gate


def test_a_mask_added_is_an_offset_not_a_path() -> None:
    assert path_spectrum(MaskOffset(), torch.randn(2, 4)).counts == {0: 1}


# --------------------------------------------------------------------------- units by attributes


class AttrUnit(nn.Module):
    """A unit found by its 'branch' and 'shortcut' attributes; ``post`` as an attribute, or
    (``hidden_relu``) a ReLU in forward that the attributes do not show."""

    def __init__(self, d: int, post: nn.Module | None = None, hidden_relu: bool = False) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.shortcut = nn.Identity()
        self.post, self.hidden_relu = post, hidden_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x) + self.branch(x)
        if self.hidden_relu:
            return F.relu(out)
        return out if self.post is None else self.post(out)


class AttrNet(nn.Module):
    def __init__(self, n: int = 3, d: int = 4, **unit) -> None:
        super().__init__()
        self.stem = nn.Linear(5, d)
        self.blocks = nn.Sequential(*[AttrUnit(d, **unit) for _ in range(n)])
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def test_unit_whose_forward_hides_an_op_is_an_error_not_a_wrong_answer() -> None:
    """relu(shortcut(x) + branch(x)) in forward, no 'post': skiplab would read the unit as
    shortcut + branch, and the path gradients would not sum to the gradient (nor would a
    deleted branch leave the ReLU). One message naming the fix instead."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    model = AttrNet(hidden_relu=True).train()
    before = state(model)
    with pytest.raises(ValueError, match=r"unit 'blocks\.0' \(AttrUnit\).*'post' attribute"):
        path_gradients(model, x, y)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match=r"unit 'blocks\.0' \(AttrUnit\).*'post' attribute"):
        lesion(model, (x, y))
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "post", [None, nn.ReLU(), nn.ReLU(inplace=True), nn.GELU(), nn.SiLU(), nn.LeakyReLU(0.1)]
)
def test_units_with_a_post_attribute_split_the_gradient_exactly(post) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    model = AttrNet(post=post).double()
    r = path_gradients(model, x, y, samples=0)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model.eval()(xg), y), xg)
    torch.testing.assert_close(r.parts.sum(0), g, rtol=1e-10, atol=1e-12)
    assert r.counts == [1, 3, 3, 1]
    # Deleting a branch leaves post(shortcut(x)): the loss of that net, computed by hand.
    les = lesion(model, (x, y), metric="loss", k_values=[3], swaps=False)
    with torch.no_grad():
        h = model.stem(x)
        for _ in model.blocks:
            h = h if post is None else post(h.clone())
        expected = float(F.cross_entropy(model.head(h), y))
    assert les.random_k[0]["mean"] == pytest.approx(expected, rel=1e-10)


def test_linear_units_path_gradients_closed_form() -> None:
    """Units x + W x (no nonlinearity): the part through k branches is the sum over the
    k-subsets of the products of the W's (Veit et al. 2016), here computed by hand."""
    torch.manual_seed(0)
    d, n = 4, 3
    model = AttrNet(n=n, d=d).double()
    for unit in model.blocks:
        unit.branch[1] = nn.Identity()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    r = path_gradients(model, x, y, samples=0)
    w = [u.branch[2].weight @ u.branch[0].weight for u in model.blocks]
    out = model(x.clone())
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    g_top = out.grad @ model.head.weight  # gradient at the last unit's output, [N, d]
    model.zero_grad(set_to_none=True)
    for k in range(n + 1):
        jac = torch.zeros(d, d, dtype=torch.float64)
        for sub in itertools.combinations(range(n), k):
            p = torch.eye(d, dtype=torch.float64)
            for i in range(n):
                p = (w[i] if i in sub else torch.eye(d, dtype=torch.float64)) @ p
            jac += p
        torch.testing.assert_close(r.parts[k], g_top @ jac @ model.stem.weight)


# --------------------------------------------------------------------------- gradient flow


def test_gradient_flow_on_frozen_parameters() -> None:
    """Frozen parameters have no weight gradient (NaN, not 0), but the gradient at each
    unit's output is still defined, and frozen layers still get their response std."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    model = skiplab.create_model("resnet-8", width=0.25).eval()
    model.requires_grad_(False)
    model.head.requires_grad_(True)  # a frozen backbone, a trainable head
    before = state(model)
    r = gradient_flow(model, x, y)
    assert_unchanged(model, before)
    outs = {}
    hooks = [
        model.get_submodule(u["name"]).register_forward_hook(
            lambda _m, _a, o, n=u["name"]: outs.__setitem__(n, o)
        )
        for u in r.units
    ]
    loss = F.cross_entropy(model(x.clone().requires_grad_(True)), y)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss, [outs[u["name"]] for u in r.units])
    for row, g in zip(r.units, grads, strict=True):
        assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
        assert math.isnan(row["weight_grad_norm"])
    layers = {row["name"]: row for row in r.layers}
    assert len(layers) == sum(1 for m in model.modules() if list(m.parameters(recurse=False)))
    assert (
        math.isnan(layers["stem.conv"]["weight_grad_norm"]) and layers["stem.conv"]["act_std"] > 0
    )
    assert layers["head.fc"]["weight_grad_norm"] > 0

    model.requires_grad_(False)  # nothing trainable at all: still the unit gradients
    r = gradient_flow(model, x, y)
    assert all(row["grad_norm"] > 0 for row in r.units)
    assert all(math.isnan(row["weight_grad_norm"]) for row in r.layers)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(3, 4)
        self.blocks = nn.Sequential(AttrUnit(4), AttrUnit(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.a(x) + self.b(z)))


def test_gradient_flow_with_several_inputs() -> None:
    torch.manual_seed(0)
    x, z, y = torch.randn(6, 5), torch.randn(6, 3), torch.randint(0, 3, (6,))
    model = TwoInputs()
    r = gradient_flow(model, (x, z), y)
    with torch.no_grad():
        assert r.loss == pytest.approx(float(F.cross_entropy(model(x, z), y)))
    assert [u["name"] for u in r.units] == ["blocks.0", "blocks.1"]
    assert all(u["grad_norm"] > 0 for u in r.units)
    with pytest.raises(ValueError, match="invalid x of type str"):
        gradient_flow(model, "x", y)


def test_analyses_that_take_one_input_say_so() -> None:
    x, z, y = torch.randn(6, 5), torch.randn(6, 3), torch.randint(0, 3, (6,))
    model = TwoInputs()
    before = state(model)
    with pytest.raises(ValueError, match="several inputs, wrap it"):
        path_gradients(model, (x, z), y)
    with pytest.raises(ValueError, match="several inputs, wrap it"):
        nonlinearity_coefficient(model, (x, z))
    with pytest.raises(ValueError, match=r"a batch of \(tuple, Tensor\).*several inputs"):
        lesion(model, ((x, z), y))
    with pytest.raises(ValueError, match=r"a batch of \(list, Tensor\).*several inputs"):
        loss_landscape(model, [([x, z], y)], steps=3)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- outputs


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(5, 4), AttrUnit(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.blocks(self.stem(x)))}


def logits_loss(out: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out["logits"], y)


def test_dict_outputs() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    model = DictOut()
    before = state(model)
    with pytest.raises(ValueError, match="returned dict, not a tensor; pass loss_fn"):
        gradient_flow(model, x, y)
    with pytest.raises(ValueError, match="lesion needs a model that returns a tensor.*dict"):
        lesion(model, (x, y))
    with pytest.raises(ValueError, match="NLC needs the model to return a floating-point tensor"):
        nonlinearity_coefficient(model, x)
    assert_unchanged(model, before)
    # With a loss_fn: a loss landscape, and no accuracy (there are no class scores to read).
    for method in ("inplace", "loop", "vmap"):
        r = loss_landscape(model, (x, y), steps=3, loss_fn=logits_loss, method=method)
        assert r.accuracy is None and r.center_accuracy is None
        assert r.center_loss == pytest.approx(float(logits_loss(model(x), y).detach()), rel=1e-5)
    assert_unchanged(model, before)


class Net(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(5, 4), AttrUnit(4), nn.Linear(4, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))).squeeze(1)


def test_lesion_accuracy_needs_class_scores() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    with pytest.raises(ValueError, match=r"metric='accuracy' needs class logits.*metric='loss'"):
        lesion(Net(), (x, torch.randn(8, 3)))  # float targets
    with pytest.raises(ValueError, match=r"metric='accuracy' needs class logits.*shape \(8,\)"):
        lesion(Net(out=1), (x, torch.randint(0, 2, (8,))))  # one score per sample
    model, target = Net(out=1), torch.randn(8)
    r = lesion(model, (x, target), metric="loss")  # regression: the loss works
    with torch.no_grad():
        assert r.baseline == pytest.approx(float(F.mse_loss(model(x), target)), rel=1e-6)
    with pytest.raises(ValueError, match=r"invalid k_values=2: give a list of ints"):
        lesion(Net(), (x, torch.randint(0, 3, (8,))), k_values=2)


# --------------------------------------------------------------------------- attention


def test_nlc_of_an_attention_model_matches_the_jacobian() -> None:
    """The fused CPU attention kernel has neither a forward-mode derivative nor a double
    backward; the NLC runs attention with the math kernel and matches the NLC from the
    full Jacobian."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=3,
    )  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # torchvision zeroes it: a constant output
    x = torch.randn(6, 3, 16, 16)
    before = state(vit)
    r = nonlinearity_coefficient(vit, x)
    assert_unchanged(vit, before)
    vit.eval()
    jac = torch.autograd.functional.jacobian(lambda z: vit(z).sum(0), x)  # [3, N, 3, 16, 16]
    jac = jac.permute(1, 0, 2, 3, 4).flatten(2)  # [N, 3, D]
    c = (x - x.mean(0)).flatten(1)
    cov = c.T @ c / x.shape[0]
    num = torch.einsum("nod,de,noe->n", jac, cov, jac).mean()
    with torch.no_grad():
        out = vit(x)
    den = (out - out.mean(0)).pow(2).sum(1).mean()
    assert r.value == pytest.approx(float((num / den).sqrt()), rel=1e-3)
