"""Plugin registries over entry points.

Built-ins register through the same entry-point groups a third-party package uses
(``harness.methods``, ``harness.evals``, ``harness.backbones``, ``harness.suites``), so a
plugin needs nothing but a line in its own ``pyproject.toml``. Loading is lazy: listing
names imports nothing; ``get`` imports only the plugin asked for.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from harness.errors import UsageError

GROUPS = {
    "methods": "harness.methods",
    "evals": "harness.evals",
    "backbones": "harness.backbones",
    "suites": "harness.suites",
}


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.group = GROUPS[kind]
        self._eps: dict[str, EntryPoint] | None = None
        self._loaded: dict[str, object] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._eps is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self.group):
                if ep.name in found and found[ep.name].value != ep.value:
                    # Two packages claiming one name would make results depend on install order.
                    raise UsageError(
                        f"duplicate {self.kind[:-1]} name '{ep.name}': registered by both "
                        f"'{found[ep.name].value}' and '{ep.value}'; uninstall one of them"
                    )
                found[ep.name] = ep
            self._eps = dict(sorted(found.items()))
        return self._eps

    def names(self) -> list[str]:
        return list(self._entry_points())

    def get(self, name: str):
        if name in self._loaded:
            return self._loaded[name]
        eps = self._entry_points()
        if name not in eps:
            known = ", ".join(eps) or "(none installed)"
            raise UsageError(f"unknown {self.kind[:-1]} '{name}'; known {self.kind}: {known}")
        obj = eps[name].load()
        self._loaded[name] = obj
        return obj

    def register(self, name: str, obj) -> None:
        """Adds a plugin for this process (a notebook, a test) without packaging it; the same
        rules as an entry point: a name already taken is an error."""
        if name in self._entry_points() or name in self._loaded:
            raise UsageError(f"{self.kind[:-1]} '{name}' is already registered; choose another name")
        self._eps = {**self._eps, name: None}  # listed like an installed one, in name order
        self._eps = dict(sorted(self._eps.items()))
        self._loaded[name] = obj

    def unregister(self, name: str) -> None:
        """Removes a plugin added with ``register``."""
        if name in (self._eps or {}) and self._eps[name] is None:
            del self._eps[name]
            self._loaded.pop(name, None)

    def describe(self, name: str) -> str:
        """One line: the plugin's ``description`` (or first docstring line) and its ``source``."""
        obj = self.get(name)
        doc = (obj.__doc__ or "").strip().splitlines()
        desc = getattr(obj, "description", None) or (doc[0] if doc else "")
        source = getattr(obj, "source", "")
        return f"{desc} [{source}]" if source else desc


class BackboneRegistry(Registry):
    """Backbones, plus the Revisiting study's widths by name: ``<backbone>_x<k>`` is the
    backbone at ``filters_factor`` k (Kolesnikov et al. 2019), whose root convolution has 16k
    filters, i.e. k/4 times the standard width (``resnet50_v2_x16`` = 4x ResNet-50 v2); a
    ``backbone.width`` multiplier applies on top of it."""

    def get(self, name: str):
        import re

        m = re.fullmatch(r"(.+)_x(\d+)", name)
        eps = self._entry_points()
        if m is None or name in eps or name in self._loaded or m.group(1) not in eps:
            return super().get(name)
        import inspect

        base, k = super().get(m.group(1)), int(m.group(2))
        sig = inspect.signature(base)
        if "width" not in sig.parameters or k <= 0:
            raise UsageError(f"backbone '{name}': '{m.group(1)}' has no width to scale to filters factor {k}")

        def factory(**kwargs):
            kwargs["width"] = kwargs.get("width", 1) * k / 4
            return base(**kwargs)

        factory.__signature__ = sig
        factory.__doc__ = base.__doc__
        factory.description = (f"{getattr(base, 'description', m.group(1))}; Revisiting width {k}x "
                               f"(filters factor {k} = {k / 4:g} x standard)")
        self._loaded[name] = factory
        return factory


methods = Registry("methods")
evals = Registry("evals")
backbones = BackboneRegistry("backbones")
suites = Registry("suites")

REGISTRIES = {"methods": methods, "evals": evals, "backbones": backbones, "suites": suites}
