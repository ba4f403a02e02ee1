"""The embedded suite's detection scenes: several glyphs per image with their boxes, written
once in both real layouts (Pascal VOC and COCO), so the readers that serve VOC07+12 and COCO
2017 serve the embedded data too and are tested on every run.

    <data home>/glyphs-scenes-v1-64px-t600-v200-o4/
        VOCdevkit/VOC2007/JPEGImages/<id>.jpg, Annotations/<id>.xml,
                         ImageSets/Main/{trainval,test}.txt
        coco/annotations/instances_{train,val}2017.json, coco/{train,val}2017/<id>.jpg
        (COCO annotations with each glyph's visible ink as an RLE mask: box and mask AP)

Train scenes use the classification split's training fonts and val scenes its held-out fonts,
as the classification splits do. Generation is deterministic (a fixed seed per split) and
atomic (``GeneratedSuite``), with a manifest of every file's sha256.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from harness.data.generated import GeneratedSuite, positive_int, sha256
from harness.data.glyphs import CLASSES, GENERATOR_SEED, TRAIN_FONTS, VAL_FONTS, GlyphRenderer, library_versions

SCENES_VERSION = 2  # 2: COCO annotations carry each glyph's visible ink as an RLE mask
# (VOC image set, COCO split) of each generated split: VOC07 trainval -> test, COCO train2017 -> val2017.
SPLIT_NAMES = {"train": ("trainval", "train2017"), "val": ("test", "val2017")}


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    """JPEG at quality 95, as both real datasets ship JPEGs (deterministic for one libjpeg)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def voc_xml(file_name: str, size: int, objects: list[tuple[int, tuple[int, int, int, int]]]) -> bytes:
    """A VOC annotation. VOC boxes are 1-based inclusive pixel indices; ours are 0-based
    [x0, x1) half-open, so xmin = x0 + 1 and xmax = x1."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = file_name
    sz = ET.SubElement(root, "size")
    for tag, v in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(v)
    for label, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASSES[label]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


class GlyphScenes(GeneratedSuite):
    """The detection data of the ``glyphs`` suite (not a suite of its own: ``GlyphsSuite``
    provides it). ``image_size`` is the scene side; glyphs take 20-45 % of it, so at 64 px a
    glyph (13-29 px) is about as large as in the 32-px classification images (18-30 px) the
    backbones learn from."""

    name = "glyphs-scenes"
    GENERATOR_VERSION = SCENES_VERSION
    SPLITS = ("VOCdevkit", "coco")
    FILE_PATTERN = "*"

    def __init__(self, root: str | Path | None = None, image_size: int = 64, train_images: int = 600,
                 val_images: int = 200, max_objects: int = 4):
        super().__init__(root=root, image_size=image_size)
        self.counts = {"train": positive_int(self.name, "train_images", train_images),
                       "val": positive_int(self.name, "val_images", val_images)}
        self.max_objects = positive_int(self.name, "max_objects", max_objects)

    @property
    def folder_name(self) -> str:
        return (f"glyphs-scenes-v{SCENES_VERSION}-{self.image_size}px-t{self.counts['train']}"
                f"-v{self.counts['val']}-o{self.max_objects}")

    def params(self) -> dict:
        return {"image_size": self.image_size, "images": dict(self.counts), "max_objects": self.max_objects,
                "seed": GENERATOR_SEED, "object_size": [0.2, 0.45], "masks": "rle",
                "fonts": {"train": list(TRAIN_FONTS), "val": list(VAL_FONTS)}}

    @property
    def voc_root(self) -> Path:
        """The ``VOCdevkit`` folder (holding ``VOC2007``)."""
        return self.prepare() / "VOCdevkit"

    @property
    def coco_root(self) -> Path:
        """The COCO root (holding ``annotations/`` and the image folders)."""
        return self.prepare() / "coco"

    def generate(self, out_dir: Path) -> dict:
        renderer = GlyphRenderer()
        fonts = {"train": TRAIN_FONTS, "val": VAL_FONTS}
        voc = out_dir / "VOCdevkit" / "VOC2007"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (voc / sub).mkdir(parents=True, exist_ok=True)
        blobs: dict[str, bytes] = {}
        categories = [{"id": i + 1, "name": name, "supercategory": "glyph"} for i, name in enumerate(CLASSES)]
        next_id = 1
        for s_i, split in enumerate(("train", "val")):
            image_set, coco_split = SPLIT_NAMES[split]
            rng = np.random.default_rng([GENERATOR_SEED, 100 + s_i])  # 100+: apart from the classification splits' streams
            ids, images, annotations = [], [], []
            for _ in range(self.counts[split]):
                n = int(rng.integers(1, self.max_objects + 1))
                rgb, objects, masks = renderer.scene(rng, fonts[split], self.image_size, n, masks=True)
                image_id, stem = next_id, f"{next_id:06d}"
                next_id += 1
                data = jpeg_bytes(rgb)
                blobs[f"VOCdevkit/VOC2007/JPEGImages/{stem}.jpg"] = data
                blobs[f"VOCdevkit/VOC2007/Annotations/{stem}.xml"] = voc_xml(f"{stem}.jpg", self.image_size, objects)
                blobs[f"coco/{coco_split}/{stem}.jpg"] = data
                ids.append(stem)
                images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": self.image_size, "height": self.image_size})
                for (label, (x0, y0, x1, y1)), mask in zip(objects, masks):
                    # COCO boxes are [x, y, width, height] in continuous pixel coordinates; the
                    # mask is COCO's compressed RLE (pycocotools), its area the mask's pixels.
                    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "iscrowd": 0,
                                        "segmentation": {"size": [int(v) for v in rle["size"]],
                                                         "counts": rle["counts"].decode("ascii")}})
            blobs[f"VOCdevkit/VOC2007/ImageSets/Main/{image_set}.txt"] = ("\n".join(ids) + "\n").encode()
            coco = {"info": {"description": f"glyphs detection scenes ({split})", "version": str(SCENES_VERSION)},
                    "images": images, "annotations": annotations, "categories": categories}
            blobs[f"coco/annotations/instances_{coco_split}.json"] = (json.dumps(coco, indent=None) + "\n").encode()
        for rel, data in blobs.items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        records = {rel: {"sha256": sha256(data)} for rel, data in blobs.items()}
        return self.manifest_of(records, blobs, {k: {"images": v} for k, v in self.counts.items()}, library_versions())
