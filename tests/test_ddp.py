"""Data-parallel losses: 2 CPU processes (gloo), each holding half of a fixed global batch,
against one process on the whole batch (methods/components/distributed.py and the
``*_distributed`` functions of methods/losses.py).

Gradient convention checked here: the collectives' backward passes sum over processes,
so process r's gradient with respect to its inputs x_r is d(sum_k L_k)/dx_r = W *
d(mean_k L_k)/dx_r, and DistributedDataParallel's averaged parameter gradient is
d(mean_k L_k)/dtheta. With mean_k L_k equal to the single-process loss, the input
gradients divided by W and the DDP parameter gradients must equal the single-process ones.
"""
from __future__ import annotations

import ddp_workers as W
import pytest
import torch
import torch.multiprocessing as mp

from methods import losses
from methods.components import distributed as D

ATOL = 1e-5


def _close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, rtol=0, atol=atol), (a - b).abs().max().item()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run every scenario once in 2 spawned gloo processes; their results, by rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(
        W.worker, args=(W.WORLD, str(tmp / "rendezvous"), str(tmp)),
        nprocs=W.WORLD, join=True, start_method="spawn",
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(W.WORLD)]


def _rows(r: int) -> slice:
    n = W.N // W.WORLD
    return slice(r * n, (r + 1) * n)


def _check_loss_and_grads(ranks, key, ref_loss, ref_inputs, ref_params, input_keys):
    """mean over ranks of the losses == single-process loss; each rank's input gradient / W
    == the single-process gradient of its rows; DDP-averaged parameter gradients == the
    single-process parameter gradients (on every rank)."""
    per_rank = torch.stack([res[key]["loss"] for res in ranks])
    _close(per_rank.mean(), ref_loss.detach())
    for r, res in enumerate(ranks):
        for ik, ref in zip(input_keys, ref_inputs):
            got = res[key][ik] if isinstance(ik, str) else res[key][ik[0]][ik[1]]
            _close(got / W.WORLD, ref.grad[_rows(r)])
        for name, ref in ref_params.items():
            _close(res[key]["params"][name], ref.grad)
    return per_rank


def _leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def test_world_and_gather_with_grad(ranks):
    data = W.global_batch()
    weights = torch.arange(1, W.N * W.D_IN + 1, dtype=W.DTYPE).view(W.N, W.D_IN)
    for r, res in enumerate(ranks):
        assert tuple(res["world"]) == (r, W.WORLD)
        _close(res["gather"]["value"], data["x1"], atol=0)  # rank order
        _close(res["gather"]["no_grad"], data["x1"], atol=0)
        # every rank computes sum(gathered * weights): process r's rows get the sum of both
        # ranks' gradients, W * weights[rows of r].
        _close(res["gather"]["grad"], W.WORLD * weights[_rows(r)], atol=0)


def test_simclr_nt_xent_gathered_negatives(ranks):
    data = W.global_batch()
    model = W.projector()
    x1, x2 = _leaves(data["x1"], data["x2"])
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    ref = losses.nt_xent(z1, z2, W.TEMPERATURE)
    ref.backward()
    per_rank = _check_loss_and_grads(ranks, "simclr", ref, [x1, x2], dict(model.named_parameters()), ["x1", "x2"])
    # the local losses differ: each is the mean over its own anchors, not a copy
    assert not torch.allclose(per_rank[0], per_rank[1])
    # and the gathered negatives matter: a per-rank nt_xent on the local half alone differs
    half = losses.nt_xent(z1[_rows(0)], z2[_rows(0)], W.TEMPERATURE)
    assert abs(half.item() - per_rank[0].item()) > 1e-3


def test_moco_v3_gathered_keys(ranks):
    data = W.global_batch()
    model = W.projector()
    (x1,) = _leaves(data["x1"])
    ref = losses.moco_v3_loss(model(x1), data["keys"], W.TEMPERATURE)
    ref.backward()
    _check_loss_and_grads(ranks, "moco_v3", ref, [x1], dict(model.named_parameters()), ["x1"])


def test_barlow_twins_synced_statistics_and_cross_correlation(ranks):
    data = W.global_batch()
    model = W.projector(seed=2)
    x1, x2 = _leaves(data["x1"], data["x2"])
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    ref = losses.barlow_twins_loss(z1, z2, W.LAMBD)
    ref.backward()
    per_rank = _check_loss_and_grads(ranks, "barlow", ref, [x1, x2], dict(model.named_parameters()), ["x1", "x2"])
    # the loss is global: every rank returns the single-process value itself
    for loss in per_rank:
        _close(loss, ref.detach())


@pytest.mark.parametrize("key", ["swav", "swav_queue"])
def test_swav_distributed_sinkhorn_codes_and_loss(ranks, key):
    data = W.global_batch()
    net = W.SwAVNet()
    xs = _leaves(data["x1"], data["x2"], data["x3"])
    scores = list(net(torch.cat(xs)).chunk(3))
    queue_scores = [net.queue_scores(data["queue"][i]) for i in range(2)] if key == "swav_queue" else None
    ref = losses.swav_loss(scores, queue_scores=queue_scores, **W.SWAV)
    ref.backward()
    for i in range(2):
        out = scores[i] if queue_scores is None else torch.cat([queue_scores[i], scores[i]])
        codes = losses.sinkhorn_knopp(out, W.SWAV["epsilon"], W.SWAV["sinkhorn_iters"])[-W.N:]
        for r, res in enumerate(ranks):
            _close(res[key]["codes"][i], codes[_rows(r)])
        # the codes are global: Sinkhorn on one rank's half alone gives other codes
        alone = losses.sinkhorn_knopp(scores[i][_rows(0)], W.SWAV["epsilon"], W.SWAV["sinkhorn_iters"])
        if queue_scores is None:
            assert (alone - codes[_rows(0)]).abs().max() > 1e-3
    _check_loss_and_grads(
        ranks, key, ref, xs, dict(net.named_parameters()), [("x", 0), ("x", 1), ("x", 2)]
    )


def test_moco_shuffle_bn(ranks):
    data = W.global_batch()
    x = data["x1"]
    n = W.N // W.WORLD
    # The permutation is rank 0's draw under its seed (rank 1 was seeded differently),
    # identical on both ranks, and the same when drawn again under the same seed.
    torch.manual_seed(W.SHUFFLE_SEED)
    idx_shuffle = torch.randperm(W.N)
    for res in ranks:
        _close(res["shuffle"]["idx_unshuffle"], torch.argsort(idx_shuffle), atol=0)
        _close(res["shuffle"]["idx_again"], res["shuffle"]["idx_unshuffle"], atol=0)
    groups = idx_shuffle.view(W.WORLD, n)  # global samples each rank's key encoder sees
    assert set(groups[0].tolist()) != set(range(n)), "pick a seed whose shuffle mixes the ranks"
    # One process, BatchNorm computed separately on each shuffled group, scattered back
    # to the original order.
    enc = W.key_encoder()
    expected = torch.empty(W.N, W.D_OUT, dtype=W.DTYPE)
    with torch.no_grad():
        for grp in groups:
            expected[grp] = enc(x[grp])
        own = torch.cat([enc(x[_rows(r)]) for r in range(W.WORLD)])
    for r, res in enumerate(ranks):
        sh = res["shuffle"]
        _close(sh["x_shuffled"], x[groups[r]], atol=0)
        _close(sh["restored"], x[_rows(r)], atol=0)  # unshuffle restores the original order
        _close(sh["keys"], expected[_rows(r)])
        # BN statistics came from the shuffled sub-batch, not the sample's own sub-batch
        _close(sh["own_bn_keys"], own[_rows(r)])
        assert (sh["keys"] - sh["own_bn_keys"]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------
# Single process: every helper and distributed loss degrades to its plain counterpart.
# ---------------------------------------------------------------------------------------


def test_single_process_helpers_are_identities():
    assert D.world() == (0, 1) and not D.is_distributed()
    x = torch.randn(5, 3, requires_grad=True)
    assert D.gather_with_grad(x) is x
    assert D.all_reduce_sum(x) is x and D.all_reduce_mean(x) is x
    assert torch.equal(D.concat_all_gather(x), x) and not D.concat_all_gather(x).requires_grad
    assert torch.equal(D.all_reduce_max(x), x)
    state = torch.get_rng_state()
    xs, idx = D.batch_shuffle(x)
    assert torch.equal(torch.get_rng_state(), state)  # draws nothing
    assert torch.equal(xs, x) and torch.equal(idx, torch.arange(5))
    assert torch.equal(D.batch_unshuffle(xs, idx), x)


def test_single_process_distributed_losses_equal_plain_ones():
    g = torch.Generator().manual_seed(0)
    z1, z2, z3 = (torch.randn(6, 4, generator=g) for _ in range(3))
    assert torch.allclose(losses.nt_xent_distributed(z1, z2, 0.2), losses.nt_xent(z1, z2, 0.2))
    assert torch.allclose(losses.moco_v3_loss_distributed(z1, z2, 0.2), losses.moco_v3_loss(z1, z2, 0.2))
    assert torch.allclose(losses.barlow_twins_loss_distributed(z1, z2, 5e-3), losses.barlow_twins_loss(z1, z2, 5e-3), atol=1e-6)
    assert torch.allclose(losses.sinkhorn_knopp_distributed(z1, 0.05, 3), losses.sinkhorn_knopp(z1, 0.05, 3))
    queue = [torch.randn(5, 4, generator=g) for _ in range(2)]
    assert torch.allclose(
        losses.swav_loss_distributed([z1, z2, z3], queue_scores=queue), losses.swav_loss([z1, z2, z3], queue_scores=queue)
    )
    with pytest.raises(ValueError):
        losses.nt_xent_distributed(z1[:1], z2[:1], 0.2)
    with pytest.raises(ValueError):
        losses.barlow_twins_loss_distributed(z1[:1], z2[:1], 5e-3)
