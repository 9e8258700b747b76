"""What does the exact split of the input gradient by path length cost? path_gradients on
ResNet-110 (54 units) against one forward + backward of the same batch (eval mode, loss
gradient w.r.t. the input and the weights), measured side by side in one run.

    python benchmarks/pathgrad_cost.py [--device cpu|cuda] [--batch 16] [--repeats 3]
                                       [--samples 0 2] [--json]

Prints the ratio path_gradients / (forward + backward) for each ``samples`` value
(samples=0: exact parts only; samples>0 adds Veit et al.'s sampled single paths).
Target for the exact parts: <= 4x.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import skiplab
from skiplab.analysis.pathgrad import path_gradients


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    sync(x.device)
    t = time.perf_counter()
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(model(xg), y).backward()
    sync(x.device)
    return time.perf_counter() - t


def pathgrad_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int) -> float:
    sync(x.device)
    t = time.perf_counter()
    path_gradients(model, x, y, samples=samples)
    sync(x.device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="resnet-110")
    p.add_argument("--samples", type=int, nargs="+", default=[0, 2])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = skiplab.create_model(args.model).to(dev).eval()
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    fwd_bwd(model, x, y)  # warm-up
    for s in args.samples:
        pathgrad_time(model, x, y, s)
    base: list[float] = []
    times: dict[int, list[float]] = {s: [] for s in args.samples}
    for _ in range(args.repeats):  # interleaved, so drift hits all of them
        base.append(fwd_bwd(model, x, y))
        for s in args.samples:
            times[s].append(pathgrad_time(model, x, y, s))
    model.zero_grad(set_to_none=True)
    b = statistics.median(base)
    result = {
        "model": args.model,
        "fwd_bwd_ms": 1e3 * b,
        "path_gradients_ms": {s: 1e3 * statistics.median(t) for s, t in times.items()},
        "ratio": {s: statistics.median(t) / b for s, t in times.items()},
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.model}, batch {args.batch}, {result['device']}:")
    print(f"  forward + backward         {result['fwd_bwd_ms']:.1f} ms")
    for s in args.samples:
        what = "exact parts only" if s == 0 else f"parts + {s} sampled paths per k"
        print(
            f"  path_gradients samples={s:<3} {result['path_gradients_ms'][s]:.1f} ms  "
            f"ratio {result['ratio'][s]:.2f}x  ({what})"
        )
    print("  target: exact parts <= 4x forward + backward")


if __name__ == "__main__":
    main()
