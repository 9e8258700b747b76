"""path_spectrum and the NLC on models that are not skiplab's: torchvision models and
hand-written idioms (gates, attention, lookups, fused affine ops), against closed forms."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from skiplab.analysis.nonlinearity import nonlinearity_coefficient
from skiplab.analysis.paths import path_spectrum

pytestmark = pytest.mark.usefixtures("one_thread")


def poly(*terms: dict[int, int]) -> dict[int, int]:
    """The product of spectra given as {nonlinearities: paths}."""
    out = {0: 1}
    for t in terms:
        new: dict[int, int] = {}
        for i, x in out.items():
            for j, y in t.items():
                new[i + j] = new.get(i + j, 0) + x * y
        out = new
    return out


# --------------------------------------------------------------------------- torchvision


def test_mobilenet_v3_small_squeeze_excitation_gates() -> None:
    # SE: x * hardsigmoid(fc(relu(fc(pool x)))): via x one product, via the scale
    # relu + hardsigmoid + product: z + z^3. Units (torchvision's config): the first
    # z (z + z^3) (no expansion), then z^2, z^2 + 1, and eight SE units z^2 (z + z^3),
    # five of them residual; stem, last conv and classifier one hardswish each.
    se = {1: 1, 3: 1}
    expand_se = poly({2: 1}, se)
    units = [poly({1: 1}, se), {2: 1}, {0: 1, 2: 1}]
    units += [expand_se, *[{0: 1, **expand_se}] * 2, expand_se, {0: 1, **expand_se}]
    units += [expand_se, *[{0: 1, **expand_se}] * 2]
    expected = poly({3: 1}, *units)
    m = torchvision.models.mobilenet_v3_small(weights=None).eval()
    r = path_spectrum(m, torch.randn(1, 3, 32, 32))
    assert r.counts == expected and r.total == 7776 and r.unknown_ops == []
    assert r.nonlinear_ops["mul"] == 9 and r.nonlinear_ops["hardsigmoid"] == 9


def test_googlenet_max_pool_branches() -> None:
    # Inception: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 (torchvision: two 3x3) | maxpool-1x1:
    # z + 3 z^2; the stem has 3 ReLUs and 2 max-pools, 2 more max-pools between stages.
    m = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    r = path_spectrum(m.eval(), torch.randn(1, 3, 64, 64))
    assert r.counts == poly({7: 1}, *[{1: 1, 2: 3}] * 9)
    assert r.nonlinear_ops == {"max_pool2d": 13, "relu": 57}


class SegNet(nn.Module):
    """Two-level SegNet (Badrinarayanan et al. 2017): the decoder unpools with the
    encoder's max-pool indices; a short skip around the first decoder conv."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2 if i else 1, 2, 3, padding=1) for i in range(5))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        h1, i1 = self.pool(torch.relu(c[0](x)))  # relu, max-pool: 2
        h2, i2 = self.pool(torch.relu(c[1](h1)))  # 4
        u2 = self.unpool(torch.relu(c[2](h2)), i2)  # relu: 5; unpooling is linear
        d2 = torch.relu(c[3](u2)) + u2  # 6 or 5
        return c[4](self.unpool(d2, i1))


def test_segnet_unpooling_is_linear_and_indices_carry_no_paths() -> None:
    # Paths: 5 ReLU/max-pool layers, and the skip around the sixth: z^5 + z^6. The indices
    # are a mask (no paths), max_unpool a scatter, linear in the values it places.
    r = path_spectrum(SegNet().eval(), torch.randn(1, 1, 8, 8))
    assert r.counts == {5: 1, 6: 1}
    assert r.unknown_ops == []
    assert r.nonlinear_ops == {"max_pool2d_with_indices": 2, "relu": 4}


class Unpool(nn.Module):
    """Keep each window's maximum, zero the rest: with max_unpool, or written as a gate."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.written = written

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.written:
            top = F.interpolate(F.max_pool2d(x, 2), scale_factor=2.0)
            return x * (x == top)
        return F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2)


@pytest.mark.parametrize("written", [False, True])
def test_max_unpool_counts_as_the_gate_it_is(written: bool) -> None:
    r = path_spectrum(Unpool(written), torch.randn(1, 1, 4, 4))
    assert r.counts == {1: 1} and r.unknown_ops == []


def test_indices_of_a_max_carry_no_paths() -> None:
    class Top(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            values, idx = x.max(dim=1, keepdim=True)  # max: 1; idx: a mask
            return values + x.gather(1, idx)  # gather by a mask: a gate, 1

    assert path_spectrum(Top(), torch.randn(2, 4)).counts == {1: 2}


# --------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Single-head self-attention written out, with F.scaled_dot_product_attention, or
    with nn.MultiheadAttention (``weights``: its second output, the attention weights)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
        self.qkv = nn.Linear(4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "written":
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / 2.0, dim=-1)
            return a @ self.v(x)
        if self.kind == "chunked":  # one projection, cut in three
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
        if self.kind == "sdpa":
            return F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))
        out, weights = self.mha(x, x, x)
        return weights if self.kind == "weights" else out


@pytest.mark.parametrize("kind", ["written", "chunked", "sdpa", "mha"])
def test_attention_counts_the_same_however_written(kind: str) -> None:
    # softmax(q k^T) v: via v one product; via q (or k) the product q k^T, the softmax
    # and the product with v: z + 2 z^3.
    r = path_spectrum(Attention(kind).eval(), torch.randn(1, 3, 4))
    assert r.counts == {1: 1, 3: 2}
    assert r.nonlinear_ops == {"matmul": 2, "softmax": 1}
    assert r.unknown_ops == []


def test_attention_weights_and_constant_queries() -> None:
    # The weights softmax(q k^T): via q and via k, a product and the softmax: 2 z^2.
    assert path_spectrum(Attention("weights").eval(), torch.randn(1, 3, 4)).counts == {2: 2}

    class Pool(nn.Module):  # learned queries attend to the input: linear in v, gate via k
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.randn(1, 2, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(self.query, x, x)

    # sdpa(c, x, x): via k: scores (linear in k), softmax, product with v: 2; via v: 1.
    assert path_spectrum(Pool(), torch.randn(1, 3, 4)).counts == {1: 1, 2: 1}


def test_transformer_encoder_closed_form() -> None:
    # Post-norm layer: norm1(x + attn(x)) -> z (1 + z + 2 z^3); norm2(y + relu-MLP(y))
    # -> z (1 + z).
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    one = poly({1: 1, 2: 1, 4: 2}, {1: 1, 2: 1})
    assert path_spectrum(enc, torch.randn(1, 3, 8)).counts == poly(one, one)


def test_vision_transformer_closed_form() -> None:
    # Pre-norm: x + attn(ln(x)) -> 1 + z^2 + 2 z^4; y + mlp(ln(y)) -> 1 + z^2 (GELU);
    # the final LayerNorm z.
    vit = torchvision.models.VisionTransformer(32, 16, 2, 2, 16, 32).eval()
    one = poly({0: 1, 2: 1, 4: 2}, {0: 1, 2: 1})
    assert path_spectrum(vit, torch.randn(1, 3, 32, 32)).counts == poly(one, one, {1: 1})


# --------------------------------------------------------------------------- other idioms


class Fused(nn.Module):
    """GPT-2's Conv1D (torch.addmm), fused multiply-adds, lerp, an embedding lookup."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.w, self.b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "addmm":  # linear: 1 path
            return torch.addmm(self.b, x, self.w) + x.addmm(x, self.w)  # 3 linear paths
        if self.kind == "addmm-product":  # x + x[:, :2] @ x[:2]: 2 paths via the product
            return torch.addmm(x, x[:, :2], x[:2])
        if self.kind == "addcmul":  # x + x * relu(x): 1 + z + z^2
            return torch.addcmul(x, x, torch.relu(x), value=0.5)
        if self.kind == "addcdiv":  # x + b / x: the quotient, 1 + z
            return torch.addcdiv(x, self.b.expand_as(x), x)
        if self.kind == "lerp":  # linear with a constant weight, a gate with sigmoid(x)
            return torch.lerp(x, 2 * x, 0.3) + torch.lerp(x, 2 * x, torch.sigmoid(x))
        return F.embedding(x, self.w)  # a lookup: one-hot(x) @ W, linear


@pytest.mark.parametrize(
    ("kind", "counts"),
    [
        ("addmm", {0: 3}),
        ("addmm-product", {0: 1, 1: 2}),
        ("addcmul", {0: 1, 1: 1, 2: 1}),
        ("addcdiv", {0: 1, 1: 1}),
        ("lerp", {0: 2, 1: 2, 2: 1}),
    ],
)
def test_fused_ops_are_classified(kind: str, counts: dict[int, int]) -> None:
    r = path_spectrum(Fused(kind), torch.randn(2, 4))
    assert r.counts == counts
    assert r.unknown_ops == []


def test_embedding_lookup_is_linear() -> None:
    r = path_spectrum(Fused("embedding"), torch.randint(0, 4, (2, 3)))
    assert r.counts == {0: 1} and r.unknown_ops == []


# --------------------------------------------------------------------------- the NLC


class ChannelsLast(nn.Module):
    """Pools a channels-last tensor, as torchvision's Swin does: vmap has no batching
    rule for one op on the way, and torch warns that it is slow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).flatten(1)


def test_nlc_keeps_vmap_performance_warnings_to_itself() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = nonlinearity_coefficient(ChannelsLast(), torch.randn(4, 2, 2, 3, dtype=torch.float64))
    assert r.value == pytest.approx(1.0, abs=1e-10)  # average pooling is linear


def test_nlc_of_a_constant_model_explains_nan() -> None:
    # torchvision's ViT starts with a zero head: the output does not vary, the NLC is 0/0
    vit = torchvision.models.VisionTransformer(32, 16, 1, 2, 16, 32)
    r = nonlinearity_coefficient(vit, torch.randn(3, 3, 32, 32))
    assert r.value != r.value  # NaN
    assert "does not vary" in r.summary()
