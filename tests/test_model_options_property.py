"""Property-based: every valid option combination builds and trains a step; every invalid
one raises ValueError. Validity is decided here, independently of the library's checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skiplab

PLACEMENTS = ["original", "bn-after-add", "relu-before-add", "relu-only-preact", "full-preact"]
SHORTCUTS = ["identity", "projection", "all-projection", "scaling", "exclusive-gating",
             "shortcut-only-gating", "conv1x1", "dropout", "none"]  # fmt: skip
INITS = ["he", "zero-last-norm", "fixup"]
NORMS = ["batch", "group", "layer", "none"]
ACTS = ["relu", "gelu", "tanh", "identity"]

options = st.fixed_dictionaries(
    {
        "placement": st.sampled_from(PLACEMENTS + ["preact"]),
        "shortcut": st.sampled_from(SHORTCUTS + ["gated"]),
        "branch_scale": st.sampled_from([1.0, 0.5, "rezero", "half"]),
        "init": st.sampled_from(INITS + ["xavier"]),
        "norm": st.sampled_from(NORMS + ["instance"]),
        "act": st.sampled_from(ACTS + ["swish"]),
        "width": st.sampled_from([0.25, 0.5, 0]),
    },
    optional={
        "shortcut_scale": st.sampled_from([0.5, 0.0]),
        "gate_bias": st.sampled_from([-2.0, 0.0]),
        "shortcut_dropout": st.sampled_from([0.2, 1.5]),
    },
)


def is_valid(o: dict) -> bool:
    if o["placement"] not in PLACEMENTS or o["shortcut"] not in SHORTCUTS:
        return False
    if o["init"] not in INITS or o["norm"] not in NORMS or o["act"] not in ACTS:
        return False
    if o["branch_scale"] == "half" or o["width"] <= 0:
        return False
    if o["init"] == "fixup" and o["norm"] != "none":
        return False
    if o["init"] == "zero-last-norm" and o["norm"] == "none":
        return False
    if o["init"] == "zero-last-norm" and o["placement"] == "relu-before-add" and o["act"] == "relu":
        return False  # the zeroed branch ends on ReLU(0), whose slope is 0: it would stay dead
    if o["shortcut"] == "none" and (o["init"] != "he" or o["branch_scale"] == "rezero"):
        return False
    if "shortcut_scale" in o and o["shortcut"] != "scaling":
        return False
    if "gate_bias" in o and o["shortcut"] not in ("exclusive-gating", "shortcut-only-gating"):
        return False
    dropout = o.get("shortcut_dropout")
    return dropout is None or (o["shortcut"] == "dropout" and dropout < 1)


MODELS = {  # name, extra options, input
    "resnet-8": ({}, (4, 3, 8, 8)),
    "resnet-11": ({"block": "bottleneck"}, (4, 3, 8, 8)),  # 9n+2, n = 1
    "resmlp-4": ({"hidden": 8}, (4, 64)),
}


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(o=options)
def test_valid_options_train_and_invalid_ones_raise(name: str, o: dict) -> None:
    extra, shape = MODELS[name]
    kwargs = {**o, **extra}
    if "mlp" in name:
        kwargs["hidden"] = max(1, int(8 * o["width"])) if o["width"] > 0 else 8
        kwargs["width"] = 1.0 if o["width"] > 0 else 0
    if not is_valid(o):
        with pytest.raises(ValueError):
            skiplab.create_model(name, **kwargs)
        return
    torch.manual_seed(0)
    model = skiplab.create_model(name, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(*shape), torch.randint(0, 10, (shape[0],))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
