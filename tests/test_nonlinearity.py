"""nonlinearity_coefficient: closed forms (affine nets have NLC 1; ReLU on a standard normal
has sqrt(pi / (pi - 1)); tanh near 0 is linear)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torchvision
from torch import nn

import skiplab
from skiplab.analysis.nonlinearity import NLC, _jvp_sq_norms, nlc_of, nonlinearity_coefficient


def randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_affine_net_has_nlc_one() -> None:
    # Convs + eval-mode BN + identity activations: an affine map, whole and per unit.
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", width=0.25, act="identity").double()
    randomise_bn(model)
    model.train()
    r = nonlinearity_coefficient(model, torch.randn(8, 3, 6, 6, dtype=torch.float64))
    assert r.value == pytest.approx(1.0, abs=1e-10)
    assert len(r.per_unit) == 3
    assert all(row["nlc"] == pytest.approx(1.0, abs=1e-10) for row in r.per_unit)
    assert model.training  # mode restored


def test_relu_closed_form() -> None:
    # x ~ N(0, 1), f = relu: J = 1[x > 0], so E tr(J Σ_x J^T) = P(x > 0) = 1/2, and
    # Var relu(x) = E relu^2 - (E relu)^2 = 1/2 - 1/(2 pi): NLC = sqrt(pi / (pi - 1)).
    torch.manual_seed(0)
    x = torch.randn(200_000, 1, dtype=torch.float64)
    value = nlc_of(torch.relu, x)
    # The same formula with the sample's own moments holds exactly.
    var_x = x.var(unbiased=False)
    frac = (x > 0).double().mean()
    sample = torch.sqrt(var_x * frac / torch.relu(x).var(unbiased=False))
    assert value == pytest.approx(float(sample), rel=1e-10)
    assert value == pytest.approx(math.sqrt(math.pi / (math.pi - 1)), rel=5e-3)
    r = nonlinearity_coefficient(nn.ReLU(), x[:1000])
    assert r.per_unit == [] and r.value > 1.1


def test_tanh_near_zero_is_linear() -> None:
    torch.manual_seed(0)
    x = 1e-3 * torch.randn(32, 3, dtype=torch.float64)
    assert nlc_of(torch.tanh, x) == pytest.approx(1.0, abs=1e-5)
    assert nlc_of(torch.tanh, 3 * torch.randn(32, 3, dtype=torch.float64)) > 1.2


def test_resmlp_identity_units_and_nonlinear_net() -> None:
    torch.manual_seed(0)
    mlp = skiplab.create_model("resmlp-8", act="identity", hidden=8, in_channels=4).double()
    randomise_bn(mlp)
    r = nonlinearity_coefficient(mlp, torch.randn(16, 4, dtype=torch.float64))
    assert [row["nlc"] for row in r.per_unit] == pytest.approx([1.0] * 3, abs=1e-10)
    relu = skiplab.create_model("resnet-8", width=0.25)
    assert nonlinearity_coefficient(relu, torch.randn(8, 3, 6, 6)).value > 1.05


class NoForwardAD(torch.autograd.Function):
    """Softplus with a backward rule only: forward-mode AD must fall back to VJPs."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return nn.functional.softplus(x)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


def test_double_backward_fallback_matches_forward_mode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="skiplab.analysis.nonlinearity")
    torch.manual_seed(0)
    x = torch.randn(10, 3, dtype=torch.float64)
    t = torch.randn(2, 3, dtype=torch.float64)
    fallback = _jvp_sq_norms(NoForwardAD.apply, x, t, chunk=4)
    forward = _jvp_sq_norms(nn.functional.softplus, x, t, chunk=4)
    assert "double-backward" in caplog.text
    torch.testing.assert_close(fallback, forward, rtol=1e-12, atol=0)


def test_result_contract() -> None:
    torch.manual_seed(0)
    r = nonlinearity_coefficient(
        skiplab.create_model("resnet-8", width=0.25), torch.randn(6, 3, 6, 6)
    )
    assert isinstance(r, NLC)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["points"] == 6 and len(d["per_unit"]) == 3
    assert "NLC(" in repr(r) and "Philipp" in r.summary()
    assert r.plot().get_ylabel() == "NLC"
    with pytest.raises(ValueError, match="at least 2"):
        nlc_of(torch.tanh, torch.randn(1, 3))
    with pytest.raises(ValueError, match="all 4 input points are the same"):
        nonlinearity_coefficient(nn.Tanh(), torch.ones(4, 3))
    with pytest.raises(ValueError, match="invalid chunk=0"):
        nonlinearity_coefficient(nn.Linear(3, 3), torch.randn(4, 3), chunk=0)


class LoggedBlock(torchvision.models.resnet.BasicBlock):
    """A user's subclass with a forward of its own: its paths are unknown, but the NLC
    needs only its input-output map."""

    def forward(self, x):  # noqa: ANN001, ANN201
        return super().forward(x)


def test_units_are_any_input_output_maps(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    r = nonlinearity_coefficient(mlp, x, blocks=["0", "2"])  # not residual units: any module
    assert [u["name"] for u in r.per_unit] == ["0", "2"]
    assert [u["nlc"] for u in r.per_unit] == pytest.approx([1.0, 1.0], abs=1e-10)  # affine

    tv = torchvision.models.resnet18(num_classes=4).double().eval()
    tv.layer2[0].__class__ = LoggedBlock
    caplog.set_level(logging.WARNING)
    xi = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    r = nonlinearity_coefficient(tv, xi)
    assert len(r.per_unit) == 8 and "not analysed" not in caplog.text
    inputs = []
    h = tv.layer2[0].register_forward_hook(lambda m, a, o: inputs.append(a[0]))
    with torch.no_grad():
        tv(xi)
    h.remove()
    row = next(u for u in r.per_unit if u["name"] == "layer2.0")
    assert row["nlc"] == pytest.approx(nlc_of(tv.layer2[0], inputs[0]), rel=1e-10)


def test_step_function_has_nlc_zero() -> None:
    # round(x) has zero slope almost everywhere, yet its outputs vary: NLC = 0 (< 1 is as
    # far from affine as > 1).
    class Staircase(nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN201
            return torch.round(3 * x)

    x = torch.randn(64, 2, dtype=torch.float64)
    r = nonlinearity_coefficient(Staircase(), x)
    assert r.value == 0.0 and "below 1" in r.summary()
    assert "below 1" not in nonlinearity_coefficient(nn.Linear(2, 2).double(), x).summary()


def test_no_torch_internal_warnings_reach_the_caller() -> None:
    # torch.func.jvp warns "torch.jit.script is deprecated" on every call (torch 2.14)
    import warnings

    model = skiplab.create_model("resnet-8", in_channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        r = nonlinearity_coefficient(model, torch.randn(4, 1, 8, 8))
    assert r.value > 1.0


class Centre(nn.Module):
    """Subtracts the batch mean: affine in the batch as a whole, not per sample."""

    def forward(self, x):  # noqa: ANN001, ANN201
        return x - x.mean(0, keepdim=True)


@pytest.mark.parametrize("layer", ["centre", "batch-stats-bn"])
def test_models_that_mix_the_batch_are_an_error(layer: str) -> None:
    # The NLC's Jacobian is per point; moving every point along a tangent leaves
    # x - mean(x) unchanged, so without the check these gave NLC 0 without a word.
    mix = Centre() if layer == "centre" else nn.BatchNorm1d(3, track_running_stats=False)
    model = nn.Sequential(nn.Linear(3, 3), mix).double().train()
    x = torch.randn(8, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="the model to map each of the 8 input points") as err:
        nonlinearity_coefficient(model, x)
    assert "output for one point changes with the other points" in str(err.value)
    assert model.training  # mode restored after the error


def test_train_mode_batchnorm_is_measured_in_eval_mode() -> None:
    # In training mode BatchNorm mixes the batch; the NLC runs the model in eval mode
    # (running statistics: affine, NLC 1) and leaves mode and statistics as they were.
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).double().train()
    stats = model[1].running_mean.clone()
    r = nonlinearity_coefficient(model, torch.randn(8, 3, dtype=torch.float64))
    assert r.value == pytest.approx(1.0, abs=1e-10)
    assert model.training and torch.equal(model[1].running_mean, stats)


def test_output_without_a_row_per_point_is_an_error() -> None:
    class Loss(nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN201
            return x.pow(2).sum()

    with pytest.raises(ValueError, match=r"its output has shape \(\), not \[4, \.\.\.\]"):
        nonlinearity_coefficient(Loss(), torch.randn(4, 3))


def test_a_recurrent_layer_along_the_batch_dimension_is_an_error() -> None:
    # nn.LSTM without batch_first reads [T, N, ...]: dim 0 is time, so "point" t depends
    # on points 0..t-1 (point 0 on none of them: the check must look at the last too).
    class Steps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.rnn(x)[0]

    with pytest.raises(ValueError, match="changes with the other points"):
        nonlinearity_coefficient(Steps(), torch.randn(5, 2, 3))


def test_scalar_points_and_outputs() -> None:
    # x [N] (one number per point) and outputs [N] (a squeezed regression head) are points
    # too: the same NLC as with a trailing dimension of 1.
    torch.manual_seed(0)
    x = torch.randn(500, dtype=torch.float64)
    assert nlc_of(torch.relu, x) == pytest.approx(nlc_of(torch.relu, x[:, None]), rel=1e-12)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.fc(x).squeeze(1)

    r = nonlinearity_coefficient(Head().double(), torch.randn(8, 3, dtype=torch.float64))
    assert r.value == pytest.approx(1.0, abs=1e-10)


def test_half_precision_inputs() -> None:
    # eigh/svd have no bfloat16 kernels: the tangents are computed in float32
    model = nn.Linear(3, 3).bfloat16()
    r = nonlinearity_coefficient(model, torch.randn(16, 3).bfloat16())
    assert r.value == pytest.approx(1.0, abs=0.05)


def test_a_unit_that_mixes_its_rows_gets_nan_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A seq-first layer inside a batch-first model: the unit sees [T, N, E] (rows are
    # time steps, mixed by attention); the model maps each point on its own.
    class SeqFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(4, 1, 8, dropout=0.0)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.layer(x.transpose(0, 1)).transpose(0, 1)

    model = SeqFirst().double()
    caplog.set_level(logging.WARNING)
    r = nonlinearity_coefficient(model, torch.randn(6, 3, 4, dtype=torch.float64), blocks=["layer"])
    assert r.value > 1.0 and math.isnan(r.per_unit[0]["nlc"])
    assert "per-unit NLC of 'layer' is NaN" in caplog.text
    assert "changes with the other points" in caplog.text
