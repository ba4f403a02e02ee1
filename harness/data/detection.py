"""Readers for the two real detection layouts, Pascal VOC and COCO, into one record format.

A record is detectron2's dataset dict (so the same list registers in its ``DatasetCatalog`` and
feeds the torchvision backend): ``file_name``, ``image_id``, ``height``, ``width`` and
``annotations``, each ``{"bbox": [x0, y0, x1, y1], "bbox_mode": 0 (XYXY_ABS),
"category_id": 0-based class index}`` and, from COCO, its ``segmentation`` (polygons or RLE). Boxes are in continuous pixel coordinates
(VOC's 1-based inclusive corners become ``xmin - 1, ymin - 1, xmax, ymax``, as detectron2 does).

Layouts (the ones users download):

    VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<set>.txt}
    VOCdevkit/VOC2012/... (the same)
    coco/annotations/instances_{train,val}2017.json, coco/{train,val}2017/<file_name>

A missing or malformed root raises one ``UsageError`` line naming what is wrong and the
layout expected, before any training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from harness.errors import UsageError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_LAYOUT = "expected VOCdevkit/VOC<year>/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<set>.txt}"
COCO_LAYOUT = "expected <root>/annotations/instances_<split>.json and <root>/<split>/<file_name>"


@dataclass(frozen=True)
class DetectionSplits:
    """Where a protocol's detection data is: its format, root, training sets, test set and
    class names. VOC sets are ``"<year>_<image set>"`` (``2007_trainval``); COCO sets are split
    names (``train2017``)."""

    format: str  # "voc" or "coco"
    root: Path
    train: tuple[str, ...]
    test: str
    classes: tuple[str, ...]

    def read(self, which: str) -> list[dict]:
        sets = self.train if which == "train" else (self.test,)
        records: list[dict] = []
        for name in sets:
            records += (read_voc(self.root, name, self.classes) if self.format == "voc"
                        else read_coco(self.root, name, self.classes))
        return records


def read_voc(devkit: str | Path, image_set: str, classes: tuple[str, ...] = VOC_CLASSES) -> list[dict]:
    """The records of ``<year>_<set>`` (e.g. ``2007_test``) under a ``VOCdevkit`` folder.
    Objects marked difficult are kept with ``difficult: 1`` (VOC07 AP ignores them)."""
    devkit = Path(devkit)
    year, _, name = image_set.partition("_")
    base = devkit / f"VOC{year}"
    ids_file = base / "ImageSets" / "Main" / f"{name}.txt"
    if not ids_file.is_file():
        raise UsageError(f"VOC: {ids_file} not found; {VOC_LAYOUT}")
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for file_id in ids_file.read_text().split():
        xml = base / "Annotations" / f"{file_id}.xml"
        image = base / "JPEGImages" / f"{file_id}.jpg"
        if not xml.is_file() or not image.is_file():
            raise UsageError(f"VOC: {image_set} lists {file_id} but {xml if not xml.is_file() else image} is missing; {VOC_LAYOUT}")
        try:
            tree = ET.parse(xml).getroot()
            size = tree.find("size")
            width, height = int(size.findtext("width")), int(size.findtext("height"))
            annotations = []
            for obj in tree.iter("object"):
                cls = obj.findtext("name").strip()
                if cls not in index:
                    raise UsageError(f"VOC: {xml} has an object of class {cls!r}, not one of the {len(classes)} classes "
                                     f"({', '.join(classes[:5])}, ...)")
                bb = obj.find("bndbox")
                x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
                annotations.append({"bbox": [x0 - 1.0, y0 - 1.0, x1, y1], "bbox_mode": 0, "category_id": index[cls],
                                    "difficult": int(obj.findtext("difficult") or 0)})
        except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
            raise UsageError(f"VOC: {xml} is malformed ({type(e).__name__}: {e}); expected <size> and <object> "
                             "entries with <name> and <bndbox>") from None
        records.append({"file_name": str(image), "image_id": f"{year}_{file_id}", "height": height, "width": width,
                        "annotations": annotations})
    return records


def read_coco(root: str | Path, split: str, classes: tuple[str, ...] | None = None) -> list[dict]:
    """The records of ``split`` (e.g. ``val2017``) under a COCO root, read with pycocotools.
    Category ids are mapped to 0-based indices in the order of the file's categories (or of
    ``classes`` by name when given); crowd boxes are kept with ``iscrowd: 1``."""
    from pycocotools.coco import COCO

    root = Path(root)
    ann = root / "annotations" / f"instances_{split}.json"
    images = root / split
    if not ann.is_file():
        raise UsageError(f"COCO: {ann} not found; {COCO_LAYOUT}")
    if not images.is_dir():
        raise UsageError(f"COCO: image folder {images} not found; {COCO_LAYOUT}")
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            api = COCO(str(ann))
        cats = api.loadCats(sorted(api.getCatIds()))
    except Exception as e:  # json errors, missing keys: whatever the file's fault
        raise UsageError(f"COCO: {ann} is malformed ({type(e).__name__}: {e}); expected COCO instances JSON with "
                         "images, annotations and categories") from None
    names = [c["name"] for c in cats]
    if classes is not None and sorted(names) != sorted(classes):
        raise UsageError(f"COCO: {ann} has categories {names[:5]}..., not the {len(classes)} expected ({list(classes)[:5]}...)")
    order = list(classes) if classes is not None else names
    to_index = {c["id"]: order.index(c["name"]) for c in cats}
    records = []
    for img in api.loadImgs(sorted(api.getImgIds())):
        annotations = []
        for a in api.loadAnns(api.getAnnIds(imgIds=img["id"])):
            x, y, w, h = a["bbox"]
            if w <= 0 or h <= 0:
                continue  # degenerate boxes (a few in COCO), dropped as detectron2 does
            if a["category_id"] not in to_index:
                raise UsageError(f"COCO: {ann} annotation {a['id']} has unknown category_id {a['category_id']}")
            ann = {"bbox": [x, y, x + w, y + h], "bbox_mode": 0, "category_id": to_index[a["category_id"]],
                   "iscrowd": int(a.get("iscrowd", 0))}
            if a.get("segmentation"):  # polygons (COCO) or RLE (crowds, the embedded scenes)
                ann["segmentation"] = a["segmentation"]
            annotations.append(ann)
        records.append({"file_name": str(images / img["file_name"]), "image_id": img["id"], "height": img["height"],
                        "width": img["width"], "annotations": annotations})
    return records


def user_splits(dataset: str, root: str | Path) -> DetectionSplits:
    """The real datasets at a root the user gives (``eval.detection.data_root``), checked now:
    ``voc07+12`` reads ``<root>/VOC2007`` and ``<root>/VOC2012`` (trainval of both -> VOC2007
    test, MoCo's protocol); ``coco2017`` reads train2017 -> val2017 with COCO's own categories."""
    root = Path(root).expanduser()
    if dataset == "voc07+12":
        for year, sets in (("2007", ("trainval", "test")), ("2012", ("trainval",))):
            for name in sets:
                f = root / f"VOC{year}" / "ImageSets" / "Main" / f"{name}.txt"
                if not f.is_file():
                    raise UsageError(f"eval.detection.data_root={root}: {f} not found; voc07+12 expects a VOCdevkit "
                                     f"folder with VOC2007 (trainval, test) and VOC2012 (trainval); {VOC_LAYOUT}")
        return DetectionSplits("voc", root, ("2007_trainval", "2012_trainval"), "2007_test", VOC_CLASSES)
    if dataset == "coco2017":
        for split in ("train2017", "val2017"):
            ann = root / "annotations" / f"instances_{split}.json"
            if not ann.is_file() or not (root / split).is_dir():
                raise UsageError(f"eval.detection.data_root={root}: {ann if not ann.is_file() else root / split} "
                                 f"not found; {COCO_LAYOUT}")
        return DetectionSplits("coco", root, ("train2017",), "val2017", coco_categories(root / "annotations" / "instances_val2017.json"))
    raise UsageError(f"detection dataset {dataset!r}: expected voc07+12 or coco2017")


def coco_categories(path: Path) -> tuple[str, ...]:
    """Category names in id order (COCO's 80 for the real files)."""
    import json

    try:
        cats = json.loads(Path(path).read_text())["categories"]
        return tuple(c["name"] for c in sorted(cats, key=lambda c: c["id"]))
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"COCO: {path} is malformed ({type(e).__name__}: {e}); expected COCO instances JSON with "
                         "images, annotations and categories") from None
