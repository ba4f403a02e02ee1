"""Detection transfer (``--eval detection``): fine-tune a detector initialised from the pretrained
backbone, score box AP on the protocol's test set.

Protocols are presets (``eval.detection.preset``), each named in every result:

- ``voc_c4`` (default): MoCo's VOC protocol (facebookresearch/moco ``detection/``): Faster
  R-CNN R50-C4, VOC07+12 trainval -> VOC07 test, 24k iterations;
- ``coco_c4_1x`` / ``coco_c4_2x``: MoCo's COCO configs (R50-C4, 90k / 180k iterations);
- ``coco_fpn_1x``: R50-FPN, 90k iterations.

Two backends (``eval.detection.backend``): ``detectron2`` (the protocol as published; an
optional install, ``make detectron2``) and ``torchvision`` (no install; an FPN Faster R-CNN
over any harness backbone). Both are scored by ``scoring`` (pycocotools' COCOeval and VOC07's
11-point AP50). ``eval.detection.trials`` repeats the fine-tuning with other seeds (MoCo
reports the mean of 5) and logs the mean and standard deviation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from harness.config import P, each, integer, number, one_of
from harness.data.base import DETECTION
from harness.errors import UsageError
from harness.metrics import Metric
from harness.seeding import derive_seed
from evals.base import Evaluator

MOCO = "facebookresearch/moco detection/configs (He et al. 2020, MoCo, Sec. 4.2)"
D2 = "detectron2 configs/Base-RCNN-C4.yaml / Base-RCNN-FPN.yaml and config/defaults.py"
BACKENDS = ("detectron2", "torchvision")
DATASETS = ("voc07+12", "coco2017")


def ap(name: str, description: str) -> Metric:
    return Metric(name, unit="AP", description=description)


def _common(dataset: str, head: str, max_iter: int, steps: list[int], min_train: list[int], min_test: int,
            source: str, mask: bool) -> dict:
    return {
        "mask": P(mask, f"{source}: {'Mask R-CNN, box and mask AP' if mask else 'Faster R-CNN, box AP'}"),
        "backend": P("detectron2", f"{MOCO}: detectron2"),
        "dataset": P(dataset, source),
        "head": P(head, source),
        "max_iter": P(max_iter, source),
        "steps": P(steps, source),
        "batch_size": P(16, f"{MOCO}: IMS_PER_BATCH 16"),
        "lr": P(0.02, f"{MOCO}: BASE_LR 0.02"),
        "warmup_iters": P(100, f"{MOCO}: WARMUP_ITERS 100"),
        "momentum": P(0.9, D2),
        "weight_decay": P(1e-4, f"{D2}: WEIGHT_DECAY 1e-4"),
        "min_size": P(min_train + [min_test], f"{source}: MIN_SIZE_TRAIN (a random one per image), MIN_SIZE_TEST last"),
        "max_size": P(1333, f"{D2}: MAX_SIZE 1333"),
        "flip": P(True, f"{D2}: RandomFlip in training"),
        "roi_batch": P(512, f"{D2}: ROI_HEADS.BATCH_SIZE_PER_IMAGE 512"),
        "box_head_dim": P(1024, f"{D2}: ROI_BOX_HEAD.FC_DIM 1024"),
        "fpn_channels": P(256, f"{D2}: FPN.OUT_CHANNELS 256 (heads with an FPN)"),
        "rpn_batch": P(256, f"{D2}: RPN.BATCH_SIZE_PER_IMAGE 256"),
        "proposals_train": P(2000, f"{D2}: RPN.POST_NMS_TOPK_TRAIN"),
        "proposals_test": P(1000, f"{D2}: RPN.POST_NMS_TOPK_TEST"),
        "trials": P(5, f"{MOCO}: VOC numbers are the mean of 5 trials (Table 2 note)"),
        "data_root": P("", "harness: a VOCdevkit folder (voc07+12) or a COCO root (coco2017); empty: the suite's own scenes"),
        "precise_bn": P(True, f"{MOCO} Base-RCNN-C4-BN.yaml: TEST.PRECISE_BN on (BN statistics re-estimated after training; detectron2 backend)"),
    }


COCO_MIN = [640, 672, 704, 736, 768, 800]


class Detection(Evaluator):
    name = "detection"
    protocol = "detection transfer"
    description = "fine-tune Faster R-CNN from the pretrained backbone; box AP / AP50 / AP75 (MoCo's VOC and COCO protocols)"
    source = "He et al. 2020 (MoCo), Sec. 4.2; facebookresearch/moco detection/"
    default_preset = "voc_c4"
    needs = (DETECTION,)
    metrics = (
        ap("AP50", "box AP at IoU 0.5 (COCOeval), mean over trials"),
        ap("AP", "box AP at IoU .50:.95 (COCOeval), mean over trials"),
        ap("AP75", "box AP at IoU 0.75 (COCOeval), mean over trials"),
        ap("voc07_AP50", "VOC2007 11-point AP at IoU 0.5, mean over trials"),
        ap("mask_AP", "mask AP at IoU .50:.95 (COCOeval segm; presets with masks), mean over trials"),
        ap("mask_AP50", "mask AP at IoU 0.5, mean over trials"),
        ap("mask_AP75", "mask AP at IoU 0.75, mean over trials"),
    )
    headline = "AP50"
    variant_keys = ("backend",)  # results say which backend made them; tables never mix the two
    presets = {
        "voc_c4": _common("voc07+12", "c4", 24000, [18000, 22000], list(range(480, 801, 32)), 800,
                          f"{MOCO} pascal_voc_R_50_C4_24k_moco.yaml", mask=False),
        "coco_c4_1x": _common("coco2017", "c4", 90000, [60000, 80000], COCO_MIN, 800, f"{MOCO} coco_R_50_C4_1x_moco.yaml",
                              mask=True),
        "coco_c4_2x": _common("coco2017", "c4", 180000, [120000, 160000], COCO_MIN, 800,
                              f"{MOCO} coco_R_50_C4_2x_moco.yaml", mask=True),
        "coco_fpn_1x": _common("coco2017", "fpn", 90000, [60000, 80000], COCO_MIN, 800,
                               "detectron2 configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", mask=True),
    }
    rules = {
        "mask": one_of(True, False), "backend": one_of(*BACKENDS), "dataset": one_of(*DATASETS), "head": one_of("c4", "fpn"),
        "max_iter": integer(1), "steps": each(integer(0)), "batch_size": integer(1), "lr": number(0, lo_open=True),
        "warmup_iters": integer(0), "momentum": number(0, 1), "weight_decay": number(0), "min_size": each(integer(8)),
        "max_size": integer(8), "roi_batch": integer(1), "box_head_dim": integer(1), "fpn_channels": integer(1), "rpn_batch": integer(1), "proposals_train": integer(1),
        "proposals_test": integer(1), "trials": integer(1), "precise_bn": one_of(True, False),
    }

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cfg.section("eval.detection")
        if p["data_root"]:
            from harness.data.detection import user_splits

            user_splits(p["dataset"], p["data_root"])  # a missing or wrong layout fails now, before pretraining
        if p["mask"] and p["dataset"] != "coco2017":
            raise UsageError(f"eval.detection.mask=true needs instance masks, which only coco2017 has (VOC's "
                             f"detection annotations are boxes): set eval.detection.mask=false or dataset=coco2017")
        if p["backend"] == "torchvision" and p["head"] != "fpn":
            raise UsageError(f"eval.detection.head={p['head']} needs backend=detectron2 (the torchvision backend "
                             "builds an FPN over any backbone); set eval.detection.head=fpn or backend=detectron2")
        if p["backend"] == "detectron2":
            from evals.detection.detectron2_backend import require_detectron2

            require_detectron2()

    def run(self, method, suite, device, out_dir):
        p = self.params
        if p["data_root"]:  # real VOC / COCO, whatever the pretraining suite (ImageNet -> VOC transfer)
            from harness.data.detection import user_splits

            splits = user_splits(p["dataset"], p["data_root"])
        else:
            splits = suite.detection_splits(p["dataset"])
        train, test = splits.read("train"), splits.read("test")
        if not train or not test:
            raise UsageError(f"detection: {p['dataset']} under {splits.root} has no {'training' if not train else 'test'} images")
        seed = int(self.cfg["seed"])
        rows = []
        for t in range(int(p["trials"])):
            # Each trial keeps its checkpoints and, once scored, its result in its own folder:
            # a requeued job skips finished trials and resumes the one it was in.
            trial_dir = Path(out_dir) / f"trial{t}"
            done = trial_dir / "scores.json"
            if done.exists():
                rows.append(json.loads(done.read_text()))
                continue
            trial_seed = derive_seed(seed, 40, t)
            label = f"trial {t + 1}/{p['trials']}"
            if p["backend"] == "torchvision":
                from evals.detection.torchvision_backend import train_and_predict

                predictions = train_and_predict(method.backbone, train, test, len(splits.classes), p, device, trial_seed, label,
                                                out_dir=trial_dir)
            else:
                from evals.detection.detectron2_backend import train_and_predict

                predictions = train_and_predict(method, splits, p, device, trial_seed, trial_dir, label)
            rows.append(score(test, predictions, splits.classes, masks=bool(p["mask"])))
            trial_dir.mkdir(parents=True, exist_ok=True)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows[-1]) + "\n")
            tmp.replace(done)
        out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        if len(rows) > 1:
            out.update({f"{k}_std": float(np.std([r[k] for r in rows], ddof=1)) for k in rows[0]})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "detection_trials.json").write_text(json.dumps(
            {"backend": p["backend"], "preset": p["preset"], "dataset": p["dataset"], "trials": rows}, indent=1) + "\n")
        return out


def score(records: list[dict], predictions: list[dict], classes: tuple[str, ...], masks: bool = False) -> dict[str, float]:
    from evals.detection.scoring import coco_ap, voc07_ap50

    out = {**coco_ap(records, predictions, classes), "voc07_AP50": voc07_ap50(records, predictions, len(classes))}
    if masks:
        out.update(coco_ap(records, predictions, classes, iou_type="segm"))
    return out
