from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evals.knn import knn_predict
from evals.linear import BackboneChanged, LinearProbe, state_fingerprint
from harness.backbones.readout import PROBE_LAYERS


def brute_force_knn(tr, ytr, te, k, T, C):
    tr, te = F.normalize(tr, dim=1), F.normalize(te, dim=1)
    out = torch.zeros(len(te), C)
    for i, q in enumerate(te):
        sims = tr @ q
        idx = sims.argsort(descending=True)[:k]
        for j in idx:
            out[i, ytr[j]] += torch.exp(sims[j] / T)
    return out


@pytest.mark.parametrize("chunk, train_chunk", [(1, 65536), (7, 65536), (1000, 65536), (5, 7), (13, 1), (4, 59)])
def test_knn_equals_brute_force(chunk, train_chunk):
    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(60, 5, generator=g), torch.randn(13, 5, generator=g)
    ytr = torch.randint(0, 4, (60,), generator=g)
    got = knn_predict(tr, ytr, te, [1, 3, 10, 200], 0.07, 4, chunk_size=chunk, train_chunk_size=train_chunk)
    for k in (1, 3, 10, 200):
        torch.testing.assert_close(got[k], brute_force_knn(tr, ytr, te, min(k, 60), 0.07, 4), rtol=1e-5, atol=1e-5)


def test_knn_reads_memory_mapped_features(tmp_path):
    import numpy as np

    g = torch.Generator().manual_seed(1)
    tr, te = torch.randn(50, 6, generator=g), torch.randn(9, 6, generator=g)
    ytr = torch.randint(0, 3, (50,), generator=g)
    np.save(tmp_path / "tr.npy", tr.numpy())
    mm = np.load(tmp_path / "tr.npy", mmap_mode="r")
    got = knn_predict(mm, ytr, te, [5], 0.1, 3, chunk_size=4, train_chunk_size=8)[5]
    torch.testing.assert_close(got, brute_force_knn(tr, ytr, te, 5, 0.1, 3), rtol=1e-5, atol=1e-5)


def test_fingerprint_sees_buffers():
    m = torch.nn.BatchNorm1d(3)
    before = state_fingerprint(m)
    m.train()(torch.randn(8, 3))  # updates running statistics only
    assert state_fingerprint(m) != before


@pytest.fixture
def tiny_probe_setup():
    from harness.data.digits import DigitsSuite
    from harness.pipeline import RunRequest, build_config
    from methods.rotation import Rotation

    cfg = build_config(RunRequest(method="rotation", overrides={
        "eval.linear.epochs": 1, "eval.linear.milestones": [], "eval.linear.batch_size": 32}))[0]
    torch.manual_seed(0)
    method = Rotation(cfg)
    suite = DigitsSuite(image_size=32)
    suite.train_subset = 64
    return cfg, method, suite


def test_linear_probe_leaves_backbone_unchanged(tiny_probe_setup, tmp_path):
    cfg, method, suite = tiny_probe_setup
    before = state_fingerprint(method)
    metrics = LinearProbe(cfg).run(method, suite, torch.device("cpu"), tmp_path)
    assert state_fingerprint(method) == before
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100


def test_linear_probe_catches_a_changed_backbone(tiny_probe_setup, tmp_path):
    cfg, method, suite = tiny_probe_setup
    plain = method.features

    def leaky_features(x):
        with torch.no_grad():
            method.backbone.stem[0].weight.add_(1e-4)  # a bug that edits the frozen model
        return plain(x)

    method.features = leaky_features
    with pytest.raises(BackboneChanged):
        LinearProbe(cfg).run(method, suite, torch.device("cpu"), tmp_path)


def test_knn_top5_counts_only_voted_classes():
    from evals.knn import knn_topk_accuracy

    # k=1: each row has exactly one voted class; the true class of row 1 has no votes.
    scores = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    top1, top5 = knn_topk_accuracy(scores, torch.tensor([1, 4]))
    assert (top1, top5) == (50.0, 50.0)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_knn_accuracy_equals_brute_force_for_every_k(k):
    from evals.knn import knn_topk_accuracy

    g = torch.Generator().manual_seed(k)
    tr, te = torch.randn(40, 6, generator=g), torch.randn(25, 6, generator=g)
    ytr, yte = torch.randint(0, 7, (40,), generator=g), torch.randint(0, 7, (25,), generator=g)
    ref = brute_force_knn(tr, ytr, te, k, 0.1, 7)
    top1, top5 = knn_topk_accuracy(knn_predict(tr, ytr, te, [k], 0.1, 7)[k], yte)
    # Reference: the classes with votes, ranked by score; top-5 = true class among the first five voted.
    hits1 = hits5 = 0
    for row, y in zip(ref, yte):
        ranked = [c for c in row.argsort(descending=True).tolist() if row[c] > 0]
        hits1 += ranked[:1] == [int(y)]
        hits5 += int(y) in ranked[:5]
    assert top1 == pytest.approx(100 * hits1 / 25)
    assert top5 == pytest.approx(100 * hits5 / 25)


def test_knn_presets_match_published_protocols():
    from evals.knn import KNN

    dino, npid = KNN.config_layer("dino"), KNN.config_layer("npid")
    # facebookresearch/dino eval_knn.py; VISSL defaults (InstDisc/NPID).
    assert (dino["eval.knn.k"].value, dino["eval.knn.temperature"].value, dino["eval.knn.ks"].value) == (20, 0.07, [10, 20, 100, 200])
    assert (npid["eval.knn.k"].value, npid["eval.knn.temperature"].value) == (200, 0.1)


def test_linear_presets_match_reference():
    def values(preset):
        return {k.split(".")[-1]: p.value for k, p in LinearProbe.config_layer(preset).items() if hasattr(p, "value")}

    moco, simclr, dino = values("moco"), values("simclr"), values("dino")
    # REFERENCE.md, "Linear probe, MoCo / SimCLR / DINO".
    assert (moco["lr"], moco["momentum"], moco["weight_decay"], moco["batch_size"], moco["epochs"], moco["milestones"]) == (30.0, 0.9, 0.0, 256, 100, [60, 80])
    assert (simclr["lr"], simclr["lr_scaling"], simclr["weight_decay"], simclr["epochs"], simclr["batch_size"]) == (0.1, "linear", 1e-6, 90, 4096)
    assert (dino["epochs"], dino["lr"], dino["lr_scaling"], dino["schedule"], dino["readout"]) == (100, 0.001, "linear", "cosine", "dino")


def test_dino_readouts_of_a_vit():
    from harness.backbones.readout import readout_features
    from harness.backbones import create_backbone
    from harness.errors import UsageError

    class Holder:
        def __init__(self, backbone, name):
            self.backbone, self.cfg = backbone, {"backbone.name": name}

        def features(self, x):
            return self.backbone(x)

    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    last4 = readout_features(Holder(vit, "vit_tiny"), x, "last4_cls")
    both = readout_features(Holder(vit, "vit_tiny"), x, "cls_avgpool")
    assert last4.shape == (2, 4 * 192) and both.shape == (2, 2 * 192)
    # The last of the four class tokens is the backbone's own (final-norm) output.
    torch.testing.assert_close(last4[:, -192:], vit(x))
    torch.testing.assert_close(both[:, :192], vit(x))
    torch.testing.assert_close(readout_features(Holder(vit, "vit_tiny"), x, "dino"), last4)  # ViT-Ti/S: last 4
    resnet = create_backbone("resnet_small", width=0.5).eval()
    assert readout_features(Holder(resnet, "resnet_small"), x, "dino").shape == (2, resnet.num_features)
    with pytest.raises(UsageError, match="needs a ViT backbone"):
        readout_features(Holder(resnet, "resnet_small"), x, "last4_cls")


@pytest.mark.parametrize("preset", ["simclr", "dino"])
def test_linear_probe_runs_other_presets(preset, tmp_path):
    from harness.data.digits import DigitsSuite
    from harness.pipeline import RunRequest, build_config
    from methods.rotation import Rotation

    cfg = build_config(RunRequest(method="rotation", overrides={
        "eval.linear.preset": preset, "eval.linear.epochs": 1, "eval.linear.batch_size": 32}))[0]
    assert cfg["eval.linear.preset"] == preset and cfg["eval.linear.schedule"] == "cosine"
    torch.manual_seed(0)
    method = Rotation(cfg)
    suite = DigitsSuite(image_size=32)
    suite.train_subset = 64
    before = state_fingerprint(method)
    metrics = LinearProbe(cfg).run(method, suite, torch.device("cpu"), tmp_path)
    assert state_fingerprint(method) == before and 0 <= metrics["top1"] <= metrics["top5"] <= 100


def test_fast_linear_sweeps_on_features_shared_with_knn(tiny_probe_setup, tmp_path):
    from evals.knn import KNN
    from evals.linear_fast import FastLinear
    from harness.pipeline import RunRequest, build_config
    from harness.rundir import RunFolder

    _, method, suite = tiny_probe_setup
    cfg = build_config(RunRequest(method="rotation", overrides={
        "eval.linear_fast.lrs": [0.001, 0.1], "eval.linear_fast.epochs": 3, "eval.linear_fast.batch_size": 16}))[0]
    calls = []
    plain = method.features
    method.features = lambda x: calls.append(len(x)) or plain(x)
    folder = RunFolder(tmp_path)  # the run folder hands every eval its shared feature cache
    knn = KNN(cfg, feature_cache=folder.feature_cache).run(method, suite, torch.device("cpu"), folder.eval_dir("knn"))
    n_after_knn = sum(calls)
    fast = FastLinear(cfg, feature_cache=folder.feature_cache).run(method, suite, torch.device("cpu"),
                                                                   folder.eval_dir("linear_fast"))
    assert n_after_knn == 64 + 359 and sum(calls) == n_after_knn  # extracted once, read twice
    assert len(list(folder.feature_cache.glob("*.labels.npy"))) == 2
    assert fast["best_lr"] in (0.001, 0.1) and 0 <= fast["top1"] <= fast["top5"] <= 100
    assert {"lr0.001_holdout_top1", "lr0.1_holdout_top1"} <= set(fast) and 0 <= knn["top1"] <= 100
    assert FastLinear.protocol == "linear_fast" != LinearProbe.protocol


def test_multi_layer_probe_trains_every_layer_in_one_frozen_pass(tiny_probe_setup, tmp_path):
    from harness.pipeline import RunRequest, build_config

    _, method, suite = tiny_probe_setup
    cfg = build_config(RunRequest(method="rotation", overrides={
        "eval.linear.epochs": 1, "eval.linear.milestones": [], "eval.linear.batch_size": 32,
        "eval.linear.layers": ["block1", "block3", "pre_logits"]}))[0]
    passes = []
    stages = method.backbone.forward_stages
    method.backbone.forward_stages = lambda x: passes.append(len(x)) or stages(x)
    before = state_fingerprint(method)
    m = LinearProbe(cfg).run(method, suite, torch.device("cpu"), tmp_path)
    assert state_fingerprint(method) == before
    # 64 train images (2 steps of 32) and 359 val images, each seen by one pass for all three heads.
    assert sum(passes) == 2 + 64 + 359  # + the 2-image shape probe
    for layer in ("block1", "block3", "pre_logits"):
        assert 0 <= m[f"{layer}_top1"] <= m[f"{layer}_top5"] <= 100
    assert m["top1"] == m["pre_logits_top1"]


def test_multi_layer_probe_rejects_unknown_or_unprobeable_layers(tiny_probe_setup, tmp_path):
    from harness.errors import UsageError
    from harness.pipeline import RunRequest, build_config

    _, method, suite = tiny_probe_setup
    with pytest.raises(UsageError, match="eval.linear.layers=.*expected one of pre_logits"):
        build_config(RunRequest(method="rotation", evals="linear", overrides={"eval.linear.layers": ["conv9"]}))


def test_revisiting_preset_and_its_max_pooling(tiny_probe_setup, tmp_path):
    from harness.pipeline import RunRequest, build_config
    from harness.backbones.readout import pool_maps

    v = {k.split(".")[-1]: p.value for k, p in LinearProbe.config_layer("revisiting").items() if hasattr(p, "value")}
    # REFERENCE.md: 70 epochs on (max-pooled) frozen features; the public config: batch 512,
    # lr 0.1 per 256, decay at 30 and 50.
    assert (v["epochs"], v["pooling"], v["batch_size"], v["lr"], v["milestones"]) == (70, "max9000", 512, 0.1, [30, 50])
    assert round(v["holdout"] * 1_281_167) == 50_046  # their validation split: 50,046 train images
    maps = torch.randn(2, 256, 16, 16)
    pooled = pool_maps(maps, "max9000")
    assert pooled.shape == (2, 256 * 5 * 5) and pooled.shape[1] <= 9000  # 5 = isqrt(9000 // 256)
    torch.testing.assert_close(pooled, torch.nn.functional.adaptive_max_pool2d(maps, 5).flatten(1))
    small = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(pool_maps(small, "max9000"), small.flatten(1))  # under 9,000: kept whole

    _, method, suite = tiny_probe_setup
    cfg = build_config(RunRequest(method="rotation", overrides={
        "eval.linear.preset": "revisiting", "eval.linear.epochs": 1, "eval.linear.batch_size": 32,
        "backbone.probe_layer": "block2"}))[0]
    m = LinearProbe(cfg).run(method, suite, torch.device("cpu"), tmp_path)
    assert 0 <= m["top1"] <= m["top5"] <= 100


def test_revisiting_validation_split_picks_the_layer_and_never_trains_on_it(tiny_probe_setup, tmp_path):
    from harness.pipeline import RunRequest, build_config

    _, method, suite = tiny_probe_setup
    cfg = build_config(RunRequest(method="rotation", overrides={
        "eval.linear.preset": "revisiting", "eval.linear.epochs": 1, "eval.linear.batch_size": 16,
        "eval.linear.holdout": 0.25, "eval.linear.layers": ["block1", "block2", "pre_logits"]}))[0]
    seen = []
    plain = method.represent_layers
    method.represent_layers = lambda x, *a: seen.append(x.clone()) or plain(x, *a)
    m = LinearProbe(cfg).run(method, suite, torch.device("cpu"), tmp_path)
    train = suite.split("train")
    held = (tmp_path / "holdout.txt").read_text().split()
    assert len(held) == 16 and len(set(held)) == 16  # a quarter of the 64 train images
    assert all((Path(train.root) / rel).is_file() for rel in held)
    # The same images for every run: the split's seed is fixed, not the run's.
    from evals.linear import holdout_split

    fit, hold = holdout_split(train, 0.25, tmp_path / "again")
    assert (tmp_path / "again" / "holdout.txt").read_text().split() == held
    assert not set(fit) & set(hold) and len(fit) + len(hold) == 64
    # Training saw 48 images (3 steps of 16); the held-out 16 and the 359 val images were only scored.
    assert sum(len(x) for x in seen) == 2 + 48 + 16 + 359
    layers = ["block1", "block2", "pre_logits"]
    best = max(layers, key=lambda l: m[f"{l}_holdout_top1"])
    assert m["best_layer"] == float(PROBE_LAYERS.index(best))
    assert (m["top1"], m["holdout_top1"]) == (m[f"{best}_top1"], m[f"{best}_holdout_top1"])
