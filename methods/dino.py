"""DINO: self-distillation with no labels (Caron et al., ICCV 2021).

A student (backbone + DINO head) sees every crop, two global and several local ones; a
teacher, the exponential moving average of the student, sees the two global crops only.
The student's softmax (temperature 0.1) on each crop is trained towards the teacher's
centred and sharpened softmax on every other crop; the center is a running mean of the
teacher's outputs. The teacher's backbone is the representation DINO evaluates.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from harness import registry
from harness.config import Config, P
from harness.errors import UsageError
from methods.base import Method, glyphs_budget
from methods.components.distributed import all_reduce_mean
from methods.components.heads import DINOHead
from methods.components.momentum import cosine_increase, ema_update_, momentum_copy, warmup_constant
from methods.components.views import DIGITS_MULTI_CROP, augment_from_cfg, multi_crop, split_by_size
from methods.losses import dino_center_update, dino_loss

PAPER = "Caron et al. 2021 (DINO)"
IMPL = f"{PAPER}, Sec. 3.2 'Implementation details'"
CODE = "facebookresearch/dino main_dino.py"
UTILS = "facebookresearch/dino utils.py"
README = "facebookresearch/dino README"
README_RN50 = "facebookresearch/dino README, 'ResNet-50 and other convnets trainings'"

N_GLOBAL = 2

DEFAULT = {
    "backbone.name": P("vit_small", f"{README}: ViT-S/16, 77.0% linear / 74.5% k-NN top-1"),
    "method.patch_size": P(16, f"{CODE}: --patch_size 16"),
    "data.image_size": P(224, f"{CODE}: DataAugmentationDINO, global crops 224"),
    "method.local_size": P(96, f"{CODE}: DataAugmentationDINO, local crops 96"),
    "method.n_local": P(10, f"{PAPER}, Table 8: 2x224^2 + 10x96^2 multi-crop (main_dino.py default: 8)"),
    "method.aug.crop_scale": P([0.4, 1.0], f"{CODE}: --global_crops_scale 0.4 1."),
    "method.local.crop_scale": P([0.05, 0.4], f"{CODE}: --local_crops_scale 0.05 0.4"),
    "method.aug.flip": P(True, f"{CODE}: RandomHorizontalFlip(p=0.5)"),
    "method.aug.jitter": P(0.4, f"{CODE}: ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)"),
    "method.aug.saturation": P(0.2, f"{CODE}: ColorJitter saturation 0.2"),
    "method.aug.hue": P(0.1, f"{CODE}: ColorJitter hue 0.1"),
    "method.aug.jitter_p": P(0.8, f"{CODE}: RandomApply(ColorJitter, p=0.8)"),
    "method.aug.grayscale_p": P(0.2, f"{CODE}: RandomGrayscale(p=0.2)"),
    "method.global1.blur_p": P(1.0, f"{CODE}: first global crop GaussianBlur(1.0)"),
    "method.global2.blur_p": P(0.1, f"{CODE}: second global crop GaussianBlur(0.1)"),
    "method.global2.solarize_p": P(0.2, f"{CODE}: second global crop Solarization(0.2)"),
    "method.local.blur_p": P(0.5, f"{CODE}: local crops GaussianBlur(p=0.5)"),
    "method.out_dim": P(65536, f"{CODE}: --out_dim 65536"),
    "method.head_hidden": P(2048, f"{PAPER}, App.: 3-layer MLP, hidden 2048 (vision_transformer.py DINOHead)"),
    "method.head_bottleneck": P(256, f"{PAPER}, App.: bottleneck 256 (DINOHead)"),
    "method.norm_last_layer": P(True, f"{CODE}: --norm_last_layer default True (README: False is better for ViT-S)"),
    "method.use_bn_in_head": P(False, f"{CODE}: --use_bn_in_head default False"),
    "method.momentum_teacher": P(0.996, f"{IMPL}: teacher momentum 0.996 -> 1, cosine"),
    "method.center_momentum": P(0.9, f"{CODE}: DINOLoss center_momentum 0.9"),
    "method.student_temp": P(0.1, f"{IMPL}: student temperature 0.1"),
    "method.warmup_teacher_temp": P(0.04, f"{IMPL}: teacher temperature 0.04 -> 0.07"),
    "method.teacher_temp": P(0.07, f"{IMPL}: teacher temperature 0.04 -> 0.07"),
    "method.warmup_teacher_temp_epochs": P(30, f"{IMPL}: linear warm-up over the first 30 epochs"),
    "method.freeze_last_layer_epochs": P(1, f"{CODE}: --freeze_last_layer 1"),
    "method.clip_grad": P(3.0, f"{CODE}: --clip_grad 3.0 ({UTILS} clip_gradients: each parameter's gradient norm)"),
    "train.optimizer": P("adamw", f"{IMPL}: AdamW"),
    "train.lr": P(0.002, f"{IMPL}: lr = 0.0005 x batch / 256 = 0.002 at batch 1024"),
    "train.warmup_epochs": P(10, f"{IMPL}: linear warm-up over the first 10 epochs"),
    "train.min_lr_ratio": P(5e-4, f"{CODE}: --min_lr 1e-6 (= 0.002 x 5e-4), cosine"),
    "train.weight_decay": P(0.04, f"{IMPL}: weight decay cosine 0.04 -> 0.4; the harness trainer holds it at 0.04"),
    "train.batch_size": P(1024, f"{IMPL}: batch 1024 over 16 GPUs for ViT-S/16"),
    "train.epochs": P(800, f"{README}: the ViT-S/16 checkpoint (77.0% linear) trained 800 epochs"),
    "train.grad_clip": P(0.0, "per-parameter clipping is method.clip_grad, as in the official code"),
}

# The README's ResNet-50 command (8 GPUs x 64 = batch 512, 100 epochs); everything it does
# not set keeps main_dino.py's defaults (teacher temperature 0.04 throughout, 8 local crops).
RESNET50 = {
    **DEFAULT,
    "backbone.name": P("resnet50", f"{README_RN50}: --arch resnet50"),
    "method.n_local": P(8, f"{CODE}: --local_crops_number default 8"),
    "method.aug.crop_scale": P([0.14, 1.0], f"{README_RN50}: --global_crops_scale 0.14 1"),
    "method.local.crop_scale": P([0.05, 0.14], f"{README_RN50}: --local_crops_scale 0.05 0.14"),
    "method.teacher_temp": P(0.04, f"{CODE}: --teacher_temp default 0.04"),
    "method.warmup_teacher_temp_epochs": P(0, f"{CODE}: --warmup_teacher_temp_epochs default 0"),
    "train.optimizer": P("sgd", f"{README_RN50}: --optimizer sgd (momentum 0.9 in main_dino.py)"),
    "train.momentum": P(0.9, f"{CODE}: torch.optim.SGD(momentum=0.9)"),
    "train.lr": P(0.06, f"{README_RN50}: --lr 0.03 x batch 512 / 256"),
    "train.min_lr_ratio": P(1e-6 / 0.06, f"{CODE}: --min_lr 1e-6"),
    "train.weight_decay": P(1e-4, f"{README_RN50}: --weight_decay 1e-4 --weight_decay_end 1e-4"),
    "train.batch_size": P(512, f"{README_RN50}: 8 GPUs x --batch_size_per_gpu 64"),
    "train.epochs": P(100, f"{README_RN50}: 100 epochs"),
}


def is_vit(backbone_name: str) -> bool:
    return "patch_size" in inspect.signature(registry.backbones.get(backbone_name)).parameters


class DINO(Method):
    name = "dino"
    family = "self-distillation"
    description = "DINO: multi-crop self-distillation into an EMA teacher with centred, sharpened targets"
    source = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021"
    recipes = {"default": DEFAULT, "resnet50": RESNET50}
    suite_profiles = {
        "digits": {
            # DIGITS_MULTI_CROP (a ViT works too: backbone.name=vit_tiny backbone.width=1
            # method.patch_size=4), a small head, and a short run: the teacher momentum is
            # lowered so that the teacher moves within it.
            **DIGITS_MULTI_CROP,
            "method.out_dim": 1024,
            "method.head_hidden": 512,
            "method.head_bottleneck": 64,
            # BatchNorm in the head (the official --use_bn_in_head) keeps the outputs of
            # different images apart from the first steps; without it the short run
            # drifts to uniform outputs (loss ln K) and never leaves them.
            "method.use_bn_in_head": True,
            "method.momentum_teacher": 0.99,
            "method.warmup_teacher_temp_epochs": 2,
            "train.batch_size": 64,
            "train.epochs": 6,
            "train.lr": 1e-3,
            "train.min_lr_ratio": 0.01,
            "train.warmup_epochs": 1,
        },
        "glyphs": glyphs_budget(3),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        size = int(cfg["data.image_size"])
        if is_vit(cfg["backbone.name"]):
            # Local crops change the token grid: positions are resampled per input size.
            p = int(cfg["method.patch_size"])
            if size % p or int(cfg["method.local_size"]) % p:
                raise UsageError(f"method.patch_size={p} must divide data.image_size={size} "
                                 f"and method.local_size={cfg['method.local_size']}")
            self.probes_blocks = False
            student = self.build_backbone(size, patch_size=p, dynamic_img_size=True)
        else:
            student = self.build_backbone(size)
        self.student_backbone = student
        self.student_head = DINOHead(student.num_features, int(cfg["method.out_dim"]), int(cfg["method.head_hidden"]),
                                     int(cfg["method.head_bottleneck"]), bool(cfg["method.norm_last_layer"]),
                                     bool(cfg["method.use_bn_in_head"]))
        # The teacher starts as a copy of the student and is never differentiated. Its
        # backbone is ``self.backbone``: what features(), the evaluations and the saved
        # backbone.pt read (DINO evaluates the teacher: README, eval_knn.py
        # --checkpoint_key teacher).
        self.backbone = momentum_copy(self.student_backbone)
        self.teacher_head = momentum_copy(self.student_head)
        self.register_buffer("center", torch.zeros(1, int(cfg["method.out_dim"])))
        # The teacher temperature of the coming step; on_step_end advances it, and as a
        # buffer it resumes with the run.
        warm = int(cfg["method.warmup_teacher_temp_epochs"]) > 0
        self.register_buffer("teacher_temp", torch.tensor(
            float(cfg["method.warmup_teacher_temp"] if warm else cfg["method.teacher_temp"]), dtype=torch.float64))

    def train_transform(self):
        c = self.cfg
        size = int(c["data.image_size"])
        globals_ = [augment_from_cfg(c, f"method.global{i + 1}", size) for i in range(N_GLOBAL)]
        local_view = augment_from_cfg(c, "method.local", int(c["method.local_size"]))
        return multi_crop(globals_, local_view, int(c["method.n_local"]))

    def training_step(self, batch):
        views = batch[0]
        c = self.cfg
        b = views[0].shape[0]
        with torch.no_grad():
            # Only the global crops pass through the teacher (main_dino.py: teacher(images[:2])).
            teacher_out = self.teacher_head(self.backbone(torch.cat(views[:N_GLOBAL]))).chunk(N_GLOBAL)
        feats = torch.cat([self.student_backbone(x) for x in split_by_size(views)])
        student_out = self.student_head(feats).split(b)
        loss = dino_loss(list(student_out), list(teacher_out), self.center, float(c["method.student_temp"]),
                         float(self.teacher_temp))
        with torch.no_grad():
            batch_center = all_reduce_mean(torch.cat(teacher_out).float().mean(dim=0, keepdim=True))
            self.center.copy_(dino_center_update(self.center, batch_center, float(c["method.center_momentum"])))
        return {"loss": loss, "teacher_temp": self.teacher_temp.detach().clone()}

    def before_optimizer_step(self, step, total_steps, steps_per_epoch):
        self._steps_per_epoch = steps_per_epoch
        # The last layer is held fixed at first (official --freeze_last_layer, utils.py
        # cancel_gradients_last_layer): no gradient, so the optimizer skips it entirely.
        if step < steps_per_epoch * float(self.cfg["method.freeze_last_layer_epochs"]):
            for p in self.student_head.last_layer.parameters():
                p.grad = None
        clip = float(self.cfg["method.clip_grad"])
        if clip > 0:
            clip_each_(self.student_backbone, clip)
            clip_each_(self.student_head, clip)

    def on_step_end(self, step, total_steps):
        c = self.cfg
        m = cosine_increase(float(c["method.momentum_teacher"]), 1.0, total_steps)[step]
        ema_update_(self.backbone, self.student_backbone, float(m), copy_buffers=False)
        ema_update_(self.teacher_head, self.student_head, float(m), copy_buffers=False)
        spe = getattr(self, "_steps_per_epoch", None) or max(total_steps // int(c["train.epochs"]), 1)
        self.teacher_temp.fill_(teacher_temp_schedule(c, spe, total_steps)[min(step + 1, total_steps - 1)])


def teacher_temp_schedule(cfg, steps_per_epoch: int, total_steps: int):
    """The teacher temperature of every step: linear from ``warmup_teacher_temp`` to
    ``teacher_temp`` over the warm-up epochs, then constant (the official schedule moves
    once per epoch; this one per step, as VISSL's teacher_temp_warmup_iters)."""
    warmup = int(round(float(cfg["method.warmup_teacher_temp_epochs"]) * steps_per_epoch))
    return warmup_constant(float(cfg["method.warmup_teacher_temp"]), float(cfg["method.teacher_temp"]), warmup, total_steps)


@torch.no_grad()
def clip_each_(module: nn.Module, clip: float) -> None:
    """DINO's gradient clipping (utils.py clip_gradients): each parameter's gradient is
    scaled down to norm ``clip`` on its own, not the global norm."""
    for p in module.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
