"""path_gradients' summary says what its shares are (a share of the summed part norms, or
Veit et al.'s total gradient magnitude, Fig. 6c), not "the gradient magnitude".

(Here because this helper may edit only tests/test_shattered*.py; it belongs with
tests/test_pathgrad.py.)"""

from __future__ import annotations

import pytest
import torch

import skiplab
from skiplab.analysis.pathgrad import path_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pathgrad_summary_names_its_shares() -> None:
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
