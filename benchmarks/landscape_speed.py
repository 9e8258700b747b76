"""How fast is a loss landscape? A 2-D grid (Li et al. 2018) evaluated by each method of
``loss_landscape``, measured side by side in one run:

- ``inplace`` in bf16 and in fp32: one private model copy whose weights are rewritten in
  place per grid point (BN folded into the convs, channels_last on CUDA), ordinary
  forward passes; the fast method (``method="auto"``);
- ``vmap``: the weights of several points stacked under ``torch.func.vmap``;
- the naive loop: one ``copy.deepcopy`` of the model and one data pass per point.

A variant with ``--X-points K`` (K > 0) is timed on a line of K points and extrapolated to
the grid (steps^2 + 1 points: the grid and the centre); K = 0 times the whole grid.

    python benchmarks/landscape_speed.py [--device cpu|cuda] [--steps 21] [--model resnet-20]
        [--images 360] [--bf16-points K] [--fp32-points K] [--vmap-points K]
        [--naive-points K] [--points-per-batch N] [--json]

CPU defaults: resnet-20 (in_channels=1, untrained: the timing does not depend on the
weights) on 360 test images of scikit-learn's digits (8x8), a 21x21 grid; the headline is
inplace fp32 over the whole grid, target < 60 s on a 2-core CPU (bf16 has no hardware
support there and is extrapolated from a few points). GPU figure:

    python benchmarks/landscape_speed.py --device cuda --model resnet-56 --steps 51 \\
        --images 2000 --json

random CIFAR-shaped images (3x32x32); the headline is inplace bf16 over the whole grid,
target < 45 s on an H100. Progress goes to stderr as each variant finishes; a variant that
fails is reported (with its error) and the others still run; the exit status is 1 if any
failed. The old ``--bf16`` (the vmap grid and the naive loop under bf16 autocast, up to
commit ff0d117) is refused with a message: bf16 is now always measured, with ``inplace``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import skiplab
from bench_common import device_name, require_device, require_model, timed
from skiplab.analysis.landscape import loss_landscape, random_direction

TARGET_S = {"cpu": 60.0, "cuda": 45.0}


def digits_test(images: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit(f"--device cpu uses scikit-learn's digits: {e}") from e
    d = load_digits()
    x = torch.tensor(d.images[-images:], dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8]
    return x, torch.tensor(d.target[-images:], dtype=torch.long)


def cifar_like(images: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g)


def naive_point(model, x, y, d1, d2, a: float, b: float) -> float:
    """One grid point the naive way: copy the model, move its weights, one pass over the data."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(a * d1[name] + b * d2[name])
        return float(F.cross_entropy(m(x), y))


def landscape_variant(
    model, x, y, device: torch.device, steps: int, points: int, **kwargs: Any
) -> dict[str, Any]:
    """Time ``loss_landscape(**kwargs)`` on the whole grid (points=0) or a line of points."""
    loss_landscape(model, (x, y), dims=1, steps=2, **kwargs)  # warm-up: kernels, allocator
    grid_points = steps**2 + 1
    if points <= 0 or points >= grid_points:
        s, res = timed(device, lambda: loss_landscape(model, (x, y), dims=2, steps=steps, **kwargs))
        timed_points = grid_points
    else:
        # A 1-D line of `points` points (steps - 1 on the line and the centre).
        line = max(points - 1, 2)
        s, res = timed(device, lambda: loss_landscape(model, (x, y), dims=1, steps=line, **kwargs))
        timed_points = line + 1
    per_point = s / timed_points
    return {
        "s": round(per_point * grid_points, 2),
        "ms_per_point": round(1000 * per_point, 3),
        "timed_points": timed_points,
        "extrapolated": timed_points != grid_points,
        "method": res.config["method"],
        "center_loss": res.center_loss,
        "values": res.values if timed_points == grid_points else None,
        "config": res.config,
    }


def naive_variant(model, x, y, device: torch.device, steps: int, points: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    d1 = random_direction(model, generator=gen)
    d2 = random_direction(model, generator=gen)
    k = max(points, 1)
    naive_point(model, x, y, d1, d2, 0.1, 0.1)  # warm-up

    def run() -> None:
        for i in range(k):
            naive_point(model, x, y, d1, d2, -1.0 + 2.0 * i / max(k - 1, 1), 0.5)

    s, _ = timed(device, run)
    per_point = s / k
    return {
        "s": round(per_point * (steps**2 + 1), 2),
        "ms_per_point": round(1000 * per_point, 3),
        "timed_points": k,
        "extrapolated": True,
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--steps", type=int, default=21, help="grid points per axis (>= 2)")
    ap.add_argument("--model", default="resnet-20")
    ap.add_argument("--images", type=int, default=None, help="default 360 (cpu), 2000 (cuda)")
    ap.add_argument("--bf16-points", type=int, default=None, help="default 0 (cuda), 3 (cpu)")
    ap.add_argument("--fp32-points", type=int, default=0, help="0: the whole grid")
    ap.add_argument("--vmap-points", type=int, default=64)
    ap.add_argument("--naive-points", type=int, default=5)
    ap.add_argument("--points-per-batch", type=int, default=None, help="vmap only")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)  # refused below
    args = ap.parse_args()
    if args.bf16:
        ap.error(
            "--bf16 was removed: it ran the vmap grid and the naive loop under bf16 autocast; "
            "bf16 is now always measured with method='inplace' (--bf16-points K sets its points)"
        )
    if args.steps < 2:
        ap.error(f"--steps {args.steps}: need at least 2 grid points per axis")
    if args.images is not None and args.images < 1:
        ap.error(f"--images {args.images}: need at least 1 image")
    for name in ("bf16_points", "fp32_points", "vmap_points", "naive_points"):
        if (getattr(args, name) or 0) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.points_per_batch is not None and args.points_per_batch < 1:
        ap.error("--points-per-batch must be >= 1")
    require_model(args.model)
    cuda = require_device(args.device).type == "cuda"
    if args.bf16_points is None:
        args.bf16_points = 0 if cuda else 3
    return args


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
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
    headline = "inplace_bf16" if device.type == "cuda" else "inplace_fp32"

    variants: dict[str, Callable[[], dict[str, Any]]] = {
        # The headline first: it is reported even if a later variant fails or runs long.
        "inplace_bf16": lambda: landscape_variant(
            model, x, y, device, args.steps, args.bf16_points, method="inplace", precision="bf16"
        ),
        "inplace_fp32": lambda: landscape_variant(
            model, x, y, device, args.steps, args.fp32_points, method="inplace"
        ),
        "vmap_fp32": lambda: landscape_variant(
            model,
            x,
            y,
            device,
            args.steps,
            args.vmap_points,
            method="vmap",
            points_per_batch=args.points_per_batch,
        ),
        "naive_loop": lambda: naive_variant(model, x, y, device, args.steps, args.naive_points),
    }
    if device.type == "cpu":  # fp32 is the CPU headline; run it first.
        variants = {
            k: variants[k] for k in ("inplace_fp32", "inplace_bf16", "vmap_fp32", "naive_loop")
        }
    results: dict[str, dict[str, Any]] = {}
    failed = []
    for name, fn in variants.items():
        try:
            results[name] = fn()
        except Exception as e:  # report and go on: one GPU run should give every figure it can
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(name)
        r = results[name]
        note = r.get("error") or (
            f"{r['s']:.2f} s ({r['ms_per_point']} ms/point"
            + (f", extrapolated from {r['timed_points']} points)" if r["extrapolated"] else ")")
        )
        print(f"[landscape_speed] {name}: {note}", file=sys.stderr, flush=True)

    # Agreement: the centre is every variant's first point; bf16 against fp32 on the grid.
    checks: dict[str, Any] = {}
    fp32, bf16, vmap = (results.get(k, {}) for k in ("inplace_fp32", "inplace_bf16", "vmap_fp32"))
    if "center_loss" in fp32 and "center_loss" in vmap:
        checks["center_rel_diff_inplace_vs_vmap"] = abs(
            fp32["center_loss"] / vmap["center_loss"] - 1
        )
    if fp32.get("values") is not None and bf16.get("values") is not None:
        a, b = torch.tensor(fp32["values"]), torch.tensor(bf16["values"])
        checks["max_rel_diff_bf16_vs_fp32"] = float(
            ((b - a).abs() / a.abs().clamp_min(1e-12)).max()
        )
        checks["median_rel_diff_bf16_vs_fp32"] = float(
            ((b - a).abs() / a.abs().clamp_min(1e-12)).median()
        )
    for r in results.values():
        r.pop("values", None)

    head = results[headline]
    out = {
        "model": args.model,
        "data": data_name,
        "grid": f"{args.steps}x{args.steps}",
        "points": args.steps**2 + 1,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "headline": headline,
        "headline_s": head.get("s"),
        "target_s": TARGET_S[device.type],
        "meets_target": head.get("s") is not None
        and not head["extrapolated"]
        and head["s"] < TARGET_S[device.type],
        "speedup_vs_vmap": round(results["vmap_fp32"]["s"] / head["s"], 2)
        if "s" in head and "s" in results["vmap_fp32"]
        else None,
        "speedup_vs_naive": round(results["naive_loop"]["s"] / head["s"], 2)
        if "s" in head and "s" in results["naive_loop"]
        else None,
        "variants": results,
        "checks": checks,
        "failed": failed,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.model} on {data_name}, {out['grid']} grid ({out['points']} points), "
            f"{out['device']} ({out['threads']} threads), torch {torch.__version__}"
        )
        for name, r in results.items():
            mark = " <- headline" if name == headline else ""
            if "error" in r:
                print(f"  {name:13s} FAILED: {r['error']}")
                continue
            how = (
                f"extrapolated from {r['timed_points']} points"
                if r["extrapolated"]
                else "full grid"
            )
            print(f"  {name:13s} {r['s']:8.2f} s  {r['ms_per_point']:8.2f} ms/point  ({how}){mark}")
        print(
            f"  target < {out['target_s']:g} s: {'met' if out['meets_target'] else 'NOT met'}; "
            f"speed-up vs vmap {out['speedup_vs_vmap']}x, vs naive loop {out['speedup_vs_naive']}x"
        )
        for k, v in checks.items():
            print(f"  {k}: {v:.2e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
