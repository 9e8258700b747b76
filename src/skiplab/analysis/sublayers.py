"""Transformer blocks split into their residual sublayers, so that the analyses see units.

A transformer block holds two residual additions in one module (attention, then the MLP),
so its units cannot be hooked as modules. ``split_sublayers(model)`` returns a copy of the
model, sharing its parameters and buffers, in which each known block is an
``nn.Sequential`` of two ``SubLayer`` units (``attn`` and ``mlp``), each computing
``post(x + branch(x))`` as the block's own forward does:

- torchvision's ViT ``EncoderBlock``: ``x + dropout(attention(ln_1(x)))``, then
  ``x + mlp(ln_2(x))`` (pre-LN: nothing after the additions);
- torchvision's Swin ``SwinTransformerBlock``: ``x + sd(attn(norm1(x)))``, then
  ``x + sd(mlp(norm2(x)))``; ``SwinTransformerBlockV2`` with the norms after attention
  and MLP (res-post-norm, still inside the branch);
- ``nn.TransformerEncoderLayer``: pre-LN (``norm_first=True``) as ViT's; post-LN (the
  default, Vaswani et al. 2017) ``norm1(x + sa(x))``, then ``norm2(x + ff(x))``: a
  LayerNorm after each addition, as the ReLU after each addition of the original ResNet.

Pre-LN against post-LN is the transformer's form of He et al. 2016's question: only
pre-LN leaves a path from input to output through no normalisation (Xiong et al. 2020).
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from .blocks import keeps_forward

log = logging.getLogger(__name__)


class SubLayer(nn.Module):
    """One residual sublayer: ``post(x + branch(x))`` (``post`` None: nothing after the
    addition). A unit of the ``branch``/``shortcut`` protocol, with an identity shortcut."""

    def __init__(self, branch: nn.Module, post: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = None
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.branch(x)
        return out if self.post is None else self.post(out)


class SelfAttention(nn.Module):
    """``dropout(attention(h, h, h)[0])`` with ``h = norm(x)``: the attention branch."""

    def __init__(self, norm: nn.Module | None, attention: nn.Module, dropout: nn.Module) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.attention = attention
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        return self.dropout(self.attention(h, h, h, need_weights=False)[0])


class FeedForward(nn.Module):
    """``nn.TransformerEncoderLayer``'s feed-forward branch:
    ``dropout2(linear2(dropout(activation(linear1(norm(x))))))``."""

    def __init__(self, layer: nn.TransformerEncoderLayer, norm: nn.Module | None) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.linear1, self.dropout, self.linear2 = layer.linear1, layer.dropout, layer.linear2
        self.dropout2 = layer.dropout2
        self.activation = layer.activation  # a module or a function (F.relu)

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.linear1(self.norm(x)))
        return self.dropout2(self.linear2(self.dropout(h)))


class SplitBlock(nn.Sequential):
    """A transformer block as its two sublayers, ``attn`` and ``mlp``. Called as the block
    was (``nn.TransformerEncoder`` passes masks): any mask is refused, since the split
    attention takes none."""

    @property
    def self_attn(self) -> nn.Module:
        """The attention module (``nn.TransformerEncoder`` reads its ``batch_first``)."""
        branch = self.attn.branch
        return branch.attention if isinstance(branch, SelfAttention) else branch

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        given = [a for a in (*args, *kwargs.values()) if a is not None and a is not False]
        if given:
            raise ValueError(
                "a block split by split_sublayers takes no attention mask (got "
                f"{len(given)} mask argument(s)); analyse the model without masks, or name its "
                "units with blocks=[...] on modules with 'branch' and 'shortcut' of your own"
            )
        return super().forward(x)


def transformer_block_types() -> tuple[type, ...]:
    """The blocks ``split_sublayers`` splits."""
    types: list[type] = [nn.TransformerEncoderLayer]
    try:
        from torchvision.models.swin_transformer import SwinTransformerBlock
        from torchvision.models.vision_transformer import EncoderBlock
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return tuple(types)
    return (*types, EncoderBlock, SwinTransformerBlock)


def _split(block: nn.Module) -> SplitBlock | None:
    """The two sublayers of one block, or None when its class's forward is not the one
    read here (a subclass with a forward of its own)."""
    from torchvision.models.swin_transformer import SwinTransformerBlock, SwinTransformerBlockV2
    from torchvision.models.vision_transformer import EncoderBlock

    if keeps_forward(block, (EncoderBlock,)):
        attn = SubLayer(SelfAttention(block.ln_1, block.self_attention, block.dropout))
        mlp = SubLayer(nn.Sequential(block.ln_2, block.mlp))
    elif keeps_forward(block, (SwinTransformerBlock,)):  # not V2: its forward differs
        sd = block.stochastic_depth
        attn = SubLayer(nn.Sequential(block.norm1, block.attn, sd))
        mlp = SubLayer(nn.Sequential(block.norm2, block.mlp, sd))
    elif keeps_forward(block, (SwinTransformerBlockV2,)):
        sd = block.stochastic_depth
        attn = SubLayer(nn.Sequential(block.attn, block.norm1, sd))
        mlp = SubLayer(nn.Sequential(block.mlp, block.norm2, sd))
    elif keeps_forward(block, (nn.TransformerEncoderLayer,)):
        pre = block.norm_first
        attn = SubLayer(
            SelfAttention(block.norm1 if pre else None, block.self_attn, block.dropout1),
            None if pre else block.norm1,
        )
        mlp = SubLayer(
            FeedForward(block, block.norm2 if pre else None), None if pre else block.norm2
        )
    else:
        return None
    return SplitBlock(OrderedDict(attn=attn, mlp=mlp))


def split_sublayers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (sharing its parameters and buffers, so it computes the same
    function and follows the original's weights) with each transformer block split into
    its two residual sublayers, ``BLOCK.attn`` and ``BLOCK.mlp``: units every analysis finds
    without ``blocks=[...]`` (lesions delete one sublayer; path gradients count the
    sublayers a path crosses). The original is not changed. Blocks: torchvision's ViT
    ``EncoderBlock``, Swin ``SwinTransformerBlock``/``V2`` and ``nn.TransformerEncoderLayer``
    (the split layer refuses attention masks). Raises ``ValueError`` when the model holds
    none of them, naming the remedy."""
    keep = {id(t): t for t in (*model.parameters(), *model.buffers())}
    copied = copy.deepcopy(model, keep)  # the memo maps every tensor to itself: shared
    found = skipped = 0
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, transformer_block_types()):
                continue
            split = _split(child)
            if split is None:
                skipped += 1
                log.warning(
                    "%s is not split: %s has a forward of its own, so its sublayers cannot be "
                    "read from its parts",
                    name,
                    type(child).__name__,
                )
                continue
            old = {id(m) for m in child.modules()}
            for m in split.modules():  # the new wrappers take the block's mode
                if id(m) not in old:
                    m.training = child.training
            setattr(parent, name, split)
            found += 1
    if found == 0:
        extra = f" ({skipped} with a forward of their own)" if skipped else ""
        raise ValueError(
            f"no transformer blocks to split in {type(model).__name__}{extra}: split_sublayers "
            "knows torchvision's ViT EncoderBlock, Swin blocks and nn.TransformerEncoderLayer; "
            "for other blocks give each residual sublayer 'branch' and 'shortcut' modules and "
            "name them with blocks=[...]"
        )
    return copied
