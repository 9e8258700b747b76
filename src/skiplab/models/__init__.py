"""Models: every skip design from one set of parts (see DESIGN.md, Models)."""

from .blocks import PLACEMENTS, SHORTCUTS, ResidualUnit
from .convert import from_torchvision
from .mlp import ResMLP
from .registry import (
    Registry,
    create_model,
    list_models,
    model_entries,
    model_options,
    register_model,
)
from .resnet import ResNet
from .summary import ModelSummary, summarize
from .unet import UNet

__all__ = [
    "PLACEMENTS",
    "SHORTCUTS",
    "ModelSummary",
    "Registry",
    "ResMLP",
    "ResNet",
    "ResidualUnit",
    "UNet",
    "create_model",
    "from_torchvision",
    "list_models",
    "model_entries",
    "model_options",
    "register_model",
    "summarize",
]
