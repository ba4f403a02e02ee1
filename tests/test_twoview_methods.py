"""Two-view methods (SimCLR, SupCon, Barlow Twins, VICReg) and CMC: each training step
computes the standalone loss of methods/losses.py on the method's own projections, views
are drawn per sample, and CMC's encoders, memory banks and losses do what the paper says."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2 as T

from harness import registry
from harness.data.loading import SeededTransformDataset
from harness.errors import UsageError
from harness.pipeline import RunRequest, build_config
from methods.components.color import lab_to_rgb, rgb_to_lab
from methods.losses import barlow_twins_loss, instdisc_nce_loss, nt_xent, supcon_loss, vicreg_loss

SMALL = {"backbone.width": 0.25}


def make(name, suite="digits", **overrides):
    cfg = build_config(RunRequest(method=name, suite=suite, overrides={**SMALL, **overrides}))[0]
    torch.manual_seed(0)
    return registry.methods.get(name)(cfg).train(), cfg


def two_view_batch(b=8, labels=None):
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)]
    return views, labels if labels is not None else torch.arange(b) % 3


# -- wire-up: the step's loss is the standalone loss on the same projections -------------

def test_simclr_step_is_nt_xent_on_its_projections():
    m, cfg = make("simclr")
    views, y = two_view_batch()
    loss = m.training_step((views, y))["loss"]
    z1, z2 = m.embed(views)
    torch.testing.assert_close(loss, nt_xent(z1, z2, cfg["method.temperature"]))
    assert z1.shape == (8, cfg["method.proj_dim"])


def test_supcon_step_is_supcon_loss_with_labels():
    m, cfg = make("supcon")
    views, y = two_view_batch(labels=torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
    loss = m.training_step((views, y))["loss"]
    feats = m.embed(views)
    assert feats.shape == (8, 2, cfg["method.proj_dim"])
    torch.testing.assert_close(feats.norm(dim=2), torch.ones(8, 2))
    torch.testing.assert_close(loss, supcon_loss(feats, y, cfg["method.temperature"]))
    # The labels matter: same-class views are positives, so it is not the SimCLR loss.
    assert not torch.allclose(loss, nt_xent(feats[:, 0], feats[:, 1], cfg["method.temperature"]))


def test_supcon_without_labels_equals_simclr_loss():
    m, cfg = make("supcon", **{"method.use_labels": False})
    views, y = two_view_batch(labels=torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
    loss = m.training_step((views, y))["loss"]
    feats = m.embed(views)
    torch.testing.assert_close(loss, nt_xent(feats[:, 0], feats[:, 1], cfg["method.temperature"]))
    # ... and the labels are really ignored.
    torch.testing.assert_close(m.training_step((views, torch.zeros(8, dtype=torch.long)))["loss"], loss)


def test_supcon_says_it_uses_labels():
    cls = registry.methods.get("supcon")
    assert "label" in cls.description.lower() and "supervised" in cls.description.lower()


def test_barlow_twins_step_is_barlow_twins_loss():
    m, cfg = make("barlow_twins")
    views, y = two_view_batch()
    loss = m.training_step((views, y))["loss"]
    z1, z2 = m.embed(views)
    torch.testing.assert_close(loss, cfg["method.scale_loss"] * barlow_twins_loss(z1, z2, cfg["method.lambd"]))


@pytest.mark.parametrize("std_average", [True, False])
def test_vicreg_step_is_vicreg_loss(std_average):
    m, cfg = make("vicreg", **{"method.std_average": std_average})
    views, y = two_view_batch()
    loss = m.training_step((views, y))["loss"]
    z1, z2 = m.embed(views)
    std = cfg["method.std_coeff"] / (2 if std_average else 1)  # the official code averages the two terms
    torch.testing.assert_close(loss, vicreg_loss(z1, z2, cfg["method.sim_coeff"], std, cfg["method.cov_coeff"]))


# -- recipes --------------------------------------------------------------------------

def test_paper_recipes():
    simclr = build_config(RunRequest(method="simclr", suite="imagenet"))[0]
    assert simclr["train.lr"] == pytest.approx(0.3 * simclr["train.batch_size"] / 256)
    assert (simclr["train.optimizer"], simclr["method.temperature"], simclr["train.weight_decay"]) == ("lars", 0.1, 1e-6)
    assert simclr["method.aug.blur_p"] == 0.5 and simclr["method.aug.jitter"] == pytest.approx(0.8)
    assert build_config(RunRequest(method="simclr", suite="imagenet", overrides={"method.recipe": "ep100"}))[0]["train.epochs"] == 100
    bt = build_config(RunRequest(method="barlow_twins", suite="imagenet"))[0]
    assert bt["method.lambd"] == 0.0051 and "5e-3" in bt.sources["method.lambd"]
    assert bt["method.bias_lr_ratio"] == pytest.approx(0.0048 / 0.2) and bt["method.projector"] == [8192] * 3
    vic = build_config(RunRequest(method="vicreg", suite="imagenet"))[0]
    assert (vic["method.sim_coeff"], vic["method.std_coeff"], vic["method.cov_coeff"]) == (25.0, 25.0, 1.0)
    assert vic["method.expander"] == [8192] * 3 and vic["train.lr"] == pytest.approx(0.2 * 2048 / 256)
    cmc = build_config(RunRequest(method="cmc", suite="imagenet"))[0]
    assert cmc["method.negatives"] == "memory_bank" and cmc["method.bank_momentum"] == 0.5


def test_barlow_asymmetric_byol_views():
    m, _ = make("barlow_twins", suite="imagenet", **{"data.image_size": 32})
    v1, v2 = (t.transforms for t in m.train_transform().transforms)

    def kinds(steps):
        out = {}
        for s in steps:
            inner = s.transforms[0] if isinstance(s, T.RandomApply) else s
            out[type(inner).__name__] = s.p if hasattr(s, "p") else 1.0
        return out

    k1, k2 = kinds(v1), kinds(v2)
    assert k1["GaussianBlur"] == 1.0 and "RandomSolarize" not in k1
    assert k2["GaussianBlur"] == 0.1 and k2["RandomSolarize"] == 0.2
    jitter = next(s.transforms[0] for s in v1 if isinstance(s, T.RandomApply) and isinstance(s.transforms[0], T.ColorJitter))
    assert jitter.saturation == (0.8, 1.2) and jitter.brightness == (0.6, 1.4)  # BYOL: 0.4 / 0.4 / 0.2 / 0.1


# -- views ----------------------------------------------------------------------------

class SameImage:
    """Every index is the same picture, so any difference between samples is augmentation."""

    def __init__(self, n=6):
        rng = np.random.default_rng(0)
        self.img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.img, 0


@pytest.mark.parametrize("name", ["simclr", "supcon", "barlow_twins", "vicreg"])
def test_views_are_drawn_per_sample(name):
    m, _ = make(name)
    data = SeededTransformDataset(SameImage(), m.train_transform(), seed=0)
    views, _ = default_collate([data[i] for i in range(len(data))])
    assert len(views) == 2 and views[0].shape == (6, 3, 32, 32)
    for v in views:
        flat = v.flatten(1)
        assert torch.cdist(flat, flat).masked_fill(torch.eye(6, dtype=torch.bool), 1.0).min() > 0  # samples differ
    assert all(not torch.equal(views[0][i], views[1][i]) for i in range(6))  # the two views of one image differ


def test_cmc_crops_are_drawn_per_sample():
    m, _ = make("cmc")
    data = SeededTransformDataset(SameImage(), m.train_transform(), seed=0, with_index=True)
    rgb, _, index = default_collate([data[i] for i in range(len(data))])
    assert torch.equal(index, torch.arange(6)) and rgb.min() >= 0 and rgb.max() <= 1  # raw RGB: Lab is computed on the batch
    flat = rgb.flatten(1)
    assert torch.cdist(flat, flat).masked_fill(torch.eye(6, dtype=torch.bool), 1.0).min() > 0


# -- CMC ------------------------------------------------------------------------------

def cmc(**overrides):
    m, cfg = make("cmc", **overrides)
    m.memory_l.allocate(20)
    m.memory_ab.allocate(20)
    return m, cfg


def rgb_batch(b=6):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.6 + 0.2


def test_cmc_encoders_see_only_l_and_only_ab():
    m, _ = cmc()
    m.eval()
    seen = {}
    m.backbone.l_net.register_forward_pre_hook(lambda mod, args: seen.__setitem__("l", args[0]))
    m.backbone.ab_net.register_forward_pre_hook(lambda mod, args: seen.__setitem__("ab", args[0]))
    rgb = rgb_batch()
    lab = rgb_to_lab(rgb)
    m.embed(rgb)
    for c in range(3):  # the L encoder gets L and nothing else
        torch.testing.assert_close(seen["l"][:, c], (lab[:, 0] - 50) / 50)
    assert torch.equal(seen["ab"][:, 2], torch.zeros_like(lab[:, 0]))  # the ab encoder gets a, b and a zero channel
    torch.testing.assert_close(seen["ab"][:, :2] * 110, lab[:, 1:], atol=1e-4, rtol=1e-5)
    # Change the colour but not the lightness: the L features stay, the ab features move.
    recoloured = lab_to_rgb(torch.cat([lab[:, :1], lab[:, 1:] * 0.5], dim=1))
    assert torch.allclose(rgb_to_lab(recoloured)[:, 0], lab[:, 0], atol=1e-3)
    (l1, ab1), (l2, ab2) = m.embed(rgb), m.embed(recoloured)
    torch.testing.assert_close(l1, l2, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(ab1, ab2, atol=1e-2)


def test_cmc_features_concatenate_both_encoders():
    from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from methods.split_brain import lab_inputs

    m, _ = cmc()
    m.eval()
    rgb = rgb_batch()
    x = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    l_in, ab_in = lab_inputs(rgb_to_lab(rgb))
    expected = torch.cat([m.backbone.l_net(l_in), m.backbone.ab_net(ab_in)], dim=1)
    torch.testing.assert_close(m.features(x), expected, atol=1e-4, rtol=1e-4)
    assert m.num_features == expected.shape[1]


def test_cmc_step_is_the_memory_softmax_loss_in_both_directions():
    from methods.cmc import memory_softmax_loss

    m, cfg = cmc()
    rgb, index = rgb_batch(), torch.tensor([3, 7, 0, 19, 11, 5])
    bank_l, bank_ab = m.memory_l.bank.clone(), m.memory_ab.bank.clone()
    torch.manual_seed(5)
    out = m.training_step((rgb, torch.zeros(6, dtype=torch.long), index))
    # The same step by hand, on the banks as they were and the same drawn negatives.
    torch.manual_seed(5)
    feat_l, feat_ab = m.embed(rgb)
    neg = torch.randint(20, (6, cfg["method.nce_k"]))
    t = cfg["method.temperature"]
    expected_l = memory_softmax_loss(feat_l, bank_ab[index], bank_ab[neg], t)  # L anchors vs ab entries
    expected_ab = memory_softmax_loss(feat_ab, bank_l[index], bank_l[neg], t)  # ab anchors vs L entries
    torch.testing.assert_close(out["loss"], expected_l + expected_ab)
    # The softmax form by hand: -log of the positive's share.
    logits = torch.cat([(feat_l * bank_ab[index]).sum(1, keepdim=True), torch.einsum("bd,bkd->bk", feat_l, bank_ab[neg])], 1) / t
    torch.testing.assert_close(expected_l, -F.log_softmax(logits, dim=1)[:, 0].mean())


def test_cmc_memory_bank_update_touches_only_the_batch_rows():
    m, cfg = cmc()
    rgb, index = rgb_batch(), torch.tensor([3, 7, 0, 19, 11, 5])
    before_l, before_ab = m.memory_l.bank.clone(), m.memory_ab.bank.clone()
    m.training_step((rgb, torch.zeros(6, dtype=torch.long), index))
    feat_l, feat_ab = m.embed(rgb)
    mom = cfg["method.bank_momentum"]
    others = torch.ones(20, dtype=torch.bool)
    others[index] = False
    for bank, before, feat in ((m.memory_l.bank, before_l, feat_l), (m.memory_ab.bank, before_ab, feat_ab)):
        torch.testing.assert_close(bank[index], F.normalize(mom * before[index] + (1 - mom) * feat.detach(), dim=1))
        assert torch.equal(bank[others], before[others])
    assert "memory_l.bank" in m.state_dict() and "memory_ab.bank" in m.state_dict()


def test_cmc_nce_variant_estimates_z_once():
    m, cfg = cmc(**{"method.loss": "nce"})
    rgb, index = rgb_batch(), torch.tensor([3, 7, 0, 19, 11, 5])
    assert m.z_l < 0 and m.z_ab < 0
    bank_ab = m.memory_ab.bank.clone()
    torch.manual_seed(5)
    out = m.training_step((rgb, torch.zeros(6, dtype=torch.long), index))
    z_l, z_ab = m.z_l.clone(), m.z_ab.clone()
    assert z_l > 0 and z_ab > 0
    torch.manual_seed(5)
    feat_l, _ = m.embed(rgb)
    neg = torch.randint(20, (6, cfg["method.nce_k"]))
    t = cfg["method.temperature"]
    expected_l = instdisc_nce_loss((feat_l * bank_ab[index]).sum(1) / t, torch.einsum("bd,bkd->bk", feat_l, bank_ab[neg]) / t, 20, z_l)
    torch.testing.assert_close(out["loss_l"], expected_l)
    m.training_step((rgb, torch.zeros(6, dtype=torch.long), index))
    assert torch.equal(m.z_l, z_l) and torch.equal(m.z_ab, z_ab)  # fixed after the first step


def test_cmc_in_batch_variant():
    from methods.cmc import in_batch_cross_view_loss

    m, cfg = cmc(**{"method.negatives": "in_batch"})
    rgb = rgb_batch()
    out = m.training_step((rgb, torch.zeros(6, dtype=torch.long), torch.arange(6)))
    feat_l, feat_ab = m.embed(rgb)
    torch.testing.assert_close(out["loss"], in_batch_cross_view_loss(feat_l, feat_ab, cfg["method.temperature"]))
    with pytest.raises(UsageError):
        make("cmc", **{"method.negatives": "queue"})


# -- optimisation details -------------------------------------------------------------

def test_barlow_bias_lr_ratio_scales_only_one_dim_grads():
    m, cfg = make("barlow_twins")
    views, y = two_view_batch()
    m.training_step((views, y))["loss"].backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.before_optimizer_step(0, 10, 5)
    ratio = cfg["method.bias_lr_ratio"]
    for n, p in m.named_parameters():
        if n in before:
            torch.testing.assert_close(p.grad, before[n] * (ratio if p.ndim <= 1 else 1.0))
    with pytest.raises(UsageError):
        make("barlow_twins", **{"train.optimizer": "adamw"})


def test_scaled_bias_grads_equal_a_bias_learning_rate_under_lars():
    """With the harness LARS, scaling 1-D gradients by r is training them at r x lr."""
    from harness.optim import LARS

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(4))
    grads = [(torch.randn(4, 3), torch.randn(4)) for _ in range(3)]
    scaled = [p.detach().clone().requires_grad_() for p in (w, b)]
    ref = [p.detach().clone().requires_grad_() for p in (w, b)]
    opt_scaled = LARS(scaled, lr=0.5, weight_decay=1e-4)
    opt_ref = LARS([{"params": [ref[0]]}, {"params": [ref[1]], "lr": 0.5 * 0.024}], lr=0.5, weight_decay=1e-4)
    for gw, gb in grads:
        scaled[0].grad, scaled[1].grad = gw.clone(), gb * 0.024
        ref[0].grad, ref[1].grad = gw.clone(), gb.clone()
        opt_scaled.step()
        opt_ref.step()
    for a, r in zip(scaled, ref):
        torch.testing.assert_close(a, r)


def test_global_bn_is_a_no_op_in_one_process():
    for name in ("simclr", "barlow_twins", "vicreg", "supcon"):
        m, cfg = make(name)
        assert cfg["method.global_bn"] is True
        assert not any(isinstance(mod, torch.nn.SyncBatchNorm) for mod in m.modules())
