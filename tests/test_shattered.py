"""Shattered gradients (Balduzzi et al. 2017): the helpers on signals with known answers,
and plain vs residual nets at small sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from skiplab.analysis.shattered import (
    ShatteredGradients,
    autocorrelation,
    input_gradient,
    shattered_gradients,
    spectral_slope,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_white_noise():
    w = np.random.default_rng(0).standard_normal((64, 256))
    acf = autocorrelation(w, 5)
    assert acf.shape == (64, 6)
    np.testing.assert_allclose(acf[:, 0], 1.0)
    assert np.all(np.abs(acf[:, 1:].mean(axis=0)) < 0.03)
    assert abs(spectral_slope(w)) < 0.2


def test_brown_noise():
    b = np.cumsum(np.random.default_rng(1).standard_normal((64, 256)), axis=1)
    assert -2.3 < spectral_slope(b) < -1.7
    assert autocorrelation(b, 1)[:, 1].mean() > 0.9


def test_known_autocorrelation_and_constant():
    # Alternating signal: lag-1 autocorrelation close to -1; a constant has none (NaN).
    alt = np.tile([1.0, -1.0], 64)
    assert autocorrelation(alt, 2)[1] == pytest.approx(-1.0, abs=0.01)
    assert np.isnan(autocorrelation(np.ones(32), 2)).all()
    with pytest.raises(ValueError, match="max_lag"):
        autocorrelation(np.ones(8), 8)


def test_linear_net_has_constant_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 8), nn.Linear(8, 8), nn.Linear(8, 1))
    x = torch.linspace(-2, 2, 64)[:, None]
    g = input_gradient(net, x)
    expected = (net[2].weight @ net[1].weight @ net[0].weight).item()
    torch.testing.assert_close(g, torch.full((64,), expected))


def test_input_gradient_with_batch_norm_is_pointwise():
    # With BN, the gradient holds the batch statistics fixed: it matches a finite
    # difference of the net in eval mode with its running stats set to the batch's.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.linspace(-2, 2, 32, dtype=torch.float64)[:, None]
    net = net.double()
    g = input_gradient(net, x)
    with torch.no_grad():
        h = net[0](x)
        net[1].running_mean.copy_(h.mean(0))
        net[1].running_var.copy_(h.var(0, unbiased=False))
        net.eval()
        eps = 1e-6
        fd = ((net(x + eps) - net(x - eps)) / (2 * eps)).flatten()
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-7)


def test_plain_shatters_faster_than_resnet():
    res = shattered_gradients(
        ("mlp", "resmlp", "preact-resmlp"), (4, 10), points=128, width=64, inits=4, seed=0
    )
    assert isinstance(res, ShatteredGradients)
    plain, post, pre = (res.lag1(a, 10) for a in ("mlp", "resmlp", "preact-resmlp"))
    assert plain < post and plain < pre
    assert res.lag1("mlp", 10) < res.lag1("mlp", 4)  # plain nets decorrelate with depth
    row = res.row("mlp", 10)
    assert len(row.gradients) == 4 and len(row.gradients[0]) == 128
    assert len(row.autocorr_mean) == 33 and row.autocorr_mean[0] == pytest.approx(1.0)
    json.dumps(res.to_dict())
    assert "ShatteredGradients(" in repr(res)
    assert "Balduzzi" in res.summary()
    for kind in ("lag1", "acf", "gradients"):
        assert res.plot(kind=kind) is not None
    # The global RNG is left alone.
    torch.manual_seed(5)
    a = torch.rand(1)
    torch.manual_seed(5)
    shattered_gradients(["mlp"], [4], points=16, width=8, inits=1, max_lag=4)
    assert torch.equal(torch.rand(1), a)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown model"):
        shattered_gradients(["nosuchnet"], [4], inits=1)
    with pytest.raises(ValueError, match="depth"):
        shattered_gradients(["mlp"], [5], inits=1)


def _pointwise_reference(net: nn.Module, bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """Central differences of ``net`` in eval mode with ``bn`` normalising by fixed
    statistics: those of its input on the batch ``x`` with dropout off."""
    ref = nn.BatchNorm1d(bn.num_features).double()
    ref.load_state_dict(bn.state_dict(), strict=False)
    layers = [ref if m is bn else m for m in net]
    ref_net = nn.Sequential(*layers).eval()
    with torch.no_grad():
        h = nn.Sequential(*layers[: layers.index(ref)])(x)
        ref.running_mean.copy_(h.mean(0))
        ref.running_var.copy_(h.var(0, unbiased=False))
        eps = 1e-6
        return ((ref_net(x + eps) - ref_net(x - eps)) / (2 * eps)).flatten()


def test_input_gradient_batch_statistics_without_dropout():
    # The statistics are those of the batch with dropout off, as in the pass that is
    # differentiated (they used to be taken with dropout on).
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(1, 16), nn.Dropout(0.5), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)
    ).double()
    x = torch.linspace(-2, 2, 32, dtype=torch.float64)[:, None]
    net.train()
    g = input_gradient(net, x)
    assert net.training and net[1].training  # modes restored
    torch.testing.assert_close(g, _pointwise_reference(net, net[2], x), rtol=1e-5, atol=1e-7)


def test_input_gradient_batch_norm_without_running_statistics():
    # BN that keeps no running statistics also normalises by fixed batch statistics.
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(16, track_running_stats=False)
    net = nn.Sequential(nn.Linear(1, 16), bn, nn.ReLU(), nn.Linear(16, 1)).double()
    x = torch.linspace(-2, 2, 32, dtype=torch.float64)[:, None]
    g = input_gradient(net, x)
    torch.testing.assert_close(g, _pointwise_reference(net, bn, x), rtol=1e-5, atol=1e-7)


def test_input_gradient_leaves_running_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    input_gradient(net, torch.linspace(-2, 2, 16)[:, None])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training


def test_linear_net_gradient_is_constant_so_its_autocorrelation_is_nan(recwarn):
    # A constant gradient has no variance to normalise by: NaN (see ``autocorrelation``),
    # reported without numpy's warnings about empty slices.
    res = shattered_gradients(
        {"linear": lambda _depth: nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 1))},
        [4],
        points=16,
        inits=2,
        max_lag=3,
    )
    row = res.row("linear", 4)
    assert np.isnan(row.lag1_mean) and np.isnan(row.slope_mean)
    assert all(np.ptp(g) == 0 for g in row.gradients)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
