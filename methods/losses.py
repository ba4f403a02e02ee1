"""Objectives as standalone functions of tensors (see DESIGN.md's table of public names)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def cpc_loss(predictions: torch.Tensor, targets: torch.Tensor, positives: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE over predicted patch embeddings (van den Oord et al. 2018; Hénaff et al. 2019).

    predictions: [N, D], one predicted embedding per (context position, prediction step).
    targets: [M, D], the embeddings of every patch in the batch; each prediction is scored
        against all of them, so the negatives are every other patch of every image.
    positives: [N] long, the row of ``targets`` that each prediction should pick out.
    Returns the mean over the N predictions of -log softmax(predictions @ targets.T / t)[positive].
    """
    if predictions.ndim != 2 or targets.ndim != 2 or predictions.shape[1] != targets.shape[1]:
        raise ValueError(f"expected predictions [N, D] and targets [M, D], got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    logits = predictions @ targets.t() / temperature
    return F.cross_entropy(logits, positives)


# ---------------------------------------------------------------------------------------
# Contrastive and self-distillation objectives. Each takes tensors and returns a scalar;
# the caller owns stop-gradients that the papers put outside the loss (BYOL/SimSiam
# targets, MoCo keys), temperature schedules and the symmetrisation over views, except
# where the official code does them inside its loss (DINO's teacher and SwAV's codes are
# never differentiated, so those two detach inside).
# ---------------------------------------------------------------------------------------


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str, min_batch: int = 1) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name}: expected {a_name} and {b_name} of the same shape [N, D], "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < min_batch:
        raise ValueError(f"{name}: needs a batch of at least {min_batch} rows, got {a.shape[0]}")


def _check_positive(name: str, **values) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value}")


def _off_diagonal_mask(d: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(d, dtype=torch.bool, device=device)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", Eq. 1 and Algorithm 1).

    z1, z2: [N, D], the projections of two views of the same N images (row i of z1 and row
        i of z2 are a positive pair). They are L2-normalised here, so sim(u, v) is the
        cosine similarity.
    temperature: tau > 0.
    For each of the 2N anchors, the positive is the other view of its image and the
    negatives are the other 2N - 2 views in the batch:
    l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau).
    Returns the mean over the 2N anchors (the paper's 1/2N sum; the official TensorFlow
    code adds the two N-anchor means, i.e. twice this value).
    """
    _check_pair("nt_xent", z1, z2, "z1", "z2", min_batch=2)
    _check_positive("nt_xent", temperature=temperature)
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.t() / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, targets)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE with a queue of negative keys (He et al. 2020, "Momentum Contrast for
    Unsupervised Visual Representation Learning", Eq. 1 and Algorithm 1; MoCo v2, Chen et
    al. 2020, uses the same loss).

    q: [N, D] queries, k: [N, D] keys from the momentum encoder (detached by the caller);
        both L2-normalised by the caller, as in the official code.
    queue: [K, D] L2-normalised negative keys from earlier batches (K >= 1; the official
        code stores it as [D, K]). It is never differentiated.
    Logits are [N, 1 + K] = [q.k, q.queue^T] / temperature with the positive in column 0;
    returns the mean cross-entropy with label 0. For in-batch keys (MoCo v3) use
    ``moco_v3_loss``.
    """
    if queue is None:
        raise ValueError("info_nce: queue [K, D] is required; for in-batch keys (MoCo v3) use moco_v3_loss")
    _check_pair("info_nce", q, k, "q", "k")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] == 0:
        raise ValueError(f"info_nce: expected queue [K, D] with K >= 1 and D = {q.shape[1]}, got {tuple(queue.shape)}")
    _check_positive("info_nce", temperature=temperature)
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.detach().t()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's contrastive loss with in-batch keys (Chen, Xie & He 2021, "An Empirical
    Study of Training Self-Supervised Vision Transformers", Algorithm 1 ``ctr``; official
    code moco-v3 ``moco/builder.py``, ``MoCo.contrastive_loss``).

    q: [N, D] queries, k: [N, D] keys from the momentum encoder (detached by the caller).
    Both are L2-normalised here, as in the official code. Logits are q k^T / temperature,
    [N, N], the positive of row i is column i, and the mean cross-entropy is multiplied by
    2 * temperature as in the paper and the official code. The symmetrised loss of a step
    is ``moco_v3_loss(q1, k2, t) + moco_v3_loss(q2, k1, t)`` (the caller's).
    """
    _check_pair("moco_v3_loss", q, k, "q", "k")
    _check_positive("moco_v3_loss", temperature=temperature)
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, "Bootstrap Your Own Latent", Eq. 2):
    ||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z).

    p: [N, D] online predictions, z: [N, D] target projections (detached by the caller).
    Returns the mean over the batch; the symmetrised loss (swap the views and add) is the
    caller's.
    """
    _check_pair("byol_loss", p, z, "p", "z")
    cos = (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)
    return (2 - 2 * cos).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's negative cosine similarity (Chen & He 2021, "Exploring Simple Siamese
    Representation Learning", Eq. 1): D(p, z) = -p/||p|| . z/||z||.

    p: [N, D] predictions, z: [N, D] projections (stop-gradient applied by the caller).
    Returns the mean over the batch; the symmetrised 0.5 D(p1, z2) + 0.5 D(p2, z1) (Eq. 2)
    is the caller's.
    """
    _check_pair("simsiam_loss", p, z, "p", "z")
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


def _batch_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # BatchNorm1d(affine=False) in training mode: biased variance, eps inside the root.
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", Eqs. 1-2 and Algorithm 1).

    z1, z2: [N, D] projections of two views (N >= 2).
    Each dimension is standardised over the batch as the official code's
    ``BatchNorm1d(D, affine=False)`` does in training: (z - mean) / sqrt(biased var + 1e-5)
    (the paper's pseudo-code divides by the unbiased std without eps; the official code and
    its results use BatchNorm). C = z1_n^T z2_n / N is [D, D], and the loss is
    sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 (the paper's lambda is 5e-3).
    """
    _check_pair("barlow_twins_loss", z1, z2, "z1", "z2", min_batch=2)
    n, d = z1.shape
    c = _batch_standardise(z1).t() @ _batch_standardise(z2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c[_off_diagonal_mask(d, c.device)].pow(2).sum()
    return on_diag + lambd * off_diag


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> torch.Tensor:
    """VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning", Sec. 3 and Algorithm 1).

    z1, z2: [N, D] embeddings of two views (N >= 2).
    As Algorithm 1: invariance = MSE(z1, z2) (mean over N*D entries); variance =
    mean_j relu(1 - sqrt(Var(z1[:, j]) + 1e-4)) + the same for z2 (unbiased variance);
    covariance = sum_{i != j} Cov(z1)_ij^2 / D + the same for z2, Cov = centred z^T z /
    (N - 1). Returns sim_coeff * inv + std_coeff * var + cov_coeff * cov.

    Note: the paper (Eq. 6 and Algorithm 1) adds the two variance terms; the official code
    (facebookresearch/vicreg main_vicreg.py) averages them, i.e. halves the variance term
    (vicreg issues #8 and #26). To reproduce the official code, pass std_coeff / 2.
    """
    _check_pair("vicreg_loss", z1, z2, "z1", "z2", min_batch=2)
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    std1 = torch.sqrt(z1.var(dim=0) + 1e-4)
    std2 = torch.sqrt(z2.var(dim=0) + 1e-4)
    var = F.relu(1 - std1).mean() + F.relu(1 - std2).mean()
    off = _off_diagonal_mask(d, z1.device)
    c1 = z1 - z1.mean(dim=0)
    c2 = z2 - z2.mean(dim=0)
    cov1 = c1.t() @ c1 / (n - 1)
    cov2 = c2.t() @ c2 / (n - 1)
    cov = cov1[off].pow(2).sum() / d + cov2[off].pow(2).sum() / d
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov


def _check_crops(name: str, what: str, crops, k: int | None = None, b: int | None = None) -> tuple[int, int]:
    if isinstance(crops, torch.Tensor) or len(crops) == 0:
        raise ValueError(f"{name}: {what} must be a non-empty list of [B, K] tensors, one per crop")
    for i, t in enumerate(crops):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"{name}: {what}[{i}] must be a [B, K] tensor, got {getattr(t, 'shape', type(t))}")
        if (b is not None and t.shape[0] != b) or (k is not None and t.shape[1] != k):
            raise ValueError(f"{name}: {what}[{i}] has shape {tuple(t.shape)}, expected [{b}, {k}]")
        b, k = t.shape
    return b, k


def dino_loss(
    student_out: Sequence[torch.Tensor],
    teacher_out: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """DINO's self-distillation loss (Caron et al. 2021, "Emerging Properties in
    Self-Supervised Vision Transformers", Eq. 3 and Algorithm 1; official code
    facebookresearch/dino ``DINOLoss``).

    student_out: list of [B, K] student logits, one per crop, the global crops first in the
        same order as teacher_out (then the local crops).
    teacher_out: list of [B, K] teacher logits, one per global crop (never differentiated:
        detached here, as in the official code).
    center: [1, K] (or [K]) running center of the teacher logits (see dino_center_update).
    Teacher targets are softmax((t - center) / teacher_temp), student log-probabilities are
    log_softmax(s / student_temp). For every pair (teacher crop i, student crop j) with
    i != j the cross-entropy -sum_k P_t log P_s is averaged over the batch, and the loss is
    the mean over those pairs. Temperature schedules (teacher warm-up) are the caller's.
    """
    b, k = _check_crops("dino_loss", "teacher_out", teacher_out)
    _check_crops("dino_loss", "student_out", student_out, k=k, b=b)
    if center.numel() != k or (center.ndim == 2 and center.shape[0] != 1) or center.ndim > 2:
        raise ValueError(f"dino_loss: expected center [1, {k}] or [{k}], got {tuple(center.shape)}")
    _check_positive("dino_loss", student_temp=student_temp, teacher_temp=teacher_temp)
    n_pairs = len(teacher_out) * len(student_out) - min(len(teacher_out), len(student_out))
    if n_pairs == 0:
        raise ValueError("dino_loss: needs at least two crops in all, so that some teacher/student pair differs")
    center = center.detach().reshape(1, k)
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_out]
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    total = student_out[0].new_zeros(())
    for i, q in enumerate(targets):
        for j, log_p in enumerate(log_probs):
            if i != j:
                total = total + (-q * log_p).sum(dim=-1).mean()
    return total / n_pairs


@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher_out: Sequence[torch.Tensor] | torch.Tensor, momentum: float) -> torch.Tensor:
    """DINO's center update (Caron et al. 2021, Eq. 4 and Algorithm 1; official
    ``DINOLoss.update_center``): c <- momentum * c + (1 - momentum) * mean of the teacher
    logits over the batch and the global crops.

    center: [1, K] (or [K]); teacher_out: list of [B, K] per global crop, or one [M, K]
    tensor. Returns the new center [1, K]; the inputs are not modified. Under data
    parallelism the caller averages the batch mean over processes, as the official code
    does with all_reduce.
    """
    if isinstance(teacher_out, torch.Tensor):
        if teacher_out.ndim < 2:
            raise ValueError(f"dino_center_update: expected teacher_out [..., K], got {tuple(teacher_out.shape)}")
        flat = teacher_out.reshape(-1, teacher_out.shape[-1])
    else:
        _check_crops("dino_center_update", "teacher_out", teacher_out)
        flat = torch.cat(list(teacher_out), dim=0)
    k = flat.shape[1]
    if center.numel() != k or center.ndim > 2:
        raise ValueError(f"dino_center_update: expected center [1, {k}] or [{k}], got {tuple(center.shape)}")
    batch_center = flat.mean(dim=0, keepdim=True)
    return center.reshape(1, k) * momentum + batch_center * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes (Caron et al. 2020, "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", Sec. 3.1 Eq. 3 and the appendix
    pseudo-code; official code facebookresearch/swav ``distributed_sinkhorn``, one process).

    scores: [B, K] similarities of B (normalised) features to K (normalised) prototypes.
    Q = exp(scores / epsilon)^T [K, B] is normalised to sum 1, then ``iters`` times each
    prototype row is scaled to total 1/K and each sample column to total 1/B. Returns the
    codes (Q * B)^T, [B, K]: each row sums to 1 and the prototypes are used about equally.
    The global maximum is subtracted before exp (a no-op after the first normalisation,
    it only prevents overflow). Computed without gradient, in at least float32.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp: expected scores [B, K], got {tuple(scores.shape)}")
    _check_positive("sinkhorn_knopp", epsilon=epsilon)
    if iters < 0:
        raise ValueError(f"sinkhorn_knopp: iters must be >= 0, got {iters}")
    s = scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    q = torch.exp((s - s.max()) / epsilon).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def swav_loss(
    scores: Sequence[torch.Tensor],
    epsilon: float = 0.05,
    sinkhorn_iters: int = 3,
    temperature: float = 0.1,
    n_global: int = 2,
    queue_scores: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """SwAV's swapped prediction loss with multi-crop (Caron et al. 2020, Sec. 3.1 Eqs. 1-3
    and Sec. 3.2; official code facebookresearch/swav ``main_swav.py``).

    scores: list of [B, K] tensors, one per crop, the global crops first, each the
        similarities z . c_k of the crop's normalised features to the normalised
        prototypes (not divided by any temperature).
    n_global: the first n_global crops are the ones codes are computed from (the official
        ``crops_for_assign``, default 2).
    queue_scores: optional list of n_global [Q, K] tensors, the queued features of each
        global crop scored against the current prototypes; as in the official code they
        are put before the batch for Sinkhorn, and the batch keeps the last B codes.
    For each global crop i, codes q_i = sinkhorn_knopp(scores[i], epsilon, sinkhorn_iters)
    (no gradient); each other crop v predicts them with p_v = softmax(scores[v] /
    temperature): subloss_i = mean_{v != i} mean_b -sum_k q_i log p_v. Returns the mean of
    subloss_i over the n_global crops.
    """
    b, k = _check_crops("swav_loss", "scores", scores)
    n_crops = len(scores)
    if not 1 <= n_global <= n_crops or n_crops < 2:
        raise ValueError(f"swav_loss: needs at least 2 crops and 1 <= n_global <= {n_crops}, got n_global={n_global} with {n_crops} crops")
    if queue_scores is not None:
        if isinstance(queue_scores, torch.Tensor) or len(queue_scores) != n_global:
            raise ValueError(f"swav_loss: queue_scores must be a list of {n_global} [Q, K] tensors, one per global crop")
        _check_crops("swav_loss", "queue_scores", queue_scores, k=k)
    _check_positive("swav_loss", temperature=temperature)
    log_probs = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros(())
    for i in range(n_global):
        out = scores[i].detach()
        if queue_scores is not None:
            out = torch.cat([queue_scores[i].detach(), out], dim=0)
        q = sinkhorn_knopp(out, epsilon, sinkhorn_iters)[-b:].to(scores[i].dtype)
        subloss = scores[0].new_zeros(())
        for v in range(n_crops):
            if v != i:
                subloss = subloss - (q * log_probs[v]).sum(dim=1).mean()
        loss = loss + subloss / (n_crops - 1)
    return loss / n_global


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    base_temperature: float | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss, the "outside the log" form (Khosla et al. 2020,
    "Supervised Contrastive Learning", Eq. 2; official code HobbitLong/SupContrast
    ``losses.py`` ``SupConLoss`` with contrast_mode='all').

    features: [B, n_views, D], L2-normalised by the caller. labels: [B] class ids, or None
        for the self-supervised case (Eq. 1), where the only positives of a view are the
        other views of its image; with n_views = 2 this is SimCLR's NT-Xent.
    Every one of the B * n_views views is an anchor; A(i) is every other view, P(i) the
    views in A(i) with the anchor's label: l_i = -(temperature / base_temperature) / |P(i)|
    sum_{p in P(i)} log exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t). Returns the mean
    over anchors (an anchor without positives contributes 0, as in the official code).
    base_temperature defaults to temperature, so the factor is 1 (the official code's
    default has both at 0.07).
    """
    if features.ndim != 3:
        raise ValueError(f"supcon_loss: expected features [B, n_views, D], got {tuple(features.shape)}")
    b, n_views, _ = features.shape
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != b):
        raise ValueError(f"supcon_loss: expected labels [{b}], got {tuple(labels.shape)}")
    if base_temperature is None:
        base_temperature = temperature
    _check_positive("supcon_loss", temperature=temperature, base_temperature=base_temperature)
    device = features.device
    if labels is None:
        same = torch.eye(b, dtype=torch.bool, device=device)
    else:
        labels = labels.to(device)
        same = labels[:, None] == labels[None, :]
    # View-major order, as torch.cat(torch.unbind(features, dim=1)) in the official code.
    contrast = features.transpose(0, 1).reshape(n_views * b, -1)
    logits = contrast @ contrast.t() / temperature
    self_mask = torch.eye(n_views * b, dtype=torch.bool, device=device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    pos = (same.repeat(n_views, n_views) & ~self_mask).to(log_prob.dtype)
    n_pos = pos.sum(dim=1).clamp(min=1)
    mean_log_prob_pos = (pos * log_prob).sum(dim=1) / n_pos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


@torch.no_grad()
def instdisc_estimate_z(pos_logits: torch.Tensor, neg_logits: torch.Tensor, n_data: int) -> torch.Tensor:
    """InstDisc's normalising constant (Wu et al. 2018, Sec. 3.2): Z ~= n E_j[exp(v_j.f/tau)],
    estimated by Monte Carlo as in the official code (lemniscate.pytorch
    ``NCEAverage``: ``Z = exp(out).mean() * n``), over the positive and the sampled
    negatives of a batch. The paper computes it once, at the first iteration, and keeps it
    constant; the caller stores it. Returns a 0-dim tensor.
    """
    _check_nce_shapes("instdisc_estimate_z", pos_logits, neg_logits, n_data)
    return torch.cat([pos_logits[:, None], neg_logits], dim=1).exp().mean() * n_data


def _check_nce_shapes(name: str, pos_logits: torch.Tensor, neg_logits: torch.Tensor, n_data: int) -> None:
    if pos_logits.ndim != 1 or neg_logits.ndim != 2 or neg_logits.shape[0] != pos_logits.shape[0] or neg_logits.shape[1] == 0:
        raise ValueError(
            f"{name}: expected pos_logits [B] and neg_logits [B, m] with m >= 1, "
            f"got {tuple(pos_logits.shape)} and {tuple(neg_logits.shape)}"
        )
    if not n_data >= 1:
        raise ValueError(f"{name}: n_data must be >= 1, got {n_data}")


def instdisc_nce_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    n_data: int,
    z: float | torch.Tensor,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Non-parametric instance discrimination with noise-contrastive estimation (Wu et al.
    2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
    Sec. 3.2; official code lemniscate.pytorch ``NCECriterion``). PIRL (Misra & van der
    Maaten 2020, Sec. 3) trains with the same NCE form against a memory bank.

    pos_logits: [B], v_i . f_i / tau, each feature against its own memory-bank entry.
    neg_logits: [B, m], v_j . f_i / tau against m entries drawn uniformly from the bank.
    n_data: n, the number of instances (the noise distribution is uniform, P_n = 1/n).
    z: the normalising constant Z (a number or 0-dim tensor; see instdisc_estimate_z).
    With P(i|v) = exp(logit) / Z and h(i, v) = P(i|v) / (P(i|v) + m P_n + eps) (eps in the
    denominators as in the official code), the loss is
    -log h(positive) - sum_{m negatives} log(1 - h(negative)), mean over the batch.
    Computed in log space.
    """
    _check_nce_shapes("instdisc_nce_loss", pos_logits, neg_logits, n_data)
    if not z > 0:
        raise ValueError(f"instdisc_nce_loss: z must be > 0, got {z}")
    if not eps >= 0:
        raise ValueError(f"instdisc_nce_loss: eps must be >= 0, got {eps}")
    b, m = neg_logits.shape
    log_z = torch.log(torch.as_tensor(z, dtype=pos_logits.dtype, device=pos_logits.device))
    m_pn = m / n_data
    log_noise = torch.log(torch.as_tensor(m_pn + eps, dtype=pos_logits.dtype, device=pos_logits.device))
    log_p_pos = pos_logits - log_z
    log_p_neg = neg_logits - log_z
    log_h_pos = log_p_pos - torch.logaddexp(log_p_pos, log_noise)
    log_one_minus_h_neg = math.log(m_pn) - torch.logaddexp(log_p_neg, log_noise)
    return -(log_h_pos.sum() + log_one_minus_h_neg.sum()) / b


# ---------------------------------------------------------------------------------------
# Data-parallel forms. Each process passes its own slice of the global batch (every
# process the same number of rows); the collectives are those of
# methods/components/distributed.py, whose backward passes sum over processes, so that
# after DistributedDataParallel averages the parameter gradients the model gets the
# gradient of the mean over processes of the returned losses. For every function below
# that mean equals the single-process loss on the global batch (the rows of all
# processes concatenated in rank order); tests/test_ddp.py checks value and gradients.
# In a single process (torch.distributed not initialised, or one process) each one
# computes exactly its single-process counterpart.
# ---------------------------------------------------------------------------------------


def nt_xent_distributed(z1: torch.Tensor, z2: torch.Tensor, temperature: float, group=None) -> torch.Tensor:
    """SimCLR's NT-Xent with the negatives gathered from every process: the cross-replica
    form of the official TensorFlow code (google-research/simclr ``objective.py``
    ``add_contrastive_loss``: ``hidden1_large = tpu_cross_replica_concat(hidden1)``, the
    local anchors scored against the global candidates, labels and self-masks at
    ``arange(n) + replica_id * n``).

    z1, z2: [n, D], this process's slice of the two views (normalised here). The 2n local
    anchors are scored against all 2N = 2 W n views of the global batch (gathered with
    gradient), the anchor itself masked out, the other view of its image the positive.
    Returns the mean over the 2n local anchors; the mean over processes is
    ``nt_xent(z1_global, z2_global, temperature)`` (the official code adds the two
    n-anchor means, i.e. twice this value, and sums the replicas' gradients).
    """
    from methods.components.distributed import gather_with_grad, world

    rank, w = world(group)
    _check_pair("nt_xent_distributed", z1, z2, "z1", "z2", min_batch=1 if w > 1 else 2)
    _check_positive("nt_xent_distributed", temperature=temperature)
    n = z1.shape[0]
    big_n = w * n
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    candidates = torch.cat([gather_with_grad(z1, group), gather_with_grad(z2, group)], dim=0)  # [2N, D]
    anchors = torch.cat([z1, z2], dim=0)  # [2n, D]
    logits = anchors @ candidates.t() / temperature  # [2n, 2N]
    own = torch.arange(n, device=z1.device) + rank * n  # global rows of this process's images
    rows = torch.arange(2 * n, device=z1.device)
    self_cols = torch.cat([own, own + big_n])
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_cols] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([own + big_n, own])
    return F.cross_entropy(logits, targets)


def moco_v3_loss_distributed(q: torch.Tensor, k: torch.Tensor, temperature: float, group=None) -> torch.Tensor:
    """MoCo v3's in-batch loss with the keys of every process (official code moco-v3
    ``moco/builder.py`` ``MoCo.contrastive_loss``: ``k = concat_all_gather(k)``, labels
    ``arange(N) + N * rank``, times 2 * temperature).

    q, k: [n, D], this process's queries and momentum keys (normalised here; the keys are
    gathered without gradient, as in the official code). Returns the mean over the n local
    queries; the mean over processes is ``moco_v3_loss(q_global, k_global, temperature)``.
    """
    from methods.components.distributed import concat_all_gather, world

    rank, _ = world(group)
    _check_pair("moco_v3_loss_distributed", q, k, "q", "k")
    _check_positive("moco_v3_loss_distributed", temperature=temperature)
    q = F.normalize(q, dim=1)
    k = concat_all_gather(F.normalize(k, dim=1), group)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
    return F.cross_entropy(logits, labels) * (2 * temperature)


def barlow_twins_loss_distributed(z1: torch.Tensor, z2: torch.Tensor, lambd: float, group=None) -> torch.Tensor:
    """Barlow Twins with the batch statistics and the cross-correlation summed over
    processes (official code facebookresearch/barlowtwins ``main.py``: the projector's
    ``BatchNorm1d(affine=False)`` converted to ``SyncBatchNorm``, then
    ``c = bn(z1).T @ bn(z2); c.div_(batch_size); torch.distributed.all_reduce(c)`` with the
    global batch size).

    z1, z2: [n, D], this process's slice of the two views. The per-dimension mean and
    biased variance are those of the global batch (sums all-reduced, two passes, as
    SyncBatchNorm in training), C = sum over processes of z1_n^T z2_n / N, and every
    process returns the same loss, equal to ``barlow_twins_loss`` on the global batch.
    The all-reduces are differentiable (``all_reduce_sum``), so under DDP the gradient is
    the single-process one; the official code's ``torch.distributed.all_reduce`` is not
    autograd-aware and gives 1/W of it (barlowtwins issue #8, lightly issue #1977), a
    constant factor its learning rate absorbed.
    """
    from methods.components.distributed import all_reduce_sum, world

    _, w = world(group)
    _check_pair("barlow_twins_loss_distributed", z1, z2, "z1", "z2", min_batch=1 if w > 1 else 2)
    n, d = z1.shape
    sums = all_reduce_sum(torch.cat([z1.sum(dim=0), z2.sum(dim=0), z1.new_full((1,), float(n))]), group)
    big_n = sums[-1].detach()
    c1 = z1 - sums[:d] / big_n
    c2 = z2 - sums[d : 2 * d] / big_n
    sq = all_reduce_sum(torch.cat([c1.pow(2).sum(dim=0), c2.pow(2).sum(dim=0)]), group)
    z1n = c1 / torch.sqrt(sq[:d] / big_n + 1e-5)
    z2n = c2 / torch.sqrt(sq[d:] / big_n + 1e-5)
    c = all_reduce_sum(z1n.t() @ z2n, group) / big_n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c[_off_diagonal_mask(d, c.device)].pow(2).sum()
    return on_diag + lambd * off_diag


@torch.no_grad()
def sinkhorn_knopp_distributed(scores: torch.Tensor, epsilon: float, iters: int, group=None) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp over the global batch (official code facebookresearch/swav
    ``main_swav.py`` ``distributed_sinkhorn``): B = (local batch) * world size, the total
    sum and the prototype (row) sums all-reduced, the sample (column) sums local.

    scores: [b, K], this process's slice (every process the same b). Returns this
    process's rows of ``sinkhorn_knopp`` of the global [W b, K] scores. The maximum
    subtracted before exp is the global one (all-reduced), so the arithmetic is the
    single-process one up to the order of the sums. No gradient.
    """
    from methods.components.distributed import all_reduce_max, all_reduce_sum, world

    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp_distributed: expected scores [B, K], got {tuple(scores.shape)}")
    _check_positive("sinkhorn_knopp_distributed", epsilon=epsilon)
    if iters < 0:
        raise ValueError(f"sinkhorn_knopp_distributed: iters must be >= 0, got {iters}")
    _, w = world(group)
    s = scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    q = torch.exp((s - all_reduce_max(s.max(), group)) / epsilon).t()
    k, b_local = q.shape
    b = b_local * w
    q = q / all_reduce_sum(q.sum(), group)
    for _ in range(iters):
        q = q / all_reduce_sum(q.sum(dim=1, keepdim=True), group) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def swav_loss_distributed(
    scores: Sequence[torch.Tensor],
    epsilon: float = 0.05,
    sinkhorn_iters: int = 3,
    temperature: float = 0.1,
    n_global: int = 2,
    queue_scores: Sequence[torch.Tensor] | None = None,
    group=None,
) -> torch.Tensor:
    """``swav_loss`` with the codes from ``sinkhorn_knopp_distributed``, as the official
    ``main_swav.py`` computes it on each process: ``q = distributed_sinkhorn(out)[-bs:]``,
    the swapped-prediction cross-entropy averaged over the local batch.

    scores: list of [b, K] per crop, this process's slice; queue_scores: optional list of
    n_global [Q, K], this process's own queue (the official queue is per process), put
    before the batch for Sinkhorn. Returns the local loss; the mean over processes equals
    ``swav_loss`` on the global batch (with the processes' queues concatenated, if any,
    since the codes do not depend on the order of the samples).
    """
    b, k = _check_crops("swav_loss_distributed", "scores", scores)
    n_crops = len(scores)
    if not 1 <= n_global <= n_crops or n_crops < 2:
        raise ValueError(
            f"swav_loss_distributed: needs at least 2 crops and 1 <= n_global <= {n_crops}, "
            f"got n_global={n_global} with {n_crops} crops"
        )
    if queue_scores is not None:
        if isinstance(queue_scores, torch.Tensor) or len(queue_scores) != n_global:
            raise ValueError(f"swav_loss_distributed: queue_scores must be a list of {n_global} [Q, K] tensors, one per global crop")
        _check_crops("swav_loss_distributed", "queue_scores", queue_scores, k=k)
    _check_positive("swav_loss_distributed", temperature=temperature)
    log_probs = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros(())
    for i in range(n_global):
        out = scores[i].detach()
        if queue_scores is not None:
            out = torch.cat([queue_scores[i].detach(), out], dim=0)
        q = sinkhorn_knopp_distributed(out, epsilon, sinkhorn_iters, group)[-b:].to(scores[i].dtype)
        subloss = scores[0].new_zeros(())
        for v in range(n_crops):
            if v != i:
                subloss = subloss - (q * log_probs[v]).sum(dim=1).mean()
        loss = loss + subloss / (n_crops - 1)
    return loss / n_global
