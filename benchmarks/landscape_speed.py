"""How fast is a loss landscape? A 2-D grid (Li et al. 2018) evaluated in batches of grid
points (torch.func.vmap over stacked weights), against the naive loop (one model copy and
one data pass per point), measured side by side in one run. The naive loop is timed on a
few points and extrapolated to the whole grid.

    python benchmarks/landscape_speed.py [--device cpu|cuda] [--steps 21] [--model resnet-20]
        [--images 360] [--naive-points 5] [--points-per-batch N] [--bf16] [--json]

Defaults: resnet-20 (in_channels=1, untrained: the timing does not depend on the weights)
on 360 test images of scikit-learn's digits (8x8), a 21x21 grid; target < 60 s on a 2-core
CPU. GPU figure: ``--device cuda --model resnet-56 --steps 51 --images 2000`` (random
CIFAR-shaped images, 3x32x32); target < 45 s on an H100. ``--bf16`` runs both under
``torch.autocast`` with bfloat16 (CUDA only). channels_last is not offered: BatchNorm
cannot query it inside vmap (torch 2.11-2.14).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import time

import torch
import torch.nn.functional as F

import skiplab
from skiplab.analysis.landscape import loss_landscape, random_direction


def digits_test(images: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[-images:], dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8]
    return x, torch.tensor(d.target[-images:], dtype=torch.long)


def cifar_like(images: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_point(model, x, y, d1, d2, a: float, b: float) -> float:
    """One grid point the naive way: copy the model, move its weights, one pass over the data."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(a * d1[name] + b * d2[name])
        return float(F.cross_entropy(m(x), y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--model", default="resnet-20")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--naive-points", type=int, default=5)
    ap.add_argument("--points-per-batch", type=int, default=None)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.device == "cpu":
        images = args.images or 360
        x, y = digits_test(images)
        model = skiplab.create_model(args.model, in_channels=1)
        data_name = f"digits test ({images} x 1x8x8)"
    else:
        images = args.images or 2000
        x, y = cifar_like(images)
        model = skiplab.create_model(args.model, in_channels=3)
        data_name = f"random CIFAR-shaped ({images} x 3x32x32)"
    model = model.to(device).eval()
    x, y = x.to(device), y.to(device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )

    with amp:
        # Warm-up (kernel selection, allocator), not timed.
        loss_landscape(model, (x, y), dims=2, steps=2, points_per_batch=args.points_per_batch)
        sync(device)
        t0 = time.perf_counter()
        res = loss_landscape(
            model, (x, y), dims=2, steps=args.steps, points_per_batch=args.points_per_batch
        )
        sync(device)
        batched_s = time.perf_counter() - t0
    points = args.steps**2 + 1  # the grid and the centre

    gen = torch.Generator().manual_seed(0)
    d1 = random_direction(model, generator=gen)
    d2 = random_direction(model, generator=gen)
    k = args.naive_points
    with amp:
        naive_point(model, x, y, d1, d2, 0.1, 0.1)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for i in range(k):
            naive_point(model, x, y, d1, d2, -1.0 + 2.0 * i / max(k - 1, 1), 0.5)
        sync(device)
    naive_per_point = (time.perf_counter() - t0) / k
    naive_s = naive_per_point * points

    out = {
        "model": args.model,
        "data": data_name,
        "grid": f"{args.steps}x{args.steps}",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bf16": args.bf16,
        "points_per_batch": args.points_per_batch or "auto",
        "batched_s": round(batched_s, 2),
        "batched_ms_per_point": round(1000 * batched_s / points, 2),
        "naive_ms_per_point": round(1000 * naive_per_point, 2),
        "naive_extrapolated_s": round(naive_s, 2),
        "speedup": round(naive_s / batched_s, 2),
        "center_loss": round(res.center_loss, 4),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.model} on {data_name}, {out['grid']} grid, {out['device']} "
        f"({out['threads']} threads), torch {torch.__version__}"
    )
    print(
        f"batched (vmap): {batched_s:.2f} s ({out['batched_ms_per_point']} ms/point, "
        f"points_per_batch={out['points_per_batch']})"
    )
    print(
        f"naive loop:     {naive_s:.2f} s extrapolated from {k} points "
        f"({out['naive_ms_per_point']} ms/point)"
    )
    print(f"speed-up:       {out['speedup']}x")


if __name__ == "__main__":
    main()
