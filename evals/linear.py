"""Linear probe on a frozen backbone (MoCo protocol by default)."""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.config import P
from harness.errors import UsageError
from harness.data.loading import EpochSampler, SeededTransformDataset
from harness.data.transforms import crop_flip_transform, eval_transform
from harness.optim import LARS, step_decay, warmup_cosine
from harness.progress import progress
from harness.seeding import derive_seed
from evals.base import Evaluator
from evals.features import extract, topk_correct

MOCO = "facebookresearch/moco main_lincls.py"
SIMCLR = "google-research/simclr README (linear evaluation)"
DINO = "facebookresearch/dino eval_linear.py"

READOUTS = ("probe_layer", "dino", "last4_cls", "cls_avgpool")


def readout_features(method, x: torch.Tensor, readout: str) -> torch.Tensor:
    """The features a linear probe reads. ``probe_layer``: the method's representation
    (``backbone.probe_layer``). ``last4_cls`` / ``cls_avgpool``: DINO's ViT read-outs (the
    class tokens of the last four blocks; the last block's class token and mean patch
    token). ``dino``: what DINO's eval_linear.py picks: last4_cls for ViT-S and smaller,
    cls_avgpool for ViT-B, the pooled features of any other backbone."""
    backbone = getattr(method, "backbone", None)
    if readout == "probe_layer":
        return method.features(x)
    is_vit = hasattr(backbone, "forward_readout")
    if readout == "dino":
        if not is_vit:
            return method.features(x)
        readout = "cls_avgpool" if backbone.num_features >= 768 else "last4_cls"
    if not is_vit:
        raise UsageError(f"eval.linear.readout={readout}: needs a ViT backbone, not '{method.cfg['backbone.name']}'")
    return backbone.forward_readout(x, readout)


def readout_dim(method, readout: str) -> int:
    with torch.no_grad():
        was = method.training
        method.eval()
        size = int(method.cfg["data.image_size"])
        dim = readout_features(method, torch.zeros(2, 3, size, size, device=next(method.parameters()).device), readout).shape[1]
        method.train(was)
    return dim


class BackboneChanged(AssertionError):
    pass


def state_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer (BN running stats included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LinearProbe(Evaluator):
    name = "linear"
    protocol = "linear"
    description = "linear classifier on frozen features (MoCo protocol: SGD lr 30, 100 epochs, steps at 60/80)"
    source = MOCO
    default_preset = "moco"
    presets = {
        "moco": {
            "epochs": P(100, MOCO),
            "batch_size": P(256, MOCO),
            "lr": P(30.0, MOCO),
            "momentum": P(0.9, MOCO),
            "weight_decay": P(0.0, MOCO),
            "milestones": P([60, 80], f"{MOCO}: lr x0.1 at epochs 60 and 80"),
            "crop_scale_min": P(0.08, f"{MOCO}: RandomResizedCrop default scale"),
            "flip": P(True, MOCO),
            "feature_norm": P("none", f"{MOCO}: raw pooled features"),
            "optimizer": P("sgd", MOCO),
            "lr_scaling": P("none", f"{MOCO}: lr 30 at batch 256"),
            "schedule": P("step", MOCO),
            "readout": P("probe_layer", f"{MOCO}: the pooled backbone output"),
        },
        "simclr": {
            "epochs": P(90, SIMCLR),
            "batch_size": P(4096, SIMCLR),
            "lr": P(0.1, f"{SIMCLR}: lr 0.1 x batch/256"),
            "lr_scaling": P("linear", SIMCLR),
            "momentum": P(0.9, SIMCLR),
            "optimizer": P("nesterov", f"{SIMCLR}: Nesterov momentum"),
            "weight_decay": P(1e-6, SIMCLR),
            "schedule": P("cosine", f"{SIMCLR}: cosine decay"),
            "milestones": P([], "unused by the cosine schedule"),
            "crop_scale_min": P(0.08, f"{SIMCLR}: random crop and flip"),
            "flip": P(True, SIMCLR),
            "feature_norm": P("none", SIMCLR),
            "readout": P("probe_layer", SIMCLR),
        },
        "dino": {
            "epochs": P(100, DINO),
            "batch_size": P(1024, f"{DINO}: 128 per GPU x 8 GPUs"),
            "lr": P(0.001, f"{DINO}: lr 0.001 x batch/256"),
            "lr_scaling": P("linear", DINO),
            "momentum": P(0.9, DINO),
            "optimizer": P("sgd", DINO),
            "weight_decay": P(0.0, DINO),
            "schedule": P("cosine", f"{DINO}: CosineAnnealingLR to 0"),
            "milestones": P([], "unused by the cosine schedule"),
            "crop_scale_min": P(0.08, f"{DINO}: RandomResizedCrop + flip"),
            "flip": P(True, DINO),
            "feature_norm": P("none", DINO),
            "readout": P("dino", f"{DINO}: ViT-S concatenates the last 4 class tokens, ViT-B adds avgpool"),
        },
    }

    def run(self, method, suite, device, out_dir):
        p = self.params
        size = int(self.cfg["data.image_size"])
        seed = int(self.cfg["seed"])
        before = state_fingerprint(method)
        method.eval()  # BN running statistics are part of the frozen model (MoCo main_lincls)
        for q in method.parameters():
            q.requires_grad_(False)

        train_base = suite.split("train")
        train = SeededTransformDataset(train_base, crop_flip_transform(size, p["crop_scale_min"], p["flip"]), derive_seed(seed, 10))
        num_classes = len(train_base.classes)
        readout = p["readout"]
        if readout not in READOUTS:
            raise UsageError(f"eval.linear.readout={readout!r}: expected one of {', '.join(READOUTS)}")
        dim = method.num_features if readout == "probe_layer" else readout_dim(method, readout)
        torch.manual_seed(derive_seed(seed, 11))
        linear = nn.Linear(dim, num_classes)
        # MoCo initialises the probe with N(0, 0.01) weights and zero bias.
        nn.init.normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        if p["feature_norm"] == "batchnorm":
            head = nn.Sequential(nn.BatchNorm1d(method.num_features, affine=False), linear).to(device)
        elif p["feature_norm"] == "none":
            head = linear.to(device)
        else:
            raise UsageError(f"eval.linear.feature_norm={p['feature_norm']!r}: expected 'none' or 'batchnorm'")
        bs = int(p["batch_size"])
        scaling = {"none": 1.0, "linear": bs / 256}
        if p["lr_scaling"] not in scaling:
            raise UsageError(f"eval.linear.lr_scaling={p['lr_scaling']!r}: expected none or linear")
        lr = float(p["lr"]) * scaling[p["lr_scaling"]]
        if p["optimizer"] in ("sgd", "nesterov"):
            opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=p["momentum"], weight_decay=p["weight_decay"],
                                  nesterov=p["optimizer"] == "nesterov")
        elif p["optimizer"] == "lars":
            opt = LARS(head.parameters(), lr=lr, momentum=p["momentum"], weight_decay=p["weight_decay"])
        else:
            raise UsageError(f"eval.linear.optimizer={p['optimizer']!r}: expected sgd, nesterov or lars")
        steps_per_epoch = max(len(train) // bs, 1)
        epochs = int(p["epochs"])
        if p["schedule"] == "step":
            schedule = step_decay(lr, epochs * steps_per_epoch, [m * steps_per_epoch for m in p["milestones"]])
        elif p["schedule"] == "cosine":
            schedule = warmup_cosine(lr, epochs * steps_per_epoch)
        else:
            raise UsageError(f"eval.linear.schedule={p['schedule']!r}: expected step or cosine")
        step = 0
        bar = progress(total=epochs * steps_per_epoch, desc="linear probe", unit="step")
        for epoch in range(epochs):
            train.set_epoch(epoch)
            loader = DataLoader(train, batch_size=bs, sampler=EpochSampler(len(train), derive_seed(seed, 12), epoch), drop_last=len(train) >= bs)
            for x, y in loader:
                for g in opt.param_groups:
                    g["lr"] = float(schedule[min(step, len(schedule) - 1)])
                with torch.no_grad():
                    f = readout_features(method, x.to(device), readout)
                loss = F.cross_entropy(head(f.float()), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch, refresh=False)
        bar.close()

        head.eval()
        val = suite.split("val", eval_transform(size, self.cfg["data.eval_resize_ratio"]))
        feats, labels = extract(method, val, device, min(bs, 256), "linear: val",
                                features=lambda x: readout_features(method, x, readout))
        with torch.no_grad():
            scores = head(feats.to(device)).cpu()
        correct = topk_correct(scores, labels, (1, 5))
        if state_fingerprint(method) != before:
            raise BackboneChanged("the linear probe changed the frozen backbone's weights or statistics")
        for q in method.parameters():
            q.requires_grad_(True)
        n = len(labels)
        return {"top1": 100.0 * correct[1] / n, "top5": 100.0 * correct[5] / n, "final_train_loss": float(loss.item())}
