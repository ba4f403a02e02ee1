import pytest

from harness import registry

# Tiny budget for end-to-end runs: a 192-image subset, one short epoch, a one-epoch probe.
TINY = [
    "data.train_subset=192", "train.batch_size=32", "train.warmup_epochs=0",
    "eval.linear.epochs=1", "eval.linear.milestones=[]", "eval.knn.ks=[10,20]",
    "eval.detection.max_iter=2", "eval.detection.steps=[]", "eval.detection.warmup_iters=0",
    "eval.robustness.images_per_class=2", "eval.robustness.corruptions=[gaussian_noise,contrast,speckle_noise]",
]


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    # One generated embedded suite for the whole session, outside the user's cache.
    cache = tmp_path_factory.getbasetemp() / "data-cache"
    monkeypatch.setenv("SSL_HARNESS_DATA", str(cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield




def method_params(trainable_only: bool = False):
    names = [m for m in registry.methods.names()
             if not trainable_only or getattr(registry.methods.get(m), "trainable", True)]
    return names
