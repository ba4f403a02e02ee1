"""Backbones, schedules, optimizers, checkpoints, losses and pretext targets."""
import math

import numpy as np
import pytest
import torch
import torchvision

from harness.backbones import create_backbone
from harness.checkpoint import load, save_atomic
from harness.errors import UsageError
from harness.optim import LARS, step_decay, warmup_cosine
from methods.cpc_v2 import ContextNetwork, grid_size, patchify
from methods.losses import cpc_loss
from methods.rotation import rotate_batch


def n_params(m, skip=()):
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith(skip))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_standard_width_matches_torchvision(name):
    ours = create_backbone(name, width=1)
    ref = getattr(torchvision.models, name)()
    assert n_params(ours) == n_params(ref, skip=("fc.",))
    assert ours.num_features == ref.fc.in_features
    x = torch.randn(2, 3, 64, 64)
    assert ours(x).shape == (2, ours.num_features)
    assert ours.forward_maps(x).shape[1] == ours.num_features


def test_width_multiplier_scales_channels():
    w1, w2 = create_backbone("resnet50", width=1), create_backbone("resnet50", width=2)
    assert w2.num_features == 2 * w1.num_features
    assert w2.stem[0].out_channels == 128
    # Convolution parameters grow with the square of the width.
    assert 3.5 < n_params(w2) / n_params(w1) < 4.1


def test_backbone_bad_kwargs():
    with pytest.raises(UsageError, match="does not take depth"):
        create_backbone("resnet18", depth=3)
    with pytest.raises(UsageError, match="backbone.norm"):
        create_backbone("resnet18", norm="weird")


def test_layer_norm_backbone_has_no_batch_coupling():
    m = create_backbone("resnet_small", norm="layer").train()
    x = torch.randn(4, 3, 16, 16)
    alone = m(x[:1])
    together = m(x)[:1]
    torch.testing.assert_close(alone, together)


def test_warmup_cosine_shape_and_ends():
    s = warmup_cosine(1.0, 100, 10, 0.0)
    assert len(s) == 100 and s[0] == 0.0 and math.isclose(s[10], 1.0)
    assert np.all(np.diff(s[10:]) <= 1e-12) and s[-1] < 0.01


def test_step_decay_milestones():
    s = step_decay(30.0, 100, [60, 80])
    assert s[59] == 30.0 and math.isclose(s[60], 3.0) and math.isclose(s[80], 0.3)


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    w.grad = torch.full((2, 2), 4.0)
    b.grad = torch.full((2,), 4.0)
    opt.step()
    # Weights: update = eta * ||w|| / ||g|| * g = 0.1 * 2 / 8 * 4 = 0.1; biases: plain SGD.
    torch.testing.assert_close(w.data, torch.full((2, 2), 0.9))
    torch.testing.assert_close(b.data, torch.full((2,), -3.0))


def test_checkpoint_atomic_and_weights_only(tmp_path):
    p = tmp_path / "c.pt"
    save_atomic({"a": torch.arange(3), "step": 5}, p)
    assert load(p)["step"] == 5
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"x": Boom()}, p)
    assert load(p)["step"] == 5  # the previous checkpoint survives a failed write
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]


def test_rotation_targets_are_the_applied_rotations():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views, labels = rotate_batch(x)
    assert views.shape == (8, 3, 4, 4)
    for v, l in zip(views, labels.tolist()):
        # rotating back by -l quarter turns recovers one of the originals
        back = torch.rot90(v, -l, dims=(-2, -1))
        assert any(torch.equal(back, o) for o in x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(views[2], torch.rot90(x[0], 1, dims=(-2, -1)))


def test_cpc_loss_matches_manual_infonce():
    torch.manual_seed(0)
    pred, targ = torch.randn(5, 8), torch.randn(7, 8)
    pos = torch.tensor([0, 3, 6, 2, 2])
    logits = pred @ targ.t()
    manual = -(logits[torch.arange(5), pos] - logits.logsumexp(dim=1)).mean()
    torch.testing.assert_close(cpc_loss(pred, targ, pos), manual)
    # Perfect predictions with large margins give a loss near zero.
    t = torch.eye(4) * 50
    assert cpc_loss(t, t, torch.arange(4)) < 1e-6


def test_patch_grid_geometry():
    assert grid_size(32, 8, 4) == 7 and grid_size(256, 64, 32) == 7
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    p = patchify(x, 16, 8)
    assert p.shape == (2, 3, 3, 3, 16, 16)
    torch.testing.assert_close(p[1, 2, 1], x[1, :, 16:32, 8:24])


def test_context_network_is_row_causal():
    torch.manual_seed(0)
    net = ContextNetwork(6, 8, 2)
    z = torch.randn(1, 6, 5, 5)
    z2 = z.clone()
    z2[:, :, 3:] += torch.randn(1, 6, 2, 5)  # change rows 3 and 4 only
    c, c2 = net(z), net(z2)
    torch.testing.assert_close(c[:, :, :3], c2[:, :, :3])  # rows above are blind to them
    assert not torch.allclose(c[:, :, 3:], c2[:, :, 3:])


def test_step_schedule_warms_up_then_decays_at_epochs():
    from harness.optim import lr_schedule

    train = {"epochs": 35, "lr": 0.1, "warmup_epochs": 5, "min_lr_ratio": 0.0, "schedule": "step", "decay_epochs": [15, 25]}
    s = lr_schedule(train, steps_per_epoch=10)
    assert len(s) == 350 and s[0] == 0.0 and s[49] < 0.1
    assert math.isclose(s[50], 0.1) and math.isclose(s[149], 0.1)
    assert math.isclose(s[150], 0.01) and math.isclose(s[250], 0.001) and math.isclose(s[-1], 0.001)
    with pytest.raises(UsageError, match="train.schedule='linear'"):
        lr_schedule({**train, "schedule": "linear"}, 10)


def test_resnet_blocks_are_the_stages_of_the_forward_pass():
    net = create_backbone("resnet_small", width=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = [net.forward_block(x, b) for b in (1, 2, 3, 4)]
    assert [m.shape[1] for m in maps] == [net.block_channels(b) for b in (1, 2, 3, 4)] == [16, 32, 64, 128]
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4]
    torch.testing.assert_close(maps[3], net.forward_maps(x))
