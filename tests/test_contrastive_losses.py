"""Contrastive and self-distillation objectives in methods/losses.py.

Each loss is checked on small inputs against
(a) a hand computation written with plain Python loops over floats (or the paper's own
    pseudo-code), independent of the vectorised implementation, and
(b) an independent, widely used implementation where one exists: lightly (lightly.loss) and
    pytorch-metric-learning (pytorch_metric_learning.losses), test-only dependencies from
    the ``test`` extra (versions pinned in constraints.txt). Where their conventions differ
    from ours, the test says how they are mapped.
Inputs are float64 so that the comparisons at 1e-5 measure the formulas, not rounding.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_center_update,
    dino_loss,
    info_nce,
    instdisc_estimate_z,
    instdisc_nce_loss,
    moco_v3_loss,
    nt_xent,
    simsiam_loss,
    sinkhorn_knopp,
    supcon_loss,
    swav_loss,
    vicreg_loss,
)

TOL = dict(rtol=1e-5, atol=1e-5)


def close(actual, expected):
    actual = torch.as_tensor(actual, dtype=torch.float64).reshape(())
    expected = torch.as_tensor(expected, dtype=torch.float64).reshape(())
    torch.testing.assert_close(actual, expected, **TOL)


def randn(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def unit_rows(x):
    return F.normalize(x, dim=-1)


def lightly_loss():
    import lightly.loss  # test-only dependency (pyproject's [test] extra)

    return lightly.loss


def pml_losses():
    import pytorch_metric_learning.losses  # test-only dependency (pyproject's [test] extra)

    return pytorch_metric_learning.losses


# ---- plain-loop references --------------------------------------------------------------

def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _unit(a):
    n = math.sqrt(_dot(a, a))
    return [x / n for x in a]


def _log_softmax(v):
    m = max(v)
    lse = m + math.log(sum(math.exp(x - m) for x in v))
    return [x - lse for x in v]


def ref_nt_xent(z1, z2, t):
    views = [_unit(r) for r in z1.tolist()] + [_unit(r) for r in z2.tolist()]
    two_n = len(views)
    n = two_n // 2
    total = 0.0
    for i in range(two_n):
        j = (i + n) % two_n  # the other view of the same image
        den = sum(math.exp(_dot(views[i], views[k]) / t) for k in range(two_n) if k != i)
        total += -math.log(math.exp(_dot(views[i], views[j]) / t) / den)
    return total / two_n


def ref_info_nce(q, k, queue, t):
    total = 0.0
    for qi, ki in zip(q.tolist(), k.tolist()):
        pos = math.exp(_dot(qi, ki) / t)
        neg = sum(math.exp(_dot(qi, kj) / t) for kj in queue.tolist())
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def ref_moco_v3(q, k, t):
    qs = [_unit(r) for r in q.tolist()]
    ks = [_unit(r) for r in k.tolist()]
    total = 0.0
    for i, qi in enumerate(qs):
        den = sum(math.exp(_dot(qi, kj) / t) for kj in ks)
        total += -math.log(math.exp(_dot(qi, ks[i]) / t) / den)
    return total / len(qs) * 2 * t


def ref_cosines(p, z):
    return [_dot(_unit(a), _unit(b)) for a, b in zip(p.tolist(), z.tolist())]


def _standardise_columns(z, eps=1e-5):
    n, d = len(z), len(z[0])
    out = [[0.0] * d for _ in range(n)]
    for j in range(d):
        col = [z[b][j] for b in range(n)]
        mu = sum(col) / n
        var = sum((x - mu) ** 2 for x in col) / n  # biased, as BatchNorm1d in training
        for b in range(n):
            out[b][j] = (z[b][j] - mu) / math.sqrt(var + eps)
    return out


def ref_barlow(z1, z2, lambd):
    a, b = _standardise_columns(z1.tolist()), _standardise_columns(z2.tolist())
    n, d = len(a), len(a[0])
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[r][i] * b[r][j] for r in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


def ref_vicreg_loops(z1, z2, sim, std, cov):
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])
    inv = sum((a[r][j] - b[r][j]) ** 2 for r in range(n) for j in range(d)) / (n * d)

    def var_and_cov(z):
        mu = [sum(z[r][j] for r in range(n)) / n for j in range(d)]
        c = [[sum((z[r][i] - mu[i]) * (z[r][j] - mu[j]) for r in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
        v = sum(max(0.0, 1 - math.sqrt(c[j][j] + 1e-4)) for j in range(d)) / d
        off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, off

    va, ca = var_and_cov(a)
    vb, cb = var_and_cov(b)
    return sim * inv + std * (va + vb) + cov * (ca + cb), va + vb


def paper_vicreg(z_a, z_b, lambda_, mu, nu):
    """Bardes et al. 2022, Algorithm 1, transcribed (``off_diagonal`` as in their code)."""
    def off_diagonal(x):
        n, m = x.shape
        return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    N, D = z_a.shape
    sim_loss = F.mse_loss(z_a, z_b)
    std_z_a = torch.sqrt(z_a.var(dim=0) + 1e-04)
    std_z_b = torch.sqrt(z_b.var(dim=0) + 1e-04)
    std_loss = torch.mean(F.relu(1 - std_z_a)) + torch.mean(F.relu(1 - std_z_b))
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    cov_z_a = (z_a.T @ z_a) / (N - 1)
    cov_z_b = (z_b.T @ z_b) / (N - 1)
    cov_loss = off_diagonal(cov_z_a).pow_(2).sum() / D + off_diagonal(cov_z_b).pow_(2).sum() / D
    return lambda_ * sim_loss + mu * std_loss + nu * cov_loss


def ref_dino(student, teacher, center, ts, tt):
    S = [s.tolist() for s in student]
    T = [t.tolist() for t in teacher]
    c = center.flatten().tolist()
    total, pairs = 0.0, 0
    for i, t in enumerate(T):
        for j, s in enumerate(S):
            if i == j:
                continue
            ce = 0.0
            for b in range(len(t)):
                p_t = [math.exp(x) for x in _log_softmax([(x - ck) / tt for x, ck in zip(t[b], c)])]
                log_p_s = _log_softmax([x / ts for x in s[b]])
                ce += -sum(pt * lp for pt, lp in zip(p_t, log_p_s))
            total += ce / len(t)
            pairs += 1
    return total / pairs


def ref_sinkhorn(scores, eps, iters):
    """The appendix pseudo-code / official distributed_sinkhorn, one process, in loops."""
    S = scores.tolist()
    B, K = len(S), len(S[0])
    Q = [[math.exp(S[b][k] / eps) for b in range(B)] for k in range(K)]  # K x B
    tot = sum(sum(row) for row in Q)
    Q = [[x / tot for x in row] for row in Q]
    for _ in range(iters):
        for k in range(K):  # each prototype gets total weight 1/K
            r = sum(Q[k])
            Q[k] = [x / r / K for x in Q[k]]
        for b in range(B):  # each sample gets total weight 1/B
            c = sum(Q[k][b] for k in range(K))
            for k in range(K):
                Q[k][b] = Q[k][b] / c / B
    return [[Q[k][b] * B for k in range(K)] for b in range(B)]


def ref_swav(scores, eps, iters, temp, n_global, queue=None):
    V, B = len(scores), scores[0].shape[0]
    total = 0.0
    for i in range(n_global):
        s = scores[i] if queue is None else torch.cat([queue[i], scores[i]])
        q = ref_sinkhorn(s, eps, iters)[-B:]
        sub = 0.0
        for v in range(V):
            if v == i:
                continue
            rows = scores[v].tolist()
            ce = 0.0
            for b in range(B):
                log_p = _log_softmax([x / temp for x in rows[b]])
                ce += -sum(qk * lk for qk, lk in zip(q[b], log_p))
            sub += ce / B
        total += sub / (V - 1)
    return total / n_global


def ref_supcon(features, labels, t, bt):
    B, V, _ = features.shape
    views, labs = [], []
    for v in range(V):
        for b in range(B):
            views.append(features[b, v].tolist())
            labs.append(b if labels is None else int(labels[b]))
    total = 0.0
    for i in range(len(views)):
        A = [a for a in range(len(views)) if a != i]
        P = [p for p in A if labs[p] == labs[i]]
        den = sum(math.exp(_dot(views[i], views[a]) / t) for a in A)
        if P:
            s = sum(math.log(math.exp(_dot(views[i], views[p]) / t) / den) for p in P)
            total += -(t / bt) * s / len(P)
    return total / len(views)


def ref_instdisc(pos, neg, n_data, z, eps):
    """lemniscate.pytorch NCECriterion in loops: h = P / (P + m Pn + eps); the noise
    probability of a negative is m Pn / (P + m Pn + eps)."""
    B, m = neg.shape
    pn = 1.0 / n_data
    total = 0.0
    for b in range(B):
        p = math.exp(float(pos[b])) / z
        total -= math.log(p / (p + m * pn + eps))
        for j in range(m):
            pj = math.exp(float(neg[b, j])) / z
            total -= math.log(m * pn / (pj + m * pn + eps))
    return total / B


# ---- SimCLR -------------------------------------------------------------------------------

def test_nt_xent_matches_loops():
    z1, z2 = randn(5, 7, seed=1), randn(5, 7, seed=2)
    for t in (0.1, 0.5, 1.0):
        close(nt_xent(z1, z2, t), ref_nt_xent(z1, z2, t))
    # Normalised inside: the scale of the projections does not matter.
    close(nt_xent(3 * z1, 0.2 * z2, 0.5), nt_xent(z1, z2, 0.5))


def test_nt_xent_matches_lightly_and_pytorch_metric_learning():
    z1, z2 = randn(6, 8, seed=3), randn(6, 8, seed=4)
    t = 0.5
    ours = nt_xent(z1, z2, t)
    # lightly's NTXentLoss: the same 2N anchors and 2N-2 negatives, mean over anchors.
    close(ours, lightly_loss().NTXentLoss(temperature=t)(z1, z2))
    # pytorch-metric-learning's NTXentLoss: one embedding per view, labelled by image; each
    # anchor's positive is the other view and its negatives are the 2N-2 other images' views.
    labels = torch.arange(6).repeat(2)
    close(ours, pml_losses().NTXentLoss(temperature=t)(torch.cat([z1, z2]), labels))


# ---- MoCo -----------------------------------------------------------------------------------

def test_info_nce_matches_loops():
    q, k, queue = unit_rows(randn(4, 6, seed=5)), unit_rows(randn(4, 6, seed=6)), unit_rows(randn(9, 6, seed=7))
    for t in (0.07, 0.2):
        close(info_nce(q, k, queue, t), ref_info_nce(q, k, queue, t))


def test_info_nce_matches_lightly_memory_bank():
    q, k, queue = unit_rows(randn(4, 6, seed=8)), unit_rows(randn(4, 6, seed=9)), unit_rows(randn(11, 6, seed=10))
    t = 0.2
    # lightly's NTXentLoss with a memory bank is MoCo's loss: positive q.k first, negatives
    # q.bank. Its bank is [K, D] like our queue; we put our queue in it. (It normalises q
    # and k, which are normalised already; with inputs that do not require grad it does
    # not update the bank.)
    crit = lightly_loss().NTXentLoss(temperature=t, memory_bank_size=(11, 6))
    crit.memory_bank.bank = queue.clone()
    close(info_nce(q, k, queue, t), crit(q, k))


def test_moco_v3_matches_loops_and_pytorch_metric_learning():
    q, k = randn(5, 6, seed=11), randn(5, 6, seed=12)
    t = 0.2
    ours = moco_v3_loss(q, k, t)
    close(ours, ref_moco_v3(q, k, t))
    # pytorch-metric-learning's NTXentLoss with the keys as reference embeddings gives, per
    # query, -log softmax(q k^T / t) at its own key; MoCo v3 multiplies the mean by 2t.
    # (ref_labels must be another tensor object: when it *is* labels, pytorch-metric-learning
    # takes the reference set to be the embeddings themselves and drops the i == j pairs.)
    labels = torch.arange(5)
    pml = pml_losses().NTXentLoss(temperature=t)(q, labels, ref_emb=k, ref_labels=labels.clone())
    close(ours, pml * 2 * t)


# ---- BYOL / SimSiam ------------------------------------------------------------------------

def test_byol_and_simsiam_match_loops():
    p, z = randn(6, 5, seed=13), randn(6, 5, seed=14)
    cos = ref_cosines(p, z)
    close(byol_loss(p, z), sum(2 - 2 * c for c in cos) / len(cos))
    close(simsiam_loss(p, z), -sum(cos) / len(cos))
    # BYOL Eq. 2 literally: squared distance of the normalised vectors.
    close(byol_loss(p, z), ((unit_rows(p) - unit_rows(z)) ** 2).sum(1).mean())


def test_byol_and_simsiam_match_lightly():
    p, z = randn(6, 5, seed=15), randn(6, 5, seed=16)
    ncs = lightly_loss().NegativeCosineSimilarity()(p, z)  # -mean cos, SimSiam's D
    close(simsiam_loss(p, z), ncs)
    close(byol_loss(p, z), 2 + 2 * ncs)  # 2 - 2 cos, lightly's BYOL examples use the NCS


# ---- Barlow Twins / VICReg -------------------------------------------------------------------

def test_barlow_twins_matches_loops():
    z1, z2 = randn(7, 4, seed=17, scale=2.0), randn(7, 4, seed=18)
    for lambd in (5e-3, 0.5):
        close(barlow_twins_loss(z1, z2, lambd), ref_barlow(z1, z2, lambd))


def test_barlow_twins_matches_lightly():
    z1, z2 = randn(8, 5, seed=19), randn(8, 5, seed=20)
    # lightly standardises with F.batch_norm (biased variance, eps 1e-5) like the official
    # BatchNorm1d(affine=False), C / N, and the same on/off-diagonal sums.
    for lambd in (5e-3, 0.3):
        close(barlow_twins_loss(z1, z2, lambd), lightly_loss().BarlowTwinsLoss(lambda_param=lambd)(z1, z2))


def test_vicreg_matches_paper_pseudocode_and_loops():
    # Small scale so that the variance hinge is active in some dimensions.
    z1, z2 = randn(6, 4, seed=21, scale=0.6), randn(6, 4, seed=22, scale=0.8)
    for coeffs in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        ours = vicreg_loss(z1, z2, *coeffs)
        loops, var_term = ref_vicreg_loops(z1, z2, *coeffs)
        assert var_term > 0.1
        close(ours, loops)
        close(ours, paper_vicreg(z1, z2, *coeffs))
    close(vicreg_loss(z1, z2), vicreg_loss(z1, z2, 25.0, 25.0, 1.0))  # the paper's defaults


def test_vicreg_matches_lightly():
    z1, z2 = randn(6, 4, seed=23, scale=0.6), randn(6, 4, seed=24, scale=0.8)
    # lightly follows the official code, which averages the two branches' variance terms
    # (0.5 * (v(z1) + v(z2))) where the paper adds them: lightly's mu = 2 * our std_coeff.
    crit = lightly_loss().VICRegLoss(lambda_param=25.0, mu_param=2 * 25.0, nu_param=1.0)
    close(vicreg_loss(z1, z2, 25.0, 25.0, 1.0), crit(z1, z2))


# ---- DINO ------------------------------------------------------------------------------------

def _dino_inputs(seed=25, b=3, k=5, n_local=2):
    student = [randn(b, k, seed=seed + i) for i in range(2 + n_local)]
    teacher = [randn(b, k, seed=seed + 10 + i) for i in range(2)]
    center = randn(1, k, seed=seed + 20, scale=0.3)
    return student, teacher, center


def test_dino_loss_matches_loops():
    for n_local in (0, 3):
        student, teacher, center = _dino_inputs(n_local=n_local)
        close(dino_loss(student, teacher, center, 0.1, 0.04), ref_dino(student, teacher, center, 0.1, 0.04))
        close(dino_loss(student, teacher, center.flatten(), 0.2, 0.07), ref_dino(student, teacher, center, 0.2, 0.07))


def test_dino_center_update_matches_loops():
    _, teacher, center = _dino_inputs()
    m = 0.9
    rows = [r for t in teacher for r in t.tolist()]
    expected = [m * c + (1 - m) * sum(r[j] for r in rows) / len(rows) for j, c in enumerate(center.flatten().tolist())]
    new = dino_center_update(center, teacher, m)
    assert new.shape == (1, 5)
    torch.testing.assert_close(new, torch.tensor([expected], dtype=torch.float64), **TOL)
    torch.testing.assert_close(dino_center_update(center, torch.stack(teacher), m), new)


def test_dino_matches_lightly():
    student, teacher, center = _dino_inputs(n_local=2)
    ts, tt, m = 0.1, 0.04, 0.9
    # lightly's DINOLoss takes (teacher_out, student_out) in that order, keeps the center as
    # a [1, 1, K] buffer and updates it inside forward (after the loss). We load our center
    # into it, pass the teacher temperature explicitly, and compare the updated buffer with
    # dino_center_update.
    crit = lightly_loss().DINOLoss(output_dim=5, warmup_teacher_temp=tt, teacher_temp=tt, student_temp=ts, center_momentum=m)
    crit.center = center.reshape(1, 1, 5).clone()
    close(dino_loss(student, teacher, center, ts, tt), crit(teacher, student, teacher_temp=tt))
    torch.testing.assert_close(crit.center.reshape(1, 5), dino_center_update(center, teacher, m), **TOL)


# ---- SwAV ------------------------------------------------------------------------------------

def _swav_scores(n_crops, b=6, k=4, d=5, seed=40):
    prototypes = unit_rows(randn(k, d, seed=seed))
    return [unit_rows(randn(b, d, seed=seed + 1 + i)) @ prototypes.t() for i in range(n_crops)], prototypes


def test_sinkhorn_matches_loops_and_lightly():
    (scores,), _ = _swav_scores(1)
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    for iters in (1, 3, 10):
        ours = sinkhorn_knopp(scores, 0.05, iters)
        torch.testing.assert_close(ours, torch.tensor(ref_sinkhorn(scores, 0.05, iters), dtype=torch.float64), **TOL)
        # lightly skips the row step's /K, which the column normalisation after it cancels.
        torch.testing.assert_close(ours, lightly_sinkhorn(scores, iterations=iters, epsilon=0.05), **TOL)


def test_sinkhorn_codes_are_assignments_with_equal_partition():
    (scores,), _ = _swav_scores(1, b=12, k=3)
    q = sinkhorn_knopp(scores, 0.05, 200)
    torch.testing.assert_close(q.sum(1), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(q.sum(0), torch.full((3,), 4.0, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    # Shifting every score by a constant changes nothing (the max subtraction is a no-op).
    torch.testing.assert_close(sinkhorn_knopp(scores + 3.0, 0.05, 3), sinkhorn_knopp(scores, 0.05, 3))


@pytest.mark.parametrize("n_crops,n_global", [(2, 2), (5, 2), (4, 1)])
def test_swav_loss_matches_loops_and_lightly(n_crops, n_global):
    scores, _ = _swav_scores(n_crops)
    ours = swav_loss(scores, 0.05, 3, 0.1, n_global=n_global)
    close(ours, ref_swav(scores, 0.05, 3, 0.1, n_global))
    # lightly's SwaVLoss takes the code crops ("high resolution") and the others apart; the
    # same codes, each predicted from every other crop, the same means.
    crit = lightly_loss().SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    close(ours, crit(scores[:n_global], scores[n_global:]))


def test_swav_loss_with_queue_matches_loops_and_lightly():
    scores, prototypes = _swav_scores(4)
    queue = [unit_rows(randn(10, 5, seed=60 + i)) @ prototypes.t() for i in range(2)]
    ours = swav_loss(scores, queue_scores=queue)  # defaults: eps 0.05, 3 iterations, t 0.1, 2 global crops
    close(ours, ref_swav(scores, 0.05, 3, 0.1, 2, queue=queue))
    # lightly appends the queue after the batch and keeps the first B codes; the official
    # code (and we) put it before and keep the last B. Sinkhorn treats samples alike, so the
    # codes are the same.
    crit = lightly_loss().SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    close(ours, crit(scores[:2], scores[2:], queue_outputs=queue))
    assert abs(float(ours) - float(swav_loss(scores))) > 1e-6  # the queue matters


# ---- SupCon ----------------------------------------------------------------------------------

def test_supcon_matches_loops():
    features = unit_rows(randn(5, 3, 4, seed=70))
    labels = torch.tensor([0, 1, 0, 2, 1])
    for lab, t, bt in ((labels, 0.1, None), (labels, 0.1, 0.07), (None, 0.5, None)):
        expected = ref_supcon(features, lab, t, t if bt is None else bt)
        close(supcon_loss(features, lab, t, bt), expected)


def test_supcon_without_labels_is_nt_xent():
    z1, z2 = randn(6, 5, seed=71), randn(6, 5, seed=72)
    features = torch.stack([unit_rows(z1), unit_rows(z2)], dim=1)
    for t in (0.1, 0.5):
        close(supcon_loss(features, None, t), nt_xent(z1, z2, t))


def test_supcon_matches_pytorch_metric_learning():
    features = unit_rows(randn(6, 2, 4, seed=73))
    labels = torch.tensor([0, 1, 1, 2, 0, 2])
    t = 0.1
    # pytorch-metric-learning's SupConLoss ("adapted from SupContrast") takes one row per
    # view with its image's label, and has no temperature/base_temperature factor: ours =
    # (t / base_t) * theirs. Rows in view-major order, as the official code stacks them.
    flat = features.transpose(0, 1).reshape(12, 4)
    pml = pml_losses().SupConLoss(temperature=t)
    close(supcon_loss(features, labels, t), pml(flat, labels.repeat(2)))
    close(supcon_loss(features, labels, t, 0.07), (t / 0.07) * pml(flat, labels.repeat(2)))
    # labels=None: each image is its own class.
    close(supcon_loss(features, None, t), pml(flat, torch.arange(6).repeat(2)))


# ---- InstDisc --------------------------------------------------------------------------------

def _instdisc_inputs(b=4, m=8, d=6, seed=80):
    f = unit_rows(randn(b, d, seed=seed))
    bank_pos = unit_rows(f + 0.3 * randn(b, d, seed=seed + 1))
    bank_neg = unit_rows(randn(b, m, d, seed=seed + 2))
    t = 0.07
    pos = (f * bank_pos).sum(1) / t
    neg = torch.einsum("bd,bmd->bm", f, bank_neg) / t
    return pos, neg


def test_instdisc_nce_matches_loops():
    pos, neg = _instdisc_inputs()
    n_data = 1000
    z = float(instdisc_estimate_z(pos, neg, n_data))
    for eps in (1e-7, 0.0):
        close(instdisc_nce_loss(pos, neg, n_data, z, eps=eps), ref_instdisc(pos, neg, n_data, z, eps))


def test_instdisc_nce_is_logistic_regression_on_log_ratio():
    # Without eps, h = sigmoid(log P(i|v) - log(m Pn)): NCE is a binary logistic loss with
    # the positive labelled 1 and the m negatives labelled 0 (Gutmann & Hyvarinen 2010).
    pos, neg = _instdisc_inputs(seed=90)
    n_data, z = 500, 37.5
    shift = math.log(z) + math.log(neg.shape[1] / n_data)
    expected = (F.softplus(-(pos - shift)).sum() + F.softplus(neg - shift).sum()) / pos.shape[0]
    close(instdisc_nce_loss(pos, neg, n_data, z, eps=0.0), expected)


def test_instdisc_estimate_z_is_n_times_mean_exp():
    pos, neg = _instdisc_inputs(seed=95)
    values = [math.exp(float(x)) for x in pos] + [math.exp(float(x)) for x in neg.flatten()]
    close(instdisc_estimate_z(pos, neg, 1000), 1000 * sum(values) / len(values))


# ---- gradients, shapes and errors -------------------------------------------------------------

def _grad_cases():
    def pair(seed):
        return randn(6, 5, seed=seed).float(), randn(6, 5, seed=seed + 1).float()

    return {
        "nt_xent": (pair(100), lambda a, b: nt_xent(a, b, 0.5)),
        "info_nce": (pair(102), lambda a, b: info_nce(unit_rows(a), unit_rows(b), unit_rows(randn(7, 5).float()), 0.2)),
        "moco_v3": (pair(104), lambda a, b: moco_v3_loss(a, b, 0.2)),
        "byol": (pair(106), byol_loss),
        "simsiam": (pair(108), simsiam_loss),
        "barlow": (pair(110), lambda a, b: barlow_twins_loss(a, b, 5e-3)),
        "vicreg": (pair(112), vicreg_loss),
        "supcon": (pair(114), lambda a, b: supcon_loss(unit_rows(torch.stack([a, b], 1)), torch.tensor([0, 1, 0, 1, 2, 2]), 0.1)),
        "instdisc": (pair(116), lambda a, b: instdisc_nce_loss(a[:, 0], b, 100, 2.0)),
    }


@pytest.mark.parametrize("name", sorted(_grad_cases()))
def test_gradients_reach_both_inputs(name):
    (a, b), fn = _grad_cases()[name]
    a.requires_grad_(True)
    b.requires_grad_(True)
    loss = fn(a, b)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for x in (a, b):
        assert x.grad is not None and x.grad.shape == x.shape
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dino_teacher_and_swav_codes_get_no_gradient():
    student, teacher, center = _dino_inputs(n_local=2)
    student = [s.float().requires_grad_(True) for s in student]
    teacher = [t.float().requires_grad_(True) for t in teacher]
    dino_loss(student, teacher, center.float(), 0.1, 0.04).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)

    scores, _ = _swav_scores(4)
    scores = [s.float().requires_grad_(True) for s in scores]
    queue = [randn(5, 4).float().requires_grad_(True) for _ in range(2)]
    swav_loss(scores, queue_scores=queue).backward()
    # Every crop is a predictor (the global ones for each other's codes); codes are constants.
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)
    assert all(q.grad is None for q in queue)


X = randn(4, 5).float()


@pytest.mark.parametrize("call,match", [
    (lambda: nt_xent(X, X[:3], 0.5), "nt_xent"),
    (lambda: nt_xent(X[:1], X[:1], 0.5), "nt_xent"),
    (lambda: nt_xent(X, X, 0.0), "temperature"),
    (lambda: nt_xent(X[None], X[None], 0.5), r"\[N, D\]"),
    (lambda: info_nce(X, X, None, 0.2), "moco_v3_loss"),
    (lambda: info_nce(X, X, randn(7, 4).float(), 0.2), "queue"),
    (lambda: info_nce(X, X, X[:0], 0.2), "queue"),
    (lambda: moco_v3_loss(X, X[:, :3], 0.2), "moco_v3_loss"),
    (lambda: byol_loss(X, X.t()), "byol_loss"),
    (lambda: simsiam_loss(X[0], X[0]), "simsiam_loss"),
    (lambda: barlow_twins_loss(X, X[:, :4], 5e-3), "barlow_twins_loss"),
    (lambda: barlow_twins_loss(X[:1], X[:1], 5e-3), "at least 2"),
    (lambda: vicreg_loss(X, X[:2]), "vicreg_loss"),
    (lambda: dino_loss([X, X], [X[:, :4]], torch.zeros(1, 4), 0.1, 0.04), "student_out"),
    (lambda: dino_loss([X], [X], torch.zeros(1, 5), 0.1, 0.04), "two crops"),
    (lambda: dino_loss([X, X], [X], torch.zeros(1, 4), 0.1, 0.04), "center"),
    (lambda: dino_loss(X, [X], torch.zeros(1, 5), 0.1, 0.04), "list"),
    (lambda: dino_center_update(torch.zeros(1, 4), [X], 0.9), "center"),
    (lambda: sinkhorn_knopp(X[None], 0.05, 3), "sinkhorn_knopp"),
    (lambda: sinkhorn_knopp(X, 0.05, -1), "iters"),
    (lambda: swav_loss([X]), "at least 2 crops"),
    (lambda: swav_loss([X, X[:3]]), "scores"),
    (lambda: swav_loss([X, X], n_global=3), "n_global"),
    (lambda: swav_loss([X, X], queue_scores=[X]), "queue_scores"),
    (lambda: swav_loss([X, X], queue_scores=[X, X[:, :4]]), "queue_scores"),
    (lambda: supcon_loss(X, None, 0.1), r"\[B, n_views, D\]"),
    (lambda: supcon_loss(X[:, None].expand(4, 2, 5), torch.zeros(3), 0.1), "labels"),
    (lambda: instdisc_nce_loss(X[:, 0], X[:3], 100, 1.0), "pos_logits"),
    (lambda: instdisc_nce_loss(X[:, 0], X[:, :0], 100, 1.0), "m >= 1"),
    (lambda: instdisc_nce_loss(X[:, 0], X, 100, 0.0), "z must be"),
    (lambda: instdisc_nce_loss(X[:, 0], X, 0, 1.0), "n_data"),
])
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_supcon_treats_unlabeled_images_as_their_own_class():
    from harness.pipeline import RunRequest, build_config
    from methods.losses import supcon_loss
    from methods.supcon import SupCon

    cfg = build_config(RunRequest(method="supcon"))[0]
    torch.manual_seed(0)
    m = SupCon(cfg).eval()
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    with torch.no_grad():
        z = m.embed(views)
        got = m.training_step((views, torch.tensor([3, -1, -1, 3])))["loss"]
        # The two unlabeled images must not be each other's positives.
        want = supcon_loss(z, torch.tensor([3, -10, -20, 3]), float(cfg["method.temperature"]))
    torch.testing.assert_close(got, want)
