"""path_spectrum against closed forms (Veit et al. 2016; He et al. 2016; U-Net levels)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

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


def test_instance_norm_with_running_statistics_is_linear_in_eval() -> None:
    # Like BatchNorm: in eval mode with running statistics an affine map; with the input's
    # own statistics (training, or no running statistics) a nonlinearity.
    x = torch.randn(2, 3, 4, 4)
    tracked = nn.Sequential(nn.Conv2d(3, 3, 1), nn.InstanceNorm2d(3, track_running_stats=True))
    assert path_spectrum(tracked.eval(), x).counts == {0: 1}
    assert path_spectrum(tracked.train(), x).counts == {1: 1}
    assert path_spectrum(nn.InstanceNorm2d(3).eval(), x).counts == {1: 1}


class Im2col(nn.Module):
    """A 3x3 conv written as unfold + matmul, and a sliding-window sum via Tensor.unfold
    and fold: all linear (what a conv does with its input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, 3, padding=1)  # [N, 2*9, 16]
        y = (self.conv.weight.flatten(1) @ cols).unflatten(2, (4, 4))
        z = F.fold(cols, (4, 4), 3, padding=1) + x.unfold(3, 1, 1).squeeze(-1)
        return y + torch.relu(z)


def test_im2col_is_linear() -> None:
    # y: the input through the unfold (one path), z: through fold and through Tensor.unfold
    r = path_spectrum(Im2col(), torch.randn(1, 2, 4, 4))
    assert r.counts == {0: 1, 1: 2} and r.unknown_ops == []


def test_buffers_restored_when_only_a_submodule_trains() -> None:
    # model.eval() then one BatchNorm back in training mode (as when fine-tuning it alone)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()
    model[1].train()
    r = path_spectrum(model, 5 * torch.randn(4, 3) + 3)
    assert r.nonlinear_ops == {"batch_norm (training)": 1}
    assert torch.equal(model[1].running_mean, torch.zeros(3))
    assert int(model[1].num_batches_tracked) == 0


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
        return x + torch.special.bessel_j0(self.fc(x)) + torch.sort(x, dim=1).values


def test_unknown_ops_listed_and_counted_nonlinear() -> None:
    r = path_spectrum(Unknown(), torch.randn(2, 4))
    assert r.unknown_ops == ["sort", "special_bessel_j0"]
    assert r.counts == {0: 1, 1: 2}
    assert "unknown ops" in r.summary()


class Maths(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return torch.erf(x) + torch.atan(x) + norm + x.round() * x  # round(x): a step, a mask


def test_common_maths_is_known() -> None:
    # four single nonlinearities (x * round(x) is a gate, like x * sign(x)); none unknown
    r = path_spectrum(Maths(), torch.randn(2, 4))
    assert r.counts == {1: 4} and r.unknown_ops == []


class Recurrent(nn.Module):
    """A one-layer tanh RNN over the time steps of x [N, T, 3]: fused, or written out."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.written = written
        self.rnn = nn.RNN(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.written:
            return self.rnn(x)[1][0]  # h_T
        h = x.new_zeros(x.shape[0], 4)  # h_0: a constant, no paths
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ self.rnn.weight_ih_l0.T + h @ self.rnn.weight_hh_l0.T)
        return h


def test_recurrent_layers_say_they_were_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    r = path_spectrum(Recurrent(written=False), torch.randn(2, 5, 3))
    assert r.unknown_ops == ["rnn_tanh"]
    assert "not counted: the paths inside the recurrent layers (rnn_tanh)" in r.summary()
    assert "write the cell out" in r.summary()
    assert "recurrent layers of Recurrent" in caplog.text
    # Written out, h_t = tanh(W x_t + U h_{t-1}) has one path through each x_s, s <= t,
    # with t - s + 1 tanh on it: h_T has one path with k tanh for k = 1..T.
    r = path_spectrum(Recurrent(written=True), torch.randn(2, 5, 3))
    assert r.counts == {k: 1 for k in range(1, 6)} and r.unknown_ops == []
    assert "recurrent" not in r.summary()


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


class Pieces(nn.Module):
    """Cut x [N, 4] in two halves, by slicing or with chunk, and join or multiply them."""

    def __init__(self, cut: str, join: str) -> None:
        super().__init__()
        self.cut, self.join = cut, join

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = (x[:, :2], x[:, 2:]) if self.cut == "slice" else x.chunk(2, dim=1)
        if self.join == "mul":
            return a * b
        return torch.cat([torch.relu(a) if self.join == "relu-cat" else a, b], 1)


@pytest.mark.parametrize("cut", ["slice", "chunk"])
def test_paths_join_tensors_not_elements(cut: str) -> None:
    # As the module docstring says: each piece carries all of x's paths, however cut.
    assert path_spectrum(Pieces(cut, "cat"), torch.randn(2, 4)).counts == {0: 2}
    assert path_spectrum(Pieces(cut, "relu-cat"), torch.randn(2, 4)).counts == {0: 1, 1: 1}
    assert path_spectrum(Pieces(cut, "mul"), torch.randn(2, 4)).counts == {1: 2}


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


class Chunked(nn.Linear):
    """A block with two outputs cut from one op."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(x).chunk(2, dim=-1)


class Halves(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Chunked(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.block(x)
        return torch.relu(a) + b


def test_blocks_with_several_outputs_from_one_op() -> None:
    # Every path crosses the block, by either of its outputs.
    r = path_spectrum(Halves(), torch.randn(2, 4), blocks=["block"])
    assert r.counts == {0: 1, 1: 1} and r.through[0].counts == r.counts


class TwoOutputs(nn.Module):
    """A block that returns h and relu(h): the second is computed from the first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(x)
        return h, torch.relu(h)


def test_blocks_with_outputs_computed_from_each_other() -> None:
    # out = h + relu(h) + x: paths through the block are z^0 + z^1 (the path via relu(h)
    # also crosses h, and counts once); the skip around it, one more z^0.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = TwoOutputs()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, r = self.block(x)
            return h + r + x

    r = path_spectrum(Net(), torch.randn(2, 4), blocks=["block"])
    assert r.counts == {0: 2, 1: 1}
    assert r.through[0].counts == {0: 1, 1: 1}


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


class Steps(nn.Module):
    """Reads the input only through a step: a comparison, or floats cast to token ids."""

    def __init__(self, cast: bool) -> None:
        super().__init__()
        self.cast, self.embed = cast, nn.Embedding(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.long()) if self.cast else (x > 0).float()


@pytest.mark.parametrize("cast", [False, True])
def test_output_reached_only_through_steps_says_so(cast: bool) -> None:
    x = torch.randint(0, 10, (2, 3))
    with pytest.raises(ValueError, match="only through step functions"):
        path_spectrum(Steps(cast), x.float())
    if cast:  # integer ids are the input itself: the lookup is linear in the one-hot
        assert path_spectrum(Steps(cast), x).counts == {0: 1}


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
