"""Shattered gradients: inits whose gradient is constant (a linear net, dead ReLUs) are
counted and named, not dropped from the means in silence; and the checks on the inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from skiplab.analysis.shattered import (
    autocorrelation,
    is_constant,
    shattered_gradients,
    spectral_slope,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"points": 32, "max_lag": 3}


def _relu_net(dead: bool) -> nn.Module:
    """Linear(1, 8) -> ReLU -> Linear(8, 1); ``dead``: biases below -2|w| - 1, so every
    ReLU is off on [-2, 2] and the gradient is exactly 0 there."""
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    if dead:
        with torch.no_grad():
            net[0].bias.copy_(-2 * net[0].weight.abs().flatten() - 1)
    return net


def _dead_on_even_seeds(_depth: int) -> nn.Module:
    # Init i runs under torch.manual_seed(seed + i): with seed=0, inits 0 and 2 of 4 are dead.
    return _relu_net(dead=torch.initial_seed() % 2 == 0)


def test_linear_net_counts_every_init_as_constant(caplog):
    with caplog.at_level(logging.WARNING, logger="skiplab.analysis.shattered"):
        res = shattered_gradients(
            {"linear": lambda _d: nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 1))},
            [4],
            inits=3,
            **SMALL,
        )
    row = res.row("linear", 4)
    assert row.constant_inits == 3
    assert np.isnan(row.lag1_mean) and np.isnan(row.slope_mean)
    assert res.to_dict()["rows"][0]["constant_inits"] == 3
    assert "linear at depth 4" in caplog.text and "3 of 3 inits" in caplog.text
    assert "n/a" in res.summary() and "constant in every init" in res.summary()


def test_dead_relu_inits_are_left_out_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="skiplab.analysis.shattered"):
        res = shattered_gradients({"half-dead": _dead_on_even_seeds}, [6], inits=4, **SMALL)
    row = res.row("half-dead", 6)
    g = np.asarray(row.gradients)
    assert np.all(g[[0, 2]] == 0.0) and not is_constant(g[[1, 3]]).any()
    assert row.constant_inits == 2
    # The means are over the two live inits only.
    live = autocorrelation(g[[1, 3]], 3)
    np.testing.assert_allclose(row.autocorr_mean, live.mean(0))
    assert row.lag1_mean == pytest.approx(live[:, 1].mean())
    assert row.slope_mean == pytest.approx(np.mean([spectral_slope(gi) for gi in g[[1, 3]]]))
    assert "half-dead at depth 6" in caplog.text and "2 of 4 inits" in caplog.text
    text = res.summary()
    assert "over 2 inits: 2 with a constant gradient left out" in text
    json.dumps(res.to_dict())


def test_relu_net_with_batch_norm_has_no_constant_inits(caplog):
    with caplog.at_level(logging.WARNING, logger="skiplab.analysis.shattered"):
        res = shattered_gradients(["mlp", "resmlp"], [4], width=16, inits=2, **SMALL)
    assert [r.constant_inits for r in res.rows] == [0, 0]
    assert np.isfinite([r.lag1_mean for r in res.rows]).all()
    assert "constant" not in caplog.text and "left out" not in res.summary()


def test_constant_test_is_relative():
    # The autocorrelation is scale-free, so a vanishing gradient is no constant: 1e-8 times
    # white noise used to be called constant (NaN) while its spectral slope was not.
    w = np.random.default_rng(0).standard_normal((4, 256))
    np.testing.assert_allclose(autocorrelation(1e-8 * w, 2), autocorrelation(w, 2))
    assert not is_constant(1e-8 * w).any()
    # A constant, and float32 rounding of one, is constant at any scale; so is all zeros.
    c = np.full(77, 0.1) * (1 + 1e-7 * (np.arange(77) % 2))  # float32-sized rounding
    assert is_constant(np.stack([np.zeros(77), np.full(77, 1e-30), c, 1e5 * c])).all()


def test_spectral_slope_of_a_constant_is_nan():
    # The mean of 77 copies of 0.1 is not exactly 0.1: the residue used to be fitted as if
    # it were a spectrum (a slope of about -1 for a constant).
    for n in (77, 100, 256):
        assert np.isnan(spectral_slope(np.full(n, 0.1))), n
    # Constant rows are left out of the averaged spectrum, not mixed in.
    b = np.cumsum(np.random.default_rng(1).standard_normal((8, 256)), axis=1)
    mixed = np.concatenate([b, np.full((8, 256), 0.1)])
    assert spectral_slope(mixed) == pytest.approx(spectral_slope(b))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depths": [4.7]}, r"depths=\[4.7\]: must be positive integers"),
        ({"depths": ["4"]}, "depths=.*must be positive integers"),
        ({"depths": [True]}, "depths=.*must be positive integers"),
        ({"span": (-float("inf"), 2.0)}, "span=.*finite"),
        ({"span": (0.0, float("nan"))}, "span=.*finite"),
        ({"span": (0, 1, 2)}, "span=.*two numbers"),
        ({"span": 2.0}, "span=.*two numbers"),
    ],
)
def test_bad_depths_and_span(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shattered_gradients(**{"models": ["mlp"], "depths": [4], "inits": 1, **kwargs})


def test_numpy_depths_are_accepted():
    res = shattered_gradients(["mlp"], np.array([4]), width=8, inits=1, **SMALL)
    assert res.depths == [4] and type(res.depths[0]) is int


def test_two_specs_with_one_label_are_refused():
    # Two lambdas are both '<lambda>': one used to overwrite the other, silently.
    with pytest.raises(ValueError, match="labelled '<lambda>'.*mapping"):
        shattered_gradients([lambda _d: _relu_net(False), lambda _d: nn.Linear(1, 1)], [4])
    res = shattered_gradients(
        {"a": lambda _d: _relu_net(False), "b": lambda _d: _relu_net(False)},
        [4],
        inits=1,
        **SMALL,
    )
    assert res.archs == ["a", "b"]


def test_one_factory_and_a_module_instead_of_a_factory():
    res = shattered_gradients(lambda _d: _relu_net(False), [4], inits=1, **SMALL)
    assert res.archs == ["<lambda>"]
    with pytest.raises(ValueError, match="a factory, not a module"):
        shattered_gradients([_relu_net(False)], [4], inits=1, **SMALL)
    with pytest.raises(ValueError, match="returned a int, not an nn.Module"):
        shattered_gradients({"bad": lambda d: d}, [4], inits=1, **SMALL)


def test_nets_with_the_wrong_number_of_inputs_or_outputs_are_refused():
    # Several outputs: the gradient of their sum used to be reported as if it were one.
    with pytest.raises(ValueError, match=r"three at depth 4: .*\[32, 3\].*one output"):
        shattered_gradients(
            {"three": lambda _d: nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 3))},
            [4],
            inits=1,
            **SMALL,
        )
    with pytest.raises(ValueError, match=r"in3 at depth 4: .*\[32, 1\].*one input feature"):
        shattered_gradients({"in3": lambda _d: nn.Linear(3, 1)}, [4], inits=1, **SMALL)


def test_experiments_leave_the_cuda_generators_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models are seeded through the CPU generator only, which fork_rng restores;
    torch.manual_seed would also reseed every CUDA generator, which fork_rng(devices=[])
    does not restore (the global RNG must be left untouched)."""
    import torch

    from skiplab.analysis import identity_task

    def reseeded(seed: int) -> None:
        raise AssertionError("a CUDA generator was reseeded")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeded)
    before = torch.random.get_rng_state()
    shattered_gradients(["resmlp"], [4], inits=2, width=8, points=16, max_lag=2)
    identity_task(["resmlp"], [4], steps=2, dim=4, tasks=["identity"], eval_points=8, log_every=1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_family_that_is_not_an_mlp_names_the_mlp_families() -> None:
    from skiplab.analysis import identity_task

    for experiment in (shattered_gradients, identity_task):
        with pytest.raises(ValueError, match=r"invalid model 'resnet' here .*'preact-resmlp'"):
            experiment(["resnet"], [20])
    with pytest.raises(ValueError, match=r"mlp-3: invalid depth=3") as err:
        shattered_gradients(["mlp"], [3])  # an MLP family's own message, unchanged
    assert "callable" not in str(err.value)
