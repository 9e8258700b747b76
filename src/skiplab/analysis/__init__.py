"""Analyses that work on any nn.Module (see DESIGN.md, Analyses).

Each is a function of ``(model, data, ...)`` returning a dataclass result with
``to_dict()``, ``plot(ax=None)`` and ``summary()``.
"""

from .blocks import UnitView, find_units, is_unit
from .gradflow import GradientFlow, gradient_flow, unit_grad_norms
from .identity import IdentityTask, identity_task
from .landscape import LossLandscape, loss_landscape
from .lesion import Lesion, lesion
from .nonlinearity import NLC, nonlinearity_coefficient
from .pathgrad import PathGradients, path_gradients
from .paths import PathSpectrum, path_spectrum
from .shattered import ShatteredGradients, shattered_gradients
from .sublayers import SubLayer, split_sublayers

__all__ = [
    "NLC",
    "GradientFlow",
    "IdentityTask",
    "Lesion",
    "LossLandscape",
    "PathGradients",
    "PathSpectrum",
    "ShatteredGradients",
    "SubLayer",
    "UnitView",
    "find_units",
    "gradient_flow",
    "identity_task",
    "is_unit",
    "lesion",
    "loss_landscape",
    "nonlinearity_coefficient",
    "path_gradients",
    "path_spectrum",
    "shattered_gradients",
    "split_sublayers",
    "unit_grad_norms",
]
