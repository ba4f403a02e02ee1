"""SwAV and DINO: multi-crop views, SwAV's prototypes, codes and queue, DINO's teacher
(no gradient, EMA, center, temperature, frozen last layer, global crops only), and that
their state survives a checkpoint."""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness import registry
from harness.data.digits import DigitsSuite
from harness.data.loading import SeededTransformDataset
from harness.pipeline import RunRequest, build_config
from harness.seeding import seed_everything
from harness.optim import param_groups_no_decay
from harness.trainer import HookBase, Trainer
from methods import losses
from methods.components.momentum import cosine_increase
from methods.dino import teacher_temp_schedule


def make(method: str, suite: str = "digits", **overrides):
    cfg = build_config(RunRequest(method=method, suite=suite, overrides=overrides))[0]
    return registry.methods.get(method)(cfg)


def digits_batch(method, n: int = 8, seed: int = 0):
    """``n`` digits through the method's own multi-crop transform, collated as the loader does."""
    suite = DigitsSuite(image_size=32)
    suite.train_subset = n
    data = SeededTransformDataset(suite.split("train"), method.train_transform(), seed=seed)
    samples = [data[i] for i in range(n)]
    views = [torch.stack([s[0][v] for s in samples]) for v in range(len(samples[0][0]))]
    return views, torch.tensor([s[1] for s in samples])


class Record(HookBase):
    def __init__(self, fn):
        self.fn, self.rows = fn, []

    def after_step(self, trainer, logs):
        self.rows.append(self.fn(trainer.method))


def train(method, n_images: int, batch: int, epochs: int, tmp_path, hooks=()):
    suite = DigitsSuite(image_size=32)
    suite.train_subset = n_images
    data = SeededTransformDataset(suite.split("train"), method.train_transform(), seed=0)
    train_cfg = {**method.cfg.section("train"), "batch_size": batch, "epochs": epochs, "warmup_epochs": 0}
    return Trainer(method, data, train_cfg, 0, tmp_path, torch.device("cpu"), hooks=list(hooks)).fit()


# -- multi-crop -------------------------------------------------------------------------

@pytest.mark.parametrize("method,suite,n_local,sizes", [
    ("swav", "imagenet", 6, (224, 96)),  # 2x224 + 6x96 (swav_800ep_pretrain.sh)
    ("dino", "imagenet", 10, (224, 96)),  # 2x224 + 10x96 (DINO Table 8)
    ("swav", "digits", 4, (32, 16)),
    ("dino", "digits", 4, (32, 16)),
])
def test_multicrop_view_counts_and_sizes(method, suite, n_local, sizes):
    m = make(method, suite)
    img = Image.fromarray((torch.rand(256, 256, 3) * 255).byte().numpy())
    torch.manual_seed(0)
    views = m.train_transform()(img)
    assert len(views) == 2 + n_local
    assert [tuple(v.shape) for v in views] == [(3, sizes[0], sizes[0])] * 2 + [(3, sizes[1], sizes[1])] * n_local
    # every crop draws its own parameters
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[2], views[3])


def test_digits_profiles_do_not_flip():
    for method in ("swav", "dino"):
        assert make(method).cfg["method.aug.flip"] is False


# -- SwAV ------------------------------------------------------------------------------

def test_swav_prototypes_normalised_and_frozen_during_the_first_epoch(tmp_path):
    seed_everything(0)
    m = make("swav", **{"method.n_prototypes": 16})
    rec = Record(lambda m: (m.prototypes.weight.detach().clone(), m.prototypes.weight.grad is None))
    train(m, n_images=16, batch=8, epochs=2, tmp_path=tmp_path, hooks=[rec])  # 2 steps per epoch
    (w0, none0), (w1, none1), (w2, none2), (w3, none3) = rec.rows
    assert none0 and none1 and not none2 and not none3
    torch.testing.assert_close(w0.norm(dim=1), torch.ones(16))  # normalised before the first step
    # frozen: no update, not even weight decay (only renormalised, a no-op up to rounding)
    torch.testing.assert_close(w0, w1, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(w1, w2)  # trained from the second epoch on
    m.normalize_prototypes()
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(16))


def test_swav_codes_come_from_the_global_crops_only(monkeypatch):
    seed_everything(0)
    m = make("swav", **{"method.n_prototypes": 16})
    views, labels = digits_batch(m, n=8)
    seen = []
    real = losses.sinkhorn_knopp_distributed

    def spy(scores, *args, **kwargs):
        seen.append(scores.detach().clone())
        return real(scores, *args, **kwargs)

    monkeypatch.setattr(losses, "sinkhorn_knopp_distributed", spy)
    m.training_step((views, labels))
    with torch.no_grad():
        scores = m.prototypes(m.embed(views)).split(8)
    assert len(seen) == 2
    for got, want in zip(seen, scores[:2]):
        torch.testing.assert_close(got, want)


def test_swav_queue_fills_from_its_start_epoch_newest_first_and_is_used_once_full():
    seed_everything(0)
    m = make("swav", **{"method.n_prototypes": 16, "method.queue_length": 20, "method.epoch_queue_starts": 1,
                        "train.batch_size": 8})
    assert m.queue.shape == (2, 16, m.cfg["method.feat_dim"])  # trimmed to a multiple of the batch
    assert not bool(m.queue_filling)
    views, labels = digits_batch(m, n=8)

    def step(s):
        out = m.training_step((views, labels))
        m.before_optimizer_step(s, 100, 2)
        m.on_step_end(s, 100)
        return out

    step(0)
    assert not m.queue.any()  # epoch 0: no queue yet
    step(1)
    assert bool(m.queue_filling)  # from epoch 1
    assert step(2)["queue_used"] == 0
    with torch.no_grad():
        z = m.embed(views)[:16].view(2, 8, -1)
    torch.testing.assert_close(m.queue[:, :8], z)
    assert not m.queue[:, 8:].any()
    assert step(3)["queue_used"] == 0  # full only after this step
    assert step(4)["queue_used"] == 1
    assert "queue" in m.state_dict() and "queue_filling" in m.state_dict()


def test_swav_queue_scores_join_the_sinkhorn_batch(monkeypatch):
    seed_everything(0)
    m = make("swav", **{"method.n_prototypes": 16, "method.queue_length": 16, "method.epoch_queue_starts": 0,
                        "train.batch_size": 8})
    views, labels = digits_batch(m, n=8)
    m.training_step((views, labels))
    m.training_step((views, labels))  # the queue is now full
    seen = []
    real = losses.sinkhorn_knopp_distributed
    monkeypatch.setattr(losses, "sinkhorn_knopp_distributed", lambda s, *a, **k: seen.append(s.shape) or real(s, *a, **k))
    assert m.training_step((views, labels))["queue_used"] == 1
    assert seen == [torch.Size([24, 16])] * 2  # 16 queued + 8 in the batch, per global crop


# -- DINO ------------------------------------------------------------------------------

def small_dino(**overrides):
    return make("dino", **{"method.out_dim": 64, "method.head_hidden": 32, "method.head_bottleneck": 16, **overrides})


def test_dino_teacher_gets_no_gradient_and_student_does():
    seed_everything(0)
    m = small_dino()
    views, labels = digits_batch(m)
    m.training_step((views, labels))["loss"].backward()
    teacher = list(m.backbone.parameters()) + list(m.teacher_head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in m.student_backbone.parameters())
    assert m.student_head.mlp[0].weight.grad is not None
    optimised = {id(p) for g in param_groups_no_decay(m, 0.04) for p in g["params"]}
    assert not optimised & {id(p) for p in teacher}


def test_dino_ema_update_and_momentum_schedule_endpoints():
    m = small_dino()
    total = 100
    sched = cosine_increase(0.99, 1.0, total)
    assert sched[0] == pytest.approx(0.99) and sched[-1] == pytest.approx(1.0, abs=1e-5)
    assert all(a <= b for a, b in zip(sched, sched[1:]))
    with torch.no_grad():
        for p in m.student_backbone.parameters():
            p.add_(1.0)
        for p in m.student_head.parameters():
            p.add_(1.0)
    t0 = [p.clone() for p in m.backbone.parameters()] + [p.clone() for p in m.teacher_head.parameters()]
    s = [p.clone() for p in m.student_backbone.parameters()] + [p.clone() for p in m.student_head.parameters()]
    stats = [b.clone() for b in m.backbone.buffers()]
    m.on_step_end(37, total)
    mom = float(sched[37])
    new = list(m.backbone.parameters()) + list(m.teacher_head.parameters())
    for t, o, n in zip(t0, s, new):
        torch.testing.assert_close(n, mom * t + (1 - mom) * o)
    # the teacher's BN statistics are its own (official code averages parameters only)
    for a, b in zip(stats, m.backbone.buffers()):
        assert torch.equal(a, b)


def test_dino_center_update():
    seed_everything(0)
    m = small_dino()
    views, labels = digits_batch(m)
    with torch.no_grad():
        m.center.fill_(0.5)
        t = m.teacher_head(m.backbone(torch.cat(views[:2])))
    m.training_step((views, labels))
    torch.testing.assert_close(m.center, 0.9 * 0.5 + 0.1 * t.mean(dim=0, keepdim=True))


def test_dino_loss_is_the_official_cross_entropy_on_the_right_pairs():
    seed_everything(0)
    m = small_dino()
    views, labels = digits_batch(m, n=4)
    center = m.center.clone()
    out = m.training_step((views, labels))
    with torch.no_grad():
        t = m.teacher_head(m.backbone(torch.cat(views[:2]))).chunk(2)
        s = m.student_head(torch.cat([m.student_backbone(torch.cat(views[:2])),
                                      m.student_backbone(torch.cat(views[2:]))])).chunk(len(views))
    want = 0.0
    for i in range(2):
        q = F.softmax((t[i] - center) / 0.04, dim=-1)
        for j in range(len(views)):
            if i != j:
                want += (-q * F.log_softmax(s[j] / 0.1, dim=-1)).sum(-1).mean() / (2 * len(views) - 2)
    torch.testing.assert_close(out["loss"].detach(), want)


def test_dino_teacher_temperature_schedule_endpoints():
    cfg = make("dino", "imagenet").cfg  # 0.04 -> 0.07 over the first 30 epochs
    sched = teacher_temp_schedule(cfg, steps_per_epoch=10, total_steps=8000)
    assert sched[0] == pytest.approx(0.04) and sched[150] == pytest.approx(0.055)
    assert sched[300] == pytest.approx(0.07) and sched[-1] == pytest.approx(0.07)
    assert all(a <= b for a, b in zip(sched, sched[1:]))
    m = small_dino(**{"method.warmup_teacher_temp_epochs": 2})
    assert float(m.teacher_temp) == pytest.approx(0.04)  # the first step's value
    sched = teacher_temp_schedule(m.cfg, 5, 50)
    for step in range(12):
        m.before_optimizer_step(step, 50, 5)
        m.on_step_end(step, 50)
        assert float(m.teacher_temp) == pytest.approx(sched[step + 1])
    assert float(m.teacher_temp) == pytest.approx(0.07)
    assert float(make("dino", "imagenet", **{"method.recipe": "resnet50"}).teacher_temp) == pytest.approx(0.04)


def test_dino_last_layer_frozen_in_the_first_epoch(tmp_path):
    seed_everything(0)
    m = small_dino()
    last = m.student_head.last_layer
    rec = Record(lambda m: [p.detach().clone() for p in m.student_head.last_layer.parameters()])
    rec_grad = Record(lambda m: all(p.grad is None for p in m.student_head.last_layer.parameters()))
    before = [p.detach().clone() for p in last.parameters()]
    train(m, n_images=16, batch=8, epochs=2, tmp_path=tmp_path, hooks=[rec, rec_grad])
    assert rec_grad.rows == [True, True, False, False]
    for a, b in zip(before, rec.rows[1]):
        assert torch.equal(a, b)
    assert not torch.equal(rec.rows[1][-1], rec.rows[3][-1])  # the direction weights train from epoch 1
    # the norm of every prototype stays 1 (norm_last_layer)
    torch.testing.assert_close(last.weight.norm(dim=1), torch.ones(last.weight.shape[0]))


def test_dino_clips_each_parameter_gradient():
    seed_everything(0)
    m = small_dino(**{"method.clip_grad": 1e-3})
    views, labels = digits_batch(m)
    (m.training_step((views, labels))["loss"] * 1e3).backward()
    m.before_optimizer_step(100, 1000, 10)
    norms = [p.grad.norm() for p in m.student_backbone.parameters()]
    assert max(norms) <= 1e-3 * (1 + 1e-4)


def test_dino_teacher_sees_only_the_global_crops():
    seed_everything(0)
    m = small_dino()
    views, labels = digits_batch(m, n=4)
    teacher, student = [], []
    m.backbone.register_forward_pre_hook(lambda mod, args: teacher.append(tuple(args[0].shape)))
    m.student_backbone.register_forward_pre_hook(lambda mod, args: student.append(tuple(args[0].shape)))
    m.training_step((views, labels))
    assert teacher == [(8, 3, 32, 32)]
    assert student == [(8, 3, 32, 32), (16, 3, 16, 16)]


def test_dino_features_read_the_teacher(tmp_path):
    seed_everything(0)
    m = small_dino()
    train(m, n_images=16, batch=8, epochs=2, tmp_path=tmp_path)
    m.eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(m.features(x), m.backbone(x))
    assert not torch.allclose(m.features(x), m.student_backbone(x))
    assert m.num_features == m.backbone.num_features


def test_dino_vit_reads_local_crops_with_resampled_positions():
    seed_everything(0)
    m = small_dino(**{"backbone.name": "vit_tiny", "backbone.width": 1, "method.patch_size": 4})
    views, labels = digits_batch(m, n=2)
    teacher = []
    m.backbone.register_forward_pre_hook(lambda mod, args: teacher.append(tuple(args[0].shape)))
    out = m.training_step((views, labels))
    assert math.isfinite(out["loss"].item()) and teacher == [(4, 3, 32, 32)]
    out["loss"].backward()
    assert m.student_backbone.vit.pos_embed.grad is not None
    assert m.features(torch.randn(2, 3, 32, 32)).shape == (2, 192)


# -- checkpoints -----------------------------------------------------------------------

@pytest.mark.parametrize("method,overrides", [
    ("dino", {"method.out_dim": 64, "method.head_hidden": 32, "method.head_bottleneck": 16}),
    ("swav", {"method.n_prototypes": 16, "method.queue_length": 16, "method.epoch_queue_starts": 1}),
])
def test_state_round_trips_to_an_identical_next_step(method, overrides, tmp_path):
    seed_everything(0)
    m = make(method, **overrides, **{"train.batch_size": 8})
    train(m, n_images=16, batch=8, epochs=3, tmp_path=tmp_path)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    if method == "dino":
        assert state["center"].abs().sum() > 0 and float(state["teacher_temp"]) > 0.04
    else:
        assert state["queue"][:, -1].any()
    seed_everything(123)  # a fresh instance starts from other weights
    fresh = make(method, **overrides, **{"train.batch_size": 8})
    fresh.load_state_dict(state)
    fresh.train()
    views, labels = digits_batch(m, n=8, seed=5)
    torch.manual_seed(0)
    a = m.training_step((views, labels))["loss"]
    torch.manual_seed(0)
    b = fresh.training_step((views, labels))["loss"]
    assert torch.equal(a, b)
    for key, value in m.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
