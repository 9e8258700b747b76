"""Training throughput: skiplab's trainer (data, augmentation, optimizer step included)
against a plain PyTorch reference loop (DataLoader with CPU augmentation, eager, fp32) on
the same model and CIFAR-shaped data, measured side by side in one run.

    python benchmarks/train_throughput.py --device cpu|cuda --model resnet-56 [--batch 128]
        [--images 10000] [--compile] [--no-eager] [--json]

Prints img/s of both and the ratio skiplab / reference. On CUDA skiplab's trainer runs with
its defaults (bf16 autocast, channels_last, the step replayed from a CUDA graph); unless
``--no-eager`` it is also timed with ``cuda_graphs=False``, to show what the graph buys.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import skiplab
from bench_common import device_name
from skiplab.data import TensorData
from skiplab.train import fit, get_recipe


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


def reference_img_s(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, dev: torch.device
) -> float:
    loader = DataLoader(CropFlip(x, y), batch_size=batch, shuffle=True, num_workers=2 if dev.type == "cuda" else 0,
                        drop_last=True, pin_memory=dev.type == "cuda", persistent_workers=dev.type == "cuda")  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _epoch in range(2):  # first epoch warms up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t, n = time.perf_counter(), 0
        for xb, yb in loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(xb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
    return n / elapsed


def skiplab_img_s(
    model: torch.nn.Module,
    data: TensorData,
    batch: int,
    dev: torch.device,
    compile: bool,
    cuda_graphs: bool | None = None,
) -> float:
    recipe = get_recipe(
        "he2015-cifar", epochs=3, batch_size=batch, eval_batch_size=1024, compile=compile
    )
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(model, data, recipe, tmp, device=dev, cuda_graphs=cuda_graphs)
    # epoch time includes the (small) test pass; take the best of the epochs after warm-up
    best = min(r["time_s"] for r in res.metrics[1:])
    return len(data.train_x) / best


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet-56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-eager", action="store_true", help="on CUDA, skip the eager timing")
    p.add_argument("--no-reference", action="store_true", help="time skiplab's trainer only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    data = TensorData(
        "synthetic-cifar", "classification", x, y, x[:256], y[:256], 10, "crop-flip", {}
    )
    torch.manual_seed(0)
    ours = skiplab_img_s(skiplab.create_model(args.model), data, args.batch, dev, args.compile)
    eager = None
    if dev.type == "cuda" and not args.no_eager and not args.compile:
        torch.manual_seed(0)
        eager = skiplab_img_s(skiplab.create_model(args.model), data, args.batch, dev, False,
                              cuda_graphs=False)  # fmt: skip
    ref = None
    if not args.no_reference:
        torch.manual_seed(0)
        ref = reference_img_s(skiplab.create_model(args.model).to(dev), x, y, args.batch, dev)
    result = {
        "model": args.model,
        "batch": args.batch,
        "skiplab_img_s": round(ours, 1),
        "skiplab_eager_img_s": None if eager is None else round(eager, 1),
        "reference_img_s": None if ref is None else round(ref, 1),
        "ratio": None if ref is None else round(ours / ref, 3),
        "device": device_name(dev),
        "compile": args.compile,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}, batch {args.batch}, {result['device']}:")
        print(f"  skiplab   {ours:,.0f} img/s")
        if eager is not None:
            print(f"  skiplab without CUDA graphs {eager:,.0f} img/s")
        if ref is not None:
            print(f"  reference {ref:,.0f} img/s")
            print(f"  ratio     {ours / ref:.2f}")


if __name__ == "__main__":
    main()
