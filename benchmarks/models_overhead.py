"""Does the generic unit cost anything? skiplab's resnet-56 against a minimal hand-written
CIFAR ResNet-56 (option A), forward + backward, measured side by side in one run; and the
time to build preact-resnet-1001.

    python benchmarks/models_overhead.py [--device cpu|cuda] [--batch 128] [--repeats 15] [--json]

Prints the ratio skiplab / hand-written (target: within 5%, i.e. <= 1.05) and the build
time (target: under 2 s on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import skiplab
from bench_common import device_name, require_device, timed


class HandBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            sc = F.pad(sc, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + sc)


class HandResNet56(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(9):
                blocks.append(HandBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return timed(x.device, lambda: F.cross_entropy(model(x), y).backward())[0]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dev = require_device(args.device)
    torch.manual_seed(0)
    ours = skiplab.create_model("resnet-56").to(dev)
    hand = HandResNet56().to(dev)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hand.parameters())
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    for _ in range(3):  # warm-up
        step_time(ours, x, y), step_time(hand, x, y)
    t_ours, t_hand = [], []
    for i in range(args.repeats):  # interleaved, alternating order, so drift hits both
        pair = [(ours, t_ours), (hand, t_hand)]
        for model, times in pair if i % 2 == 0 else pair[::-1]:
            times.append(step_time(model, x, y))
    build = []
    for _ in range(3):
        t = time.perf_counter()
        skiplab.create_model("preact-resnet-1001")
        build.append(time.perf_counter() - t)
    result = {
        "skiplab_ms": 1e3 * statistics.median(t_ours),
        "hand_ms": 1e3 * statistics.median(t_hand),
        "ratio": statistics.median(t_ours) / statistics.median(t_hand),
        "build_preact_resnet_1001_s": min(build),
        "device": device_name(dev),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"resnet-56 fwd+bwd, batch {args.batch}, {result['device']}:")
        print(f"  skiplab      {result['skiplab_ms']:.1f} ms")
        print(f"  hand-written {result['hand_ms']:.1f} ms")
        print(f"  ratio        {result['ratio']:.3f}  (target <= 1.05)")
        print(
            f"build preact-resnet-1001: {result['build_preact_resnet_1001_s']:.2f} s  (target < 2 s)"
        )


if __name__ == "__main__":
    main()
