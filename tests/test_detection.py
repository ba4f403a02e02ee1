"""Detection transfer: the embedded scenes in VOC and COCO layouts, the readers of those layouts
(and their one-line errors), the scorers, the weight conversion, and both backends."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data.detection import DetectionSplits, read_coco, read_voc
from harness.data.glyphs import CLASSES
from harness.data.scenes import GlyphScenes
from harness.errors import UsageError

HAS_D2 = importlib.util.find_spec("detectron2") is not None
NO_D2 = "detectron2 is not installed (make detectron2 builds it; make test does where ../shared/vendor has its source)"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> GlyphScenes:
    s = GlyphScenes(root=tmp_path_factory.mktemp("scenes"), train_images=12, val_images=6)
    s.prepare()
    return s


def voc_splits(s: GlyphScenes) -> DetectionSplits:
    return DetectionSplits("voc", s.voc_root, ("2007_trainval",), "2007_test", CLASSES)


def coco_splits(s: GlyphScenes) -> DetectionSplits:
    return DetectionSplits("coco", s.coco_root, ("train2017",), "val2017", CLASSES)


def test_scenes_are_written_in_both_layouts_and_read_back_alike(scenes):
    voc, coco = read_voc(scenes.voc_root, "2007_trainval", CLASSES), read_coco(scenes.coco_root, "train2017", CLASSES)
    assert len(voc) == len(coco) == 12 and len(read_voc(scenes.voc_root, "2007_test", CLASSES)) == 6
    for v, c in zip(voc, coco):
        assert Path(v["file_name"]).read_bytes() == Path(c["file_name"]).read_bytes()
        # VOC's 1-based inclusive corners and COCO's [x, y, w, h] give the same continuous boxes.
        assert [a["bbox"] for a in v["annotations"]] == [[float(x) for x in a["bbox"]] for a in c["annotations"]]
        assert [a["category_id"] for a in v["annotations"]] == [a["category_id"] for a in c["annotations"]]
        assert 1 <= len(v["annotations"]) <= 4
        for a in v["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert scenes.verify()


def test_scene_generation_is_deterministic_across_processes(tmp_path):
    code = ("import sys; from harness.data.scenes import GlyphScenes; "
            "print(GlyphScenes(root=sys.argv[1], train_images=5, val_images=3).content_hash())")
    hashes = [subprocess.run([sys.executable, "-c", code, str(tmp_path / d)], capture_output=True, text=True, check=True)
              .stdout.strip() for d in ("a", "b")]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64


def _copy(scenes: GlyphScenes, tmp_path: Path) -> Path:
    return Path(shutil.copytree(scenes.prepare(), tmp_path / "copy"))


VOC_XML = "VOCdevkit/VOC2007/Annotations/000001.xml"
COCO_JSON = "coco/annotations/instances_train2017.json"


@pytest.mark.parametrize("layout, breakage, message", [
    ("voc", lambda r: (r / "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").unlink(), "trainval.txt not found"),
    ("voc", lambda r: (r / VOC_XML).write_text("<annotation><size>"), "is malformed"),
    ("voc", lambda r: (r / "VOCdevkit/VOC2007/JPEGImages/000002.jpg").unlink(), "000002 but"),
    ("voc", lambda r: (r / VOC_XML).write_text((r / VOC_XML).read_text().replace("<name>", "<name>cat", 1)), "class"),
    ("coco", lambda r: (r / COCO_JSON).unlink(), "instances_train2017.json not found"),
    ("coco", lambda r: (r / COCO_JSON).write_text("{not json"), "is malformed"),
    ("coco", lambda r: shutil.rmtree(r / "coco/train2017"), "image folder"),
])
def test_a_malformed_tree_is_one_line_naming_the_layout(scenes, tmp_path, layout, breakage, message):
    root = _copy(scenes, tmp_path)
    breakage(root)
    with pytest.raises(UsageError) as e:
        if layout == "voc":
            read_voc(root / "VOCdevkit", "2007_trainval", CLASSES)
        else:
            read_coco(root / "coco", "train2017", CLASSES)
    assert message in str(e.value) and "\n" not in str(e.value)


def _perfect(records):
    return [{"image_id": r["image_id"], "boxes": np.array([a["bbox"] for a in r["annotations"]]).reshape(-1, 4),
             "scores": np.ones(len(r["annotations"])), "labels": np.array([a["category_id"] for a in r["annotations"]])}
            for r in records]


def test_scores_are_100_for_perfect_boxes_and_fall_with_wrong_ones(scenes):
    from evals.detection import score

    records = read_voc(scenes.voc_root, "2007_trainval", CLASSES)
    assert score(records, _perfect(records), CLASSES) == pytest.approx({"AP": 100, "AP50": 100, "AP75": 100, "voc07_AP50": 100})
    # Each box moved right by 20 % of its width: IoU 0.8 / 1.2 = 0.667, a hit at IoU 0.50-0.65
    # (4 of COCO's 10 thresholds) and a miss from 0.70.
    shifted = []
    for p in _perfect(records):
        dx = 0.2 * (p["boxes"][:, 2] - p["boxes"][:, 0])
        shifted.append(dict(p, boxes=p["boxes"] + np.stack([dx, 0 * dx, dx, 0 * dx], axis=1)))
    s = score(records, shifted, CLASSES)
    assert s == pytest.approx({"AP": 40, "AP50": 100, "AP75": 0, "voc07_AP50": 100}, abs=1e-6)
    wrong_class = [dict(p, labels=(p["labels"] + 1) % 10) for p in _perfect(records)]
    assert score(records, wrong_class, CLASSES)["voc07_AP50"] == 0


def test_voc07_ap_ignores_difficult_objects_and_counts_duplicates_as_false_positives():
    from evals.detection.scoring import voc07_ap50

    records = [{"image_id": "a", "width": 10, "height": 10, "annotations": [
        {"bbox": [0, 0, 5, 5], "category_id": 0}, {"bbox": [5, 5, 10, 10], "category_id": 0, "difficult": 1}]}]
    hit = {"image_id": "a", "boxes": np.array([[0, 0, 5, 5.0]]), "scores": np.array([0.9]), "labels": np.array([0])}
    assert voc07_ap50(records, [hit], 1) == pytest.approx(100)
    on_difficult = dict(hit, boxes=np.array([[0, 0, 5, 5.0], [5, 5, 10, 10.0]]), scores=np.array([0.9, 0.95]), labels=np.array([0, 0]))
    assert voc07_ap50(records, [on_difficult], 1) == pytest.approx(100)  # neither TP nor FP
    duplicate = dict(hit, boxes=np.array([[0, 0, 5, 5.0], [0, 0, 5, 5.0]]), scores=np.array([0.8, 0.9]), labels=np.array([0, 0]))
    # Ranked: TP at precision 1 then a FP: still 100 % at every recall point (interpolated).
    assert voc07_ap50(records, [duplicate], 1) == pytest.approx(100)
    miss_first = dict(hit, boxes=np.array([[6, 0, 9, 3.0], [0, 0, 5, 5.0]]), scores=np.array([0.9, 0.8]), labels=np.array([0, 0]))
    assert voc07_ap50(records, [miss_first], 1) == pytest.approx(50)


def _tiny_params(**extra) -> dict:
    p = {"mask": False, "precise_bn": False, "backend": "torchvision", "head": "fpn", "max_iter": 3, "steps": [2], "batch_size": 2, "lr": 0.01,
         "warmup_iters": 1, "momentum": 0.9, "weight_decay": 1e-4, "min_size": [64], "max_size": 64, "flip": True,
         "roi_batch": 16, "box_head_dim": 32, "fpn_channels": 16, "rpn_batch": 16, "proposals_train": 50, "proposals_test": 20}
    return {**p, **extra}


def test_fine_tuning_progress_writes_no_line_per_step_to_a_batch_log(scenes, capsys):
    from harness.backbones import create_backbone
    from evals.detection.torchvision_backend import train_and_predict

    splits = voc_splits(scenes)
    train_and_predict(create_backbone("resnet_small", width=0.25), splits.read("train"), splits.read("test")[:2],
                      len(CLASSES), _tiny_params(max_iter=12, steps=[]), torch.device("cpu"), 0, "progress")
    err = capsys.readouterr().err
    # Not a terminal: the bar writes its first and last state, not one line per iteration.
    assert err.count("detection progress") <= 3, err


@pytest.mark.parametrize("fmt", ["voc", "coco"])
@pytest.mark.parametrize("backbone", ["resnet_small", "vit_tiny", "alexnet"])
def test_torchvision_backend_trains_and_predicts_on_both_layouts(scenes, fmt, backbone):
    from harness.backbones import create_backbone
    from evals.detection import score
    from evals.detection.torchvision_backend import train_and_predict

    splits = voc_splits(scenes) if fmt == "voc" else coco_splits(scenes)
    kwargs = {"img_size": 64, "patch_size": 8} if backbone == "vit_tiny" else {"small_input": True} if backbone == "alexnet" else {"width": 0.25}
    net = create_backbone(backbone, **kwargs)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    test = splits.read("test")
    preds = train_and_predict(net, splits.read("train"), test, len(CLASSES), _tiny_params(), torch.device("cpu"), 0, "test")
    assert [p["image_id"] for p in preds] == [r["image_id"] for r in test]
    s = score(test, preds, CLASSES)
    assert set(s) == {"AP", "AP50", "AP75", "voc07_AP50"} and all(0 <= v <= 100 for v in s.values())
    # The detector fine-tunes a copy: the method's backbone (read by the other evals) is untouched.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_eval_runs_through_the_cli_with_the_torchvision_backend(tmp_path, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)  # the session's data cache (conftest): the suite is generated once
    rc = main(["run", "--method", "random", "--eval", "detection", "--output-dir", str(tmp_path / "runs"),
               "eval.detection.max_iter=2", "eval.detection.batch_size=2"])
    assert rc == 0
    (metrics,) = list((tmp_path / "runs").rglob("detection_trials.json"))
    trials = json.loads(metrics.read_text())
    assert trials["backend"] == "torchvision" and trials["preset"] == "voc_c4" and len(trials["trials"]) == 1
    # Every result names its backend with the preset (tag, results file), so tables never mix them.
    from harness.rundir import RunFolder

    (folder,) = [p.parent for p in (tmp_path / "runs").rglob("config.yaml")]
    result = RunFolder(folder).eval_result("detection")
    assert result["preset"] == "voc_c4/torchvision" and set(result["metrics"]) >= {"AP", "AP50", "AP75", "voc07_AP50"}


def test_without_detectron2_its_backend_exits_2_naming_the_install_command(tmp_path):
    # Hide detectron2 even where it is installed: the same code path as a machine without it.
    code = ("import sys; sys.modules['detectron2'] = None; from harness.cli import main; "
            "sys.exit(main(['run', '--method', 'random', '--eval', 'detection', 'eval.detection.backend=detectron2', "
            f"'--output-dir', {str(tmp_path / 'runs')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**__import__("os").environ, "SSL_HARNESS_DATA": str(tmp_path / "data")})
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "make detectron2" in lines[0] and "backend=torchvision" in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "data").exists()  # refused before any work


def test_head_c4_with_the_torchvision_backend_is_refused_before_work():
    from harness.pipeline import RunRequest, build_config

    with pytest.raises(UsageError, match="head=c4 needs backend=detectron2"):
        build_config(RunRequest(method="random", suite="glyphs", evals="detection",
                                overrides={"eval.detection.head": "c4"}))


def test_conversion_renames_every_resnet_key_as_moco_does():
    from harness.backbones import create_backbone
    from evals.detection.convert import convert_state_dict, detectron2_name

    assert detectron2_name("stem.0.weight") == "stem.conv1.weight"
    assert detectron2_name("stem.1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_name("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert detectron2_name("layer4.2.downsample.1.weight") == "res5.2.shortcut.norm.weight"
    assert detectron2_name("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    for name, kw in (("resnet50", {"width": 2}), ("resnet18", {}), ("resnet_small", {"width": 0.5})):
        net = create_backbone(name, **kw)
        converted = convert_state_dict(net)
        kept = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
        assert len(converted) == len(kept) and len(set(converted)) == len(converted)
    with pytest.raises(UsageError, match="ResNet v1"):
        convert_state_dict(create_backbone("vgg19_bn"))


@pytest.mark.skipif(not HAS_D2, reason=NO_D2)
def test_converted_weights_load_into_detectron2_r50_c4_and_give_the_same_res4(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from harness.backbones import create_backbone
    from evals.detection import Detection
    from evals.detection.convert import convert_state_dict, save_detectron2_weights
    from evals.detection.detectron2_backend import build_cfg

    torch.manual_seed(0)
    net = create_backbone("resnet50").eval()
    with torch.no_grad():  # non-trivial BN statistics, so a norm mapped to the wrong conv shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    preset = {k: getattr(v, "value", v) for k, v in Detection.presets["voc_c4"].items()}
    model = build_model(build_cfg(net, 20, preset, torch.device("cpu"), tmp_path, 0)).eval()
    DetectionCheckpointer(model).load(str(save_detectron2_weights(net, tmp_path / "w.pkl")))
    sd = model.state_dict()
    converted = convert_state_dict(net)
    placed = {}
    for name, value in converted.items():
        target = next((t for t in (f"backbone.{name}", f"roi_heads.{name}") if t in sd), None)
        assert target is not None, f"unexpected key: {name} has no place in detectron2's R50-C4"
        assert torch.equal(sd[target], value), f"{name} did not load into {target}"
        placed[target] = name
    # Missing: every backbone tensor of the detector (res2-res4, and res5 in the box head, but
    # not MoCo's extra norm after it) came from the harness weights.
    backbone_keys = {k for k in sd if (k.startswith("backbone.") or k.startswith("roi_heads.res5."))
                     and not k.startswith("roi_heads.res5.norm") and not k.endswith("num_batches_tracked")}
    assert backbone_keys - set(placed) == set()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = net.layer3(net.layer2(net.layer1(net.stem(x))))
        theirs = model.backbone(x)["res4"]
    assert ours.shape == theirs.shape and (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.skipif(not HAS_D2, reason=NO_D2)
@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_detectron2_backend_trains_and_predicts_on_both_layouts(scenes, fmt, tmp_path):
    from harness.backbones import create_backbone
    from evals.detection import score
    from evals.detection.detectron2_backend import train_and_predict

    class M:
        backbone = create_backbone("resnet_small", width=0.25)

    splits = voc_splits(scenes) if fmt == "voc" else coco_splits(scenes)
    preds = train_and_predict(M, splits, _tiny_params(backend="detectron2"), torch.device("cpu"), 0, tmp_path, "test")
    test = splits.read("test")
    assert sorted(map(str, (p["image_id"] for p in preds))) == sorted(map(str, (r["image_id"] for r in test)))
    s = score(test, preds, CLASSES)
    assert all(0 <= v <= 100 for v in s.values())
    assert list(tmp_path.glob("model_final.pth")) or list(tmp_path.glob("model_*.pth"))  # resumable checkpoints


def test_a_killed_torchvision_fine_tuning_resumes_to_the_uninterrupted_result(scenes, tmp_path, monkeypatch):
    from evals.detection import torchvision_backend as tb

    splits = voc_splits(scenes)
    train, test = splits.read("train"), splits.read("test")
    from harness.backbones import create_backbone

    net = create_backbone("resnet_small", width=0.25)
    p = _tiny_params(max_iter=4)
    whole = tb.train_and_predict(net, train, test, len(CLASSES), p, torch.device("cpu"), 3, "whole")

    calls = {"n": 0}
    real = tb.lr_at

    def dies_at_iteration_3(step, params):
        calls["n"] += 1
        if step == 3:
            raise KeyboardInterrupt("killed")  # as a preempted job: after the checkpoint at 2
        return real(step, params)

    monkeypatch.setattr(tb, "lr_at", dies_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        tb.train_and_predict(net, train, test, len(CLASSES), p, torch.device("cpu"), 3, "killed", out_dir=tmp_path,
                             checkpoint_every=2)
    assert (tmp_path / "last.pt").exists()
    monkeypatch.setattr(tb, "lr_at", real)
    resumed = tb.train_and_predict(net, train, test, len(CLASSES), p, torch.device("cpu"), 3, "resumed",
                                   out_dir=tmp_path, checkpoint_every=2)
    assert len(resumed) == len(whole)
    for a, b in zip(whole, resumed):
        assert a["image_id"] == b["image_id"] and np.allclose(a["boxes"], b["boxes"], atol=1e-5)
        assert np.allclose(a["scores"], b["scores"], atol=1e-6) and np.array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize("backend", ["torchvision", pytest.param("detectron2", marks=pytest.mark.skipif(not HAS_D2, reason=NO_D2))])
def test_mask_rcnn_trains_on_the_scenes_coco_masks_and_reports_mask_ap(scenes, backend, tmp_path):
    from harness.backbones import create_backbone
    from evals.detection import score

    splits = coco_splits(scenes)
    test = splits.read("test")
    p = _tiny_params(mask=True, backend=backend)
    net = create_backbone("resnet_small", width=0.25)
    if backend == "torchvision":
        from evals.detection.torchvision_backend import train_and_predict

        preds = train_and_predict(net, splits.read("train"), test, len(CLASSES), p, torch.device("cpu"), 0, "mask")
    else:
        from evals.detection.detectron2_backend import train_and_predict

        class M:
            backbone = net

        preds = train_and_predict(M, splits, p, torch.device("cpu"), 0, tmp_path, "mask")
    assert all(pr["masks"].shape[1:] == (64, 64) and pr["masks"].dtype == bool for pr in preds if len(pr["boxes"]))
    s = score(test, preds, CLASSES, masks=True)
    assert {"mask_AP", "mask_AP50", "mask_AP75"} <= set(s) and all(0 <= v <= 100 for v in s.values())


def test_mask_ap_is_100_for_the_true_masks_and_0_for_empty_ones(scenes):
    from evals.detection import score
    from evals.detection.torchvision_backend import decode_mask

    records = read_coco(scenes.coco_root, "val2017", CLASSES)
    perfect = _perfect(records)
    for p, r in zip(perfect, records):
        p["masks"] = np.stack([decode_mask(a["segmentation"], 64, 64).astype(bool) for a in r["annotations"]])
    s = score(records, perfect, CLASSES, masks=True)
    assert s["mask_AP"] == pytest.approx(100) and s["AP"] == pytest.approx(100)
    for p in perfect:
        p["masks"] = np.zeros_like(p["masks"])
    assert score(records, perfect, CLASSES, masks=True)["mask_AP50"] == 0


def test_a_mask_preset_on_data_without_masks_is_refused_in_one_line(tmp_path):
    from harness.cli import main
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", "--method", "random", "--eval", "detection", "eval.detection.mask=true",
                   "--output-dir", str(tmp_path / "runs")])
    assert rc == 2 and "eval.detection.mask=true needs instance masks" in err.getvalue()
    assert not (tmp_path / "runs").exists()  # refused before pretraining


def _real_voc_tree(scenes: GlyphScenes, tmp_path: Path) -> Path:
    """A VOCdevkit with VOC2007 and VOC2012 whose objects carry real VOC class names."""
    from harness.data.detection import VOC_CLASSES

    devkit = tmp_path / "VOCdevkit"
    for year in ("2007", "2012"):
        shutil.copytree(scenes.voc_root / "VOC2007", devkit / f"VOC{year}")
        for xml in (devkit / f"VOC{year}" / "Annotations").glob("*.xml"):
            text = xml.read_text()
            for c in CLASSES:
                text = text.replace(f"<name>{c}</name>", f"<name>{VOC_CLASSES[int(c)]}</name>")
            xml.write_text(text)
    (devkit / "VOC2012" / "ImageSets" / "Main" / "test.txt").unlink()  # VOC2012 has no public test set
    return devkit


def test_a_users_voc07_plus_12_root_is_read_with_the_20_voc_classes(scenes, tmp_path):
    from harness.data.detection import VOC_CLASSES, user_splits

    splits = user_splits("voc07+12", _real_voc_tree(scenes, tmp_path))
    train, test = splits.read("train"), splits.read("test")
    assert splits.classes == VOC_CLASSES and len(train) == 24 and len(test) == 6
    assert {r["image_id"].split("_")[0] for r in train} == {"2007", "2012"}
    shutil.rmtree(tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(UsageError, match=r"VOC2012.*not found; voc07\+12 expects a VOCdevkit"):
        user_splits("voc07+12", tmp_path / "VOCdevkit")


def test_a_missing_data_root_is_refused_before_any_work(tmp_path, capsys):
    from harness.cli import main

    rc = main(["run", "--method", "rotation", "--suite", "digits", "--eval", "detection",
               f"eval.detection.data_root={tmp_path / 'nowhere'}", "eval.detection.backend=torchvision",
               "eval.detection.head=fpn", "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nowhere" in err and "VOCdevkit" in err
    assert not (tmp_path / "runs").exists()
