"""Vision Transformers (Dosovitskiy et al. 2021) through timm, in the harness's backbone shape.

``forward`` returns the final-norm class token (the representation MAE and DINO probe);
``forward_maps`` the patch tokens as a [B, D, h, w] map; ``forward_stages`` the token maps after
each quarter of the blocks (``block1``..``block4``) for multi-layer probes. Smaller patches serve small images
(``patch_size=4`` on 32px images gives an 8x8 token grid). ``dynamic_img_size=True`` lets
one network read crops of other sizes (DINO's multi-crop), resampling the position
embeddings bicubically to each input's token grid (timm's ``dynamic_img_size``).
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


class ViT(nn.Module):
    def __init__(self, size: str, img_size: int = 224, patch_size: int = 16, dynamic_img_size: bool = False):
        super().__init__()
        dim, depth, heads = SIZES[size]
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth,
                                     num_heads=heads, num_classes=0, global_pool="token",
                                     dynamic_img_size=dynamic_img_size)
        self.num_features = dim
        self.grid = self.vit.patch_embed.grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    def forward_readout(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """DINO's linear-probe inputs (eval_linear.py): ``last4_cls`` concatenates the
        normed class tokens of the last four blocks; ``cls_avgpool`` the last block's class
        token and its mean patch token."""
        if kind == "last4_cls":
            outs = self.vit.get_intermediate_layers(x, n=4, return_prefix_tokens=True, norm=True)
            return torch.cat([prefix[:, 0] for _, prefix in outs], dim=-1)
        if kind == "cls_avgpool":
            tokens = self.vit.forward_features(x)
            return torch.cat([tokens[:, 0], tokens[:, self.vit.num_prefix_tokens:].mean(dim=1)], dim=-1)
        raise ValueError(f"unknown ViT read-out {kind!r}: expected last4_cls or cls_avgpool")

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(x.shape[0], self.num_features, *self.grid)

    # Named layers for multi-layer probes, under the ResNets' names so `backbone.probe_layer`
    # and `eval.linear.layers` mean the same on every backbone: block1..block4 are the patch-token
    # maps (before the final norm) after each quarter of the blocks, 3/6/9/12 of ViT-T/S/B's 12.
    def _stage_indices(self) -> list[int]:
        depth = len(self.vit.blocks)
        return [depth * i // 4 - 1 for i in range(1, 5)]

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        final, maps = self.vit.forward_intermediates(x, indices=self._stage_indices(), output_fmt="NCHW")
        out = {f"block{i}": m for i, m in enumerate(maps, start=1)}
        out["pre_logits"] = self.vit.forward_head(final)
        return out

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        index = self._stage_indices()[block - 1]
        return self.vit.forward_intermediates(x, indices=[index], stop_early=True, intermediates_only=True,
                                              output_fmt="NCHW")[0]

    def block_channels(self, block: int) -> int:
        return self.num_features


def vit_tiny(img_size: int = 224, patch_size: int = 16, dynamic_img_size: bool = False) -> ViT:
    """ViT-Tiny (192 dim, 12 blocks, 3 heads), timm."""
    return ViT("tiny", img_size, patch_size, dynamic_img_size)


def vit_small(img_size: int = 224, patch_size: int = 16, dynamic_img_size: bool = False) -> ViT:
    """ViT-Small (384 dim, 12 blocks, 6 heads), timm."""
    return ViT("small", img_size, patch_size, dynamic_img_size)


def vit_base(img_size: int = 224, patch_size: int = 16, dynamic_img_size: bool = False) -> ViT:
    """ViT-Base (768 dim, 12 blocks, 12 heads), timm."""
    return ViT("base", img_size, patch_size, dynamic_img_size)


vit_tiny.description = "ViT-Tiny/16 (timm); patch_size and img_size configurable"
vit_small.description = "ViT-Small/16 (timm); patch_size and img_size configurable"
vit_base.description = "ViT-Base/16 (timm); patch_size and img_size configurable"
