"""Detection scores from predictions, the same for both backends: COCO's AP / AP50 / AP75
(pycocotools' COCOeval, the reference implementation) and Pascal VOC07's AP50 (the 11-point
interpolated AP of the VOC2007 devkit, which MoCo's VOC numbers use through detectron2's
PascalVOCDetectionEvaluator).

Predictions are, per image, ``{"image_id", "boxes" [N, 4] xyxy, "scores" [N], "labels" [N]
0-based}``; ground truth is the reader's records (``harness.data.detection``).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np


def to_coco(records: list[dict], classes: tuple[str, ...]) -> tuple[dict, dict]:
    """A COCO ground-truth dict over ``records`` (int image ids by position) and the map from
    each record's image_id to that int."""
    ids = {r["image_id"]: i + 1 for i, r in enumerate(records)}
    images, anns = [], []
    for r in records:
        images.append({"id": ids[r["image_id"]], "width": r["width"], "height": r["height"]})
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            ann = {"id": len(anns) + 1, "image_id": ids[r["image_id"]], "category_id": a["category_id"] + 1,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                   # VOC's difficult objects count as crowd: matches to them are neither TP nor FP.
                   "iscrowd": int(a.get("iscrowd", 0) or a.get("difficult", 0))}
            if "segmentation" in a:
                ann["segmentation"] = a["segmentation"]
            anns.append(ann)
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    return {"images": images, "annotations": anns, "categories": cats}, ids


def coco_ap(records: list[dict], predictions: list[dict], classes: tuple[str, ...], iou_type: str = "bbox") -> dict[str, float]:
    """AP (IoU .50:.95), AP50 and AP75 in %, by pycocotools' COCOeval; ``iou_type="segm"``
    scores the predictions' ``masks`` (bool [N, H, W]) against the records' segmentations and
    names the results mask_AP, mask_AP50, mask_AP75."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, ids = to_coco(records, classes)
    dets = []
    for p in predictions:
        masks = p.get("masks") if iou_type == "segm" else None
        for i, ((x0, y0, x1, y1), s, c) in enumerate(zip(np.asarray(p["boxes"]).tolist(), np.asarray(p["scores"]).tolist(),
                                                          np.asarray(p["labels"]).tolist())):
            det = {"image_id": ids[p["image_id"]], "category_id": int(c) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                   "score": float(s)}
            if masks is not None:
                det["segmentation"] = mask_util.encode(np.asfortranarray(np.asarray(masks[i], dtype=np.uint8)))
            dets.append(det)
    names = ("AP", "AP50", "AP75") if iou_type == "bbox" else ("mask_AP", "mask_AP50", "mask_AP75")
    if not dets:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
        api = COCO()
        api.dataset = gt
        api.createIndex()
        ev = COCOeval(api, api.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats[0..2]: AP@[.5:.95], AP@.5, AP@.75 over all areas, maxDets 100; -1 where no ground truth.
    return {k: max(0.0, float(v)) * 100 for k, v in zip(names, ev.stats[:3])}


def voc07_ap50(records: list[dict], predictions: list[dict], n_classes: int) -> float:
    """Mean over classes of the VOC2007 11-point AP at IoU 0.5, in %.

    Written by hand (about 40 lines) because the only packaged implementations live inside
    detectron2 (optional here) or the MATLAB devkit; the rules are the devkit's: detections
    sorted by score, each matched to the unmatched ground truth of highest IoU >= 0.5,
    difficult objects neither true nor false positives, precision interpolated at recall
    0, 0.1, ..., 1. Boxes use continuous coordinates (no +1 in areas, as detectron2)."""
    by_image = {r["image_id"]: r for r in records}
    aps = []
    for c in range(n_classes):
        gt = {}
        n_pos = 0
        for r in records:
            boxes = [(a["bbox"], bool(a.get("difficult", 0))) for a in r["annotations"] if a["category_id"] == c]
            gt[r["image_id"]] = (np.array([b for b, _ in boxes], dtype=np.float64).reshape(-1, 4),
                                 np.array([d for _, d in boxes], dtype=bool), np.zeros(len(boxes), dtype=bool))
            n_pos += sum(1 for _, d in boxes if not d)
        dets = [(float(s), p["image_id"], np.asarray(b, dtype=np.float64))
                for p in predictions for b, s, l in zip(np.asarray(p["boxes"]), np.asarray(p["scores"]), np.asarray(p["labels"]))
                if int(l) == c and p["image_id"] in by_image]
        dets.sort(key=lambda d: -d[0])
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for i, (_, image_id, box) in enumerate(dets):
            boxes, difficult, used = gt[image_id]
            if len(boxes):
                ix0, iy0 = np.maximum(boxes[:, 0], box[0]), np.maximum(boxes[:, 1], box[1])
                ix1, iy1 = np.minimum(boxes[:, 2], box[2]), np.minimum(boxes[:, 3], box[3])
                inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
                union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
                iou = inter / np.maximum(union, 1e-12)
                j = int(iou.argmax())
                if iou[j] >= 0.5:
                    if difficult[j]:
                        continue
                    if not used[j]:
                        tp[i], used[j] = 1, True
                    else:
                        fp[i] = 1
                    continue
            fp[i] = 1
        if n_pos == 0:
            continue  # a class absent from the test set has no AP (the devkit skips it too)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / n_pos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(0, 1.1, 0.1)])
        aps.append(ap)
    return float(np.mean(aps)) * 100 if aps else 0.0
