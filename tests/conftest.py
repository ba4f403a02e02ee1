from pathlib import Path

import pytest

from harness import registry

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Tiny budget for end-to-end runs: a 192-image subset, one short epoch, a one-epoch probe.
TINY = [
    "data.train_subset=192", "train.batch_size=32", "train.warmup_epochs=0",
    "eval.linear.epochs=1", "eval.linear.milestones=[]", "eval.knn.ks=[10,20]",
]


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    # One generated embedded suite for the whole session, outside the user's cache.
    cache = tmp_path_factory.getbasetemp() / "data-cache"
    monkeypatch.setenv("SSL_HARNESS_DATA", str(cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield


# The default suite runs every pretext method and a representative of each contrastive
# family; the rest of the contrastive methods run under `make test-slow` (same test).
DEFAULT_CONTRASTIVE = {"simclr", "moco_v2", "byol", "instdisc", "dino"}
CONTRASTIVE = {"instdisc", "moco_v1", "moco_v2", "moco_v3", "simclr", "cmc", "supcon", "pirl", "byol",
               "simsiam", "swav", "dino", "barlow_twins", "vicreg"}


def method_params(trainable_only: bool = False):
    names = [m for m in registry.methods.names()
             if not trainable_only or getattr(registry.methods.get(m), "trainable", True)]
    return [pytest.param(m, marks=pytest.mark.slow) if m in CONTRASTIVE - DEFAULT_CONTRASTIVE else m for m in names]
