"""How long does an exact path spectrum take? preact-resnet-1001 (333 bottleneck units,
~3000 convolutions, 2^333 paths) on one 1x3x32x32 input, next to the plain forward pass.

    python benchmarks/path_spectrum_speed.py [--model preact-resnet-1001] [--repeats 3] [--threads N] [--json]

Target: under 2 s on a 2-core CPU. Also checks the closed form (total 2^333, C(333, k)
paths) and that the counts survive a JSON round trip exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch

import skiplab
from skiplab.analysis.paths import path_spectrum

TARGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preact-resnet-1001")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = skiplab.create_model(args.model).eval()
    x = torch.randn(1, *model.example_input_shape)

    forward, spectrum = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        forward.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = path_spectrum(model, x)
        spectrum.append(time.perf_counter() - t)

    d = json.loads(json.dumps(result.to_dict()))
    exact = d["total"] == result.total and all(
        d["counts"][str(k)] == c for k, c in result.counts.items()
    )
    checks = {"json_exact": exact}
    if args.model == "preact-resnet-1001":
        # 333 units, of which 3 (first of each stage) have a projection shortcut that
        # reads the pre-activated input: z^4 (1 + z^3)^330 (1 + z^2)^3 in total; 2^333 paths.
        expected: dict[int, int] = {}
        for i in range(331):
            for j in range(4):
                k = 4 + 3 * i + 2 * j
                expected[k] = expected.get(k, 0) + math.comb(330, i) * math.comb(3, j)
        checks["closed_form"] = result.counts == expected
        checks["total_is_2^333"] = result.total == 2**333
        checks["min_4_max_1000"] = (result.min, result.max) == (4, 1000)
    out = {
        "model": args.model,
        "input": list(x.shape),
        "spectrum_s": min(spectrum),
        "spectrum_s_median": statistics.median(spectrum),
        "forward_s": min(forward),
        "target_s": TARGET_S,
        "within_target": min(spectrum) < TARGET_S,
        "total_paths_log10": round(math.log10(result.total), 2),
        "min": result.min,
        "max": result.max,
        "num_ops": result.num_ops,
        "checks": checks,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
    }
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.model} on {tuple(x.shape)}: {result.num_ops} ops, 10^{out['total_paths_log10']} paths"
    )
    print(f"path_spectrum: {out['spectrum_s']:.2f} s (best of {args.repeats}; target < {TARGET_S} s)"
          f" -> {'OK' if out['within_target'] else 'TOO SLOW'}")  # fmt: skip
    print(f"plain forward: {out['forward_s']:.2f} s (the tracing overhead is the difference)")
    print(f"checks: {checks}")
    print(f"machine: {out['machine']}")


if __name__ == "__main__":
    main()
