"""torchvision data sets, downloaded into a data dir on first use and held as tensors.

The files are read by torchvision's own dataset classes (skiplab does not parse them);
this module turns the result into a normalised :class:`~skiplab.data.TensorData`. When
the files are missing and cannot be downloaded (``download=False`` or no network), the
loader raises ``ValueError`` with one line that says which files to put where.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import Tensor

from ..io import one_line
from ..models.layers import invalid
from .tensor_data import TensorData, standardise

log = logging.getLogger(__name__)

# What torchvision raises when a file is missing, corrupt or cannot be fetched.
_FETCH_ERRORS = (URLError, OSError, RuntimeError, EOFError, tarfile.TarError)

Split = tuple[Tensor, Tensor]  # uint8 images [N, C, H, W], int64 targets
Reader = Callable[[Any, Path, bool], Split]  # (torchvision class, root, download) -> split


@dataclass(frozen=True)
class VisionSource:
    """Where a torchvision data set lives and what the user must supply offline."""

    name: str
    dataset: str  # torchvision.datasets class name
    subdir: str  # folder under the data dir passed to torchvision as ``root`` ("" = data dir)
    files: str  # the files to fetch by hand, for the offline message
    url: str
    task: str
    num_classes: int
    augment: str
    folder: str = ""  # where under ``root`` the files go
    then: str = ""  # what to do with them there

    def missing(self, root: Path, reason: str, download: bool) -> ValueError:
        where = root / self.folder if self.folder else root
        fetch = "run with network access" if download else "pass download=True to download it"
        return ValueError(
            f"{self.name} not found in {root} ({reason}): put {self.files} (from {self.url}) "
            f"in {where}{self.then}, or {fetch}"
        )


def _load(
    source: VisionSource,
    data_dir: Path,
    download: bool,
    read_train: Reader,
    read_test: Reader,
    options: dict[str, Any],
) -> TensorData:
    """Read both splits with torchvision's class; turn "missing" into the one-line error."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, source.dataset)
    root = data_dir / source.subdir if source.subdir else data_dir
    if download:
        log.info("%s: loading from %s (downloading if missing)", source.name, root)
    try:
        train = read_train(cls, root, download)
        test = read_test(cls, root, download)  # torchvision skips files already there
    except _FETCH_ERRORS as err:
        reason = (
            f"download failed: {one_line(f'{type(err).__name__}: {err}', 160)}"
            if download
            else "download=False"
        )
        raise source.missing(root, reason, download) from err
    return _to_tensor_data(source, train, test, root, options)


def _to_tensor_data(
    source: VisionSource, train: Split, test: Split, root: Path, options: dict[str, Any]
) -> TensorData:
    train_x, test_x, mean, std = standardise(
        train[0].float().div_(255), test[0].float().div_(255)
    )  # uint8 -> [0, 1] -> standardised
    return TensorData(
        name=source.name,
        task=source.task,
        train_x=train_x,
        train_y=train[1],
        test_x=test_x,
        test_y=test[1],
        num_classes=source.num_classes,
        augment=source.augment,
        meta={
            "source": f"torchvision.datasets.{source.dataset}",
            "url": source.url,
            "root": str(root),
            "split": "official train/test",
            "n_train": len(train_x),
            "n_test": len(test_x),
            "mean": mean,
            "std": std,
            "options": options,
        },
    )


# --------------------------------------------------------------------------- readers
# Each reads one split with torchvision: ``read(cls, root, download) -> (uint8 x, int64 y)``.


def _read_cifar(train: bool) -> Reader:
    def read(cls: Any, root: Path, download: bool) -> Split:
        ds = cls(str(root), train=train, download=download)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    return read


def _read_mnist(train: bool) -> Reader:
    def read(cls: Any, root: Path, download: bool) -> Split:
        ds = cls(str(root), train=train, download=download)
        return ds.data[:, None].contiguous(), ds.targets.to(torch.int64)  # [N, 1, 28, 28]

    return read


def _read_svhn(split: str) -> Reader:
    def read(cls: Any, root: Path, download: bool) -> Split:
        ds = cls(str(root), split=split, download=download)  # torchvision maps label 10 -> 0
        return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).to(torch.int64)

    return read


# Oxford-IIIT Pet trimaps: 1 = pet, 2 = background, 3 = border (not classified).
# skiplab classes: 0 = background, 1 = pet, 2 = border.
PET_CLASSES = ("background", "pet", "border")
_TRIMAP_TO_CLASS = torch.tensor([0, 1, 0, 2], dtype=torch.int64)


def _read_pets(split: str, size: int) -> Reader:
    def read(cls: Any, root: Path, download: bool) -> Split:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        ds = cls(str(root), split=split, target_types="segmentation", download=download)
        n = len(ds)
        x = torch.empty(n, 3, size, size, dtype=torch.uint8)
        trimap = torch.empty(n, size, size, dtype=torch.uint8)
        log.info("oxford-pets: resizing %d %s images to %dx%d", n, split, size, size)
        for i in range(n):  # JPEG decoding is per file; torchvision's class does it
            image, target = ds[i]
            x[i] = pil_to_tensor(image.resize((size, size), Image.Resampling.BILINEAR))
            trimap[i] = pil_to_tensor(target.resize((size, size), Image.Resampling.NEAREST))[0]
        return x, _TRIMAP_TO_CLASS[trimap.long().clamp_(0, 3)]

    return read


# --------------------------------------------------------------------------- sources

_MNIST_FILES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (gunzipped)"
)

SOURCES = {
    s.name: s
    for s in (
        VisionSource("cifar10", "CIFAR10", "", "cifar-10-python.tar.gz",
                     "https://www.cs.toronto.edu/~kriz/cifar.html",
                     "classification", 10, "crop-flip",
                     then=" and extract it there (giving cifar-10-batches-py/)"),
        VisionSource("cifar100", "CIFAR100", "", "cifar-100-python.tar.gz",
                     "https://www.cs.toronto.edu/~kriz/cifar.html",
                     "classification", 100, "crop-flip",
                     then=" and extract it there (giving cifar-100-python/)"),
        VisionSource("mnist", "MNIST", "", _MNIST_FILES,
                     "https://ossci-datasets.s3.amazonaws.com/mnist/",
                     "classification", 10, "crop2", folder="MNIST/raw"),
        VisionSource("fashion-mnist", "FashionMNIST", "", _MNIST_FILES,
                     "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                     "classification", 10, "crop2-flip", folder="FashionMNIST/raw"),
        VisionSource("svhn", "SVHN", "svhn", "train_32x32.mat and test_32x32.mat",
                     "http://ufldl.stanford.edu/housenumbers/",
                     "classification", 10, "crop4"),
        VisionSource("oxford-pets", "OxfordIIITPet", "", "images.tar.gz and annotations.tar.gz",
                     "https://www.robots.ox.ac.uk/~vgg/data/pets/",
                     "segmentation", len(PET_CLASSES), "seg-flip", folder="oxford-iiit-pet",
                     then=" and extract them there (giving images/ and annotations/)"),
    )
}  # fmt: skip


def load_cifar10(*, data_dir: Path, download: bool) -> TensorData:
    """CIFAR-10 (Krizhevsky 2009): 50,000/10,000 32x32 colour images, 10 classes.

    Standard augmentation ``"crop-flip"`` (He et al. 2015, Sec. 4.2).
    """
    return _load(SOURCES["cifar10"], data_dir, download, _read_cifar(True), _read_cifar(False), {})


def load_cifar100(*, data_dir: Path, download: bool) -> TensorData:
    """CIFAR-100 (Krizhevsky 2009): 50,000/10,000 32x32 colour images, 100 classes.

    Standard augmentation ``"crop-flip"`` (as for CIFAR-10).
    """
    return _load(SOURCES["cifar100"], data_dir, download, _read_cifar(True), _read_cifar(False), {})


def load_mnist(*, data_dir: Path, download: bool) -> TensorData:
    """MNIST (LeCun et al. 1998): 60,000/10,000 28x28 grey digits.

    Standard augmentation ``"crop2"`` (shifts of up to 2 pixels; digits are not flipped).
    """
    return _load(SOURCES["mnist"], data_dir, download, _read_mnist(True), _read_mnist(False), {})


def load_fashion_mnist(*, data_dir: Path, download: bool) -> TensorData:
    """Fashion-MNIST (Xiao et al. 2017): 60,000/10,000 28x28 grey clothing images.

    Standard augmentation ``"crop2-flip"`` (garments are mirror-symmetric).
    """
    s = SOURCES["fashion-mnist"]
    return _load(s, data_dir, download, _read_mnist(True), _read_mnist(False), {})


def load_svhn(*, data_dir: Path, download: bool) -> TensorData:
    """SVHN (Netzer et al. 2011), cropped digits: 73,257/26,032 32x32 colour images.

    The ``extra`` split is not used. Standard augmentation ``"crop4"`` (no flip: digits).
    """
    s = SOURCES["svhn"]
    return _load(s, data_dir, download, _read_svhn("train"), _read_svhn("test"), {})


def load_oxford_pets(*, data_dir: Path, download: bool, size: int = 128) -> TensorData:
    """Oxford-IIIT Pet (Parkhi et al. 2012) as segmentation: trimaps -> 3 classes.

    3,680 trainval / 3,669 test images, each resized to ``size`` x ``size`` (bilinear for
    images, nearest for masks; aspect ratio not kept). Classes: 0 background, 1 pet,
    2 border (the trimap's "not classified" band). Standard augmentation ``"seg-flip"``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise invalid("size", size, "must be an integer >= 8")
    s = SOURCES["oxford-pets"]
    data = _load(
        s, data_dir, download, _read_pets("trainval", size), _read_pets("test", size),
        {"size": size},
    )  # fmt: skip
    data.meta["classes"] = list(PET_CLASSES)
    return data
