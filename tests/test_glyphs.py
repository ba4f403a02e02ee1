"""The embedded default suite `glyphs`: deterministic generation, held-out fonts, the renderer
API other protocols reuse, and the `pixels` floor."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harness.data.glyphs import TRAIN_FONTS, VAL_FONTS, GlyphRenderer, GlyphsSuite

SMALL = {"train_per_class": 12, "val_per_class": 3}

_GENERATE = """
import json, sys
from harness.data.glyphs import GlyphsSuite
s = GlyphsSuite(root=sys.argv[1], train_per_class=12, val_per_class=3)
print(json.dumps({"hash": s.content_hash(), "dir": str(s.prepare())}))
"""


def test_two_generations_in_separate_processes_give_the_same_bytes(tmp_path):
    outs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", _GENERATE, str(tmp_path / f"home{i}")], capture_output=True,
                              text=True, timeout=300, check=True)
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outs[0]["hash"] == outs[1]["hash"]
    from pathlib import Path

    a, b = Path(outs[0]["dir"]), Path(outs[1]["dir"])
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 10 * (12 + 3)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    suite = GlyphsSuite(root=tmp_path / "home0", **SMALL)
    assert suite.verify()
    (a / files[0]).write_bytes(b"not the generated image")
    assert not GlyphsSuite(root=tmp_path / "home0", **SMALL).verify()


def test_val_is_drawn_in_fonts_train_never_sees(tmp_path):
    suite = GlyphsSuite(root=tmp_path, train_per_class=16, val_per_class=5)  # each font once per class
    files = suite.manifest()["files"]
    train_fonts = {r["font"] for r in files.values() if r["split"] == "train"}
    val_fonts = {r["font"] for r in files.values() if r["split"] == "val"}
    assert train_fonts == set(TRAIN_FONTS) and val_fonts == set(VAL_FONTS) and not train_fonts & val_fonts
    train, val = suite.split("train"), suite.split("val")
    assert train.classes == val.classes == [str(c) for c in range(10)]
    assert np.bincount(train.targets).tolist() == [16] * 10


def test_nuisances_vary_per_image_so_raw_pixels_do_not_identify_the_class():
    # Ten images of one class in one font differ more from each other, pixel for pixel, than
    # from the images of another class: the class lives in the shape, not in the pixels.
    r = GlyphRenderer()
    rng = np.random.default_rng(0)
    same = np.stack([r.image(rng, 3, TRAIN_FONTS[0], 32).astype(float).ravel() for _ in range(10)])
    other = np.stack([r.image(rng, 7, TRAIN_FONTS[0], 32).astype(float).ravel() for _ in range(10)])
    within = np.mean([np.linalg.norm(a - b) for i, a in enumerate(same) for b in same[i + 1:]])
    between = np.mean([np.linalg.norm(a - b) for a in same for b in other])
    assert within > 0.9 * between


def test_scenes_place_several_glyphs_with_boxes_inside_the_image():
    r = GlyphRenderer()
    img, objects = r.scene(np.random.default_rng(1), TRAIN_FONTS, 96, 4)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert 1 <= len(objects) <= 4
    for label, (x0, y0, x1, y1) in objects:
        assert 0 <= label < 10 and 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96


def test_pixels_is_a_baseline_read_by_the_same_protocols():
    from harness.pipeline import RunRequest, build_config
    from harness import registry

    cfg = build_config(RunRequest(method="pixels", suite="glyphs", evals="knn"))[0]
    method = registry.methods.get("pixels")(cfg)
    import torch

    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(method.features(x), x.flatten(1)) and method.num_features == 3 * 32 * 32
    from harness.errors import UsageError

    with pytest.raises(UsageError, match="nothing to train"):
        build_config(RunRequest(method="pixels", suite="glyphs", epochs=1))


def test_every_method_resolves_on_glyphs_with_a_budget_of_its_own():
    """Each method's default run on the default suite: the glyphs layer (on top of digits')
    names only keys the method has and values its rules accept, and every method whose digits
    budget would not fit glyphs' 3.5x images has a glyphs one."""
    from harness import registry
    from harness.pipeline import RunRequest, build_config

    over_budget = []
    for name in registry.methods.names():
        cfg = build_config(RunRequest(method=name, suite="glyphs"))[0]
        digits_epochs = build_config(RunRequest(method=name, suite="digits"))[0]["train.epochs"]
        if digits_epochs > 12 and cfg["train.epochs"] == digits_epochs:
            over_budget.append(f"{name} ({digits_epochs} epochs)")
    assert not over_budget, f"no glyphs budget: {over_budget}"
