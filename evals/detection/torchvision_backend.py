"""The detection backend that needs no extra install: torchvision's Faster R-CNN over a feature
pyramid built on the harness backbone's ``forward_stages``, so every backbone family the harness
has (AlexNet, VGG, RevNet, ResNet v1/v2, and ViT through a simple feature pyramid) can be
transferred, and its scores come from the same scorer as detectron2's (``scoring``).

Differences from the detectron2 protocol, by necessity: an FPN head instead of C4 for every
backbone (the C4 head reuses ResNet's res5, which only ResNets have), torchvision's RPN/ROI
defaults except where the preset says otherwise. Results name their backend, and the leaderboard
never puts the two in one column.
"""
from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.transforms.v2 import functional as TF

from harness import checkpoint
from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from harness.errors import UsageError
from harness.progress import progress

MAX_LEVELS = 3  # pyramid levels taken from the backbone (plus one pooled): the deepest distinct strides


class StagePyramid(nn.Module):
    """An FPN over a backbone's stage maps. The deepest map of each distinct stride is a level
    (the last ``MAX_LEVELS`` of them); a backbone with a single stride (ViT) gets ViTDet's simple
    feature pyramid (Li et al. 2022, Sec. 3): its last map upsampled x2 by a transposed
    convolution, as is, and max-pooled /2."""

    def __init__(self, backbone: nn.Module, probe_size: int, out_channels: int = 256):
        super().__init__()
        if not hasattr(backbone, "forward_stages"):
            raise UsageError(f"detection needs a backbone with stage maps (forward_stages); "
                             f"{type(backbone).__name__} has none")
        self.body = backbone
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            stages = {k: v for k, v in backbone.forward_stages(torch.zeros(1, 3, probe_size, probe_size)).items()
                      if k.startswith("block") and v.ndim == 4}
        backbone.train(was_training)
        by_stride: dict[int, str] = {}
        for name, m in stages.items():  # insertion order is depth order: later names win
            by_stride[round(probe_size / m.shape[-1])] = name
        self.simple = len(by_stride) == 1
        if self.simple:
            name = next(reversed(stages))
            c, s = stages[name].shape[1], round(probe_size / stages[name].shape[-1])
            self.names = [name]
            self.up = nn.ConvTranspose2d(c, c, 2, stride=2)
            channels, self.strides = [c, c, c], [max(1, s // 2), s, s * 2]
        else:
            strides = sorted(by_stride)[-MAX_LEVELS:]
            self.names = [by_stride[s] for s in strides]
            channels, self.strides = [stages[n].shape[1] for n in self.names], strides
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        stages = self.body.forward_stages(x)
        if self.simple:
            top = stages[self.names[0]]
            maps = [self.up(top), top, nn.functional.max_pool2d(top, 2, ceil_mode=True)]
        else:
            maps = [stages[n] for n in self.names]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))

    def anchor_sizes(self) -> tuple[tuple[int, ...], ...]:
        """8x each level's stride (the FPN paper's 32 px at stride 4), the pooled level's too."""
        strides = [*self.strides, self.strides[-1] * 2]
        return tuple((8 * s,) for s in strides)


def build_model(backbone: nn.Module, n_classes: int, p: dict) -> FasterRCNN:
    # torchvision's transform draws a training size from min_size per batch and tests at the last.
    sizes = tuple(int(s) for s in p["min_size"])
    pyramid = StagePyramid(copy.deepcopy(backbone), sizes[-1], int(p["fpn_channels"]))
    anchor_sizes = pyramid.anchor_sizes()
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    dim = int(p["box_head_dim"])
    # Mask R-CNN: the box model plus detectron2's default mask head (4 convs of 256, 14x14 RoIAlign).
    extra = {"mask_predictor": MaskRCNNPredictor(256, 256, n_classes + 1)} if p.get("mask") else {}
    detector = MaskRCNN if p.get("mask") else FasterRCNN
    return detector(
        pyramid, rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(pyramid.out_channels * 7 * 7, dim), box_predictor=FastRCNNPredictor(dim, n_classes + 1),
        min_size=sizes[:-1] or sizes, max_size=int(p["max_size"]), image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        box_batch_size_per_image=int(p["roi_batch"]), rpn_batch_size_per_image=int(p["rpn_batch"]),
        rpn_pre_nms_top_n_train=2 * int(p["proposals_train"]), rpn_post_nms_top_n_train=int(p["proposals_train"]),
        rpn_pre_nms_top_n_test=2 * int(p["proposals_test"]), rpn_post_nms_top_n_test=int(p["proposals_test"]),
        box_detections_per_img=100, **extra,
    )


def _load(record: dict) -> torch.Tensor:
    with Image.open(record["file_name"]) as im:
        return TF.to_dtype(TF.to_image(im.convert("RGB")), torch.float32, scale=True)


def decode_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or uncompressed RLE) as a uint8 [H, W] mask (pycocotools)."""
    from pycocotools import mask as mask_util

    if isinstance(segmentation, list):  # polygons
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation, counts=segmentation["counts"].encode() if isinstance(segmentation["counts"], str)
                   else segmentation["counts"])
    return mask_util.decode(rle)


def _target(record: dict, flip: bool, width: int, masks: bool = False) -> dict:
    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    if flip:
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    target = {"boxes": boxes, "labels": torch.tensor([a["category_id"] + 1 for a in anns], dtype=torch.int64)}
    if masks:
        m = np.stack([decode_mask(a["segmentation"], record["height"], record["width"]) for a in anns]) if anns \
            else np.zeros((0, record["height"], record["width"]), dtype=np.uint8)
        target["masks"] = torch.from_numpy(m[..., ::-1].copy() if flip else m)
    return target


def lr_at(step: int, p: dict) -> float:
    """detectron2's WarmupMultiStepLR: linear warmup from lr x 0.001, then x0.1 at each step."""
    lr = float(p["lr"]) * 0.1 ** sum(step >= int(s) for s in p["steps"])
    warmup = int(p["warmup_iters"])
    if step < warmup:
        alpha = step / warmup
        lr *= 0.001 * (1 - alpha) + alpha
    return lr


def train_and_predict(backbone: nn.Module, train: list[dict], test: list[dict], n_classes: int, p: dict,
                      device: torch.device, seed: int, label: str, out_dir: Path | None = None,
                      checkpoint_every: int | None = None) -> list[dict]:
    """Fine-tune a Faster R-CNN (backbone included, BN in train mode as in MoCo's protocol) for
    ``max_iter`` iterations and return its predictions on ``test``.

    With ``out_dir``, the model, optimizer, data order and RNG states are saved there atomically
    every ``checkpoint_every`` iterations (a quarter of the schedule by default) and a rerun
    resumes from the last one, ending where an uninterrupted run ends (a requeued job loses at
    most that much work)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(backbone, n_classes, p).to(device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=float(p["lr"]), momentum=float(p["momentum"]), weight_decay=float(p["weight_decay"]))
    bs, iters = int(p["batch_size"]), int(p["max_iter"])
    train = [r for r in train if r["annotations"]] or train  # detectron2 drops empty images in training
    order: list[int] = []
    start = 0
    every = max(1, checkpoint_every or iters // 4)
    ckpt = Path(out_dir) / "last.pt" if out_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = checkpoint.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        order, start = state["order"].tolist(), int(state["iteration"])
    model.train()
    bar = progress(total=iters, initial=start, desc=f"detection {label}", unit="iter")
    for it in range(start, iters):
        if len(order) < bs:
            order += rng.permutation(len(train)).tolist()
        batch, order = [train[i] for i in order[:bs]], order[bs:]
        images, targets = [], []
        for r in batch:
            img = _load(r)
            flip = bool(p["flip"]) and rng.random() < 0.5
            if flip:
                img = img.flip(-1)
            images.append(img.to(device))
            targets.append({k: v.to(device) for k, v in _target(r, flip, img.shape[-1], bool(p.get("mask"))).items()})
        for g in opt.param_groups:
            g["lr"] = lr_at(it, p)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"detection ({label}): loss is {float(loss)} at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # a line per 30 s in batch logs, not per step
        if ckpt is not None and (it + 1) % every == 0 and it + 1 < iters:
            checkpoint.save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it + 1,
                                    "order": torch.tensor(order, dtype=torch.int64),
                                    "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()},
                                   ckpt)
    bar.close()
    model.eval()
    predictions = []
    with torch.no_grad():
        for i in range(0, len(test), bs):
            chunk = test[i:i + bs]
            outs = model([_load(r).to(device) for r in chunk])
            for r, o in zip(chunk, outs):
                pred = {"image_id": r["image_id"], "boxes": o["boxes"].cpu().numpy(),
                        "scores": o["scores"].cpu().numpy(), "labels": (o["labels"] - 1).cpu().numpy()}
                if "masks" in o:  # soft masks pasted into the image: kept above one half, as detectron2
                    pred["masks"] = (o["masks"][:, 0] > 0.5).cpu().numpy()
                predictions.append(pred)
    return predictions
