"""The detectron2 backend: the published protocols as detectron2 configs (``configs/``, the
architecture only; schedule and data come from the harness preset), the harness backbone's
weights converted to detectron2's names (``convert``), detectron2's own trainer loop and hooks,
and predictions scored by ``scoring`` like the torchvision backend's.

Backbones: the standard ResNet v1 depths (50/101/152 at any width, 18/34 at width 1) are built
by detectron2's ``build_resnet_backbone``; other harness ResNets (``resnet_small``, the CPU
backbone of the embedded suite, with its 3x3 stride-1 stem) by ``build_harness_resnet_backbone``
below, from detectron2's own blocks. A training run checkpoints in its folder and resumes from
it (detectron2's checkpointer), so a requeued job continues.

detectron2 is optional and not on PyPI: ``make detectron2`` builds it (``--no-build-isolation``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from harness.errors import UsageError
from harness.progress import progress

CONFIGS = Path(__file__).parent / "configs"
INSTALL = ("make detectron2  (builds it into the venv from DETECTRON2_SRC: a source folder, an archive, "
           "or git+https://github.com/facebookresearch/detectron2.git; always --no-build-isolation)")
STANDARD_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


def require_detectron2() -> None:
    """A one-line error with the install command where detectron2 is not importable."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import _C  # noqa: F401  (the compiled ops: a broken build fails here)
    except ImportError as e:
        raise UsageError(f"eval.detection.backend=detectron2 needs detectron2, which is not installed ({e}); "
                         f"install it with: {INSTALL}; or set eval.detection.backend=torchvision") from None


_REGISTERED = False


def register_components() -> None:
    """MoCo's box head with a BN after res5, and the builder of non-standard harness ResNets,
    in detectron2's registries (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
    from detectron2.modeling.roi_heads import Res5ROIHeads

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """facebookresearch/moco detection/train_net.py: a norm after res5 in the box head."""

        @classmethod
        def _build_res5_block(cls, cfg):
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels

    class SmallInputStem(CNNBlockBase):
        """The harness's 32-px stem: a 3x3 stride-1 convolution, norm, ReLU (no max-pool)."""

        def __init__(self, in_channels: int, out_channels: int, norm: str):
            super().__init__(in_channels, out_channels, 1)
            self.conv1 = Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False,
                                norm=get_norm(norm, out_channels))

        def forward(self, x):
            return torch.relu_(self.conv1(x))

    def harness_resnet(cfg, input_shape):
        h = cfg.MODEL.HARNESS
        norm = cfg.MODEL.RESNETS.NORM
        stem_out = int(round(h.BASE * h.WIDTH))
        stem = (SmallInputStem(input_shape.channels, stem_out, norm) if h.SMALL_INPUT
                else BasicStem(input_shape.channels, stem_out, norm))
        block = BottleneckBlock if h.BLOCK == "bottleneck" else BasicBlock
        expansion = 4 if block is BottleneckBlock else 1
        stages, in_ch = [], stem_out
        for i, n in enumerate(h.LAYERS):
            planes = int(round(h.BASE * h.WIDTH * 2 ** i))
            kw = dict(bottleneck_channels=planes, stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1) if expansion == 4 else {}
            stages.append(ResNet.make_stage(block, n, stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                                            in_channels=in_ch, out_channels=planes * expansion, norm=norm, **kw))
            in_ch = planes * expansion
        return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)

    @BACKBONE_REGISTRY.register()
    def build_harness_resnet_backbone(cfg, input_shape: ShapeSpec):
        return harness_resnet(cfg, input_shape)

    @BACKBONE_REGISTRY.register()
    def build_harness_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
        bottom = harness_resnet(cfg, input_shape)
        top = LastLevelMaxPool()
        # The pooled level comes from the deepest FPN output, whatever its stride names it (p3 at stride 8).
        deepest = bottom.output_shape()[cfg.MODEL.FPN.IN_FEATURES[-1]].stride
        top.in_feature = f"p{int(math.log2(deepest))}"
        return FPN(bottom_up=bottom, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
                   norm=cfg.MODEL.FPN.NORM, top_block=top, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
    _REGISTERED = True


def backbone_layout(backbone) -> dict:
    """Block type, blocks per stage, base width, width multiplier and stem of a harness ResNet v1."""
    from torchvision.models.resnet import Bottleneck

    from evals.detection.convert import convert_state_dict

    convert_state_dict(backbone)  # refuses anything but a harness ResNet v1, in one line
    stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    bottleneck = isinstance(stages[0][0], Bottleneck)
    expansion = 4 if bottleneck else 1
    stem_conv = backbone.stem[0]
    return {"block": "bottleneck" if bottleneck else "basic", "layers": [len(s) for s in stages],
            "stem": stem_conv.out_channels, "res2": backbone.block_channels(1), "expansion": expansion,
            "small_input": stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)}


def build_cfg(backbone, n_classes: int, p: dict, device: torch.device, out_dir: Path, seed: int):
    """The detectron2 config of one fine-tuning run: the preset's architecture file, the
    harness backbone's layout, the preset's schedule and sizes."""
    from detectron2.config import CfgNode, get_cfg

    register_components()
    lay = backbone_layout(backbone)
    cfg = get_cfg()
    cfg.MODEL.HARNESS = CfgNode({"BLOCK": lay["block"], "LAYERS": lay["layers"], "BASE": lay["stem"], "WIDTH": 1.0,
                                 "SMALL_INPUT": lay["small_input"]})
    cfg.merge_from_file(str(CONFIGS / ("rcnn_c4_bn.yaml" if p["head"] == "c4" else "rcnn_fpn_bn.yaml")))
    depth = STANDARD_DEPTHS.get(tuple(lay["layers"])) if lay["block"] == "bottleneck" or lay["stem"] == 64 else None
    if lay["small_input"] or depth is None or (depth == 18 and lay["block"] != "basic"):
        if p["head"] == "c4":
            raise UsageError("eval.detection.head=c4 reuses ResNet-50's res5 in the box head: it needs a standard "
                             "bottleneck ResNet (resnet50/101/152); use eval.detection.head=fpn for this backbone")
        cfg.MODEL.BACKBONE.NAME = "build_harness_resnet_fpn_backbone"
    else:
        cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = lay["stem"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = lay["res2"]
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = lay["res2"] // lay["expansion"]
    # SyncBN needs a process group; a single process fine-tunes plain BN (MoCo notes the same).
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if world == 1:
        cfg.MODEL.RESNETS.NORM = "BN"
        if cfg.MODEL.ROI_BOX_HEAD.NORM == "SyncBN":
            cfg.MODEL.ROI_BOX_HEAD.NORM = "BN"
    if lay["small_input"] and p["head"] == "fpn":
        # Stages at strides 1..8 instead of 4..32. As in the torchvision backend, the FPN takes the
        # deepest three (strides 2, 4, 8: detectron2 names their outputs p1..p3, the pooled one p4)
        # and anchors are 8x each level's stride, as the FPN paper's 32 px at stride 4.
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.RPN.IN_FEATURES = ["p1", "p2", "p3", "p4"]
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p1", "p2", "p3"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128]]
    cfg.MODEL.MASK_ON = bool(p["mask"])
    if p["mask"] and p["head"] == "fpn":
        cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4  # mask_rcnn_R_50_FPN_*.yaml (the C4 head has none: Base-RCNN-C4)
    cfg.MODEL.FPN.OUT_CHANNELS = int(p["fpn_channels"])
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = int(p["box_head_dim"])  # the C4 head has no FCs: res5 feeds the predictor
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = n_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = int(p["roi_batch"])
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = int(p["rpn_batch"])
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = int(p["proposals_train"])
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = max(int(p["proposals_train"]), cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN if p["head"] == "fpn" else 0)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = int(p["proposals_test"])
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = max(int(p["proposals_test"]), cfg.MODEL.RPN.PRE_NMS_TOPK_TEST)
    cfg.MODEL.DEVICE = device.type
    sizes = [int(s) for s in p["min_size"]]
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(sizes[:-1] or sizes)
    cfg.INPUT.MIN_SIZE_TEST = sizes[-1]
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = int(p["max_size"])
    cfg.INPUT.RANDOM_FLIP = "horizontal" if p["flip"] else "none"
    cfg.SOLVER.IMS_PER_BATCH = int(p["batch_size"])
    cfg.SOLVER.BASE_LR = float(p["lr"])
    cfg.SOLVER.MAX_ITER = int(p["max_iter"])
    cfg.SOLVER.STEPS = tuple(int(s) for s in p["steps"])
    cfg.SOLVER.WARMUP_ITERS = int(p["warmup_iters"])
    cfg.SOLVER.MOMENTUM = float(p["momentum"])
    cfg.SOLVER.WEIGHT_DECAY = float(p["weight_decay"])
    cfg.SOLVER.CHECKPOINT_PERIOD = max(int(p["max_iter"]) // 4, 1)
    cfg.TEST.PRECISE_BN.ENABLED = bool(p["precise_bn"])
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = int(seed)
    cfg.OUTPUT_DIR = str(out_dir)
    return cfg


def _register_records(name: str, records: list[dict], classes: tuple[str, ...]) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(thing_classes=list(classes))


def train_and_predict(method, splits, p: dict, device: torch.device, seed: int, out_dir: Path,
                      label: str) -> list[dict]:
    """Fine-tune a detectron2 detector from the converted backbone for ``max_iter`` iterations
    (resuming from ``out_dir`` when a checkpoint is there) and return its test predictions."""
    require_detectron2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader, build_detection_train_loader
    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer

    from evals.detection.convert import save_detectron2_weights

    logging.getLogger("detectron2").setLevel(logging.WARNING)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = save_detectron2_weights(method.backbone, out_dir / "backbone_detectron2.pkl")
    cfg = build_cfg(method.backbone, len(splits.classes), p, device, out_dir, seed)
    train_name, test_name = f"harness_{splits.format}_train", f"harness_{splits.format}_test"
    train_records = [dict(r, annotations=[a for a in r["annotations"] if not a.get("iscrowd", 0)]) for r in splits.read("train")]
    test_records = splits.read("test")
    _register_records(train_name, train_records, splits.classes)
    _register_records(test_name, test_records, splits.classes)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train_name,), (test_name,)
    if any(isinstance(a.get("segmentation"), dict) for r in train_records[:50] for a in r["annotations"]):
        cfg.INPUT.MASK_FORMAT = "bitmask"  # RLE masks (the embedded scenes); COCO's polygons keep the default
    cfg.freeze()

    torch.manual_seed(seed)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    checkpointer = DetectionCheckpointer(model, str(out_dir), optimizer=optimizer, trainer=trainer)
    start = checkpointer.resume_or_load(str(weights), resume=True).get("iteration", -1) + 1
    bar = progress(total=cfg.SOLVER.MAX_ITER, initial=start, desc=f"detection {label} (detectron2)", unit="iter")

    class Progress(hooks.HookBase):
        def after_step(self):
            bar.update(1)

    trainer.register_hooks([
        hooks.IterationTimer(), hooks.LRScheduler(optimizer, build_lr_scheduler(cfg, optimizer)),
        hooks.PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=1), Progress(),
        # MoCo's configs re-estimate BN statistics after training (period 0: only at the end).
        *([hooks.PreciseBN(0, model, build_detection_train_loader(cfg), cfg.TEST.PRECISE_BN.NUM_ITER)]
          if cfg.TEST.PRECISE_BN.ENABLED else []),
    ])
    if start < cfg.SOLVER.MAX_ITER:
        trainer.train(start, cfg.SOLVER.MAX_ITER)
    bar.close()
    model.eval()
    predictions = []
    with torch.no_grad():
        for inputs in build_detection_test_loader(cfg, test_name):
            for inp, out in zip(inputs, model(inputs)):
                inst = out["instances"].to("cpu")
                pred = {"image_id": inp["image_id"], "boxes": inst.pred_boxes.tensor.numpy(),
                        "scores": inst.scores.numpy(), "labels": inst.pred_classes.numpy().astype(np.int64)}
                if inst.has("pred_masks"):
                    pred["masks"] = inst.pred_masks.numpy().astype(bool)
                predictions.append(pred)
    return predictions
