from importlib.metadata import EntryPoint

import pytest

from harness import registry
from harness.errors import UsageError


def test_builtins_registered_through_entry_points():
    assert {"rotation", "cpc_v2"} <= set(registry.methods.names())
    assert {"linear", "knn"} <= set(registry.evals.names())
    assert {"digits", "imagenet"} <= set(registry.suites.names())
    assert registry.methods.get("rotation").name == "rotation"


def test_lazy_listing_imports_nothing(monkeypatch):
    reg = registry.Registry("methods")
    monkeypatch.setattr(EntryPoint, "load", lambda self: pytest.fail("listing must not import plugins"))
    assert "rotation" in reg.names()


def test_duplicate_names_rejected(monkeypatch):
    eps = [EntryPoint("dup", "pkg_a.m:A", "harness.methods"), EntryPoint("dup", "pkg_b.m:B", "harness.methods")]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.raises(UsageError, match="duplicate method name 'dup'"):
        registry.Registry("methods").names()


def test_unknown_lists_known():
    with pytest.raises(UsageError, match="known methods: .*cpc_v2.*rotation"):
        registry.methods.get("simclrr")
