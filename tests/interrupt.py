"""An interrupted training run for the resume tests: a model that raises in the forward
pass of a given training step, as a kill would stop the run there."""

from __future__ import annotations

import torch
from torch import nn


class Stop(Exception):
    """The interruption."""


class StopAfter(nn.Module):
    """``net``, raising ``Stop`` in the forward pass of training step ``steps`` (0-based);
    evaluation passes never raise."""

    def __init__(self, net: nn.Module, steps: int = 10**9) -> None:
        super().__init__()
        self.net, self.steps = net, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps -= 1
            if self.steps < 0:
                raise Stop
        return self.net(x)
