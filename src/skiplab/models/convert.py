"""Convert torchvision ResNets into skiplab ResNets with the same weights and outputs."""

from __future__ import annotations

import re

from torch import nn

from .resnet import ResNet, UnitArgs


def _skiplab_key(key: str) -> str:
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)", key):
        stage, unit, kind, i, rest = m.groups()
        part = "conv" if kind == "conv" else "norm"
        return f"stages.{int(stage) - 1}.{unit}.branch.{part}{i}.{rest}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(.+)", key):
        stage, unit, idx, rest = m.groups()
        return f"stages.{int(stage) - 1}.{unit}.shortcut.{'conv' if idx == '0' else 'norm'}.{rest}"
    if m := re.fullmatch(r"conv1\.(.+)", key):
        return f"stem.conv.{m.group(1)}"
    if m := re.fullmatch(r"bn1\.(.+)", key):
        return f"stem.norm.{m.group(1)}"
    if m := re.fullmatch(r"fc\.(.+)", key):
        return f"head.fc.{m.group(1)}"
    raise ValueError(f"cannot convert torchvision parameter {key!r}: not a torchvision ResNet key")


def _check_torchvision_layout(tv_model: nn.Module, layers: list, bottleneck: bool) -> None:
    """Raise ``ValueError`` where the model differs from torchvision's ResNet layout in a way
    the weights do not show (strides, dilation, a replaced stem, pool or classifier)."""
    conv1, pool = tv_model.conv1, tv_model.maxpool
    stem = (
        isinstance(conv1, nn.Conv2d)
        and (conv1.kernel_size, conv1.stride, conv1.padding) == ((7, 7), (2, 2), (3, 3))
        and conv1.bias is None
        and isinstance(pool, nn.MaxPool2d)
        and (pool.kernel_size, pool.stride, pool.padding) in ((3, 2, 1), ((3, 3), (2, 2), (1, 1)))
    )
    if not stem:
        raise ValueError(
            f"invalid stem (conv1={conv1}, maxpool={pool}): from_torchvision needs torchvision's "
            "stem, a 7x7 stride-2 conv1 and a 3x3 stride-2 max-pool; for a CIFAR-style stem "
            "use skiplab's own models (e.g. create_model('resnet-20'))"
        )
    head = tv_model.avgpool, tv_model.fc
    if not (isinstance(head[0], nn.AdaptiveAvgPool2d) and isinstance(head[1], nn.Linear)):
        raise ValueError(
            f"invalid head (avgpool={type(head[0]).__name__}, fc={type(head[1]).__name__}): "
            "from_torchvision needs torchvision's AdaptiveAvgPool2d and a single nn.Linear fc"
        )
    if any(m.dilation != (1, 1) for m in tv_model.modules() if isinstance(m, nn.Conv2d)):
        raise ValueError(
            "invalid dilation: from_torchvision does not convert dilated ResNets "
            "(replace_stride_with_dilation); build the torchvision model without it"
        )
    for i, layer in enumerate(layers):
        for j, block in enumerate(layer):
            conv = block.conv2 if bottleneck else block.conv1
            want = (2, 2) if i > 0 and j == 0 else (1, 1)
            if conv.stride != want:
                raise ValueError(
                    f"invalid stride {conv.stride} in layer{i + 1}[{j}]: from_torchvision needs "
                    f"torchvision's strides (2 in the first block of layer2-4, else 1)"
                )


def from_torchvision(tv_model: nn.Module) -> ResNet:
    """The skiplab ResNet equivalent to a torchvision ``ResNet`` (resnet18 ... resnet152,
    wide_resnet50_2/101_2), with its weights copied; outputs match exactly.

    Raises ``ValueError`` for other models (ResNeXt's grouped convs, custom norms, dilation,
    a replaced stem, max-pool or classifier).
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.resnet import ResNet as TVResNet

    if not isinstance(tv_model, TVResNet):
        raise ValueError(
            f"invalid model {type(tv_model).__name__}: from_torchvision takes a "
            "torchvision.models.ResNet (e.g. torchvision.models.resnet50())"
        )
    layers = [tv_model.layer1, tv_model.layer2, tv_model.layer3, tv_model.layer4]
    first = layers[0][0]
    bottleneck = isinstance(first, Bottleneck)
    if not isinstance(first, BasicBlock | Bottleneck):
        raise ValueError(f"invalid block {type(first).__name__}: expected BasicBlock or Bottleneck")
    if tv_model.groups != 1:
        raise ValueError(
            f"invalid groups={tv_model.groups}: grouped convolutions (ResNeXt) are not a skiplab "
            "unit; use a plain or wide torchvision ResNet"
        )
    norms = [
        m for n, m in tv_model.named_modules() if re.fullmatch(r"(.+\.)?bn\d|.+downsample\.1", n)
    ]
    if not all(isinstance(m, nn.BatchNorm2d) for m in norms):
        raise ValueError(
            "invalid norm layer: from_torchvision needs BatchNorm2d (torchvision's default)"
        )
    _check_torchvision_layout(tv_model, layers, bottleneck)

    stages = []
    for i, layer in enumerate(layers):
        last = layer[-1]
        out_ch = (last.conv3 if bottleneck else last.conv2).out_channels
        stages.append((len(layer), out_ch, 1 if i == 0 else 2))
    mid_divisor = stages[0][1] // first.conv2.out_channels if bottleneck else 4
    model = ResNet(
        stages,
        stem="imagenet",
        stem_channels=tv_model.conv1.out_channels,
        bottleneck=bottleneck,
        mid_divisor=mid_divisor,
        unit=UnitArgs(shortcut="projection"),
        in_channels=tv_model.conv1.in_channels,
        num_classes=tv_model.fc.out_features,
    )
    state = {_skiplab_key(k): v for k, v in tv_model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    model.train(tv_model.training)
    return model
