"""`harness new method|eval|backbone NAME`: a plugin package that installs, registers, runs on
the embedded suite and passes its test before its author writes a line of the real thing.

The package imports only the public API (``ssl_harness``) and registers through an entry
point; its placeholder is a working, cited baseline of the kind (a method with the
alignment + uniformity objective, a nearest-class-mean eval, a small ConvNet backbone), marked
with TODOs where the author's own code goes.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from harness.errors import UsageError

KINDS = {"method": "harness.methods", "eval": "harness.evals", "backbone": "harness.backbones"}

PYPROJECT = Template('''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "harness-$name"
version = "0.1.0"
description = "An SSL Harness $kind plugin: $name"
requires-python = ">=3.10"
dependencies = ["ssl-harness"]

[project.optional-dependencies]
test = ["pytest"]

# The harness finds the plugin through this entry point: no edit to the harness.
[project.entry-points."$group"]
$name = "$package:$attr"

[tool.setuptools]
packages = ["$package"]
''')

METHOD = Template('''"""$name: TODO one line on what the method learns (authors, venue, year)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_harness import Method, P, crop_flip_transform

# TODO: the paper and the section / table each recipe value comes from.
PAPER = "TODO: authors, venue, year, section"
WANG_ISOLA = "Wang & Isola, ICML 2020 (alignment and uniformity): the placeholder objective"


class TwoViews:
    """Two independently augmented views of one image (picklable, for loader workers)."""

    def __init__(self, size: int):
        self.view = crop_flip_transform(size, scale_min=0.2)

    def __call__(self, img):
        return self.view(img), self.view(img)


class $cls(Method):
    name = "$name"
    family = "contrastive"  # TODO: pretext task, reconstruction, contrastive, self-distillation, clustering, ...
    description = "TODO: one line on the objective"
    source = PAPER
    recipes = {
        "default": {
            "backbone.name": P("resnet50", PAPER),
            "train.optimizer": P("sgd", PAPER),
            "train.lr": P(0.05, PAPER),
            "train.batch_size": P(256, PAPER),
            "train.epochs": P(200, PAPER),
        },
    }
    # The embedded suites' budget: a small ResNet for a few CPU minutes.
    suite_profiles = {
        "digits": {"backbone.name": "resnet_small", "backbone.width": 0.5, "train.epochs": 2, "train.batch_size": 64},
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        self.head = nn.Linear(self.backbone.num_features, 128)

    def train_transform(self):
        return TwoViews(int(self.cfg["data.image_size"]))

    def training_step(self, batch):
        (x1, x2), _labels = batch  # labels are there for supervised baselines: never read them
        z1 = F.normalize(self.head(self.backbone(x1)), dim=1)
        z2 = F.normalize(self.head(self.backbone(x2)), dim=1)
        # TODO: replace with the paper's objective. Placeholder: alignment + uniformity (t=2).
        align = (z1 - z2).pow(2).sum(dim=1).mean()
        uniform = 0.5 * sum(torch.pdist(z).pow(2).mul(-2).exp().mean().log() for z in (z1, z2))
        return {"loss": align + uniform, "align": align.detach(), "uniform": uniform.detach()}
''')

EVAL = Template('''"""$name: TODO one line on the protocol (its paper)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ssl_harness import Evaluator, P, eval_transform, top1

PROTOCOL = "TODO: the protocol's source"


class $cls(Evaluator):
    name = "$name"
    protocol = "$name"
    description = "TODO: one line. Placeholder: nearest class mean on frozen features"
    source = PROTOCOL
    default_preset = "default"
    metrics = (top1("val top-1 of the nearest class mean"),)
    headline = "top1"
    presets = {"default": {"batch_size": P(256, PROTOCOL)}}

    def run(self, method, suite, device, out_dir):
        tf = eval_transform(int(self.cfg["data.image_size"]), self.cfg["data.eval_resize_ratio"])
        bs = int(self.params["batch_size"])

        def features(split):
            feats, labels = [], []
            with torch.no_grad():
                for x, y in DataLoader(suite.split(split, tf), batch_size=bs):
                    feats.append(torch.nn.functional.normalize(method.features(x.to(device)).float(), dim=1).cpu())
                    labels.append(torch.as_tensor(y))
            return torch.cat(feats), torch.cat(labels)

        method.eval()
        train_x, train_y = features("train")
        val_x, val_y = features("val")
        means = torch.stack([train_x[train_y == c].mean(0) for c in range(int(train_y.max()) + 1)])
        predicted = (val_x @ torch.nn.functional.normalize(means, dim=1).T).argmax(1)
        return {"top1": 100.0 * float((predicted == val_y).float().mean())}
''')

BACKBONE = Template('''"""$name: TODO one line on the architecture (its paper)."""
from __future__ import annotations

from torch import nn


class $cls(nn.Module):
    """Placeholder: four conv-BN-ReLU stages and a global pool. A harness backbone has
    ``num_features``, ``forward(x) -> [B, num_features]`` (what every eval reads) and
    ``forward_maps(x) -> [B, C, H, W]`` (the last feature maps: dense heads, detection)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        chans = [max(8, int(c * width)) for c in (32, 64, 128, 256)]
        layers, prev = [], 3
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(prev, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            prev = c
        self.body = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = prev

    def forward_maps(self, x):
        return self.body(x)

    def forward(self, x):
        return self.pool(self.forward_maps(x))


def $attr(width: float = 1.0) -> $cls:
    return $cls(width=width)


$attr.description = "TODO: one line (placeholder: a 4-stage ConvNet)"
''')

TEST = Template('''"""The plugin installs, registers and runs on the embedded suite."""
import json

from harness import registry
from harness.cli import main


def test_registered():
    assert "$name" in registry.$registry.names()


def test_runs_on_the_embedded_suite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main([*$run_args, "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "--suite", "digits", "data.train_subset=64", "train.batch_size=32"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert results and all(m == m for r in results.values() for m in r.values())  # numbers, no NaN
''')

README = Template('''# harness-$name

An [SSL Harness]($url) $kind plugin. Install it into the harness's environment and it is
registered (entry point `$group`):

```bash
pip install -e .
harness list $registry      # shows $name
$try_it
pytest                      # the plugin's own tests
```

Fill in the TODOs in `$package/__init__.py`: the placeholder works as is, so every step above
passes before you write a line.
''')


def new_plugin(kind: str, name: str, where: Path) -> Path:
    """Writes ``where/harness-<name>/`` for a ``kind`` plugin; returns the folder."""
    if kind not in KINDS:
        raise UsageError(f"unknown plugin kind '{kind}'; expected one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UsageError(f"plugin name {name!r}: expected a lower-case Python identifier (letters, digits, _)")
    from harness import registry

    reg = {"method": registry.methods, "eval": registry.evals, "backbone": registry.backbones}[kind]
    if name in reg.names():
        raise UsageError(f"a {kind} named '{name}' is already registered; choose another name")
    root = Path(where) / f"harness-{name}"
    if root.exists():
        raise UsageError(f"{root} already exists; remove it or choose another name or --dir")
    package = f"{name}_plugin"
    cls = "".join(part.capitalize() for part in name.split("_")) or name
    attr = name if kind == "backbone" else cls
    run_args = {"method": ["run", "--method", name, "--epochs", "1", "--eval", "knn"],
                "eval": ["run", "--method", "rotation", "--epochs", "1", "--eval", name],
                "backbone": ["run", "--method", "rotation", "--backbone", name, "--epochs", "1", "--eval", "knn"]}[kind]
    fields = dict(name=name, kind=kind, group=KINDS[kind], package=package, attr=attr, cls=cls,
                  registry={"method": "methods", "eval": "evals", "backbone": "backbones"}[kind],
                  run_args=repr(run_args), url="https://github.com/ssl-harness/ssl-harness",
                  try_it=f"harness {' '.join(run_args)}")
    code = {"method": METHOD, "eval": EVAL, "backbone": BACKBONE}[kind]
    (root / package).mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT.substitute(fields))
    (root / package / "__init__.py").write_text(code.substitute(fields))
    (root / "tests" / f"test_{name}.py").write_text(TEST.substitute(fields))
    (root / "README.md").write_text(README.substitute(fields))
    return root
