import pytest

from harness.config import P, resolve, parse_override
from harness.errors import UsageError


def test_layers_apply_in_order_and_keep_sources():
    cfg = resolve([("recipe", {"train.lr": P(0.3, "paper, Table 1"), "method.k": 5}),
                   ("suite profile", {"train.lr": 0.05})], {"method.k": 7})
    assert cfg["train.lr"] == 0.05 and cfg.sources["train.lr"] == "suite profile"
    assert cfg["method.k"] == 7 and cfg.sources["method.k"] == "command line"
    cfg2 = resolve([("recipe", {"train.lr": P(0.3, "paper, Table 1")})], {})
    assert cfg2.sources["train.lr"] == "paper, Table 1"


def test_hash_changes_with_semantics_only():
    base = resolve([], {})
    assert resolve([], {"data.num_workers": 4}).hash == base.hash
    assert resolve([], {"train.lr": 0.2}).hash != base.hash


def test_unknown_key_suggests():
    with pytest.raises(UsageError, match="did you mean train.epochs"):
        resolve([], {"train.epoch": 3})


def test_coercion():
    assert resolve([], {"train.lr": 1})["train.lr"] == 1.0
    assert isinstance(resolve([], {"train.lr": 1})["train.lr"], float)
    with pytest.raises(UsageError):
        resolve([], {"train.amp": "yes please"})
    assert parse_override("eval.knn.ks=[1, 2]") == ("eval.knn.ks", [1, 2])
    with pytest.raises(UsageError):
        parse_override("train.lr")


@pytest.mark.parametrize("text, expected", [("1e-6", 1e-6), ("1.5E+3", 1500.0), ("[1e-4, 2]", [1e-4, 2]), ("e5", "e5")])
def test_override_reads_exponent_numbers(text, expected):
    # YAML 1.1 alone would hand train.weight_decay=1e-6 over as the string '1e-6'.
    assert parse_override(f"train.weight_decay={text}") == ("train.weight_decay", expected)
