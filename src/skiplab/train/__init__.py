"""Training: a typed recipe, ``fit`` for any model, safe checkpoints, DDP under torchrun."""

from .checkpoint import Checkpoint, load_checkpoint, load_model, load_model_state, save_checkpoint
from .recipe import PRESETS, Recipe, get_recipe
from .trainer import RunResult, evaluate, fit

__all__ = [
    "PRESETS",
    "Checkpoint",
    "Recipe",
    "RunResult",
    "evaluate",
    "fit",
    "get_recipe",
    "load_checkpoint",
    "load_model",
    "load_model_state",
    "save_checkpoint",
]
