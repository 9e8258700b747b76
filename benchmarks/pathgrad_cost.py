"""What does the exact split of the input gradient by path length cost? path_gradients on
ResNet-110 (54 units) against one forward + backward of the same batch (eval mode, loss
gradient w.r.t. the input and the weights), measured side by side in one run.

    python benchmarks/pathgrad_cost.py [--device cpu|cuda] [--batch 16] [--repeats 3]
        [--precision fp32 bf16] [--max-length 20] [--samples 2] [--threads N] [--json]

For each precision it times one forward + backward (bf16: the forward under
``torch.autocast``) and path_gradients with samples=0: the exact parts, and the exact parts
up to ``--max-length`` plus one remainder; each ratio is against the forward + backward in
the same precision. ``--samples S`` adds fp32 runs with Veit et al.'s S sampled single paths
per length. Precisions default to fp32 and bf16 on a GPU, fp32 alone on a CPU (CPUs
without bf16 units emulate it slowly). Target (ResNet-110, batch 128, GPU): <= 4x.

    python benchmarks/pathgrad_cost.py --device cuda --batch 128 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import skiplab
from bench_common import device_name, require_device, timed
from skiplab.analysis.blocks import find_units
from skiplab.analysis.pathgrad import path_gradients


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> None:
    xg = x.clone().requires_grad_(True)
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        loss = F.cross_entropy(model(xg).float(), y)
    loss.backward()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="resnet-110")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=None)
    p.add_argument("--max-length", type=int, nargs="*", default=[20])
    p.add_argument("--samples", type=int, nargs="*", default=[])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    p.add_argument("--channels-last", action="store_true", help="model and input channels_last")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="cudnn.benchmark=True for all cases (as after skiplab's trainer ran)")  # fmt: skip
    p.add_argument("--profile", action="store_true",
                   help="print a torch.profiler table of one exact fp32 call")  # fmt: skip
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dev = require_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precision or (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"])
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    model = skiplab.create_model(args.model).to(dev).eval()
    units = len(find_units(model))
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    # (name, precision, kwargs); the baselines first, one per precision.
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for prec in precisions:
        cases.append((f"forward + backward ({prec})", prec, {}))
    for prec in precisions:
        cases.append((f"exact parts ({prec})", prec, {"samples": 0}))
        for k in args.max_length:
            cases.append((f"max_length={k} ({prec})", prec, {"samples": 0, "max_length": k}))
    for s in (s for s in args.samples if s > 0):  # samples=0: the exact parts above
        cases.append((f"exact parts + samples={s} (fp32)", "fp32", {"samples": s}))

    def run(prec: str, kwargs: dict[str, Any]) -> Callable[[], Any]:
        if not kwargs:
            return lambda: fwd_bwd(model, x, y, prec)
        return lambda: path_gradients(model, x, y, precision=prec, **kwargs)

    fns = [run(prec, kw) for _, prec, kw in cases]
    peak_mb: list[float | None] = []
    for fn in fns:  # warm-up, and the peak memory of each case
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        timed(dev, fn)
        peak_mb.append(torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None)
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(args.repeats):  # interleaved, so drift hits all of them
        for t, fn in zip(times, fns, strict=True):
            t.append(timed(dev, fn)[0])
    model.zero_grad(set_to_none=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            timed(dev, lambda: path_gradients(model, x, y, samples=0))
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=20), file=sys.stderr)
    ms = [1e3 * statistics.median(t) for t in times]
    base = {prec: ms[i] for i, prec in enumerate(precisions)}
    result = {
        "model": args.model,
        "units": units,
        "batch": args.batch,
        "device": device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "channels_last": args.channels_last,
        "cudnn_benchmark": args.cudnn_benchmark,
        "fwd_bwd_ms": base,
        "cases": [
            {
                "name": name,
                "precision": prec,
                **kw,
                "ms": v,
                "ratio": v / base[prec],
                "peak_mem_mb": mem,
            }
            for (name, prec, kw), v, mem in zip(cases, ms, peak_mb, strict=True)
            if kw
        ],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.model} ({units} units), batch {args.batch}, {result['device']}:")
    for (name, prec, kw), v, mem in zip(cases, ms, peak_mb, strict=True):
        ratio = f"{v / base[prec]:6.2f}x {prec} forward + backward" if kw else ""
        peak = f"  peak {mem:7.0f} MiB" if mem is not None else ""
        print(f"  {name:<34} {v:9.1f} ms  {ratio}{peak}")
    print("  target: exact parts <= 4x forward + backward")


if __name__ == "__main__":
    main()
