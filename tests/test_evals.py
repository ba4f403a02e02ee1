import pytest
import torch
import torch.nn.functional as F

from evals.knn import knn_predict
from evals.linear import BackboneChanged, LinearProbe, state_fingerprint


def brute_force_knn(tr, ytr, te, k, T, C):
    tr, te = F.normalize(tr, dim=1), F.normalize(te, dim=1)
    out = torch.zeros(len(te), C)
    for i, q in enumerate(te):
        sims = tr @ q
        idx = sims.argsort(descending=True)[:k]
        for j in idx:
            out[i, ytr[j]] += torch.exp(sims[j] / T)
    return out


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_knn_equals_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(60, 5, generator=g), torch.randn(13, 5, generator=g)
    ytr = torch.randint(0, 4, (60,), generator=g)
    got = knn_predict(tr, ytr, te, [1, 3, 10, 200], 0.07, 4, chunk_size=chunk)
    for k in (1, 3, 10, 200):
        torch.testing.assert_close(got[k], brute_force_knn(tr, ytr, te, min(k, 60), 0.07, 4), rtol=1e-5, atol=1e-5)


def test_fingerprint_sees_buffers():
    m = torch.nn.BatchNorm1d(3)
    before = state_fingerprint(m)
    m.train()(torch.randn(8, 3))  # updates running statistics only
    assert state_fingerprint(m) != before
