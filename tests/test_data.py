"""skiplab.data: embedded sets, torchvision loading offline, on-device augmentation."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from skiplab.data import (
    TensorData,
    augment_batch,
    get_dataset_entry,
    iterate_batches,
    list_datasets,
    load_dataset,
    parse_augment,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits() -> TensorData:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def shapes() -> TensorData:
    return load_dataset("shapes", n_train=64, n_test=16)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- registry


def test_list_datasets_names_every_set():
    names = list_datasets()
    assert names[:2] == ["digits", "shapes"]  # embedded first
    for n in ("cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "oxford-pets"):
        assert n in names


def test_unknown_name_has_close_match_hint():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar-10'.*did you mean 'cifar10'"):
        load_dataset("cifar-10")


def test_unknown_option_names_option_and_allowed():
    with pytest.raises(ValueError, match=r"unknown option 'sede'.*'shapes'.*seed.*allowed:"):
        load_dataset("shapes", sede=1)
    with pytest.raises(ValueError, match=r"invalid test_size=1.5"):
        load_dataset("digits", test_size=1.5)
    with pytest.raises(ValueError, match=r"invalid max_shapes=100.*lower max_shapes"):
        load_dataset("shapes", max_shapes=100)
    with pytest.raises(ValueError, match=r"invalid noise=-1"):
        load_dataset("shapes", noise=-1)


def test_entry_options_list_defaults():
    assert get_dataset_entry("digits").options() == {"test_size": 0.2, "split_seed": 0}
    assert get_dataset_entry("oxford-pets").options() == {"size": 128}
    assert get_dataset_entry("cifar10").options() == {}


# --------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_stratification(digits: TensorData):
    assert (len(digits.train_x), len(digits.test_x)) == (1437, 360)
    assert digits.input_shape == (1, 8, 8) and digits.in_channels == 1
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert digits.num_classes == 10 and digits.task == "classification"
    assert digits.augment == "crop1"
    # Stratified: each class's share of the test set is within one sample of its share overall.
    all_y = torch.cat([digits.train_y, digits.test_y])
    expected = torch.bincount(all_y, minlength=10).double() * 360 / len(all_y)
    assert (torch.bincount(digits.test_y, minlength=10) - expected).abs().max() <= 1


def test_digits_normalised_by_train_statistics(digits: TensorData):
    assert digits.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert digits.train_x.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    mean, std = digits.meta["mean"][0], digits.meta["std"][0]
    raw = digits.test_x * std + mean  # back to pixel / 16: 17 levels in [0, 1]
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-3)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    json.dumps(digits.meta)  # JSON-safe


def test_digits_split_is_deterministic_and_seeded(digits: TensorData):
    again = load_dataset("digits")
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.test_x, digits.test_x)
    assert len(load_dataset("digits", test_size=0.5).test_x) in (898, 899)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"test_size": 0.001}, "invalid test_size=0.001: gives 1795 train / 2 test images"),
        ({"test_size": 0.999}, "invalid test_size=0.999: gives 1 train / 1796 test images"),
        ({"split_seed": 2**40}, "invalid split_seed=1099511627776: must be an integer in"),
        ({"split_seed": -1}, "invalid split_seed=-1"),
    ],
)
def test_digits_bad_split_is_a_clear_error(options: dict, needle: str):
    """Splits scikit-learn cannot stratify (a class missing from a part) or seeds it cannot
    take are refused with the skiplab option's name, not scikit-learn's."""
    with pytest.raises(ValueError, match=needle):
        load_dataset("digits", **options)
    tiny = load_dataset("digits", test_size=0.0056)  # the smallest fraction that works
    assert len(tiny.test_y) == 11 and set(tiny.test_y.tolist()) == set(range(10))


# --------------------------------------------------------------------------- shapes


def test_shapes_tensors_and_classes(shapes: TensorData):
    assert shapes.task == "segmentation" and shapes.num_classes == 4
    assert shapes.train_x.shape == (64, 1, 32, 32) and shapes.train_y.shape == (64, 32, 32)
    assert shapes.test_x.shape == (16, 1, 32, 32) and shapes.test_y.dtype == torch.int64
    assert set(shapes.train_y.unique().tolist()) == {0, 1, 2, 3}
    assert shapes.augment == "seg-flip"
    # Every scene has at least one shape; shapes are brighter than the background.
    assert (shapes.train_y.flatten(1) > 0).any(dim=1).all()
    fg = shapes.train_x[:, 0][shapes.train_y > 0].mean()
    bg = shapes.train_x[:, 0][shapes.train_y == 0].mean()
    assert fg - bg > 1.0  # in units of the train std
    json.dumps(shapes.meta)


def test_shapes_deterministic_by_seed(shapes: TensorData):
    again = load_dataset("shapes", n_train=64, n_test=16)
    assert torch.equal(again.train_x, shapes.train_x) and torch.equal(again.test_y, shapes.test_y)
    other = load_dataset("shapes", n_train=64, n_test=16, seed=1)
    assert not torch.equal(other.train_y, shapes.train_y)
    # The test set does not depend on the training set's size.
    bigger = load_dataset("shapes", n_train=80, n_test=16)
    assert torch.equal(bigger.test_y, shapes.test_y)


def test_shapes_options():
    d = load_dataset("shapes", size=48, n_train=4, n_test=2, channels=3, max_shapes=9)
    assert d.input_shape == (3, 48, 48) and d.train_y.shape == (4, 48, 48)


def test_shapes_default_is_fast():
    import time

    t = time.perf_counter()
    d = load_dataset("shapes")
    assert time.perf_counter() - t < 3.0  # < 1 s on a normal core; slack for shared CI
    assert (len(d.train_x), len(d.test_x)) == (1000, 200)


# --------------------------------------------------------------------------- random


def test_random_is_cifar_shaped_noise_with_random_labels():
    d = load_dataset("random", n_train=2000, n_test=100)
    assert get_dataset_entry("random").embedded and d.task == "classification"
    assert d.train_x.shape == (2000, 3, 32, 32) and d.test_x.shape == (100, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.train_y.shape == (2000,) and d.test_y.shape == (100,)
    assert d.num_classes == 10 and d.augment == "crop-flip"
    # Every class drawn, about equally often; pixels standardised noise.
    counts = torch.bincount(d.train_y, minlength=10)
    assert len(counts) == 10 and counts.min() > 120 and counts.max() < 280  # 200 +- 6 sd
    assert d.train_x.mean().abs() < 0.01 and (d.train_x.std() - 1).abs() < 0.01
    assert int(d.test_y.max()) < 10 and int(d.test_y.min()) >= 0
    assert d.meta["options"] == {"n_train": 2000, "n_test": 100, "size": 32, "channels": 3,
                                 "classes": 10, "seed": 0}  # fmt: skip
    json.dumps(d.meta)


def test_random_defaults_and_options():
    assert get_dataset_entry("random").options() == {
        "n_train": 10000, "n_test": 1000, "size": 32, "channels": 3, "classes": 10, "seed": 0,
    }  # fmt: skip
    d = load_dataset("random", n_train=8, n_test=4, size=8, channels=1, classes=100, seed=3)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 100
    assert (len(d.train_x), len(d.test_x)) == (8, 4)
    # What a run records in run.json loads the same set again (``skiplab analyze RUN``).
    again = load_dataset("random", **d.meta["options"])
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


def test_random_deterministic_by_seed():
    a = load_dataset("random", n_train=64, n_test=16)
    b = load_dataset("random", n_train=64, n_test=16)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    c = load_dataset("random", n_train=64, n_test=16, seed=1)
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.train_y, c.train_y)
    assert not torch.equal(a.test_x, c.test_x)
    # The test set does not depend on the training set's size (up to normalisation).
    bigger = load_dataset("random", n_train=80, n_test=16)
    assert torch.equal(bigger.test_y, a.test_y)
    assert not torch.equal(a.train_x[:, :, :4], a.test_x[:, :, :4])  # splits differ


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"clases": 5}, r"unknown option 'clases' for data set 'random' \(did you mean 'classes'"),
        ({"classes": 1}, r"invalid classes=1: must be an integer >= 2"),
        ({"n_train": 0}, r"invalid n_train=0: must be an integer >= 1"),
        ({"size": "32"}, r"invalid size='32': must be an integer >= 1"),
        ({"channels": True}, r"invalid channels=True"),
        ({"seed": -1}, r"invalid seed=-1"),
    ],
)
def test_random_bad_option_is_a_clear_error(options: dict, needle: str):
    with pytest.raises(ValueError, match=needle):
        load_dataset("random", **options)


def test_random_trains_a_cifar_resnet(one_thread: None, tmp_path: Path):
    from skiplab.models import create_model
    from skiplab.models.registry import data_options
    from skiplab.train import fit, get_recipe

    d = load_dataset("random", n_train=64, n_test=32)
    model = create_model("resnet-8", **data_options("resnet-8", d.input_shape, d.num_classes))
    res = fit(model, d, get_recipe("quick", epochs=1, batch_size=32), tmp_path / "run",
              device="cpu", model_name="resnet-8")  # fmt: skip
    assert res.status == "finished"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"] == "random" and run["data_options"]["n_train"] == 64


# --------------------------------------------------------------------------- TensorData


def test_subset_and_to(digits: TensorData):
    small = digits.subset(10, 5)
    sizes = [len(t) for t in (small.train_x, small.train_y, small.test_x, small.test_y)]
    assert sizes == [10, 10, 5, 5]
    assert torch.equal(small.train_x, digits.train_x[:10])
    assert small.meta["subset"] == {"n_train": 10, "n_test": 5}
    assert "subset" not in digits.meta  # the original is untouched
    assert len(digits.subset(None, 3).train_x) == len(digits.train_x)
    assert len(digits.subset(10**6).train_x) == len(digits.train_x)  # more than there is: all
    with pytest.raises(ValueError, match="invalid n_train=0"):
        digits.subset(0)
    moved = small.to("cpu")
    assert moved.train_x.device.type == "cpu" and torch.equal(moved.test_y, small.test_y)
    assert "TensorData('digits'" in repr(moved)


def test_tensor_data_validates_shapes():
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="invalid train_y"):
        TensorData("t", "classification", x, torch.zeros(3, dtype=torch.long), x,
                   torch.zeros(4, dtype=torch.long), 2, "none", {})  # fmt: skip


# --------------------------------------------------------------------------- augmentation


def _reference(x: torch.Tensor, pad: int, oy: int, ox: int, flip: bool) -> torch.Tensor:
    """One sample, the slow obvious way: zero-pad, crop at (oy, ox), maybe flip."""
    c, h, w = x.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=x.dtype)
    padded[:, pad : pad + h, pad : pad + w] = x
    crop = padded[:, oy : oy + h, ox : ox + w]
    return crop.flip(-1) if flip else crop


@pytest.mark.parametrize("kind,pad,flip", [("crop-flip", 4, True), ("crop2", 2, False)])
def test_augment_matches_reference_loop(kind: str, pad: int, flip: bool):
    x = torch.randn(16, 3, 8, 10, generator=_gen(0))
    y = torch.arange(16)
    out, out_y = augment_batch(x, y, kind, _gen(1))
    assert out.shape == x.shape and torch.equal(out_y, y)
    seen_flips, seen_offsets = set(), set()
    for i in range(len(x)):
        matches = [
            (oy, ox, f)
            for oy in range(2 * pad + 1)
            for ox in range(2 * pad + 1)
            for f in ((False, True) if flip else (False,))
            if torch.equal(out[i], _reference(x[i], pad, oy, ox, f))
        ]
        assert matches, f"sample {i} is not a shifted/flipped crop of its input"
        seen_flips.add(matches[0][2])
        seen_offsets.add(matches[0][:2])
    assert len(seen_offsets) > 1  # offsets differ between samples
    if flip:
        assert seen_flips == {False, True}


def test_augment_cifar_shape_and_determinism():
    x = torch.randn(32, 3, 32, 32, generator=_gen(0))
    y = torch.zeros(32, dtype=torch.long)
    a, _ = augment_batch(x, y, "crop-flip", _gen(5))
    b, _ = augment_batch(x, y, "crop-flip", _gen(5))
    c, _ = augment_batch(x, y, "crop-flip", _gen(6))
    assert a.shape == (32, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seg_flip_moves_mask_with_image():
    mask = torch.randint(0, 4, (32, 6, 6), generator=_gen(0))
    x = mask[:, None].float() * 10 + torch.arange(6.0)  # image encodes mask and column
    out, out_mask = augment_batch(x, mask, "seg-flip", _gen(2))
    n_flipped = 0
    for i in range(32):
        if torch.equal(out[i], x[i].flip(-1)):
            n_flipped += 1
            assert torch.equal(out_mask[i], mask[i].flip(-1))
        else:
            assert torch.equal(out[i], x[i]) and torch.equal(out_mask[i], mask[i])
    assert 0 < n_flipped < 32


def test_crop_moves_mask_with_image():
    mask = torch.randint(0, 4, (32, 6, 6), generator=_gen(0))
    x = (mask[:, None] + 1).float()  # zero only where padded
    out, out_mask = augment_batch(x, mask, "crop2-flip", _gen(3))
    assert out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
    # Padded image pixels are 0 and padded mask pixels are background (0).
    assert torch.equal(out_mask, (out[:, 0] - 1).clamp(min=0).long())
    assert (out == 0).any()


def test_augment_kinds_validated():
    assert parse_augment("crop-flip") == parse_augment("crop4-flip")
    assert parse_augment("crop1").pad == 1 and not parse_augment("crop1").flip
    x, y = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"invalid augment='crop-flp'.*allowed"):
        augment_batch(x, y, "crop-flp", _gen(0))
    with pytest.raises(ValueError, match=r"invalid augment='crop0'"):
        parse_augment("crop0")
    with pytest.raises(ValueError, match=r"seg-flip.*masks"):
        augment_batch(x, y, "seg-flip", _gen(0))
    assert augment_batch(x, y, "none", _gen(0))[0] is x


# --------------------------------------------------------------------------- batches


def test_iterate_batches_covers_every_sample_once():
    x = torch.arange(23.0).view(23, 1, 1, 1)
    y = torch.arange(23)
    batches = list(iterate_batches(x, y, 5, shuffle=True, generator=_gen(0)))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    for bx, by in batches:
        assert torch.equal(bx.view(-1), by.float())  # pairs stay together
    dropped = list(iterate_batches(x, y, 5, shuffle=True, generator=_gen(0), drop_last=True))
    assert len(dropped) == 4 and all(len(b[1]) == 5 for b in dropped)
    plain = list(iterate_batches(x, y, 10, shuffle=False))
    assert torch.cat([b[1] for b in plain]).tolist() == list(range(23))


def test_iterate_batches_deterministic_with_augmentation(digits: TensorData):
    def epoch(seed: int) -> list[torch.Tensor]:
        it = iterate_batches(
            digits.train_x[:100],
            digits.train_y[:100],
            32,
            shuffle=True,
            generator=_gen(seed),
            augment=digits.augment,
        )
        return [bx for bx, _ in it]

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_iterate_batches_validates_eagerly():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="invalid generator=None"):
        iterate_batches(x, y, 2, shuffle=True)
    with pytest.raises(ValueError, match="invalid batch_size=0"):
        iterate_batches(x, y, 0, shuffle=False)
    with pytest.raises(ValueError, match="invalid augment='flop'"):
        iterate_batches(x, y, 2, shuffle=False, augment="flop", generator=_gen(0))


# --------------------------------------------------------------------------- torchvision


def test_cifar10_offline_error_names_file_and_dir(tmp_path: Path):
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert "cifar10 not found" in msg and "download=False" in msg
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist", "svhn",
                                  "oxford-pets"])  # fmt: skip
def test_offline_error_names_the_download_option(tmp_path: Path, name: str):
    """With download=False the way to fetch the set is download=True; network access alone
    would not help."""
    with pytest.raises(ValueError, match="not found in") as info:
        load_dataset(name, data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert msg.endswith("or pass download=True to download it") and "\n" not in msg
    assert "network access" not in msg
    assert list(tmp_path.rglob("*")) == []  # nothing created, nothing downloaded


def test_default_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from skiplab.data import default_data_dir

    monkeypatch.setenv("SKIPLAB_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    with pytest.raises(ValueError, match=r"mnist not found in .*/d \(download=False\)"):
        load_dataset("mnist", download=False)
    assert not (tmp_path / "d").exists()


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """The IDX format of LeCun's MNIST files: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_mnist_reads_real_idx_files_offline(tmp_path: Path):
    # torchvision.datasets.MNIST reads <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (12, 28, 28)),
        "t10k": rng.integers(0, 256, (5, 28, 28)),
    }
    labels = {"train": np.arange(12) % 10, "t10k": np.array([3, 1, 4, 1, 5])}
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])

    d = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert d.name == "mnist" and d.task == "classification" and d.num_classes == 10
    assert d.train_x.shape == (12, 1, 28, 28) and d.test_x.shape == (5, 1, 28, 28)
    assert d.train_y.tolist() == labels["train"].tolist() and d.test_y.tolist() == [3, 1, 4, 1, 5]
    assert d.augment == "crop2"
    # Normalised with the train statistics of pixel / 255, and the pixels survive the trip.
    assert d.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    mean, std = d.meta["mean"][0], d.meta["std"][0]
    assert mean == pytest.approx(images["train"].mean() / 255, rel=1e-5)
    restored = (d.test_x[:, 0] * std + mean) * 255
    assert torch.allclose(restored, torch.from_numpy(images["t10k"]).float(), atol=1e-3)
    assert d.meta["source"] == "torchvision.datasets.MNIST"
    json.dumps(d.meta)


def test_oxford_pets_reads_real_folder_layout_offline(tmp_path: Path):
    # torchvision.datasets.OxfordIIITPet reads <root>/oxford-iiit-pet/annotations/{split}.txt,
    # images/<id>.jpg and annotations/trimaps/<id>.png (trimap: 1 pet, 2 background, 3 border).
    from PIL import Image

    base = tmp_path / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    splits = {"trainval": ["Abyssinian_1", "beagle_2", "Bombay_3"], "test": ["boxer_4", "pug_5"]}
    trimap_value = {"Abyssinian_1": 1, "beagle_2": 2, "Bombay_3": 3, "boxer_4": 1, "pug_5": 2}
    for split, ids in splits.items():
        lines = [f"{i} {k + 1} {1 + (i[0].islower())} 1" for k, i in enumerate(ids)]
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for k, image_id in enumerate(ids):
            rgb = np.full((20 + k, 30, 3), 40 * k, dtype=np.uint8)
            Image.fromarray(rgb).save(base / "images" / f"{image_id}.jpg")
            tri = np.full((20 + k, 30), trimap_value[image_id], dtype=np.uint8)
            Image.fromarray(tri).save(base / "annotations" / "trimaps" / f"{image_id}.png")

    d = load_dataset("oxford-pets", data_dir=tmp_path, download=False, size=16)
    assert d.task == "segmentation" and d.num_classes == 3 and d.augment == "seg-flip"
    assert d.train_x.shape == (3, 3, 16, 16) and d.train_y.shape == (3, 16, 16)
    assert d.test_x.shape == (2, 3, 16, 16) and d.test_y.dtype == torch.int64
    # Trimap 1 (pet) -> 1, 2 (background) -> 0, 3 (border) -> 2.
    assert [int(m.unique().item()) for m in d.train_y] == [1, 0, 2]
    assert [int(m.unique().item()) for m in d.test_y] == [1, 0]
    assert d.meta["classes"] == ["background", "pet", "border"]
    assert d.meta["options"] == {"size": 16}
    with pytest.raises(ValueError, match="invalid size=4"):
        load_dataset("oxford-pets", data_dir=tmp_path, download=False, size=4)


def test_cifar_reader_converts_layout():
    # CIFAR files carry MD5 sums, so a synthetic set cannot pass torchvision's check; test
    # the conversion from torchvision's NHWC uint8 arrays on a stand-in object instead.
    from skiplab.data.vision import _read_cifar

    class FakeCIFAR:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            self.data = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
            self.targets = [7, 3]

    x, y = _read_cifar(True)(FakeCIFAR, Path("."), False)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.uint8
    assert torch.equal(x[1, 2], torch.from_numpy(FakeCIFAR("", True, False).data[1, :, :, 2]))
    assert y.tolist() == [7, 3] and y.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_and_batches_on_cuda():
    x = torch.randn(64, 3, 32, 32, generator=_gen(0))
    y = torch.randint(0, 10, (64,), generator=_gen(1))
    # A CPU generator gives the same batches on CPU and GPU.
    cpu = list(iterate_batches(x, y, 16, shuffle=True, generator=_gen(2), augment="crop-flip"))
    gpu = list(
        iterate_batches(
            x.cuda(), y.cuda(), 16, shuffle=True, generator=_gen(2), augment="crop-flip"
        )
    )
    for (a, ay), (b, by) in zip(cpu, gpu, strict=True):
        assert b.is_cuda and torch.equal(a, b.cpu()) and torch.equal(ay, by.cpu())

    # A CUDA generator works too, deterministically.
    def run(seed: int) -> list[torch.Tensor]:
        g = torch.Generator(device="cuda").manual_seed(seed)
        it = iterate_batches(x.cuda(), y.cuda(), 16, shuffle=True, generator=g, augment="crop-flip")
        return [bx for bx, _ in it]

    assert all(torch.equal(a, b) for a, b in zip(run(3), run(3), strict=True))
    mask = torch.randint(0, 4, (8, 32, 32), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    out, out_mask = augment_batch(x[:8].cuda(), mask, "seg-flip", g)
    assert out.is_cuda and out_mask.shape == mask.shape
    data = load_dataset("shapes", n_train=8, n_test=4).to("cuda")
    assert data.train_x.is_cuda and data.test_y.is_cuda


def test_cli_train_takes_data_options(tmp_path) -> None:
    from typer.testing import CliRunner

    from skiplab.cli import app

    run = CliRunner()
    out = tmp_path / "run"
    res = run.invoke(app, ["train", "mlp-4", "--data", "random", "--data-option", "n_train=48",
                           "--data-option", "n_test=16", "--data-option", "size=8", "--epochs",
                           "1", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    opts = json.loads((out / "run.json").read_text())["data_options"]
    assert (opts["n_train"], opts["n_test"], opts["size"]) == (48, 16, 8)
    bad = run.invoke(app, ["train", "mlp-4", "--data", "random", "--data-option", "n_tst=8",
                           "--out", str(tmp_path / "bad")])  # fmt: skip
    assert bad.exit_code == 2 and "did you mean 'n_test'" in bad.output
    assert not (tmp_path / "bad").exists()
    bad = run.invoke(
        app, ["train", "mlp-4", "--data-option", "n_train", "--out", str(tmp_path / "b2")]
    )
    assert bad.exit_code == 2 and "use KEY=VALUE" in bad.output
