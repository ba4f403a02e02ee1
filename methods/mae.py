"""Masked autoencoders: a ViT encodes the visible 25% of patches, a light decoder
reconstructs the normalised pixels of the masked ones (He et al., CVPR 2022)."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from harness.config import Config, P
from harness.data.transforms import crop_flip_transform, denormalize
from harness.errors import UsageError
from methods.base import Method, glyphs_budget

HE = "He et al. 2022"


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool) -> torch.Tensor:
    """Fixed 2D sine-cosine position embeddings [1, (1+) h*w, dim] (MAE's choice): half the
    channels encode the row, half the column, each as sin/cos at geometric frequencies."""
    if dim % 4:
        raise ValueError(f"sin-cos embeddings need a dim divisible by 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (ys.flatten(), xs.flatten()):
        ang = pos[:, None] * omega[None]
        parts += [ang.sin(), ang.cos()]
    emb = torch.cat(parts, dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb])
    return emb[None]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], row-major patches, pixels (row, col, channel)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    b, _, _ = patches.shape
    x = patches.view(b, h // p, w // p, p, p, -1).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, -1, h, w)


def random_masking(batch: int, n: int, ratio: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting uniform noise (MAE's implementation).

    Returns (keep [B, n_keep] indices of visible patches, mask [B, n] with 1 = masked, in
    original order, restore [B, n] the permutation that undoes the shuffle)."""
    keep_n = int(round(n * (1 - ratio)))
    order = torch.rand(batch, n, device=device).argsort(dim=1)
    restore = order.argsort(dim=1)
    mask = torch.ones(batch, n, device=device)
    mask[:, :keep_n] = 0
    return order[:, :keep_n], torch.gather(mask, 1, restore), restore


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error on masked patches only. pred, target: [B, N, p*p*C]; mask: [B, N]
    with 1 = masked. With ``norm_pix`` each target patch is normalised by its own mean and
    variance (He et al. 2022, Sec. 3, "normalized pixels")."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


class MAE(Method):
    name = "mae"
    family = "reconstruction"
    description = "MAE: ViT encoder on visible patches, light decoder, normalised-pixel loss on 75% masked"
    source = "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022"
    probes_blocks = False  # its representation is not one backbone pass over the image
    recipes = {
        "default": {
            "backbone.name": P("vit_base", f"{HE}: ViT-B/16"),
            "method.patch_size": P(16, f"{HE}: 16x16 patches"),
            "method.mask_ratio": P(0.75, f"{HE}, Sec. 3: mask ratio 75%"),
            "method.norm_pix_loss": P(True, f"{HE}, Sec. 3: normalised pixels as targets"),
            "method.readout": P("cls", f"{HE}, Sec. 4 / official main_linprobe.py: the class token"),
            "method.decoder_dim": P(512, f"{HE}, Table 1: decoder width 512"),
            "method.decoder_depth": P(8, f"{HE}, Table 1: decoder depth 8"),
            "method.decoder_heads": P(16, f"{HE}, Appendix A.1: 16 heads"),
            "train.optimizer": P("adamw", f"{HE}, Table 8"),
            "train.lr": P(2.4e-3, f"{HE}, Table 8: base lr 1.5e-4 x 4096/256"),
            "train.betas": P([0.9, 0.95], f"{HE}, Table 8"),
            "train.weight_decay": P(0.05, f"{HE}, Table 8"),
            "train.batch_size": P(4096, f"{HE}, Table 8"),
            "train.epochs": P(800, f"{HE}, Sec. 4"),
            "train.warmup_epochs": P(40, f"{HE}, Table 8"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "vit_tiny",
            "method.patch_size": 4,
            "method.decoder_dim": 128,
            "method.decoder_depth": 2,
            "method.decoder_heads": 4,
            "train.batch_size": 64,
            "train.lr": 1.5e-3,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
        # 8-px patches (16 tokens instead of 64): with 4-px ones the ViT's linear probe alone took
        # 610 s on glyphs' 10,000 images and the whole run 1,299 s (two runs at once,
        # bench/RESULTS.md); a quarter of the tokens brings the run within the 6-minute budget.
        "glyphs": glyphs_budget(8, {"method.patch_size": 8}),
    }
    reconstructs = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.p = int(cfg["method.patch_size"])
        size = int(cfg["data.image_size"])
        if size % self.p:
            raise UsageError(f"method.patch_size={self.p} does not divide data.image_size={size}")
        if cfg["method.readout"] not in ("cls", "avgpool"):
            raise UsageError(f"method.readout={cfg['method.readout']!r}: expected cls or avgpool")
        self.backbone = self.build_backbone(size, patch_size=self.p)
        vit = getattr(self.backbone, "vit", None)
        if vit is None:
            raise UsageError(f"mae needs a ViT backbone (vit_tiny, vit_small, vit_base), got '{cfg['backbone.name']}'")
        d, dd = self.backbone.num_features, int(cfg["method.decoder_dim"])
        grid = tuple(vit.patch_embed.grid_size)
        vit.pos_embed.data.copy_(sincos_2d(d, grid, cls_token=True))
        vit.pos_embed.requires_grad_(False)  # fixed, as in MAE
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_2d(dd, grid, cls_token=True), persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(dd, int(cfg["method.decoder_heads"]), mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(int(cfg["method.decoder_depth"]))])
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, self.p * self.p * 3)

    def train_transform(self):
        return crop_flip_transform(int(self.cfg["data.image_size"]), 0.2)  # MAE: RandomResizedCrop(0.2, 1) + flip

    def _encode_visible(self, x, keep):
        vit = self.backbone.vit
        tokens = vit.patch_embed(x) + vit.pos_embed[:, 1:]
        tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return vit.norm(vit.blocks(torch.cat([cls, tokens], dim=1)))

    def _decode(self, latent, restore):
        z = self.decoder_embed(latent)
        b, n = restore.shape
        masks = self.mask_token.expand(b, n + 1 - z.shape[1], -1)
        patches = torch.cat([z[:, 1:], masks], dim=1)
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, z.shape[-1]))  # back in image order
        z = torch.cat([z[:, :1], patches], dim=1) + self.decoder_pos
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(z)))[:, 1:]

    def _forward(self, images):
        n = self.backbone.vit.patch_embed.num_patches
        keep, mask, restore = random_masking(images.shape[0], n, float(self.cfg["method.mask_ratio"]), images.device)
        return self._decode(self._encode_visible(images, keep), restore), mask

    def training_step(self, batch):
        images, _ = batch
        pred, mask = self._forward(images)
        return {"loss": mae_loss(pred, patchify(images, self.p), mask, bool(self.cfg["method.norm_pix_loss"]))}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token (``method.readout=cls``), or the mean of the patch tokens
        (``avgpool``), which He et al. 2022 (Appendix A.1) find works as well as the token."""
        readout = self.cfg["method.readout"]
        if readout == "cls":
            return self.backbone(x)
        return self.backbone.vit.forward_features(x)[:, self.backbone.vit.num_prefix_tokens:].mean(dim=1)

    def reconstruct(self, batch):
        """(visible patches with masked ones grey, target, visible + predicted patches)."""
        images, _ = batch
        pred, mask = self._forward(images)
        target = patchify(images, self.p)
        if self.cfg["method.norm_pix_loss"]:  # show predictions in the target's own scale
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        h, w = images.shape[-2:]
        m = mask[..., None]
        masked = unpatchify(m.expand_as(target), self.p, h, w)  # 1 on masked pixels
        shown = denormalize(images)
        return shown * (1 - masked) + 0.5 * masked, shown, denormalize(unpatchify(target * (1 - m) + pred * m, self.p, h, w))
