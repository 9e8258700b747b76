"""Loss landscapes (Li et al. 2018): filter normalisation, the centre, a closed form, and the
in-place and batched (vmap) evaluations against the per-point loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skiplab
from skiplab.analysis.landscape import LossLandscape, loss_landscape, random_direction


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def with_bn_stats(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from (0, 1): BN folding must scale."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.2)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


def values(res: LossLandscape, what: str = "values") -> torch.Tensor:
    return torch.tensor(getattr(res, what), dtype=torch.float64)


def cls_data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_filter_normalisation_and_biasbn():
    model = small_cnn()
    d = random_direction(model, generator=torch.Generator().manual_seed(3))
    params = dict(model.named_parameters())
    assert d.keys() == params.keys()
    for name, w in params.items():
        if w.dim() <= 1:  # biases and BN scales/shifts: zero with ignore="biasbn"
            assert torch.count_nonzero(d[name]) == 0, name
        else:  # every filter (output unit) has its weight filter's norm
            torch.testing.assert_close(
                d[name].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1)
            )
    d2 = random_direction(model, ignore="none", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(d2["1.weight"], params["1.weight"].detach())


def test_centre_is_the_models_own_loss_and_state_is_restored():
    model = small_cnn()
    x, y = cls_data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = loss_landscape(model, (x, y), dims=2, steps=3, span=0.5, points_per_batch=4)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with torch.no_grad():
        out = model(x)
    own = float(F.cross_entropy(out, y))
    assert res.center_loss == pytest.approx(own, rel=1e-5)
    assert res.values[1][1] == pytest.approx(own, rel=1e-5)  # odd steps: centre on the grid
    assert res.center_accuracy == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert len(res.values) == 3 and len(res.values[0]) == 3
    assert res.accuracy is not None and 0.0 <= res.accuracy[0][0] <= 1.0


def test_linear_regression_matches_closed_form():
    # loss(a) = mean((X (w + a d) - y)^2) = mean((r + a X d)^2), r = X w - y: a quadratic.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 5, generator=g, dtype=torch.float64)
    y = torch.randn(50, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    res = loss_landscape(model, (x, y), dims=1, steps=7, span=2.0, seed=4)
    d = random_direction(model, generator=torch.Generator().manual_seed(4))["weight"]
    w = model.weight.detach()
    r = x @ w.T - y
    xd = x @ d.T
    for a, v in zip(res.coords, res.values, strict=True):
        expected = float(((r + a * xd) ** 2).mean())
        assert v == pytest.approx(expected, rel=1e-9)
    assert res.accuracy is None


def test_vmap_equals_loop_and_batches_of_data():
    model = small_cnn()
    x, y = cls_data(30)
    fast = loss_landscape(model, (x, y), dims=2, steps=4, points_per_batch=5, seed=2, method="vmap")
    slow = loss_landscape(model, (x, y), dims=2, steps=4, method="loop", seed=2)
    torch.testing.assert_close(torch.tensor(fast.values), torch.tensor(slow.values))
    torch.testing.assert_close(torch.tensor(fast.accuracy), torch.tensor(slow.accuracy))
    # The same data as an iterable of uneven batches, and as tensors with batch_size.
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    it = loss_landscape(model, iter(batches), dims=2, steps=4, seed=2)
    bs = loss_landscape(model, (x, y), dims=2, steps=4, seed=2, batch_size=8)
    torch.testing.assert_close(torch.tensor(it.values), torch.tensor(fast.values))
    torch.testing.assert_close(torch.tensor(bs.values), torch.tensor(fast.values))
    assert it.num_samples == 30


def test_skiplab_resnet_result_contract(tmp_path):
    model = skiplab.create_model("resnet-20", in_channels=1)
    x, y = cls_data(8)
    res = loss_landscape(model, (x, y), dims=1, steps=3, points_per_batch=2)
    assert isinstance(res, LossLandscape)
    json.dumps(res.to_dict())
    assert "LossLandscape(dims=1" in repr(res)
    assert "Li et al. 2018" in res.summary()
    ax = res.plot()
    ax.figure.savefig(tmp_path / "l1.png")
    res2 = loss_landscape(small_cnn(), cls_data(), dims=2, steps=3)
    ax = res2.plot()
    ax.figure.savefig(tmp_path / "l2.png")


@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_inplace_equals_vmap_and_loop(ignore):
    # biasbn: BN fixed, so it is folded into the convs (their directions scaled per
    # channel); none: BN moves along the directions too, so nothing is folded.
    model = with_bn_stats(small_cnn())
    x, y = cls_data(20)
    kw = {"dims": 2, "steps": 3, "seed": 3, "span": 0.8, "ignore": ignore}
    fast = loss_landscape(model, (x, y), method="inplace", **kw)
    loop = loss_landscape(model, (x, y), method="loop", **kw)
    vmap = loss_landscape(model, (x, y), method="vmap", **kw)
    assert fast.config["method"] == "inplace" and fast.config["precision"] == "fp32"
    assert fast.config["folded_batchnorm"] == (2 if ignore == "biasbn" else 0)
    for other in (loop, vmap):
        torch.testing.assert_close(values(fast), values(other), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values(fast, "accuracy"), values(other, "accuracy"))
    assert fast.center_loss == pytest.approx(loop.center_loss, rel=1e-6)
    # The landscape is not flat: equal values above are not trivially equal.
    assert values(fast).max() - values(fast).min() > 0.1


def test_inplace_folds_a_conv_bias_that_moves():
    # ignore="none" moves the conv's bias; an affine-free BN has no parameters to move, so
    # it is folded and the bias direction is scaled too.
    torch.manual_seed(1)
    model = with_bn_stats(
        nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3, affine=False),
            nn.Flatten(),
            nn.Linear(48, 3),
        )
    )
    x, y = cls_data(10)
    kw = {"dims": 1, "steps": 4, "span": 2.0, "ignore": "none"}
    fast = loss_landscape(model, (x, y), method="inplace", **kw)
    loop = loss_landscape(model, (x, y), method="loop", **kw)
    assert fast.config["folded_batchnorm"] == 1
    torch.testing.assert_close(values(fast), values(loop), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_inplace_folds_torchvision_blocks(arch):
    """torchvision's stem and blocks (conv1 -> bn1, ...) fold as Sequential pairs do: every
    BN of resnet18 (20) and resnet50 (53), with the same landscape as the loop."""
    import torchvision

    torch.manual_seed(0)
    model = with_bn_stats(getattr(torchvision.models, arch)(num_classes=3))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    kw = {"dims": 1, "steps": 3, "span": 0.5, "seed": 1}
    fast = loss_landscape(model, (x, y), method="inplace", **kw)
    loop = loss_landscape(model, (x, y), method="loop", **kw)
    assert fast.config["folded_batchnorm"] == {"resnet18": 20, "resnet50": 53}[arch]
    torch.testing.assert_close(values(fast), values(loop), rtol=1e-4, atol=1e-5)


def test_inplace_splits_the_batch_to_fit_memory(monkeypatch):
    from skiplab.analysis import landscape

    model = with_bn_stats(small_cnn())
    x, y = cls_data(12)
    whole = loss_landscape(model, (x, y), dims=1, steps=3, method="inplace")
    # A budget of 5 samples' activations: forward passes over chunks of 5, 5 and 2.
    per_sample = 3 * landscape._largest_activation(model.eval(), x) * x.element_size()
    monkeypatch.setattr(landscape, "_memory_budget", lambda _device: 5 * per_sample)
    split = loss_landscape(model, (x, y), dims=1, steps=3, method="inplace")
    torch.testing.assert_close(values(split), values(whole), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(values(split, "accuracy"), values(whole, "accuracy"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inplace_channels_last_path(monkeypatch, precision):
    # The CUDA path (channels_last copy and input), run on the CPU.
    from skiplab.analysis import landscape

    model = with_bn_stats(small_cnn())
    x, y = cls_data(12)
    kw = {"dims": 1, "steps": 3, "span": 0.8, "method": "inplace", "precision": precision}
    plain = loss_landscape(model, (x, y), **kw)
    monkeypatch.setattr(landscape, "_use_channels_last", lambda _x: True)
    nhwc = loss_landscape(model, (x, y), **kw)
    assert nhwc.config["channels_last"] and not plain.config["channels_last"]
    tol = {"rtol": 1e-5, "atol": 1e-6} if precision == "fp32" else {"rtol": 2e-2, "atol": 1e-3}
    torch.testing.assert_close(values(nhwc), values(plain), **tol)


def test_inplace_leaves_the_model_as_it_was():
    model = with_bn_stats(small_cnn()).to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    x, y = cls_data()
    res = loss_landscape(model, (x, y), dims=1, steps=3, method="inplace", precision="bf16")
    assert res.config["folded_batchnorm"] == 2
    assert model.training and all(m.training for m in model.modules())
    assert [type(m) for m in model.modules()] == types  # its BN layers were not folded
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.requires_grad for p in model.parameters())


def test_bf16_is_close_to_fp32():
    model = with_bn_stats(small_cnn())
    x, y = cls_data(20)
    kw = {"dims": 2, "steps": 3, "seed": 3, "span": 0.8}
    fp32 = loss_landscape(model, (x, y), **kw)
    bf16 = loss_landscape(model, (x, y), precision="bf16", **kw)
    assert fp32.config["method"] == "inplace"  # "auto"
    assert bf16.config["precision"] == "bf16"
    torch.testing.assert_close(values(bf16), values(fp32), rtol=5e-2, atol=1e-3)
    assert values(bf16).tolist() != values(fp32).tolist()  # it did run in bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": 3}, "dims"),
        ({"dims": "2"}, r"dims='2' \(a int, not a string\)"),
        ({"steps": 1}, "steps"),
        ({"norm": "filters"}, "norm=.*allowed.*'filter'"),
        ({"ignore": "bn"}, "ignore=.*allowed.*'biasbn'"),
        ({"span": 0}, "span"),
        ({"method": "fast"}, "method=.*allowed.*'auto', 'inplace', 'vmap', 'loop'"),
        ({"precision": "bfloat16"}, "precision=.*allowed.*'fp32', 'bf16'"),
        ({"precision": "bf16", "method": "vmap"}, "precision='bf16'.*method='inplace'"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_landscape(small_cnn(), cls_data(), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inplace_on_cuda_matches_the_cpu_loop():
    """On a GPU (channels_last, folded BN, TF32 convs) the grid matches the CPU reference;
    bf16 is close."""
    torch.manual_seed(0)
    model = skiplab.create_model("resnet-20", num_classes=10)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for m in model.modules():  # BN statistics of this batch, so eval-mode losses are sane
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model(x)
    model.eval()
    kw = dict(dims=2, steps=3, span=0.5, seed=1)
    ref = loss_landscape(model, (x, y), method="loop", **kw)
    gpu = loss_landscape(model.cuda(), (x.cuda(), y.cuda()), **kw)
    half = loss_landscape(model, (x.cuda(), y.cuda()), precision="bf16", **kw)
    a, b, c = (torch.tensor(r.values) for r in (ref, gpu, half))
    torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(c, a, rtol=5e-2, atol=1e-2)
    assert gpu.config["method"] == "inplace" and next(model.parameters()).is_cuda


def test_batch_norm_without_running_statistics_is_flagged(caplog):
    # Such BN normalises every forward pass by its own batch even in eval mode, so the
    # landscape depends on how the data is split: the caller is told.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    x, y = cls_data(12)
    whole = loss_landscape(model, (x, y), steps=3, method="loop")
    split = loss_landscape(model, (x, y), steps=3, batch_size=4, method="loop")
    assert values(whole).tolist() != values(split).tolist()
    assert "1 keep no running statistics (track_running_stats=False)" in caplog.text
    caplog.clear()
    loss_landscape(small_cnn(), (x, y), steps=3)
    assert "track_running_stats" not in caplog.text
