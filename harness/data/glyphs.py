"""The embedded default suite: printed digits in the fonts matplotlib ships, on procedural
backgrounds, generated on first use (no download, no network).

Why this design (measured, ``bench/RESULTS.md``; the first embedded suite, ``digits``, failed):
on ``digits`` raw pixels beat every self-supervised method, because its 8x8 digits sat at one
place on crops of seven photographs, so two views of an image shared a background patch that
identified it better than the digit did. Here:

- the class is the shape: a glyph 0-9 covering most of the frame, so random crops keep it;
- every nuisance varies per image and is what standard augmentations change: colour of glyph
  and background, position, scale, rotation, stroke weight;
- the background is a low-frequency gradient between two random colours plus pixel noise:
  nothing in it identifies an image better than its glyph does;
- val is drawn in fonts that train never sees (held-out styles), so it measures generalisation.

The renderer (``GlyphRenderer``) is the generator API the other protocols reuse: one glyph
with its box, a background, a classification image, and a scene of several glyphs with boxes
(detection).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from harness.data.base import CLASSIFICATION, CORRUPTIONS, DETECTION
from harness.data.generated import GeneratedSuite, png_bytes, positive_int, sha256
from harness.errors import UsageError

GENERATOR_VERSION = 1
GENERATOR_SEED = 20261130  # fixed: every run, on every machine, sees the same images
CLASSES = tuple(str(c) for c in range(10))

# The text faces matplotlib ships (symbol, display and size-variant faces left out: they
# lack the digits or draw them alike). Val fonts are held out of train: new styles.
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmtt10.ttf", "cmti10.ttf",
)
VAL_FONTS = (
    "DejaVuSans-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneralItalic.ttf", "cmss10.ttf",
)

SUPERSAMPLE = 3  # drawn at 3x the output side, then downsampled: smooth edges at 32 px


@dataclass(frozen=True)
class Style:
    """The nuisance ranges an image is drawn from (fractions of the image side)."""

    height: tuple[float, float] = (0.55, 0.95)  # glyph height
    rotation: float = 25.0  # degrees, either way
    shift: float = 0.15  # of the side, either way, from the centre
    stroke: tuple[int, int] = (0, 2)  # extra stroke width at the supersampled size
    min_contrast: float = 100.0  # RGB distance between glyph colour and background mean
    noise: float = 6.0  # std of the Gaussian pixel noise, of 255


def _font_path(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


class GlyphRenderer:
    """Draws glyphs, backgrounds, classification images and multi-object scenes; pure
    functions of a NumPy generator, so a seed fixes every byte."""

    def __init__(self, style: Style = Style()):
        self.style = style
        self._fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}

    def font(self, name: str, px: int) -> ImageFont.FreeTypeFont:
        key = (name, px)
        if key not in self._fonts:
            self._fonts[key] = ImageFont.truetype(str(_font_path(name)), px)
        return self._fonts[key]

    def glyph_mask(self, rng: np.random.Generator, label: int, font: str, side: int) -> Image.Image:
        """The glyph of ``label`` as an ``L`` mask on a ``side`` x ``side`` canvas, its ink
        box scaled to a random height, then rotated and shifted."""
        s = self.style
        height = rng.uniform(*s.height) * side
        stroke = int(rng.integers(s.stroke[0], s.stroke[1] + 1))
        angle = rng.uniform(-s.rotation, s.rotation)
        dx, dy = rng.uniform(-s.shift, s.shift, size=2) * side
        big = self.font(font, 2 * side)
        canvas = Image.new("L", (4 * side, 4 * side), 0)
        ImageDraw.Draw(canvas).text((side, side), CLASSES[label], font=big, fill=255, stroke_width=stroke * 2,
                                    stroke_fill=255)
        box = canvas.getbbox()
        if box is None:
            raise RuntimeError(f"font {font} has no glyph for {CLASSES[label]}")
        ink = canvas.crop(box)
        scale = height / ink.height
        w = max(1, int(round(ink.width * scale)))
        h = max(1, int(round(ink.height * scale)))
        ink = ink.resize((w, h), Image.Resampling.LANCZOS).rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        mask = Image.new("L", (side, side), 0)
        mask.paste(ink, (int(round((side - ink.width) / 2 + dx)), int(round((side - ink.height) / 2 + dy))))
        return mask

    def background(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """A linear gradient between two random colours at a random angle, float32 [side, side, 3]."""
        a, b = rng.uniform(0, 255, size=(2, 3))
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
        t = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) / np.sqrt(0.5) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        return (a * (1 - t) + b * t).astype(np.float32)

    def ink_colour(self, rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
        """A random colour at least ``min_contrast`` away from the background's mean."""
        mean = background.reshape(-1, 3).mean(axis=0)
        for _ in range(100):
            c = rng.uniform(0, 255, size=3)
            if np.linalg.norm(c - mean) >= self.style.min_contrast:
                return c
        return np.where(mean > 127, 0.0, 255.0)  # the far corner: always contrasts

    def finish(self, rng: np.random.Generator, rgb: np.ndarray, size: int) -> np.ndarray:
        """Downsample to ``size`` and add pixel noise; uint8."""
        img = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
        out = np.asarray(img, dtype=np.float32) + rng.normal(0, self.style.noise, size=(size, size, 3))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def image(self, rng: np.random.Generator, label: int, font: str, size: int) -> np.ndarray:
        """One classification image: one glyph covering most of the frame."""
        side = size * SUPERSAMPLE
        bg = self.background(rng, side)
        mask = np.asarray(self.glyph_mask(rng, label, font, side), dtype=np.float32)[..., None] / 255.0
        rgb = bg * (1 - mask) + self.ink_colour(rng, bg) * mask
        return self.finish(rng, rgb, size)

    def scene(self, rng: np.random.Generator, fonts: tuple[str, ...], size: int, n_objects: int,
              object_size: tuple[float, float] = (0.2, 0.45), masks: bool = False):
        """An image of ``n_objects`` glyphs at random places and sizes, with (label, box) for
        each, boxes (x0, y0, x1, y1) in output pixels around the ink (detection scenes).
        ``masks=True`` also returns each glyph's visible ink as a bool [size, size] mask
        (instance segmentation), the parts later glyphs cover removed."""
        side = size * SUPERSAMPLE
        rgb = self.background(rng, side)
        objects, placed, inks = [], [], []
        for _ in range(n_objects):
            label = int(rng.integers(len(CLASSES)))
            patch = int(round(rng.uniform(*object_size) * side))
            mask_img = self.glyph_mask(rng, label, fonts[int(rng.integers(len(fonts)))], patch)
            # A place whose square overlaps no earlier glyph's by more than a quarter of the
            # smaller one, so every glyph stays readable and its box is what a detector sees.
            for _attempt in range(30):
                x, y = (int(v) for v in rng.integers(0, side - patch + 1, size=2))
                if all(_overlap((x, y, patch), q) <= 0.25 for q in placed):
                    break
            else:
                continue  # a full scene: fewer objects rather than hidden ones
            placed.append((x, y, patch))
            mask = np.zeros((side, side), dtype=np.float32)
            mask[y:y + patch, x:x + patch] = np.asarray(mask_img, dtype=np.float32) / 255.0
            colour = self.ink_colour(rng, rgb[y:y + patch, x:x + patch])
            rgb = rgb * (1 - mask[..., None]) + colour * mask[..., None]
            ys, xs = np.nonzero(mask > 0.5)
            if len(xs):
                box = tuple(int(v) for v in (xs.min() // SUPERSAMPLE, ys.min() // SUPERSAMPLE,
                                              xs.max() // SUPERSAMPLE + 1, ys.max() // SUPERSAMPLE + 1))
                objects.append((label, box))
                if masks:
                    inks = [ink * (1 - mask) for ink in inks] + [mask]
        image = self.finish(rng, rgb, size)
        if not masks:
            return image, objects
        # Visible ink per output pixel (the mean over its supersampled block), kept above one half.
        visible = [ink.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) > 0.5 for ink in inks]
        return image, objects, visible


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Intersection of two squares (x, y, side) over the smaller one's area."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0) / min(a[2], b[2]) ** 2


def library_versions() -> dict:
    import matplotlib
    import PIL

    return {"numpy": np.__version__, "pillow": PIL.__version__, "matplotlib": matplotlib.__version__,
            "freetype": getattr(ImageFont, "core").freetype2_version}


class GlyphsSuite(GeneratedSuite):
    """Printed digits in matplotlib's fonts on random gradients, generated on first use."""

    name = "glyphs"
    description = ("embedded default: the digits 0-9 printed in the 21 fonts matplotlib ships, each image with its "
                   "own colour, position, scale, rotation, stroke and gradient background; val in 5 held-out fonts "
                   "(10 classes, generated locally, no download)")
    in_memory = True  # ~12,000 images of 3 KB: decoded once per process
    # detection: scenes of several glyphs (harness.data.scenes); corruptions: ImageNet-C's
    # corruptions of the val split, generated on first use (harness.data.corruptions).
    provides = (CLASSIFICATION, DETECTION, CORRUPTIONS)
    GENERATOR_VERSION = GENERATOR_VERSION
    # Methods without a profile for this suite use their `digits` one: the same 32-px, 10-class
    # images and CPU budget; a `glyphs` profile overrides it where this suite needs other values.
    profile_from = "digits"
    profile = {
        "data.image_size": 32,
        "data.eval_resize_ratio": 1.0,  # 32px: a 256/224 resize before the centre crop would cut glyph edges
        # The MoCo probe scaled to a CPU budget, as on `digits` (standardised features, lr 0.1),
        # with fewer epochs: 10,000 training images instead of 2,876.
        "eval.linear.epochs": 4,
        "eval.linear.milestones": [3],
        "eval.linear.lr": 0.1,
        "eval.linear.feature_norm": "batchnorm",
        "eval.linear.crop_scale_min": 0.35,
        "eval.linear.flip": False,  # digits are not mirror-symmetric
        "eval.semi_supervised.epochs": [30, 10],
        "eval.semi_supervised.crop_scale_min": 0.35,
        "eval.semi_supervised.flip": False,
        # Detection on 64-px scenes of 1-4 glyphs (600 train, 200 val), sized so the demo's
        # `--eval all` stays within 5 minutes: the torchvision backend (no install), 80
        # iterations of 4 images, smaller RPN/ROI batches, FPN and box head than the 800-px protocols,
        # one trial, no PreciseBN pass; no flip (glyphs are not mirror-symmetric). bench/detection.py runs longer.
        "eval.detection.backend": "torchvision",
        "eval.detection.head": "fpn",
        "eval.detection.max_iter": 80,
        "eval.detection.steps": [60, 72],
        "eval.detection.warmup_iters": 10,
        "eval.detection.batch_size": 4,
        "eval.detection.min_size": [64],
        "eval.detection.max_size": 64,
        "eval.detection.flip": False,
        "eval.detection.roi_batch": 64,
        "eval.detection.box_head_dim": 256,
        "eval.detection.fpn_channels": 64,
        "eval.detection.rpn_batch": 128,
        "eval.detection.proposals_train": 300,
        "eval.detection.proposals_test": 100,
        "eval.detection.trials": 1,
        # ImageNet-C's 19 corruptions x 5 severities of the first 20 val images per class
        # (200 of 2,000: 19,000 corrupted images, generated once, ~30 s on one core), so
        # `--eval all` stays within the demo's 5 minutes.
        "eval.robustness.images_per_class": 20,
        "eval.detection.precise_bn": False,
    }

    def __init__(self, root: str | Path | None = None, image_size: int = 32, train_per_class: int = 1000,
                 val_per_class: int = 200, **options):
        if options:
            raise UsageError(f"suite 'glyphs' got unknown option(s) {', '.join(sorted(options))}; "
                             "known: root, image_size, train_per_class, val_per_class")
        super().__init__(root=root, image_size=image_size)
        if self.image_size < 16:
            raise UsageError(f"suite 'glyphs' needs data.image_size >= 16, got {self.image_size}")
        self.train_per_class = positive_int("glyphs", "train_per_class", train_per_class)
        self.val_per_class = positive_int("glyphs", "val_per_class", val_per_class)

    def detection_splits(self, dataset: str):
        """The scenes in the layout ``dataset`` names: VOC07 (trainval -> test) for
        ``voc07+12`` (the embedded data has no 2012 part), COCO train2017 -> val2017."""
        from harness.data.detection import DetectionSplits
        from harness.data.scenes import GlyphScenes

        scenes = GlyphScenes(root=self.root, image_size=64)
        if dataset == "voc07+12":
            return DetectionSplits("voc", scenes.voc_root, ("2007_trainval",), "2007_test", CLASSES)
        if dataset == "coco2017":
            return DetectionSplits("coco", scenes.coco_root, ("train2017",), "val2017", CLASSES)
        raise UsageError(f"detection dataset {dataset!r}: expected voc07+12 or coco2017")

    @property
    def folder_name(self) -> str:
        return f"glyphs-v{GENERATOR_VERSION}-{self.image_size}px-t{self.train_per_class}-v{self.val_per_class}"

    def params(self) -> dict:
        s = Style()
        return {"image_size": self.image_size, "train_per_class": self.train_per_class,
                "val_per_class": self.val_per_class, "seed": GENERATOR_SEED, "supersample": SUPERSAMPLE,
                "fonts": {"train": list(TRAIN_FONTS), "val": list(VAL_FONTS)},
                "style": {"height": list(s.height), "rotation": s.rotation, "shift": s.shift,
                          "stroke": list(s.stroke), "min_contrast": s.min_contrast, "noise": s.noise}}

    def generate(self, out_dir: Path) -> dict:
        renderer = GlyphRenderer()
        per_class = {"train": self.train_per_class, "val": self.val_per_class}
        fonts = {"train": TRAIN_FONTS, "val": VAL_FONTS}
        records, blobs = {}, {}
        for s_i, split in enumerate(self.SPLITS):
            for c, label in enumerate(CLASSES):
                (out_dir / split / label).mkdir(parents=True, exist_ok=True)
                # One generator per (split, class): changing one split's size leaves the other's bytes.
                rng = np.random.default_rng([GENERATOR_SEED, s_i, c])
                for i in range(per_class[split]):
                    font = fonts[split][i % len(fonts[split])]  # every font equally often
                    data = png_bytes(renderer.image(rng, c, font, self.image_size))
                    rel = f"{split}/{label}/{i:05d}.png"
                    (out_dir / rel).write_bytes(data)
                    blobs[rel] = data
                    records[rel] = {"sha256": sha256(data), "split": split, "label": c, "font": font}
        counts = {split: {"images": per_class[split] * len(CLASSES), "fonts": len(fonts[split])}
                  for split in self.SPLITS}
        return self.manifest_of(records, blobs, counts, library_versions())
