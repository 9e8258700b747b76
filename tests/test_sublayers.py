"""split_sublayers: transformer blocks as two residual units each, computing what the
blocks compute, so lesions, path gradients and gradient flow see their sublayers."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

from skiplab.analysis import (
    find_units,
    gradient_flow,
    lesion,
    path_gradients,
    path_spectrum,
    split_sublayers,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=3,
    )  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises it: no gradient
    return vit.eval()


class Encoder(nn.Module):
    """A token classifier: ``layers`` transformer encoder layers, mean over tokens, a head."""

    def __init__(self, layers: int, norm_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def test_split_vit_computes_the_same_and_shares_the_weights() -> None:
    vit = tiny_vit()
    split = split_sublayers(vit)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(split(x), vit(x), rtol=0, atol=0)
    names = [u.name for u in find_units(split)]
    assert names == [
        f"encoder.layers.encoder_layer_{i}.{s}" for i in (0, 1) for s in ("attn", "mlp")
    ]
    assert all(p is q for p, q in zip(split.parameters(), vit.parameters(), strict=True))
    assert type(vit.encoder.layers[0]).__name__ == "EncoderBlock"  # the original is unchanged
    with pytest.raises(ValueError, match=r"split_sublayers\(model\)"):
        find_units(vit)


def test_lesion_of_a_sublayer_equals_the_block_without_that_branch() -> None:
    vit = tiny_vit()
    split = split_sublayers(vit)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    result = lesion(split, (x, y), metric="loss", k_values=[1], swaps=False)
    block = vit.encoder.layers[1]
    zero_attn = block.self_attention.register_forward_hook(
        lambda m, a, o: (torch.zeros_like(o[0]), None)
    )
    with torch.no_grad():
        want_attn = F.cross_entropy(vit(x), y).item()
    zero_attn.remove()
    zero_mlp = block.mlp.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
    with torch.no_grad():
        want_mlp = F.cross_entropy(vit(x), y).item()
    zero_mlp.remove()
    rows = {r["name"]: r["metric"] for r in result.single}
    assert rows["encoder.layers.encoder_layer_1.attn"] == pytest.approx(want_attn, rel=1e-6)
    assert rows["encoder.layers.encoder_layer_1.mlp"] == pytest.approx(want_mlp, rel=1e-6)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_path_gradients_of_one_encoder_layer(norm_first: bool) -> None:
    # out = post2(h + mlp(h)), h = post1(x + attn(x)): with pre-LN (no post), the path
    # through neither branch carries dL/dout itself; the parts always sum to dL/dx
    model = Encoder(1, norm_first).double().eval()
    split = split_sublayers(model)
    x, y = torch.randn(2, 5, 8, dtype=torch.float64), torch.tensor([0, 2])
    result = path_gradients(split, x, y, samples=0)
    assert result.parts.shape == (3, 2, 5, 8)
    x_ = x.clone().requires_grad_()
    out = split.encoder(x_)
    loss = F.cross_entropy(split.head(out.mean(1)), y)
    grad, g_out = torch.autograd.grad(loss, [x_, out])
    torch.testing.assert_close(result.parts.sum(0), grad, rtol=1e-9, atol=1e-12)
    if norm_first:
        torch.testing.assert_close(result.parts[0], g_out, rtol=1e-9, atol=1e-12)
    else:  # a LayerNorm after each addition: even the skip-only path is not the identity
        assert not torch.allclose(result.parts[0], g_out)


@pytest.mark.parametrize("norm_first", [True, False])
def test_split_encoder_keeps_the_function_and_its_path_spectrum(norm_first: bool) -> None:
    model = Encoder(3, norm_first).eval()
    split = split_sublayers(model)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(split(x), model(x), rtol=0, atol=0)
    spectrum = path_spectrum(split, x)
    assert spectrum.counts == path_spectrum(model, x).counts
    # post-LN: every path crosses the 2 x 3 LayerNorms after the additions (Xiong et al.
    # 2020); pre-LN (no final norm) keeps a path through none
    assert spectrum.min == (0 if norm_first else 6)
    flow = gradient_flow(split, x, torch.tensor([0, 1]))
    assert [r["residual"] for r in flow.units] == [True] * 6


def test_masks_are_refused() -> None:
    split = split_sublayers(Encoder(1, True).eval())
    with pytest.raises(ValueError, match="takes no attention mask"):
        split.encoder(torch.randn(1, 4, 8), mask=torch.zeros(4, 4))


@pytest.mark.parametrize("block", [SwinTransformerBlock, SwinTransformerBlockV2])
def test_swin_blocks(block: type) -> None:
    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2],
                           window_size=[2, 2], num_classes=3, block=block).eval()  # fmt: skip
    split = split_sublayers(swin)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(split(x), swin(x), rtol=0, atol=0)
    assert len(find_units(split)) == 2 * 4


def test_blocks_with_a_forward_of_their_own_are_not_split(caplog) -> None:
    class Scaled(nn.TransformerEncoderLayer):
        def forward(self, src, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
            return 2 * super().forward(src, *args, **kwargs)

    model = nn.Sequential(Scaled(8, 2, 16, batch_first=True))
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match=r"\(1 with a forward"):
        split_sublayers(model)
    assert "Scaled has a forward of its own" in caplog.text
    with pytest.raises(ValueError, match="no transformer blocks to split in Linear"):
        split_sublayers(nn.Linear(2, 2))
