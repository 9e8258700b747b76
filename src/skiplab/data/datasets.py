"""The data set registry: ``load_dataset(name, **options)`` and ``list_datasets()``.

Embedded sets (``digits``, ``shapes``, ``random``) need no files and no network. The torchvision
sets are read from ``data_dir`` (default: ``$SKIPLAB_DATA``, else ``~/.cache/skiplab``)
and downloaded there only when ``download=True``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import vision
from .digits import load_digits_data
from .noise import load_random_data
from .shapes import load_shapes_data
from .tensor_data import TensorData

Loader = Callable[..., TensorData]
_FILE_ARGS = ("data_dir", "download")  # what file-backed loaders take besides options


@dataclass(frozen=True)
class DatasetEntry:
    """One registered data set: its loader, task and a one-line description."""

    name: str
    loader: Loader
    task: str
    description: str
    embedded: bool  # True: no files needed (works offline)

    def options(self) -> dict[str, Any]:
        """The options ``load_dataset`` accepts for this set, with their defaults."""
        params = inspect.signature(self.loader).parameters
        return {k: p.default for k, p in params.items() if k not in _FILE_ARGS}


def _entries() -> Mapping[str, DatasetEntry]:
    entries = (
        DatasetEntry("digits", load_digits_data, "classification",
                     "scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes)", True),
        DatasetEntry("shapes", load_shapes_data, "segmentation",
                     "generated scenes of circles, squares and triangles (4 classes)", True),
        DatasetEntry("random", load_random_data, "classification",
                     "Gaussian-noise images, random labels; CIFAR-shaped by default (benchmarks)",
                     True),
        DatasetEntry("cifar10", vision.load_cifar10, "classification",
                     "CIFAR-10, 32x32 colour, 10 classes (torchvision)", False),
        DatasetEntry("cifar100", vision.load_cifar100, "classification",
                     "CIFAR-100, 32x32 colour, 100 classes (torchvision)", False),
        DatasetEntry("mnist", vision.load_mnist, "classification",
                     "MNIST, 28x28 grey digits (torchvision)", False),
        DatasetEntry("fashion-mnist", vision.load_fashion_mnist, "classification",
                     "Fashion-MNIST, 28x28 grey clothing (torchvision)", False),
        DatasetEntry("svhn", vision.load_svhn, "classification",
                     "SVHN cropped digits, 32x32 colour (torchvision)", False),
        DatasetEntry("oxford-pets", vision.load_oxford_pets, "segmentation",
                     "Oxford-IIIT Pet trimaps: background/pet/border (torchvision)", False),
    )  # fmt: skip
    return MappingProxyType({e.name: e for e in entries})


DATASETS: Mapping[str, DatasetEntry] = _entries()  # read-only


def list_datasets() -> list[str]:
    """The names ``load_dataset`` accepts, embedded sets first."""
    return list(DATASETS)


def get_dataset_entry(name: str) -> DatasetEntry:
    """The registry entry for ``name``; ``ValueError`` with a close-match hint if unknown."""
    if isinstance(name, str) and name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), list(DATASETS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(
        f"unknown data set {name!r}: {hint}allowed: {', '.join(repr(n) for n in DATASETS)}"
    )


def default_data_dir() -> Path:
    """``$SKIPLAB_DATA`` if set, else ``~/.cache/skiplab`` (read at call time)."""
    return Path(os.environ.get("SKIPLAB_DATA") or "~/.cache/skiplab").expanduser()


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    **options: Any,
) -> TensorData:
    """Load a data set by name as a normalised :class:`TensorData`.

    ``options`` are the set's own (``get_dataset_entry(name).options()`` lists them, e.g.
    ``shapes``: ``size``, ``n_train``, ``seed``; ``digits``: ``test_size``,
    ``split_seed``; ``random``: ``n_train``, ``n_test``, ``size``, ``channels``,
    ``classes``, ``seed``). ``data_dir`` and ``download`` matter only for the torchvision sets;
    offline, a missing set raises ``ValueError`` saying which files to put where.
    """
    entry = get_dataset_entry(name)
    allowed = entry.options()
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=2, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            listed = ", ".join(allowed) if allowed else "none"
            raise ValueError(
                f"unknown option {key!r} for data set {name!r}{hint}; allowed: {listed}"
            )
    if entry.embedded:
        return entry.loader(**options)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return entry.loader(data_dir=root, download=bool(download), **options)
