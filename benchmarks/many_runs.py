"""Many small runs on one device: N training runs through skiplab's study runner, one after
another in this process (``workers=0``) and all at once (``workers=N``, N worker processes sharing the
device), each into its own temporary study folder.

    python benchmarks/many_runs.py --device cpu|cuda [--runs 8] [--model resnet-20]
        [--batch 128] [--images 20000] [--epochs 5] [--eager] [--json]

The runs differ only by seed; they train ``--model`` on the embedded ``random`` data set
(CIFAR-shaped Gaussian noise with random labels, ``--images`` training images, no
analyses, no report). Prints the wall time of both modes, their ratio (the speed-up of
running at once), and per-run durations: ``run`` is what the study records for a run
(data generation, model build, training and evaluation), ``train`` is the training loop
of ``run.json``. What the concurrent wall time adds to its longest run is mostly the start
of the worker processes (Python, torch, CUDA context) and is reported as ``startup``.
Target (H100): 8 resnet-20 runs at batch 128 at least 4x faster at once than one after
another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench_common import device_name, require_device
from skiplab.study import parse_spec, run_study


def make_spec(runs: int, model: str, batch: int, images: int, epochs: int) -> Any:
    """N runs of one model on ``random`` data, seeds 0..N-1, He et al. 2015's CIFAR recipe."""
    return parse_spec(
        {
            "name": "many-runs",
            "seeds": list(range(runs)),
            "recipe": {"preset": "he2015-cifar", "epochs": epochs, "batch_size": batch},
            "groups": [
                {
                    "name": "bench",
                    "data": "random",
                    "data_options": {"n_train": images, "n_test": min(1000, images)},
                    "models": [model],
                }
            ],
        },
        source="benchmarks/many_runs.py",
    )


def timed_study(spec: Any, out_dir: Path, workers: int, device: str) -> dict[str, Any]:
    """Run the study; wall time, and each run's recorded and training durations."""
    t = time.perf_counter()
    store = run_study(spec, out_dir, workers=workers, device=device, report=False)
    wall = time.perf_counter() - t
    runs = store.runs()
    bad = [r for r in runs if r["status"] != "finished"]
    if bad:
        first = (bad[0]["error"] or "").splitlines()[:1]
        sys.exit(f"{len(bad)} of {len(runs)} runs did not finish: {bad[0]['id']} {first}")
    run_s = [float(r["duration_s"]) for r in runs]
    train_s = [
        float(json.loads((out_dir / "runs" / r["id"] / "run.json").read_text())["duration_s"])
        for r in runs
    ]
    return {"wall_s": wall, "run_s": run_s, "train_s": train_s}


def eager_sequential(args: argparse.Namespace, out_dir: Path) -> float:
    """The same runs one after another in this process with ``cuda_graphs=False``: what
    running them costs without CUDA graphs (the regime of the issue's 5.3x for bare
    concurrent processes). Returns the summed training time of the runs."""
    from skiplab import create_model
    from skiplab.data import load_dataset
    from skiplab.train import fit, get_recipe

    data = load_dataset("random", n_train=args.images, n_test=min(1000, args.images))
    recipe = get_recipe("he2015-cifar", epochs=args.epochs, batch_size=args.batch)
    total = 0.0
    for seed in range(args.runs):
        torch.manual_seed(seed)
        model = create_model(args.model, num_classes=data.num_classes)
        res = fit(model, data, recipe, out_dir / f"s{seed}", seed=seed, device=args.device,
                  cuda_graphs=False)  # fmt: skip
        total += sum(r["time_s"] for r in res.metrics)
    return total


def describe(name: str, m: dict[str, Any]) -> str:
    run_s, train_s = m["run_s"], m["train_s"]
    return (
        f"  {name:<11} wall {m['wall_s']:7.1f} s | run {statistics.mean(run_s):5.2f} s mean, "
        f"{min(run_s):.2f}-{max(run_s):.2f}, sum {sum(run_s):6.1f} s | train "
        f"{statistics.mean(train_s):5.2f} s mean, sum {sum(train_s):6.1f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--model", default="resnet-20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=20_000, help="training images per run")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--eager",
        action="store_true",
        help="also time the runs one after another without CUDA graphs",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    require_device(args.device)
    if args.runs < 2:
        p.error("--runs must be at least 2")
    spec = make_spec(args.runs, args.model, args.batch, args.images, args.epochs)
    with tempfile.TemporaryDirectory(prefix="skiplab-many-runs-") as tmp:
        seq = timed_study(spec, Path(tmp) / "sequential", 0, args.device)  # no worker to start
        con = timed_study(spec, Path(tmp) / "concurrent", args.runs, args.device)
        eager = eager_sequential(args, Path(tmp) / "eager") if args.eager else None
    speedup = seq["wall_s"] / con["wall_s"]
    startup = con["wall_s"] - max(con["run_s"])
    device = device_name(args.device)
    result = {
        "runs": args.runs,
        "model": args.model,
        "batch": args.batch,
        "epochs": args.epochs,
        "images": args.images,
        "sequential_s": round(seq["wall_s"], 2),
        "concurrent_s": round(con["wall_s"], 2),
        "speedup": round(speedup, 3),
        "device": device,
        "torch": torch.__version__,
        # Diagnostics: sums of the runs' own durations, and the concurrent start-up cost.
        "sequential_run_sum_s": round(sum(seq["run_s"]), 2),
        "concurrent_run_sum_s": round(sum(con["run_s"]), 2),
        "sequential_train_sum_s": round(sum(seq["train_s"]), 2),
        "concurrent_train_sum_s": round(sum(con["train_s"]), 2),
        "concurrent_startup_s": round(startup, 2),
        # Without CUDA graphs, one after another: summed training time, and its ratio to
        # the summed training time of the default (graphed) runs one after another.
        "eager_train_sum_s": None if eager is None else round(eager, 2),
        "graphs_speedup": None if eager is None else round(eager / sum(seq["train_s"]), 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.runs} x {args.model}, batch {args.batch}, {args.epochs} epochs of "
        f"{args.images:,} random images, {device}, torch {torch.__version__}:"
    )
    print(describe("sequential", seq))
    print(describe("concurrent", con))
    if eager is not None:
        print(f"  eager (no CUDA graphs), one after another: {eager:.1f} s of training, "
              f"{eager / sum(seq['train_s']):.2f}x the graphed runs'")  # fmt: skip
    print(
        f"  speed-up {speedup:.2f}x at once (target >= 4x on an H100); concurrent start-up "
        f"(wall - longest run) {startup:.1f} s"
    )


if __name__ == "__main__":  # worker processes are spawned: they re-import this file
    main()
