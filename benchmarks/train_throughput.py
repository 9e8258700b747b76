"""Training throughput: skiplab's trainer (data, augmentation, optimizer step included)
against a plain PyTorch reference loop (DataLoader with CPU augmentation, eager, fp32,
PyTorch's default cuDNN settings) on the same model and CIFAR-shaped data, measured side by
side in one run.

    python benchmarks/train_throughput.py --device cpu|cuda --model resnet-56 [--batch 128]
        [--images 10000] [--timed-epochs 3] [--compile] [--no-eager] [--no-reference] [--json]

Both are timed the same way: one warm-up epoch, then ``--timed-epochs`` epochs, the two
interleaved (a skiplab epoch, then a reference epoch, run from ``fit``'s ``on_epoch``), so
that a busy or drifting machine slows both alike. ``*_img_s`` and ``ratio`` come from each
side's fastest timed epoch (interference only adds time), the ``*_median`` keys from its
median epoch; ``ratio_paired_median`` is the median, over the timed epochs, of a skiplab
epoch's rate over that of the reference epoch run right after it. A skiplab epoch is its
training loop only: its test pass and its bookkeeping (checkpoint, metrics files) are
timed apart and reported as ``skiplab_eval_s`` and ``skiplab_bookkeeping_s`` (medians).

On CUDA skiplab's trainer runs with its defaults (bf16 autocast, channels_last, the step
replayed from a CUDA graph); unless ``--no-eager`` it is also timed with
``cuda_graphs=False`` (a separate run, same epochs), to show what the graph buys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from operator import truediv
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import skiplab
from bench_common import device_name, fail, require_device, require_model, sync, timed
from skiplab.data import TensorData
from skiplab.train import Recipe, fit, get_recipe

WARMUP_EPOCHS = 1


class CropFlip(Dataset):
    """The usual reference: per-sample pad-4 random crop + flip on the CPU."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.x[i], (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        img = img[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.y[i]


class ReferenceLoop:
    """The plain PyTorch loop, one epoch per call, each timed; the first ``WARMUP_EPOCHS``
    are not kept."""

    def __init__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        batch: int,
        dev: torch.device,
    ) -> None:
        cuda = dev.type == "cuda"
        self.loader = DataLoader(CropFlip(x, y), batch_size=batch, shuffle=True,
                                 num_workers=2 if cuda else 0, drop_last=True, pin_memory=cuda,
                                 persistent_workers=cuda)  # fmt: skip
        self.model, self.dev = model.to(dev).train(), dev
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        # cuDNN autotuning as outside fit (PyTorch's default: off), though the epochs run
        # from fit's on_epoch, and fit turns it on for CUDA while it runs.
        self.cudnn_benchmark = torch.backends.cudnn.benchmark
        self.epochs = 0
        self.img_s: list[float] = []

    def _epoch(self) -> int:
        n = 0
        for xb, yb in self.loader:
            xb, yb = xb.to(self.dev, non_blocking=True), yb.to(self.dev, non_blocking=True)
            loss = F.cross_entropy(self.model(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += len(xb)
        return n

    def epoch(self) -> None:
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            s, n = timed(self.dev, self._epoch)
        finally:
            torch.backends.cudnn.benchmark = saved
        self.epochs += 1
        if self.epochs > WARMUP_EPOCHS:
            self.img_s.append(n / s)


class FitTimer:
    """Runs skiplab's ``fit`` and splits each epoch into its training loop and test pass
    (``train_time_s`` and ``test_time_s`` of fit's metrics rows) and its bookkeeping
    (checkpoint, metrics files: the rest of the time between two ``on_epoch`` calls).
    ``between()`` runs after each epoch, outside all three: the interleaved reference
    epoch."""

    def __init__(self, dev: torch.device, between: Callable[[], None] | None = None) -> None:
        self.dev, self.between = dev, between
        self.train_s: list[float] = []
        self.eval_s: list[float] = []
        self.bookkeeping_s: list[float] = []
        self._mark = 0.0

    def _now(self) -> float:
        sync(self.dev)  # the queued GPU work belongs to the phase that queued it
        return time.perf_counter()

    def fit(self, model: torch.nn.Module, data: TensorData, recipe: Recipe, **kwargs: Any) -> None:
        def on_epoch(row: dict[str, Any]) -> None:
            self.train_s.append(row["train_time_s"])
            self.eval_s.append(row["test_time_s"])
            epoch_s = self._now() - self._mark
            self.bookkeeping_s.append(max(0.0, epoch_s - row["train_time_s"] - row["test_time_s"]))
            if self.between is not None:
                self.between()
            self._mark = self._now()

        with tempfile.TemporaryDirectory() as tmp:
            self._mark = self._now()
            res = fit(model, data, recipe, tmp, device=self.dev, on_epoch=on_epoch, **kwargs)
        if res.status != "finished":
            fail(f"skiplab's fit did not finish ({res.status}: {res.message})")

    def img_s(self, images: int) -> list[float]:
        """Images per second of each timed epoch's training loop (after the warm-up)."""
        return [images / s for s in self.train_s[WARMUP_EPOCHS:]]


def summary(img_s: list[float]) -> tuple[float, float]:
    """Fastest and median of per-epoch rates."""
    return max(img_s), statistics.median(img_s)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet-56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--timed-epochs", type=int, default=3,
                   help=f"epochs timed on each side, after {WARMUP_EPOCHS} warm-up")  # fmt: skip
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-eager", action="store_true", help="on CUDA, skip the eager timing")
    p.add_argument("--no-reference", action="store_true", help="time skiplab's trainer only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dev = require_device(args.device)
    if args.timed_epochs < 1:
        fail(f"--timed-epochs {args.timed_epochs}: need at least 1")
    if args.images < args.batch:
        fail(f"--images {args.images}: need at least one batch (--batch {args.batch})")
    require_model(args.model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    data = TensorData(
        "synthetic-cifar", "classification", x, y, x[:256], y[:256], 10, "crop-flip", {}
    )
    epochs = WARMUP_EPOCHS + args.timed_epochs
    recipe = get_recipe("he2015-cifar", epochs=epochs, batch_size=args.batch,
                        eval_batch_size=1024, compile=args.compile)  # fmt: skip

    ref = None
    if not args.no_reference:
        torch.manual_seed(0)
        ref = ReferenceLoop(skiplab.create_model(args.model), x, y, args.batch, dev)
    torch.manual_seed(0)
    ours = FitTimer(dev, between=None if ref is None else ref.epoch)
    ours.fit(skiplab.create_model(args.model), data, recipe)
    eager = None
    if dev.type == "cuda" and not args.no_eager and not args.compile:
        torch.manual_seed(0)
        eager = FitTimer(dev)
        eager.fit(skiplab.create_model(args.model), data, recipe, cuda_graphs=False)

    ours_best, ours_median = summary(ours.img_s(args.images))
    eager_best, eager_median = summary(eager.img_s(args.images)) if eager else (None, None)
    ref_best, ref_median = summary(ref.img_s) if ref else (None, None)

    def r(v: float | None, nd: int = 1) -> float | None:
        return None if v is None else round(v, nd)

    result = {
        "model": args.model,
        "batch": args.batch,
        "images": args.images,
        "skiplab_img_s": r(ours_best),
        "skiplab_eager_img_s": r(eager_best),
        "reference_img_s": r(ref_best),
        "ratio": None if ref is None else round(ours_best / ref_best, 3),
        "device": device_name(dev),
        "compile": args.compile,
        "torch": torch.__version__,
        # How the figures above were taken, and the same from each side's median epoch.
        "warmup_epochs": WARMUP_EPOCHS,
        "timed_epochs": args.timed_epochs,
        "interleaved": ref is not None,
        "skiplab_img_s_median": r(ours_median),
        "skiplab_eager_img_s_median": r(eager_median),
        "reference_img_s_median": r(ref_median),
        "ratio_median": None if ref is None else round(ours_median / ref_median, 3),
        # Each skiplab epoch against the reference epoch that ran right after it.
        "ratio_paired_median": None
        if ref is None
        else round(statistics.median(map(truediv, ours.img_s(args.images), ref.img_s)), 3),
        # What skiplab's epochs also spend, outside the timing above (median, per epoch).
        "skiplab_eval_s": round(statistics.median(ours.eval_s[WARMUP_EPOCHS:]), 4),
        "skiplab_bookkeeping_s": round(statistics.median(ours.bookkeeping_s[WARMUP_EPOCHS:]), 4),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.model}, batch {args.batch}, {args.images:,} images, {result['device']}: "
        f"fastest (median) of {args.timed_epochs} epochs after {WARMUP_EPOCHS} warm-up"
    )
    print(f"  skiplab   {ours_best:,.0f} ({ours_median:,.0f}) img/s")
    if eager is not None:
        print(f"  skiplab without CUDA graphs {eager_best:,.0f} ({eager_median:,.0f}) img/s")
    if ref is not None:
        print(f"  reference {ref_best:,.0f} ({ref_median:,.0f}) img/s, interleaved with skiplab")
        print(f"  ratio     {result['ratio']:.2f} ({result['ratio_median']:.2f}); "
              f"median of epoch pairs {result['ratio_paired_median']:.2f}")  # fmt: skip
    print(
        f"  not in skiplab's figure, per epoch: test pass {result['skiplab_eval_s']:.3f} s, "
        f"checkpoint and metrics files {result['skiplab_bookkeeping_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
