"""The identity task: learning f(x) = x and f(x) = Ax on signed inputs, by depth."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from skiplab.analysis.identity import (
    IdentityTask,
    default_identity_models,
    identity_task,
    random_orthogonal,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_random_orthogonal_is_orthogonal_and_seeded():
    q = random_orthogonal(6, seed=3)
    torch.testing.assert_close(q @ q.T, torch.eye(6), atol=1e-5, rtol=0)
    assert torch.equal(q, random_orthogonal(6, seed=3))
    assert not torch.equal(q, random_orthogonal(6, seed=4))


def test_a_linear_model_learns_both_maps():
    # Known answer: one Linear layer can fit any linear map exactly; Adam gets there.
    res = identity_task(
        {"linear": lambda _depth: nn.Linear(4, 4)},
        [1],
        dim=4,
        steps=150,
        lr=0.05,
        batch_size=64,
        threshold=1e-3,
        eval_points=256,
    )
    for task in ("identity", "linear"):
        s = res.stat("linear", 1, task)
        assert s.final_loss_mean < 1e-3
        assert s.reached == 1 and s.steps_mean is not None and s.steps_mean <= 150
    run = res.runs[0]
    assert run.curve[0] > run.curve[-1]
    assert len(run.curve) == len(res.log_steps) and res.log_steps[-1] == 150


def test_default_architectures_tiny():
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    res = identity_task(
        depths=(4,),
        dim=4,
        tasks="identity",
        steps=12,
        log_every=5,
        batch_size=16,
        threshold=1e-9,
        eval_points=64,
        seeds=(0, 1),
    )
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is untouched
    assert isinstance(res, IdentityTask)
    assert res.archs == list(default_identity_models())
    assert res.log_steps == [5, 10, 12]
    assert len(res.runs) == 4 * 2
    s = res.stat("plain", 4)
    assert s.seeds == 2 and s.reached == 0 and s.steps_mean is None  # threshold unreachable
    assert s.final_loss_mean > 0
    with pytest.raises(KeyError, match=r"measured: archs \['plain'"):  # names what there is
        res.stat("mlp", 4)
    # Seeded: the same call gives the same numbers.
    again = identity_task(
        ["mlp"], (4,), dim=4, tasks="identity", steps=12, log_every=5, batch_size=16,
        eval_points=64, seeds=(0,),
    )  # fmt: skip
    assert again.runs[0].final_loss == res.runs[0].final_loss
    json.dumps(res.to_dict())
    assert "IdentityTask(" in repr(res)
    assert "identity task" in res.summary()
    assert res.plot() is not None
    assert res.plot(metric="steps") is not None


def test_model_specs_pairs_and_options():
    res = identity_task(
        [("resmlp", {"norm": "layer"}), "preact-resmlp"],
        (4,),
        dim=3,
        hidden=8,
        tasks=("linear",),
        steps=3,
        log_every=1,
        batch_size=8,
        eval_points=16,
    )
    assert res.archs == ["resmlp(norm=layer)", "preact-resmlp"]
    assert res.config["hidden"] == 8 and res.tasks == ["linear"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"models": ["nosuchnet"]}, "unknown model"),
        ({"depths": (5,)}, "depth"),
        ({"tasks": "square"}, "tasks=.*allowed.*'identity'"),
        ({"steps": 0}, "steps"),
        ({"threshold": -1.0}, "threshold"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"models": ["mlp"], "depths": (4,), "dim": 2, "steps": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        identity_task(**args)
