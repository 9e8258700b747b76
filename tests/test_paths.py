"""path_spectrum against closed forms (Veit et al. 2016; He et al. 2016; U-Net levels)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
from torch import nn

import skiplab
from skiplab.analysis.paths import PathSpectrum, path_spectrum
from skiplab.models.blocks import ResidualUnit
from skiplab.models.layers import linear_layer

X8 = torch.randn(1, 3, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def poly_mul(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, x in a.items():
        for j, y in b.items():
            out[i + j] = out.get(i + j, 0) + x * y
    return out


def poly_pow(a: dict[int, int], n: int) -> dict[int, int]:
    out = {0: 1}
    for _ in range(n):
        out = poly_mul(out, a)
    return out


def spectrum(name: str, x: torch.Tensor = X8, **options) -> PathSpectrum:
    return path_spectrum(skiplab.create_model(name, **options).eval(), x)


# --------------------------------------------------------------------------- ResNets


def test_resnet110_binomial() -> None:
    # Post-activation (option A): stem ReLU, a ReLU after each of the 54 additions, one
    # more per branch taken: C(54, k) paths with 55 + k nonlinearities (Veit et al. 2016).
    r = spectrum("resnet-110")
    assert r.counts == {55 + k: math.comb(54, k) for k in range(55)}
    assert (r.total, r.min, r.max, r.mean) == (2**54, 55, 109, 82.0)
    assert r.has_linear_path is False
    assert r.unknown_ops == []
    assert set(r.nonlinear_ops) == {"relu"}


def test_preact_resnet110_spectrum_and_until() -> None:
    # Full pre-activation: two ReLUs per branch, identity shortcuts, a final BN-ReLU. The
    # first unit activates before splitting (He et al. 2016, Sec. 4), so both its paths
    # cross that BN-ReLU: z (final) * (z + z^2) (first unit) * (1 + z^2)^53.
    model = skiplab.create_model("preact-resnet-110").eval()
    r = path_spectrum(model, X8)
    expected = poly_mul({1: 1}, poly_mul({1: 1, 2: 1}, poly_pow({0: 1, 2: 1}, 53)))
    assert r.counts == expected
    assert r.counts[2] == 1 and r.counts[3] == 1 and r.counts[4] == 53
    assert r.min == 2 and r.has_linear_path is False
    assert "every path crosses at least 2 nonlinearities\n" in r.summary()
    # From the first unit's output to the last unit's, the identity path is purely linear
    # (He et al. 2016): up to the last unit only the first activation is left on it.
    r = path_spectrum(model, X8, until="stages.2.17")
    assert r.end == "stages.2.17"
    assert r.counts == poly_mul({1: 1, 2: 1}, poly_pow({0: 1, 2: 1}, 53))
    assert r.min == 1
    r = path_spectrum(model.stages, torch.randn(1, 16, 8, 8), until="2.17")  # units 2-54
    assert r.min == 1  # the first unit's activation, shared by both of its paths
    r = path_spectrum(nn.Sequential(*list(model.stages[0])[1:], model.stages[1], model.stages[2]),
                      torch.randn(1, 16, 8, 8))  # fmt: skip
    assert r.counts == {2 * k: math.comb(53, k) for k in range(54)}
    assert r.has_linear_path is True  # after the first unit: a path with no nonlinearity


def test_preact_projection_reads_preactivated_input() -> None:
    # Projection shortcuts only where the shape changes (first units of stages 2 and 3);
    # they read the pre-activated input, so their shortcut crosses one ReLU, as the very
    # first unit's identity shortcut does. Generating function: z (final ReLU) *
    # (1 + z^2)^51 * (z + z^2)^3.
    r = spectrum("preact-resnet-110", shortcut="projection")
    expected = poly_mul(poly_mul({1: 1}, poly_pow({0: 1, 2: 1}, 51)), poly_pow({1: 1, 2: 1}, 3))
    assert r.counts == expected
    assert r.min == 4 and r.max == 1 + 2 * 54


@pytest.mark.parametrize("depth", [20, 32])
def test_plain_nets_have_one_path(depth: int) -> None:
    # Stem ReLU + two per unit, (depth - 2) / 2 units: one path, depth - 1 nonlinearities.
    r = spectrum(f"plain-{depth}")
    assert r.counts == {depth - 1: 1}
    assert r.has_linear_path is False


def test_torchvision_resnet50() -> None:
    # In-place `out += identity` and ReLU(inplace=True). Stem ReLU + max-pool, a ReLU per
    # addition (16), two more per branch taken: C(16, k) paths with 18 + 2k.
    model = torchvision.models.resnet50().eval()
    r = path_spectrum(model, torch.randn(1, 3, 32, 32))
    assert r.counts == {18 + 2 * k: math.comb(16, k) for k in range(17)}
    assert r.nonlinear_ops["max_pool2d"] == 1


def test_batchnorm_train_is_nonlinear_eval_is_linear() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x = torch.randn(6, 4)
    before = model[1].running_mean.clone()
    assert path_spectrum(model.train(), x).counts == {1: 1}
    assert torch.equal(model[1].running_mean, before)  # buffers restored
    assert path_spectrum(model.eval(), x).counts == {0: 1}
    # A CIFAR ResNet in training mode: every BN is nonlinear too.
    r = path_spectrum(skiplab.create_model("resnet-20").train(), torch.randn(2, 3, 8, 8))
    assert r.training and "batch_norm (training)" in r.nonlinear_ops
    assert (r.min, r.max) == (2 + 9, 2 + 9 * 4)


# --------------------------------------------------------------------------- toys


class Dense(nn.Module):
    """Each layer reads the concatenation of the input and every earlier layer's output."""

    def __init__(self, layers: int, width: int = 3, out: str = "cat") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(width * (i + 1), width), nn.ReLU()) for i in range(layers)
        )
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1) if self.out == "cat" else features[-1]


@pytest.mark.parametrize("layers", [1, 4, 7])
def test_dense_toy_closed_form(layers: int) -> None:
    # P_i = z * S_{i-1}, S_i = S_{i-1} + P_i = (1 + z)^i: the block output (all features
    # concatenated) has C(L, j) paths with j nonlinearities; the last layer alone
    # z (1 + z)^(L-1), i.e. C(L-1, j-1).
    x = torch.randn(2, 3)
    r = path_spectrum(Dense(layers), x)
    assert r.counts == {j: math.comb(layers, j) for j in range(layers + 1)}
    assert r.has_linear_path
    r = path_spectrum(Dense(layers, out="last"), x)
    assert r.counts == {j: math.comb(layers - 1, j - 1) for j in range(1, layers + 1)}
    assert path_spectrum(Dense(layers), x, until=f"layers.{layers - 1}").counts == r.counts


def unit(shortcut: str, placement: str = "original", width: int = 4) -> ResidualUnit:
    return ResidualUnit(
        width, width, conv_layer=linear_layer(), norm_layer=None, act_layer=nn.ReLU,
        placement=placement, shortcut=shortcut,
    )  # fmt: skip


def test_exclusive_gating_products_are_nonlinear() -> None:
    # out = relu((1 - g) * x + g * relu(W x)), g = sigmoid(V x). (1-g)*x: paths via g
    # (sigmoid, product) and via x (product): z^2 + z. g * branch: 2 paths, each with
    # one nonlinearity before the product: 2 z^2. Then the ReLU: z^2 + 3 z^3.
    r = path_spectrum(unit("exclusive-gating").eval(), torch.randn(2, 4))
    assert r.counts == {2: 1, 3: 3}
    assert r.nonlinear_ops == {"mul": 2, "relu": 2, "sigmoid": 1}
    # The identity unit for comparison: relu(x + relu(W x)): z + z^2.
    assert path_spectrum(unit("identity").eval(), torch.randn(2, 4)).counts == {1: 1, 2: 1}


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.special.erf(self.fc(x)) + torch.sort(x, dim=1).values


def test_unknown_ops_listed_and_counted_nonlinear() -> None:
    r = path_spectrum(Unknown(), torch.randn(2, 4))
    assert r.unknown_ops == ["sort", "special_erf"]
    assert r.counts == {0: 1, 1: 2}
    assert "unknown ops" in r.summary()


class Ops(nn.Module):
    """Linear and nonlinear tensor idioms: scaling, division, slicing, setitem, views."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = (x * self.scale / 3.0).view(-1, 4)[:, :2].flatten(1)  # linear
        b = x[:, :2] / x.norm()  # quotient of two data-dependent tensors, norm
        c = torch.zeros_like(x)  # carries no paths
        c[:, 2:] = x[:, 2:]  # setitem: c now carries x's paths (linear)
        return torch.cat([a, b], dim=1) + c


def test_tensor_idioms() -> None:
    r = path_spectrum(Ops(), torch.randn(2, 4))
    # a: linear (1 path, 0); b: x directly (div: 1) and x via norm (norm + div: 2); c: 0.
    assert r.counts == {0: 2, 1: 1, 2: 1}
    assert r.unknown_ops == []


def test_huge_counts_stay_exact() -> None:
    # 1030 identity units of relu(x + relu(W x)): (z + z^2)^1030, 2^1030 > 1e308 paths.
    n = 1030
    model = nn.Sequential(*[unit("identity", width=2) for _ in range(n)]).eval()
    r = path_spectrum(model, torch.randn(1, 2))
    assert r.total == 2**n and r.counts[n + 500] == math.comb(n, 500)
    assert r.mean == n + n / 2
    d = json.loads(json.dumps(r.to_dict()))
    assert d["total"] == 2**n and d["counts"][str(n + 500)] == math.comb(n, 500)
    ax = r.plot()
    assert ax.get_ylabel() == "log10(number of paths)"
    assert max(p.get_height() for p in ax.patches) == pytest.approx(
        math.log10(math.comb(n, n // 2))
    )
    assert "e+310" in r.summary() and "e+310" in repr(r)


# --------------------------------------------------------------------------- U-Nets


def test_unet_levels_closed_form() -> None:
    # Depth 3, two conv-ReLU per level. The skip at level l crosses 2(l+1) ReLUs and l
    # max-pools down, 2(l+1) ReLUs up: 5l + 4. The bottom path: 5 * depth + 2.
    model = skiplab.create_model("unet", depth=3, base_width=2).eval()
    r = path_spectrum(model, torch.randn(1, 1, 16, 16))
    assert r.counts == {4: 1, 9: 1, 14: 1, 17: 1}
    assert [lv.counts for lv in r.levels] == [{4: 1}, {9: 1}, {14: 1}]
    mins = [lv.min for lv in r.levels]
    assert mins == sorted(mins) and mins[0] == r.min  # top skip: fewest nonlinearities
    r.plot()


def test_unet_without_skips_and_mixed() -> None:
    x = torch.randn(1, 1, 8, 8)
    r = path_spectrum(skiplab.create_model("unet", depth=2, base_width=2, skip="none"), x)
    assert r.counts == {12: 1}
    assert all(lv.total == 0 and lv.min is None and lv.note for lv in r.levels)
    model = skiplab.create_model("unet", depth=2, base_width=2, skip=["none", "add"])
    r = path_spectrum(model.eval(), x)
    assert [lv.counts for lv in r.levels] == [{}, {9: 1}]
    assert r.counts == {9: 1, 12: 1}


def test_unet_residual_levels() -> None:
    # Residual levels (Drozdzal et al. 2016): each level is relu(P x + conv relu conv x),
    # z + z^2, so the top skip alone has (z + z^2)^2 paths.
    model = skiplab.create_model("unet", depth=2, base_width=2, block="residual").eval()
    r = path_spectrum(model, torch.randn(1, 1, 8, 8))
    assert r.levels[0].counts == {2: 1, 3: 2, 4: 1}
    assert r.levels[0].min < r.levels[1].min


def test_blocks_report_paths_through_a_module() -> None:
    model = skiplab.create_model("preact-resnet-20").eval()
    r = path_spectrum(model, X8, blocks=["stages.0.0.branch", model.stages[1]])
    branch, stage = r.through
    assert stage.name == "stages.1" and stage.counts == r.counts  # every path crosses it
    # Paths through the first branch: two ReLUs there, any choice in the 8 later units.
    assert branch.counts == {3 + 2 * k: math.comb(8, k) for k in range(9)}


# --------------------------------------------------------------------------- errors


def test_wrong_input_shape_names_expected_shape() -> None:
    model = skiplab.create_model("resnet-20").eval()
    with pytest.raises(ValueError, match=r"\(1, 5, 8, 8\).*\[N, 3, 32, 32\]"):
        path_spectrum(model, torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="halved"):
        path_spectrum(skiplab.create_model("unet", depth=2, base_width=2), torch.randn(1, 1, 6, 6))


@pytest.mark.parametrize("analysis", ["gradflow", "pathgrad", "lesion", "landscape", "nlc"])
def test_every_analysis_names_a_wrong_input_shape(analysis) -> None:
    from skiplab import analysis as A

    model = skiplab.create_model("resnet-8", width=0.25)
    x, y = torch.randn(2, 5, 8, 8), torch.tensor([0, 1])
    run = {
        "gradflow": lambda: A.gradient_flow(model, x, y),
        "pathgrad": lambda: A.path_gradients(model, x, y),
        "lesion": lambda: A.lesion(model, (x, y)),
        "landscape": lambda: A.loss_landscape(model, (x, y), steps=3),
        "nlc": lambda: A.nonlinearity_coefficient(model, x),
    }[analysis]
    with pytest.raises(
        ValueError, match=r"shape \(\d, 5, 8, 8\).*takes inputs like \[N, 3, 32, 32\]"
    ):
        run()


def test_until_unknown_name_lists_close_names() -> None:
    model = skiplab.create_model("resnet-20").eval()
    with pytest.raises(ValueError, match=r"until='stages\.2\.9'.*close names: .*stages\.2\.\d"):
        path_spectrum(model, X8, until="stages.2.9")


class Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * torch.ones_like(x).sum()


def test_output_not_reachable() -> None:
    with pytest.raises(ValueError, match="does not depend on the input"):
        path_spectrum(Constant(), torch.randn(2, 3))


class NumpyBranch(nn.Module):
    """A residual unit whose branch leaves torch: its paths cannot be followed."""

    def __init__(self, leave: str = "numpy") -> None:
        super().__init__()
        self.branch, self.shortcut, self.leave = nn.Linear(3, 3), nn.Identity(), leave

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = torch.relu(self.branch(x))
        b = torch.as_tensor(b.numpy()) if self.leave == "numpy" else torch.tensor(b.tolist())
        return self.shortcut(x) + b


@pytest.mark.parametrize("leave", ["numpy", "tolist"])
def test_leaving_torch_on_a_path_is_an_error(leave) -> None:
    """A branch that goes through NumPy (or Python lists) would drop its paths and leave
    only the shortcut's: one clear error instead of a wrong spectrum."""
    from skiplab.analysis import path_gradients

    model = NumpyBranch(leave)
    with pytest.raises(ValueError, match=rf"out of torch \({leave}\(\)\).*torch operations"):
        path_spectrum(model, torch.randn(2, 3))
    if leave == "numpy":  # with gradients on, the forward fails: torch's reason, one ValueError
        with pytest.raises(
            ValueError, match=r"failed on an input of shape \(2, 3\) \(Can't call numpy"
        ):
            path_gradients(model, torch.randn(2, 3), torch.randn(2, 3), blocks=[""])
    # NumPy on tensors that do not depend on the input is fine
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    model[0].weight.data = torch.as_tensor(model[0].weight.detach().numpy().copy())
    assert path_spectrum(model, torch.randn(2, 3)).counts == {1: 1}
