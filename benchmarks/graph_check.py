"""Does a training step replayed from a CUDA graph compute what the eager step computes?
Two copies of ResNet-20 trained side by side for a few SGD steps on the same batches (one
smaller batch in the middle, which runs eagerly), one eager and one through
``skiplab.train.graphs.GraphedStep``; prints the largest relative loss difference per step
and the largest weight difference at the end, with cuDNN's default settings (TF32,
heuristic algorithms) and with deterministic fp32 convolutions.

    python benchmarks/graph_check.py [--steps 12] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

import skiplab
from bench_common import require_device
from skiplab.train.graphs import GraphedStep, eager_step
from skiplab.train.trainer import task_loss


def compare(steps: int, deterministic: bool) -> dict:
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32)
    cudnn.deterministic, cudnn.benchmark = deterministic, False
    cudnn.allow_tf32 = not deterministic
    try:
        torch.manual_seed(0)
        net = skiplab.create_model("resnet-20", num_classes=10).cuda()
        nets = [net, copy.deepcopy(net)]
        opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9) for n in nets]
        graphed = GraphedStep(nets[1], task_loss, None, warmup=2)
        gen = torch.Generator(device="cuda").manual_seed(1)
        diffs = []
        for i in range(steps):
            bs = 8 if i == steps // 2 else 16
            x = torch.randn(bs, 3, 32, 32, device="cuda", generator=gen)
            y = torch.randint(0, 10, (bs,), device="cuda", generator=gen)
            _, loss0 = eager_step(nets[0], task_loss, x, y, None)
            _, loss1 = graphed(x, y)
            for o in opts:
                o.step()
            diffs.append(abs(loss1.item() - loss0.item()) / abs(loss0.item()))
        weights = max(
            (a.float() - b.float()).abs().max().item()
            for a, b in zip(
                nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True
            )
        )
        return {"deterministic": deterministic, "replays": graphed.replays,
                "loss_rel_diff_per_step": [float(f"{d:.2e}") for d in diffs],
                "max_weight_diff": weights}  # fmt: skip
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = saved


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    require_device("cuda", ("cuda",), option="CUDA graphs need device")
    out = [compare(args.steps, d) for d in (False, True)]
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
