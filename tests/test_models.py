"""Models: every registered name works; structure, counts and parity match the papers."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import skiplab
from skiplab.models import ResidualUnit, from_torchvision, model_options
from skiplab.models.layers import PadShortcut
from skiplab.models.registry import Registry
from skiplab.models.unet import output_size


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str) -> tuple[dict, torch.Tensor]:
    """Options and an input that keep every registered model quick on a CPU."""
    torch.manual_seed(0)
    if name == "unet":
        return {"base_width": 4, "depth": 3}, torch.randn(2, 1, 16, 16)
    if "mlp" in name:
        return {"hidden": 8}, torch.randn(4, 1, 8, 8)  # digits-shaped input, flattened
    if "-" in name and name.split("-")[-1].isdigit():  # CIFAR family
        return {"width": 0.25}, torch.randn(2, 3, 8, 8)
    return {"width": 0.125, "num_classes": 5}, torch.randn(2, 3, 32, 32)  # ImageNet


@pytest.mark.parametrize("name", skiplab.list_models())
def test_every_model_forward_backward(name: str) -> None:
    options, x = small(name)
    model = skiplab.create_model(name, **options)
    out = model(x)
    assert out.shape[0] == x.shape[0]
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    # With He init every weight layer takes part: the gradient is not identically zero.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert all(m.weight.grad.abs().sum() > 0 for m in convs), name


# --------------------------------------------------------------------------- counts

# He et al. 2015, Table 6 (0.27M ... 19.4M) and He et al. 2016 (1.7M, 10.2M), exact.
CIFAR_COUNTS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    164: 1_704_154,
    1001: 10_328_602,
    1202: 19_421_274,
}
PAPER_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 164: 1.7, 1202: 19.4}


@pytest.mark.parametrize("depth", sorted(CIFAR_COUNTS))
def test_cifar_parameter_counts(depth: int) -> None:
    model = skiplab.create_model(f"resnet-{depth}")
    count = n_params(model)
    assert count == CIFAR_COUNTS[depth]
    if depth in PAPER_M:
        digits = 1 if PAPER_M[depth] >= 1 else 2
        assert round(count / 1e6, digits) == pytest.approx(PAPER_M[depth])
    # Pre-activation bottleneck nets: their three projection shortcuts are bare 1x1 convs
    # (He et al.'s code), without the BN (2 x C parameters) of the original units'.
    bn = 2 * (64 + 128 + 256) if depth in (164, 1001) else 0
    assert n_params(skiplab.create_model(f"preact-resnet-{depth}")) == count - bn
    if depth < 164:
        assert n_params(skiplab.create_model(f"plain-{depth}")) == count


def test_resnet1001_matches_paper_without_norm_parameters() -> None:
    # He et al. 2016 quote 10.2M: the weight layers alone; BN adds 0.15M.
    model = skiplab.create_model("preact-resnet-1001")
    weights = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                  for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))  # fmt: skip
    assert round(weights / 1e6, 1) == 10.2
    assert sum(1 for m in model.modules() if isinstance(m, ResidualUnit)) == 333


def test_bottleneck_stride_and_preact_projection_follow_the_papers_code() -> None:
    """CIFAR bottlenecks (He et al. 2016's code) stride on the first 1x1; ImageNet nets
    keep torchvision's v1.5 layout (stride on the 3x3). A full pre-activation unit's
    projection is a bare 1x1 conv on the already normalised input; an original unit's
    has its BN."""
    units = lambda m: [u for u in m.modules() if isinstance(u, ResidualUnit)]  # noqa: E731
    for name, first in (("preact-resnet-164", True), ("resnet-164", True), ("resnet50", False)):
        model = (
            skiplab.create_model(name, width=0.25) if "-" in name else skiplab.create_model(name)
        )
        down = next(u for u in units(model) if u.branch.conv2.stride != u.branch.conv1.stride)
        strides = (down.branch.conv1.stride, down.branch.conv2.stride)
        assert strides == (((2, 2), (1, 1)) if first else ((1, 1), (2, 2))), name
    preact = units(skiplab.create_model("preact-resnet-164", width=0.25))[0]
    assert isinstance(preact.shortcut, nn.Sequential) and list(preact.shortcut) == [
        preact.shortcut.conv
    ]
    assert preact.shortcut_reads_preact and isinstance(preact.preact.norm, nn.BatchNorm2d)
    original = units(skiplab.create_model("resnet-164", width=0.25))[0]
    assert isinstance(original.shortcut.norm, nn.BatchNorm2d)
    x = torch.randn(2, 3, 32, 32)
    assert skiplab.create_model("preact-resnet-164", width=0.25)(x).shape == (2, 10)


def test_depth_determines_block() -> None:
    units = lambda m: [u for u in m.modules() if isinstance(u, ResidualUnit)]  # noqa: E731
    assert len(units(skiplab.create_model("resnet-110"))) == 54
    assert all(u.num_branch_layers == 2 for u in units(skiplab.create_model("resnet-110")))
    assert all(u.num_branch_layers == 3 for u in units(skiplab.create_model("resnet-164")))
    explicit = skiplab.create_model("resnet-164", block="basic", width=0.25)  # 164 = 6*27+2
    assert len(units(explicit)) == 81 and units(explicit)[0].num_branch_layers == 2


def test_unet_parameter_count_and_paper_shapes() -> None:
    model = skiplab.create_model("unet")
    assert n_params(model) == 31_030_658  # Ronneberger et al. 2015, 1 channel in, 2 classes
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 23  # "In total the network has 23 convolutional layers."
    # Unpadded convolutions: 572 x 572 in, 388 x 388 out (Fig. 1).
    assert output_size(572, 4, "valid") == 388
    s = skiplab.summarize(skiplab.create_model("unet", padding="valid"))
    assert s.output_shape == (2, 388, 388)


def test_imagenet_counts_equal_torchvision() -> None:
    for d in (18, 34, 50, 101, 152):
        tv = getattr(torchvision.models, f"resnet{d}")()
        assert n_params(skiplab.create_model(f"resnet{d}")) == n_params(tv)


# --------------------------------------------------------------------------- parity


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_from_torchvision_same_outputs(arch: str) -> None:
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)()
    _randomise_bn(tv)
    tv.eval()
    model = from_torchvision(tv)
    assert not model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=1e-5)
    # And in training mode (batch statistics), with gradients matching too.
    tv.train()
    model.train()
    torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)
    assert model.stages[3][0].shortcut_kind == "projection"


def test_from_torchvision_rejects_other_models() -> None:
    with pytest.raises(ValueError, match="torchvision.models.ResNet"):
        from_torchvision(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="groups"):
        from_torchvision(torchvision.models.resnext50_32x4d())


def test_from_torchvision_rejects_layouts_the_weights_do_not_show() -> None:
    # Same parameter shapes, different network: converting would silently change outputs.
    dilated = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    with pytest.raises(ValueError, match="dilation"):
        from_torchvision(dilated)
    no_pool = torchvision.models.resnet18()
    no_pool.maxpool = nn.Identity()
    with pytest.raises(ValueError, match="invalid stem.*7x7 stride-2 conv1"):
        from_torchvision(no_pool)
    cifar_stem = torchvision.models.resnet18()
    cifar_stem.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    with pytest.raises(ValueError, match="invalid stem"):
        from_torchvision(cifar_stem)
    new_head = torchvision.models.resnet18()
    new_head.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 3))
    with pytest.raises(ValueError, match="fc=Sequential"):
        from_torchvision(new_head)
    group_norm = torchvision.models.resnet18()
    group_norm.layer2[1].bn2 = nn.GroupNorm(1, 128)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        from_torchvision(group_norm)


# --------------------------------------------------------------------------- unit anatomy


def _types(module: nn.Module) -> list[str]:
    if isinstance(module, nn.Identity):
        return []
    return [type(m).__name__ for m in module.children()]


@pytest.mark.parametrize(
    ("placement", "pre", "branch", "post"),
    [  # He et al. 2016, Fig. 4 (a)-(e)
        ("original", [], ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"], ["ReLU"]),
        ("bn-after-add", [], ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"], ["BatchNorm2d", "ReLU"]),
        (
            "relu-before-add",
            [],
            ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"],
            [],
        ),
        (
            "relu-only-preact",
            ["ReLU"],
            ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"],
            [],
        ),
        ("full-preact", ["BatchNorm2d", "ReLU"], ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"], []),
    ],
)
def test_placements_match_he2016_fig4(placement, pre, branch, post) -> None:
    model = skiplab.create_model("resnet-8", placement=placement)
    unit = model.stages[0][0]
    assert _types(unit.preact) == pre
    assert _types(unit.branch) == branch
    assert _types(unit.post) == post


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    pad = PadShortcut(4, 8, 2)
    x = torch.randn(2, 4, 6, 6)
    y = pad(x)
    assert y.shape == (2, 8, 3, 3)
    torch.testing.assert_close(y[:, :4], x[:, :, ::2, ::2])
    assert y[:, 4:].abs().sum() == 0


def _silence_branch(unit: ResidualUnit) -> None:
    with torch.no_grad():
        last_conv = [m for n, m in unit.branch.named_children() if n.startswith("conv")][-1]
        last_conv.weight.zero_()


def test_preact_identity_shortcut_carries_raw_input() -> None:
    model = skiplab.create_model("preact-resnet-14").eval()
    unit = model.stages[0][1]
    _silence_branch(unit)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(unit(x), x)  # no BN or ReLU on the identity path
    assert not unit.shortcut_reads_preact


@pytest.mark.parametrize("name", ["preact-resnet-8", "preact-resnet18"])
@pytest.mark.parametrize("placement", ["full-preact", "relu-only-preact"])
def test_preact_first_unit_activates_before_splitting(name: str, placement: str) -> None:
    # He et al. 2016, Sec. 4: the first unit after conv1 takes "the first activation right
    # after conv1 and before splitting into two paths": its identity shortcut carries the
    # pre-activated input; the units after it carry their raw input.
    model = skiplab.create_model(name, placement=placement).eval()
    first = model.stages[0][0]
    assert first.shortcut_kind == "identity" and first.shortcut_reads_preact
    assert not any(u.shortcut_reads_preact for u in list(model.stages[0])[1:])
    _silence_branch(first)
    x = torch.randn(2, model.stages[0][0].branch.conv1.in_channels, 8, 8)
    torch.testing.assert_close(first(x), first.preact(x))
    assert (first(x) >= 0).all()  # a ReLU ends the pre-activation
    # post-activation nets keep their stem's norm + ReLU, and no unit reads a pre-activation
    post = skiplab.create_model(name.removeprefix("preact-"))
    assert not any(u.shortcut_reads_preact for stage in post.stages for u in stage)


def test_preact_projection_reads_preactivated_input() -> None:
    model = skiplab.create_model("preact-resnet-8", shortcut="projection").eval()
    unit = model.stages[1][0]  # 16 -> 32 channels, stride 2
    assert unit.shortcut_reads_preact
    _silence_branch(unit)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(unit(x), unit.shortcut(unit.preact(x)))
    assert not torch.allclose(unit(x), unit.shortcut(x))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"shortcut": "identity"}, lambda x, b: torch.relu(x + b)),
        ({"shortcut": "scaling"}, lambda x, b: torch.relu(0.5 * x + b)),
        ({"shortcut": "scaling", "shortcut_scale": 0.0}, lambda x, b: torch.relu(b)),
        ({"shortcut": "scaling", "branch_scale": 0.5}, lambda x, b: torch.relu(0.5 * x + 0.5 * b)),
        ({"shortcut": "exclusive-gating", "gate_bias": -30.0}, lambda x, b: torch.relu(x)),
        ({"shortcut": "exclusive-gating", "gate_bias": 30.0}, lambda x, b: torch.relu(b)),
        ({"shortcut": "shortcut-only-gating", "gate_bias": 30.0}, lambda x, b: torch.relu(b)),
        ({"shortcut": "shortcut-only-gating", "gate_bias": -30.0}, lambda x, b: torch.relu(x + b)),
        # eval: the expectation of the dropout mask (He et al. 2016: "an expectation of 0.5")
        ({"shortcut": "dropout"}, lambda x, b: torch.relu(0.5 * x + b)),
        ({"shortcut": "none"}, lambda x, b: torch.relu(b)),
    ],
)
def test_shortcut_variants_he2016_fig2(options, expected) -> None:
    model = skiplab.create_model("resnet-8", **options).eval()
    unit = model.stages[0][0]  # 16 -> 16, no shape change
    if unit.gate is not None:
        nn.init.zeros_(unit.gate.conv.weight)  # gate = sigmoid(bias) exactly
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        b = unit.branch(x)
        if unit.branch_scale is not None:
            b = unit.branch_scale(b)
        torch.testing.assert_close(
            unit(x), expected(x, b if "branch_scale" not in options else b / 0.5)
        )


def test_dropout_shortcut_drops_in_training() -> None:
    unit = skiplab.create_model("resnet-8", shortcut="dropout", shortcut_dropout=0.5).stages[0][0]
    unit.train()
    _silence_branch(unit)
    x = torch.ones(4, 16, 8, 8)
    y = unit(x)
    assert set(torch.unique(y).tolist()) == {0.0, 1.0}  # a mask, kept values not rescaled
    assert 0.3 < (y == 0).float().mean() < 0.7
    unit = skiplab.create_model("resnet-8", shortcut="dropout", shortcut_dropout=0.2).stages[0][0]
    _silence_branch(unit)
    unit.train()
    assert 0.7 < unit(x).mean().item() < 0.9  # expectation 1 - p
    unit.eval()
    torch.testing.assert_close(unit(x), torch.full_like(x, 0.8))


def test_conv1x1_and_all_projection_shortcuts_everywhere() -> None:
    for sc, kind in (("conv1x1", "conv1x1"), ("all-projection", "all-projection")):
        model = skiplab.create_model("resnet-8", shortcut=sc)
        units = [m for m in model.modules() if isinstance(m, ResidualUnit)]
        assert all(u.shortcut_kind == kind for u in units)
        assert all(any(isinstance(m, nn.Conv2d) for m in u.shortcut.modules()) for u in units)


def test_projection_only_where_shape_changes() -> None:
    model = skiplab.create_model("resnet-20", shortcut="projection")
    kinds = [u.shortcut_kind for u in model.modules() if isinstance(u, ResidualUnit)]
    assert (
        kinds
        == ["identity"] * 3 + ["projection"] + ["identity"] * 2 + ["projection"] + ["identity"] * 2
    )
    # Variants without a rule of their own project where the shape changes.
    gated = skiplab.create_model("resnet-20", shortcut="scaling")
    down = gated.stages[1][0]
    assert isinstance(down.shortcut.proj.conv, nn.Conv2d)


@pytest.mark.parametrize(
    "placement", ["original", "bn-after-add", "relu-before-add", "relu-only-preact", "full-preact"]
)
@pytest.mark.parametrize("init", ["zero-last-norm", "rezero"])
def test_zero_initialised_units_start_as_their_shortcut(placement: str, init: str) -> None:
    options = {"init": "zero-last-norm"} if init == "zero-last-norm" else {"branch_scale": "rezero"}
    if placement == "relu-before-add" and init == "zero-last-norm":
        options["act"] = "gelu"  # a ReLU there would never leave zero (see below)
    model = skiplab.create_model("resnet-8", placement=placement, **options).eval()
    x = torch.randn(2, 16, 8, 8)
    unit = model.stages[0][0]
    with torch.no_grad():  # (the first unit's shortcut reads the pre-activation in preact nets)
        torch.testing.assert_close(unit(x), unit.post(unit.shortcut_path(x)))
        assert unit.branch(unit.preact(x)).abs().sum() > 0 or init == "zero-last-norm"


@pytest.mark.parametrize(
    ("placement", "act", "zeroed"),
    [
        ("original", "relu", "norm2"),  # Goyal et al. 2017: the branch ends on its BN
        ("relu-only-preact", "relu", "norm2"),
        ("bn-after-add", "relu", "conv2"),  # ends on a conv: zero it, not the BN before a ReLU
        ("full-preact", "relu", "conv2"),
        ("relu-before-add", "gelu", "norm2"),
    ],
)
def test_zero_last_norm_branches_start_at_zero_and_learn(placement, act, zeroed) -> None:
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-8", placement=placement, act=act, init="zero-last-norm")
    unit = model.stages[0][0]
    assert getattr(unit.branch, zeroed).weight.abs().sum() == 0
    others = [m for n, m in unit.branch.named_children() if n != zeroed and hasattr(m, "weight")]
    assert all(m.weight.abs().sum() > 0 for m in others)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    h = torch.randn(2, 16, 8, 8)
    with torch.no_grad():  # the branch left zero: it is trainable, not dead
        assert unit.branch(unit.preact(h)).abs().amax() > 1e-3


def test_zero_last_norm_refuses_a_branch_that_would_stay_dead() -> None:
    # ReLU before addition: a zeroed BN feeds ReLU(0) = 0 with slope 0, so nothing trains.
    with pytest.raises(ValueError, match="placement='relu-before-add'.*slope 0.*rezero"):
        skiplab.create_model("resnet-8", placement="relu-before-add", init="zero-last-norm")
    with pytest.raises(ValueError, match=r"Sigmoid\(0\) = 0.5"):
        skiplab.create_model(
            "resnet-8", placement="relu-before-add", act="sigmoid", init="zero-last-norm"
        )
    # The pre-activation MLP of the identity task zeroes its last Linear layer.
    mlp = skiplab.create_model("preact-resmlp-4", init="zero-last-norm")
    assert mlp.units[0].branch.conv2.weight.abs().sum() == 0
    assert (mlp.units[0].branch.norm1.weight == 1).all()


def test_fixup_starts_as_identity_network() -> None:
    model = skiplab.create_model("resnet-20", init="fixup", norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    assert model(x).abs().sum() == 0  # classifier zeroed (Zhang et al. 2019)
    unit = model.stages[0][1]
    h = torch.randn(2, 16, 8, 8).relu()
    torch.testing.assert_close(unit(h), h)  # last branch layer zeroed
    first = unit.branch.conv1.weight.std().item()
    he = math.sqrt(2.0 / (16 * 9))  # fan-out He std, before the L^(-1/(2m-2)) factor
    assert first == pytest.approx(he * 9 ** (-0.5), rel=0.25)


def test_fixup_scalar_biases_and_multiplier_where_the_paper_puts_them() -> None:
    # Zhang et al. 2019, rule 3: a scalar bias before each conv, linear and activation, a
    # scalar multiplier in every branch (out * scale + bias); no norms.
    model = skiplab.create_model("resnet-20", init="fixup", norm="none")
    unit = model.stages[0][0]
    assert [type(m).__name__ for m in unit.branch] == [
        "ScalarBias", "Conv2d", "ScalarBias", "ReLU", "ScalarBias", "Conv2d", "Scale", "ScalarBias"
    ]  # fmt: skip
    assert [type(m).__name__ for m in model.head][-2:] == ["ScalarBias", "Linear"]
    # Closed form: the He et al. 2015 weights (resnet-20 less its 1,376 BN parameters), one
    # stem bias, 4 biases + 1 multiplier in each of the 9 units, one bias before the classifier.
    assert n_params(model) == 269_722 - 1_376 + 1 + 9 * 5 + 1
    bottleneck = skiplab.create_model("resnet-11", block="bottleneck", init="fixup", norm="none")
    kinds = [type(m).__name__ for m in bottleneck.stages[0][0].branch]
    assert kinds.count("ScalarBias") == 6 and kinds.count("Scale") == 1
    # A downsampling shortcut reads x + the branch's first bias, as its first conv does
    # (Zhang et al.'s code); an identity shortcut carries x.
    down, same = model.stages[1][0], model.stages[1][1]
    assert down.shortcut_bias is down.branch.bias1 and same.shortcut_bias is None
    with torch.no_grad():
        down.branch.bias1.bias.fill_(0.5)
    h = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(down.shortcut_path(h), down.shortcut(h + 0.5))
    torch.testing.assert_close(down(h), down.combine(down.shortcut_path(h), down.branch_path(h), h))


def test_mlp_family() -> None:
    for name, sc in (("mlp-8", "none"), ("resmlp-8", "identity"), ("preact-resmlp-8", "identity")):
        model = skiplab.create_model(name)
        units = [m for m in model.modules() if isinstance(m, ResidualUnit)]
        assert len(units) == 3 and {u.shortcut_kind for u in units} == {sc}
        assert all(isinstance(u.branch.conv1, nn.Linear) for u in units)
    model = skiplab.create_model("resmlp-4", in_channels=1, num_classes=1, hidden=16, norm="none")
    assert model(torch.linspace(-2, 2, 7).unsqueeze(1)).shape == (7, 1)
    with pytest.raises(ValueError, match="2n\\+2"):
        skiplab.create_model("mlp-5")


def test_unet_init_is_ronnebergers_fan_in() -> None:
    """Ronneberger et al. 2015: std sqrt(2 / N), N the incoming nodes of one neuron (3x3 on
    C channels: 9C; a 2x2 stride-2 up-conv: its input channels); ResNets keep He et al.'s
    fan-out (k*k*out)."""
    torch.manual_seed(0)
    unet = skiplab.create_model("unet", base_width=16)
    for conv, n in (
        (unet.encoder[0].conv1, 9 * 1),  # 1 -> 16 channels
        (unet.encoder[1].conv1, 9 * 16),  # 16 -> 32: fan-out would be 9 * 32
        (unet.up[0], 32),  # ConvTranspose2d(32, 16, 2, 2)
        (unet.up[3], 256),
    ):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.1)
    resnet = skiplab.create_model("resnet-20")
    conv = resnet.stages[1][0].branch.conv1  # 16 -> 32, 3x3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.1)


def test_unet_skips_and_blocks() -> None:
    full = skiplab.create_model("unet", base_width=8)
    none = skiplab.create_model("unet", base_width=8, skip="none")
    add = skiplab.create_model("unet", base_width=8, skip="add")
    assert n_params(none) == n_params(add) < n_params(full)
    mixed = skiplab.create_model("unet", base_width=8, skip=["concat", "none", "none", "add"])
    assert mixed.decoder[0].conv1.in_channels == 16 and mixed.decoder[1].conv1.in_channels == 16
    x = torch.randn(1, 1, 32, 32)
    assert mixed(x).shape == (1, 2, 32, 32)
    res = skiplab.create_model("unet", base_width=8, block="residual", norm="batch")
    assert sum(isinstance(m, ResidualUnit) for m in res.modules()) == 9
    assert res(x).shape == (1, 2, 32, 32)
    valid = skiplab.create_model("unet", base_width=4, depth=2, padding="valid")
    assert valid(torch.randn(1, 1, 44, 44)).shape == (1, 2, 4, 4)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("resnet-21", {}, "depth=21"),
        ("resnet-32", {"block": "bottleneck"}, "9n\\+2"),
        ("resnt-20", {}, "did you mean 'resnet-20'"),
        ("resnet-20", {"plcement": "original"}, "did you mean 'placement'"),
        ("resnet-20", {"placement": "pre"}, "placement='pre'"),
        ("resnet-20", {"shortcut": "gated"}, "allowed: 'identity'"),
        ("resnet-20", {"act": "swish"}, "act='swish'"),
        ("resnet-20", {"norm": "instance"}, "norm='instance'"),
        ("resnet-20", {"init": "xavier"}, "init='xavier'"),
        ("resnet-20", {"init": "fixup"}, "norm='none'"),
        ("resnet-20", {"init": "zero-last-norm", "norm": "none"}, "no norm"),
        ("plain-20", {"branch_scale": "rezero"}, "shortcut='none'"),
        ("resnet-20", {"branch_scale": "half"}, "branch_scale='half'"),
        ("resnet-20", {"gate_bias": -6}, "gate_bias only applies"),
        ("resnet-20", {"shortcut_scale": 0.5}, "shortcut_scale only applies"),
        ("resnet-20", {"shortcut": "dropout", "shortcut_dropout": 1.5}, "shortcut_dropout"),
        ("resnet-20", {"width": 0}, "width=0"),
        ("resnet-20", {"num_classes": -1}, "num_classes=-1"),
        ("resnet-20", {"depth": 32}, "the name sets the depth; name it resnet-32"),
        ("resnet18", {"depth": 50}, "depth=50 for model 'resnet18': the name sets the depth"),
        ("resnet-20", {"depht": 32}, "unknown option 'depht' for model 'resnet-20'; allowed"),
        ("resnet-D", {}, "names a family, D is the depth; give one, e.g. resnet-20"),
        ("preact-resnet-D", {"depth": 20}, "e.g. preact-resnet-20"),
        ("unet", {"skip": ["concat"]}, "one entry per level"),
        ("unet", {"skip": "skip"}, "skip='skip'"),
        ("unet", {"padding": "valid", "block": "residual"}, "padding='same'"),
        ("unet", {"placement": "full-preact"}, "block='residual'"),
    ],
)
def test_invalid_options_raise_value_error(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        skiplab.create_model(name, **options)


def test_unet_rejects_sizes_it_cannot_halve() -> None:
    model = skiplab.create_model("unet", base_width=4)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 1, 100, 100))
    with pytest.raises(ValueError, match="cannot be halved"):
        skiplab.create_model("unet", base_width=4, padding="valid")(torch.randn(1, 1, 570, 570))


def test_registry_raises_on_duplicate_name() -> None:
    r = Registry()
    r.register("toy", lambda: nn.Linear(1, 1), "a toy")
    with pytest.raises(ValueError, match="already registered"):
        r.register("toy", lambda: nn.Linear(1, 1), "again")
    with pytest.raises(ValueError, match="already registered"):
        skiplab.register_model("resnet-D", lambda **kw: nn.Linear(1, 1))


def test_model_options_show_alias_defaults() -> None:
    assert model_options("preact-resnet-56")["placement"] == "full-preact"
    assert model_options("plain-20")["shortcut"] == "none"
    assert "depth" not in model_options("resnet-20")
    # A family's own name (as `skiplab models` lists it) shows the family's options.
    assert model_options("preact-resnet-D")["placement"] == "full-preact"
    assert "depth" not in model_options("resnet-D") and "block" in model_options("resnet-D")
    assert skiplab.list_models("preact-resnet-1*") == [
        "preact-resnet-110",
        "preact-resnet-164",
        "preact-resnet-1001",
        "preact-resnet-1202",
    ]


def test_act_and_norm_variants_and_callables() -> None:
    x = torch.randn(2, 3, 8, 8)
    for act in ("gelu", "silu", "tanh", "identity"):
        for norm in ("group", "layer", "none"):
            assert skiplab.create_model("resnet-8", act=act, norm=norm)(x).shape == (2, 10)
    model = skiplab.create_model("resnet-8", act=nn.Softsign, norm=lambda c: nn.GroupNorm(2, c))
    assert isinstance(model.stages[0][0].branch.act1, nn.Softsign)
    assert isinstance(model.stages[0][0].branch.norm1, nn.GroupNorm)


def test_summary_of_an_input_the_model_cannot_take_names_one_it_can() -> None:
    model = skiplab.create_model("resnet-8", in_channels=1)
    with pytest.raises(ValueError, match=r"input_shape=\(3, 32, 32\).*such as \(1, 32, 32\)"):
        skiplab.summarize(model, (3, 32, 32))


def test_summary_without_an_input_shape_says_what_to_pass() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())  # no example_input_shape
    with pytest.raises(ValueError, match=r"pass input_shape=\(C, H, W\).*\(3, 224, 224\)"):
        skiplab.summarize(model)
    assert skiplab.summarize(model, (3, 5, 5)).output_shape == (36,)


def test_package_names_are_the_public_api() -> None:
    """importlib.metadata's ``version`` leaked as ``skiplab.version`` (a TypeError to call)."""
    import types

    public = {n for n in dir(skiplab) if not n.startswith("_")}
    functions = {n for n in public if not isinstance(getattr(skiplab, n), types.ModuleType)}
    assert functions == set(skiplab.__all__) - {"__version__"}
    assert not hasattr(skiplab, "version") and not hasattr(skiplab, "PackageNotFoundError")
    assert isinstance(skiplab.__version__, str) and skiplab.__version__[0].isdigit()
