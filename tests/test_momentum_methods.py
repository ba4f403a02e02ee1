"""The momentum-encoder and memory-bank methods' own logic: MoCo v1-v3, BYOL, SimSiam,
InstDisc and PIRL (queues, EMA targets, stop-gradients, schedules, banks, NCE normaliser,
jigsaw views, and that their state survives a checkpoint)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from harness import registry
from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from harness.errors import UsageError
from harness.pipeline import RunRequest, build_config
from methods.components.memory import Queue
from methods.instdisc import bank_logits
from methods.losses import instdisc_estimate_z, moco_v3_loss, simsiam_loss
from methods.moco import SplitBatchNorm

B = 8


def make(name: str, **overrides):
    cfg = build_config(RunRequest(method=name, overrides={"train.batch_size": B, **overrides}))[0]
    torch.manual_seed(0)
    return registry.methods.get(name)(cfg).train()


def views(n_views: int = 2, b: int = B, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(n_views)]


def target_of(m) -> nn.Module:
    return m.target if hasattr(m, "target") else m.key_encoder


def online_of(m) -> nn.Module:
    return m.online() if hasattr(m, "online") else m.query_encoder()


# -- MoCo's queue ------------------------------------------------------------------------

def test_queue_enqueue_replaces_oldest_rows_and_wraps():
    q = Queue(6, 4)
    before = q.keys.clone()
    a, b, c = (torch.full((2, 4), float(i)) for i in (1, 2, 3))
    q.enqueue(a)
    assert int(q.ptr) == 2
    torch.testing.assert_close(q.keys[:2], a)
    torch.testing.assert_close(q.keys[2:], before[2:])  # the rest untouched
    q.enqueue(b)
    q.enqueue(c)
    assert int(q.ptr) == 0  # wrapped around
    torch.testing.assert_close(q.keys, torch.cat([a, b, c]))
    q.enqueue(torch.full((2, 4), 4.0))
    torch.testing.assert_close(q.keys[:2], torch.full((2, 4), 4.0))  # the oldest batch goes first
    with pytest.raises(ValueError, match="multiple"):
        q.enqueue(torch.zeros(4, 4))  # 6 is not a multiple of 4


def test_moco_rejects_a_queue_that_is_not_a_multiple_of_the_batch():
    with pytest.raises(UsageError, match="queue_size"):
        make("moco_v2", **{"method.queue_size": 1020})


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_moco_step_enqueues_the_normalised_keys_of_the_batch(name):
    m = make(name, **{"method.bn_splits": 1})
    x_q, x_k = views()
    old = m.queue.keys.clone()
    out = m.training_step(((x_q, x_k), torch.zeros(B)))
    assert torch.isfinite(out["loss"]) and 0 <= float(out["contrast_acc"]) <= 1
    assert int(m.queue.ptr) == B
    # Train-mode BN uses batch statistics, so the key encoder gives the same keys again.
    expected = F.normalize(m.keys(x_k), dim=1)
    torch.testing.assert_close(m.queue.keys[:B], expected)
    torch.testing.assert_close(m.queue.keys.norm(dim=1), torch.ones(len(m.queue)))
    torch.testing.assert_close(m.queue.keys[B:], old[B:])


def test_moco_v1_has_a_linear_head_and_v2_an_mlp():
    v1, v2 = make("moco_v1"), make("moco_v2")
    assert [type(l) for l in v1.projector] == [nn.Linear]
    assert [type(l) for l in v2.projector] == [nn.Linear, nn.ReLU, nn.Linear]
    assert v1.projector[0].out_features == v2.projector[-1].out_features == 128


# -- shuffle-BN --------------------------------------------------------------------------

def test_split_batchnorm_normalises_interleaved_sub_batches():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    split = SplitBatchNorm(3, splits=2).train()
    out = split(x)
    for s in range(2):
        ref = nn.BatchNorm2d(3).train()
        torch.testing.assert_close(out[s::2], ref(x[s::2]))  # sample i is in sub-batch i mod 2
    split.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())  # same state-dict keys as BatchNorm2d
    torch.testing.assert_close(split(x), plain(x))


def test_single_process_keys_without_splits_are_the_key_encoder_output():
    m = make("moco_v2", **{"method.bn_splits": 1})
    x = views(1)[0]
    k = m.keys(x)
    torch.testing.assert_close(k, m.key_encoder["projector"](m.key_encoder["backbone"](x)))
    # With splits, keys are computed on a permuted batch and put back in order: each row is
    # still the key of its own image (checked in eval mode, where BN ignores the batch).
    m = make("moco_v2", **{"method.bn_splits": 2}).eval()
    torch.testing.assert_close(m.keys(x), m.key_encoder["projector"](m.key_encoder["backbone"](x)))
    assert any(isinstance(mod, SplitBatchNorm) for mod in m.key_encoder.modules())


# -- EMA targets and stop-gradients ---------------------------------------------------------

@pytest.mark.parametrize("name", ["moco_v1", "moco_v2", "moco_v3", "byol"])
def test_no_gradient_reaches_the_target_and_the_ema_update_is_exact(name):
    m = make(name)
    target = target_of(m)
    assert all(not p.requires_grad for p in target.parameters())
    # Starts as an exact copy of the online encoder.
    for t, o in zip(target.parameters(), online_of(m).parameters()):
        torch.testing.assert_close(t, o)
    x1, x2 = views()
    m.training_step(((x1, x2), torch.zeros(B)))["loss"].backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in m.backbone.parameters())
    with torch.no_grad():  # move the online network so the EMA has something to do
        for p in online_of(m).parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = [t.clone() for t in target.parameters()]
    online = [o.clone() for o in online_of(m).parameters()]
    step, total = 3, 50
    mom = m.tau(step, total) if name == "byol" else m.key_momentum(step, total)
    m.on_step_end(step, total)
    for t, t0, o in zip(target.parameters(), before, online):
        torch.testing.assert_close(t, mom * t0 + (1 - mom) * o)


def test_simsiam_stop_gradient_on_the_target_branch():
    m = make("simsiam")
    x1, x2 = views()

    def backbone_grads(loss):
        m.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in m.backbone.parameters()]

    def manual(stop_gradient: bool):
        z1, z2 = m.projector(m.backbone(x1)), m.projector(m.backbone(x2))
        p1, p2 = m.predictor(z1), m.predictor(z2)
        t1, t2 = (z1.detach(), z2.detach()) if stop_gradient else (z1, z2)
        return 0.5 * simsiam_loss(p1, t2) + 0.5 * simsiam_loss(p2, t1)

    loss = m.training_step(((x1, x2), torch.zeros(B)))["loss"]
    ref = manual(True)
    torch.testing.assert_close(loss, ref)
    g = backbone_grads(loss)
    for a, b in zip(g, backbone_grads(ref)):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(g, backbone_grads(manual(False))))
    assert isinstance(m.projector[-1], nn.BatchNorm1d) and not m.projector[-1].affine  # output BN, no affine
    assert m.predictor[0].out_features == m.cfg["method.pred_hidden"]


@pytest.mark.parametrize("fixed", [True, False])
def test_simsiam_predictor_lr_stays_at_train_lr_while_the_rest_follows_the_schedule(fixed, tmp_path):
    from harness.data.digits import DigitsSuite
    from harness.data.loading import SeededTransformDataset
    from harness.trainer import HookBase, Trainer

    m = make("simsiam", **{"train.epochs": 3, "train.warmup_epochs": 1, "method.fix_pred_lr": fixed})
    suite = DigitsSuite(image_size=m.cfg["data.image_size"])
    suite.train_subset = 2 * B
    data = SeededTransformDataset(suite.split("train"), m.train_transform(), seed=0)
    predictor = {id(p) for p in m.predictor.parameters()}
    seen: list[tuple[float, float]] = []

    class RecordLr(HookBase):
        def after_step(self, trainer, logs):
            lrs = {"pred": set(), "rest": set()}
            for g in trainer.optimizer.param_groups:
                for p in g["params"]:
                    lrs["pred" if id(p) in predictor else "rest"].add(g["lr"])
            assert len(lrs["pred"]) == 1 and len(lrs["rest"]) == 1
            seen.append((lrs["pred"].pop(), lrs["rest"].pop()))

    trainer = Trainer(m, data, m.cfg.section("train"), 0, tmp_path, torch.device("cpu"), hooks=[RecordLr()])
    trainer.fit()
    base, schedule = m.cfg["train.lr"], trainer.lr_schedule
    assert len(seen) == len(schedule) == 6 and schedule[0] == 0.0 and schedule[-1] < base
    np.testing.assert_allclose([r for _, r in seen], schedule)
    np.testing.assert_allclose([p for p, _ in seen], [base] * 6 if fixed else schedule)


# -- momentum schedules --------------------------------------------------------------------

def test_byol_tau_goes_from_0996_to_1_along_a_cosine():
    cfg = build_config(RunRequest(method="byol", suite="imagenet"))[0]
    assert cfg["method.tau_base"] == 0.996
    m = registry.methods.get("byol")(build_config(RunRequest(method="byol", overrides={"method.tau_base": 0.996}))[0])
    total = 1000
    taus = np.array([m.tau(k, total) for k in range(total)])
    assert taus[0] == pytest.approx(0.996, abs=1e-12)
    assert taus[-1] == pytest.approx(1.0, abs=1e-7)
    assert taus[total // 2] == pytest.approx(0.998, abs=1e-5)  # half-way on the cosine
    assert np.all(np.diff(taus) > 0)


def test_moco_v3_momentum_rises_to_1_and_v1_v2_are_constant():
    m = make("moco_v3", **{"method.momentum": 0.99})
    total = 400
    ms = np.array([m.key_momentum(k, total) for k in range(total)])
    assert 0.99 < ms[0] < 0.9901 and ms[-1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(ms) >= 0)
    v2 = make("moco_v2", **{"method.momentum": 0.999})
    assert v2.key_momentum(0, total) == v2.key_momentum(total - 1, total) == 0.999


# -- MoCo v3 ---------------------------------------------------------------------------------

def test_moco_v3_loss_is_symmetric_in_the_two_views():
    m = make("moco_v3")
    x1, x2 = views()
    a = m.training_step(((x1, x2), None))["loss"]
    b = m.training_step(((x2, x1), None))["loss"]
    torch.testing.assert_close(a, b)
    q1 = m.predictor(m.projector(m.backbone(x1)))
    q2 = m.predictor(m.projector(m.backbone(x2)))
    k1, k2 = m.keys(x1), m.keys(x2)
    t = m.cfg["method.temperature"]
    torch.testing.assert_close(a, moco_v3_loss(q1, k2, t) + moco_v3_loss(q2, k1, t))


def test_moco_v3_heads_follow_the_official_builder():
    m = make("moco_v3")
    proj, pred = m.projector, m.predictor
    assert [type(l) for l in proj] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert not proj[-1].affine and all(l.bias is None for l in proj if isinstance(l, nn.Linear))
    assert [type(l) for l in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]  # ResNet: no last BN
    cfg = build_config(RunRequest(method="moco_v3", suite="imagenet", overrides={"method.recipe": "vit_small"}))[0]
    assert cfg["method.proj_layers"] == 3 and cfg["method.pred_last_bn"] and cfg["method.temperature"] == 0.2
    assert cfg["train.optimizer"] == "adamw"


def test_moco_v3_vit_freezes_the_random_patch_projection():
    m = make("moco_v3", **{"backbone.name": "vit_tiny", "backbone.width": 1, "method.stop_grad_patch_embed": True,
                           "method.proj_layers": 3, "method.pred_last_bn": True})
    embed = list(m.backbone.vit.patch_embed.parameters())
    assert embed and all(not p.requires_grad for p in embed)
    x1, x2 = views()
    m.training_step(((x1, x2), None))["loss"].backward()
    assert all(p.grad is None for p in embed)
    assert m.backbone.vit.blocks[0].attn.qkv.weight.grad is not None
    with pytest.raises(UsageError, match="ViT"):
        make("moco_v3", **{"method.stop_grad_patch_embed": True})


# -- InstDisc ------------------------------------------------------------------------------

def instdisc(n: int = 40, **overrides):
    m = make("instdisc", **{"method.nce_k": 64, **overrides})
    m.prepare(range(n))
    return m


def test_instdisc_updates_and_normalises_the_bank_rows_of_the_batch():
    m = instdisc()
    idx = torch.tensor([3, 7, 11, 12, 20, 25, 30, 39])
    x = views(1)[0]
    before = m.memory.bank.clone()
    m.training_step((x, torch.zeros(B), idx))
    f = m.embed(x).detach()  # train-mode BN: the same features the step used
    bank = m.memory.bank
    expected = F.normalize(0.5 * before[idx] + 0.5 * f, dim=1)
    torch.testing.assert_close(bank[idx], expected)
    torch.testing.assert_close(bank[idx].norm(dim=1), torch.ones(B))
    rest = torch.ones(len(bank), dtype=torch.bool)
    rest[idx] = False
    torch.testing.assert_close(bank[rest], before[rest])


def test_instdisc_z_is_estimated_on_the_first_step_then_fixed():
    m = instdisc()
    assert float(m.z) == 0
    x1, x2 = views()
    idx = torch.arange(B)
    bank0 = copy.deepcopy(m.memory)
    rng = torch.get_rng_state()
    m.training_step((x1, torch.zeros(B), idx))
    z1 = float(m.z)
    torch.set_rng_state(rng)  # the same negatives, drawn against the bank as it was
    pos, neg = bank_logits(m.embed(x1), bank0, idx, m.cfg["method.nce_k"], m.cfg["method.temperature"])
    assert z1 > 0 and z1 == pytest.approx(float(instdisc_estimate_z(pos, neg, len(bank0))), rel=1e-5)
    m.training_step((x2, torch.zeros(B), idx + B))
    m.training_step((x1, torch.zeros(B), idx))
    assert float(m.z) == z1


# -- PIRL ------------------------------------------------------------------------------------

def test_pirl_jigsaw_view_is_nine_shuffled_tiles_of_the_image():
    m = make("pirl", **{"method.aug.jitter": 0.0, "method.aug.hue": 0.0, "method.aug.grayscale_p": 0.0,
                        "method.aug.flip": False, "method.tile_crop_scale": [1.0, 1.0]})
    grid, transform = m.grid, m.train_transform()
    pixels = np.random.default_rng(0).integers(0, 256, (grid.size, grid.size, 3), dtype=np.uint8)
    src = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    room = grid.cell - grid.tile
    orders = []
    for seed in range(4):
        torch.manual_seed(seed)
        image, tiles = transform(Image.fromarray(pixels))
        assert image.shape == (3, 32, 32) and tiles.shape == (9, 3, grid.tile, grid.tile)
        cells = []
        for tile in tiles * std + mean:  # undo the normalisation: raw pixels of the crop
            hits = [(r, q) for r in range(grid.n) for q in range(grid.n)
                    for dy in range(room + 1) for dx in range(room + 1)
                    if torch.allclose(tile, src[:, r * grid.cell + dy: r * grid.cell + dy + grid.tile,
                                                    q * grid.cell + dx: q * grid.cell + dx + grid.tile], atol=1e-5)]
            assert hits, "a tile is not a window inside any grid cell"
            cells.append(hits[0])
        assert sorted(cells) == [(r, q) for r in range(3) for q in range(3)]  # one tile from every cell
        orders.append(cells)
    assert any(o != sorted(o) for o in orders)  # presented in a random order


def test_pirl_encodes_tiles_with_the_shared_backbone_and_banks_image_features():
    m = make("pirl", **{"method.nce_k": 64})
    m.prepare(range(40))
    torch.testing.assert_close(m.memory.bank.norm(dim=1), torch.ones(40))
    x = views(1)[0]
    tiles = torch.randn(B, 9, 3, m.grid.tile, m.grid.tile)
    g = m.jigsaw_embedding(tiles)
    assert g.shape == (B, m.cfg["method.embedding_dim"])
    # g sees the tiles in their order: permuting them changes it.
    assert not torch.allclose(g, m.jigsaw_embedding(tiles[:, torch.randperm(9)]), atol=1e-4)
    idx = torch.arange(B) * 5
    before = m.memory.bank.clone()
    out = m.training_step(((x, tiles), torch.zeros(B), idx))
    lam = m.cfg["method.lambda"]
    torch.testing.assert_close(out["loss"], lam * out["loss_jigsaw"] + (1 - lam) * out["loss_image"])
    f = m.image_embedding(x).detach()
    torch.testing.assert_close(m.memory.bank[idx], F.normalize(0.5 * before[idx] + 0.5 * f, dim=1))


# -- checkpointed state ----------------------------------------------------------------------

def batch_for(name: str, m, step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    if name == "instdisc":
        return x[0], torch.zeros(B), torch.arange(B) + B * (step % 2)
    if name == "pirl":
        tiles = torch.randn(B, 9, 3, m.grid.tile, m.grid.tile, generator=g)
        return (x[0], tiles), torch.zeros(B), torch.arange(B) + B * (step % 2)
    return (x[0], x[1]), torch.zeros(B)


@pytest.mark.parametrize("name,state", [
    ("moco_v2", ["queue.keys", "queue.ptr", "key_encoder.backbone.stem.0.weight"]),
    ("moco_v3", ["key_encoder.projector.0.weight"]),
    ("byol", ["target.backbone.stem.0.weight"]),
    ("instdisc", ["memory.bank", "z"]),
    ("pirl", ["memory.bank", "z"]),
])
def test_state_dict_round_trip_gives_the_same_next_step(name, state):
    extra = {"method.nce_k": 64} if name in ("instdisc", "pirl") else {}
    a = make(name, **extra)
    if a.needs_index:
        a.prepare(range(2 * B))
    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.05)
    for step in range(3):
        loss = a.training_step(batch_for(name, a, step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        a.on_step_end(step, 10)
    sd = copy.deepcopy(a.state_dict())
    assert all(k in sd for k in state)
    b = make(name, **extra)  # fresh: other random init, empty bank, Z unset
    b.load_state_dict(sd)
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)
    batch = batch_for(name, a, 3)
    rng = torch.get_rng_state()
    la = a.training_step(batch)["loss"]
    torch.set_rng_state(rng)
    lb = b.training_step(batch)["loss"]
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
