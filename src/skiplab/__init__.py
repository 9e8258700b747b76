"""skiplab: a laboratory for skip connections.

Build every skip design from one set of parts, train it, and measure what the skips do.

>>> import skiplab
>>> model = skiplab.create_model("preact-resnet-20")  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .analysis import (
    gradient_flow,
    identity_task,
    lesion,
    loss_landscape,
    nonlinearity_coefficient,
    path_gradients,
    path_spectrum,
    shattered_gradients,
)
from .models import create_model, from_torchvision, list_models, register_model, summarize

try:
    __version__ = _version("skiplab")
except _PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "create_model",
    "from_torchvision",
    "gradient_flow",
    "identity_task",
    "lesion",
    "list_models",
    "loss_landscape",
    "nonlinearity_coefficient",
    "path_gradients",
    "path_spectrum",
    "register_model",
    "shattered_gradients",
    "summarize",
]
