"""The backbone zoo: standard-width parameter counts against torchvision/timm, width scaling,
the Revisiting width names, RevNet's memory-saving backward, FLOPs."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

from harness.backbones import cost, create_backbone
from harness.cli import main


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_resnet_v1_matches_torchvision_without_its_classifier(name):
    tv = getattr(torchvision.models, name)()
    assert _n(create_backbone(name)) == _n(tv) - _n(tv.fc)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_zeroes_the_same_norms_as_torchvision(name):
    torch.manual_seed(0)
    ours = create_backbone(name, zero_init_residual=True)
    tv = getattr(torchvision.models, name)(zero_init_residual=True)
    zeroed = lambda model: sorted(  # noqa: E731
        n.split(".", 1)[1] for n, p in model.named_parameters()
        if n.startswith("layer") and n.endswith("weight") and p.ndim == 1 and not p.any()
    )
    assert zeroed(ours) == zeroed(tv) and len(zeroed(ours)) == sum(len(getattr(tv, f"layer{i}")) for i in (1, 2, 3, 4))
    # Every block then starts as relu(shortcut): a block without downsampling is relu(x).
    block = ours.layer1[1].eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert not any(not p.any() for n, p in create_backbone(name).named_parameters() if n.endswith("weight"))


def test_recipes_that_zero_init_the_residual_branches():
    from harness.pipeline import RunRequest, build_config

    on = {m for m in ("simclr", "simsiam", "moco_v3", "barlow_twins", "vicreg", "moco_v2", "byol", "supcon", "dino")
          if build_config(RunRequest(method=m, suite="imagenet"))[0]["backbone.zero_init_residual"]}
    assert on == {"simclr", "simsiam", "moco_v3", "barlow_twins", "vicreg", "byol"}
    from harness import registry

    # ...and the method's backbone is built that way; the digits profiles keep torchvision's
    # initialisation (one block per stage there: see TORCHVISION_INIT_ON_DIGITS).
    simsiam = registry.methods.get("simsiam")
    assert not simsiam(build_config(RunRequest(method="simsiam", suite="imagenet"))[0]).backbone.layer1[0].bn3.weight.any()
    assert simsiam(build_config(RunRequest(method="simsiam"))[0]).backbone.layer1[0].bn2.weight.all()

    from harness.errors import UsageError

    vit = build_config(RunRequest(method="simsiam", suite="imagenet", overrides={"backbone.name": "vit_tiny"}))[0]
    assert simsiam(vit).backbone.num_features > 0  # the recipe's zero-init concerns ResNets only
    # Asked for by the user, it is an error when the config is resolved, before any work.
    with pytest.raises(UsageError, match="vit_tiny.* no ResNet v1 residual blocks"):
        build_config(RunRequest(method="simsiam", suite="imagenet", overrides={
            "backbone.name": "vit_tiny", "backbone.zero_init_residual": True}))


def test_a_profile_width_is_left_out_for_a_backbone_without_one_but_a_user_width_is_an_error():
    from harness import registry
    from harness.errors import UsageError
    from harness.pipeline import RunRequest, build_config

    moco_v3 = registry.methods.get("moco_v3")
    cfg = build_config(RunRequest(method="moco_v3", backbone="vit_tiny"))[0]
    assert cfg["backbone.width"] == 0.5  # the digits profile's, chosen for resnet_small
    assert moco_v3(cfg).backbone.num_features == 192
    with pytest.raises(UsageError, match="backbone 'vit_tiny' has no width option"):
        build_config(RunRequest(method="moco_v3", backbone="vit_tiny", overrides={"backbone.width": 2.0}))


def test_vgg19_bn_matches_torchvision_without_its_last_layer():
    tv = torchvision.models.vgg19_bn()
    assert _n(create_backbone("vgg19_bn")) == _n(tv) - _n(tv.classifier[6])


def test_resnet50_v2_matches_timm():
    assert _n(create_backbone("resnet50_v2")) == _n(timm.create_model("resnetv2_50", num_classes=0))


def test_alexnet_parameter_count_by_hand():
    # conv weights (no bias: BN follows) + BN (2 per channel); fc6/fc7 the same way.
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    expected = sum(ci * co * k * k + 2 * co for ci, co, k in convs)
    expected += 256 * 36 * 4096 + 2 * 4096 + 4096 * 4096 + 2 * 4096
    assert _n(create_backbone("alexnet")) == expected
    plain = sum(ci * co * k * k + co for ci, co, k in convs) + 256 * 36 * 4096 + 4096 + 4096 * 4096 + 4096
    assert _n(create_backbone("alexnet", norm="none")) == plain


@pytest.mark.parametrize("name, standard", [("resnet50", 2048), ("resnet50_v2", 2048), ("revnet50", 2048),
                                            ("vgg19_bn", 4096), ("alexnet", 4096), ("resnet18", 512)])
def test_width_multiplier_scales_channels(name, standard):
    assert create_backbone(name).num_features == standard
    assert create_backbone(name, width=0.5).num_features == standard // 2
    wide = create_backbone(name, width=2)
    assert wide.num_features == 2 * standard


def test_revisiting_width_names():
    # filters factor k: root conv with 16k filters, k/4 times the standard network.
    assert create_backbone("resnet50_v2_x16").num_features == 4 * 2048
    assert create_backbone("resnet50_v1_x4").num_features == 2048
    assert create_backbone("revnet50_x8", width=0.5).num_features == 2048  # a multiplier applies on top
    stem = create_backbone("resnet50_v1_x12").stem[0]
    assert stem.out_channels == 16 * 12


def _small_for_32px(name: str) -> nn.Module:
    """Backbone ``name`` at a quarter width (where it has widths) for 32 px inputs."""
    import inspect

    from harness import registry
    params = inspect.signature(registry.backbones.get(name)).parameters
    kw = {"width": 0.25} if "width" in params else {}
    if "small_input" in params:
        kw["small_input"] = True
    if "img_size" in params:
        kw.update(img_size=32, patch_size=4)
    return create_backbone(name, **kw)


@pytest.mark.parametrize("name", ["alexnet", "vgg19_bn", "resnet50_v2", "revnet50", "resnet34", "vit_tiny"])
def test_every_backbone_has_pooled_maps_and_named_stages(name):
    m = _small_for_32px(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, maps, stages = m(x), m.forward_maps(x), m.forward_stages(x)
    assert pooled.shape == (2, m.num_features)
    assert maps.dim() == 4 and maps.shape[0] == 2
    assert torch.allclose(stages["pre_logits"], pooled, atol=1e-6)
    blocks = [k for k in stages if k.startswith("block")]
    assert len(blocks) >= 4
    for k in blocks:
        assert stages[k].shape[1] == m.block_channels(int(k[5:]))
    with torch.no_grad():
        assert torch.allclose(m.forward_block(x, 2), stages["block2"], atol=1e-6)


@pytest.mark.parametrize("name", ["alexnet", "vgg19_bn", "resnet18", "resnet50_v2", "revnet50", "resnet_small",
                                  "vit_tiny"])
def test_untrained_backbones_tell_images_apart_in_eval_mode(name):
    # `--epochs 0` baselines and short runs are probed in eval mode with BN's initial running
    # statistics; an init that lets the biases drown the signal gives every image one feature.
    torch.manual_seed(0)
    m = _small_for_32px(name).eval()
    with torch.no_grad():
        f = m(torch.randn(16, 3, 32, 32))
    spread = (f.std(0).mean() / f.abs().mean()).item()
    assert spread > 0.01, f"{name}: features barely depend on the image (relative spread {spread:.2g})"


def _randomise_bn(model):
    # A trained network's BN: without it, zero-initialised biases put exact zeros into ReLUs,
    # where reconstruction round-off decides the subgradient.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g, dtype=mod.weight.dtype) + 0.5)
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g, dtype=mod.bias.dtype) - 0.5)


def test_revnet_memory_saving_backward_equals_ordinary_autograd():
    torch.manual_seed(0)
    rev = create_backbone("revnet50", width=0.25, small_input=True).double().train()
    _randomise_bn(rev)
    ref = copy.deepcopy(rev)
    ref.memory_saving = False
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(4, rev.num_features, dtype=torch.float64)
    (rev(xa) * w).sum().backward()
    (ref(xb) * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=0, atol=1e-5 * xb.grad.abs().max().item())
    for (name, pa), pb in zip(rev.named_parameters(), ref.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=0, atol=1e-5 * max(pb.grad.abs().max().item(), 1e-12)), name
    # BatchNorm running statistics are updated once per forward, as in the ordinary network.
    for (name, ba), bb in zip(rev.named_buffers(), ref.buffers()):
        assert torch.equal(ba, bb), name


def test_revnet_float32_gradients_match_for_the_typical_parameter():
    # In float32 the inverse recomputation carries round-off: the median parameter's gradient
    # stays within 1e-5 (measured ~1.3e-6), a few small ones drift further (up to ~1e-3).
    torch.manual_seed(0)
    rev = create_backbone("revnet50", width=0.25, small_input=True).train()
    ref = copy.deepcopy(rev)
    ref.memory_saving = False
    x, w = torch.randn(16, 3, 16, 16), torch.randn(16, rev.num_features)
    (rev(x) * w).sum().backward()
    (ref(x) * w).sum().backward()
    rel = sorted(((pa.grad - pb.grad).norm() / pb.grad.norm()).item() for pa, pb in zip(rev.parameters(), ref.parameters()))
    assert rel[len(rel) // 2] < 1e-5


def test_revnet_keeps_one_unit_of_activations_per_stage():
    """What the forward pass keeps for the backward pass does not grow with the number of
    reversible units (the backward pass then recomputes one unit at a time)."""
    from harness.backbones.revnet import RevNet

    def saved_bytes(layers, memory_saving):
        torch.manual_seed(0)
        net = RevNet(layers, width=0.25, small_input=True, memory_saving=memory_saving).train()
        seen = {}

        def pack(t):
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(torch.randn(8, 3, 32, 32)).sum()
        out.backward()
        return sum(seen.values())

    shallow, deep = saved_bytes((2, 2, 2, 2), True), saved_bytes((2, 2, 12, 2), True)
    plain_shallow, plain_deep = saved_bytes((2, 2, 2, 2), False), saved_bytes((2, 2, 12, 2), False)
    assert plain_deep > 1.5 * plain_shallow  # ordinary autograd stores every unit
    assert deep < 1.05 * shallow  # parameters aside, nothing grows with depth


def test_flops_of_resnet50_at_224_match_the_reference():
    # REFERENCE.md: ResNet-50 at 224 px, 4.11 GMACs forward = 8.2 GFLOP.
    _, flops = cost("resnet50", 224)
    assert abs(flops / 1e9 - 8.22) < 0.1


def test_list_backbones_shows_parameters_and_flops(capsys):
    assert main(["list", "backbones"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.strip().startswith("resnet50_v2 "))
    assert "23.49 M" in line and "GFLOPs" in line
    assert "32x32" in out.splitlines()[0]


@pytest.mark.parametrize("name", ["revnet50", "resnet50_v2", "resnet50", "vgg19_bn", "alexnet"])
def test_backbones_read_tiny_patches(name):
    # relative_patch and jigsaw feed 6-8 px tiles of 32 px digits: every stage must cope.
    kw = {} if name == "vgg19_bn" else {"small_input": True}
    m = create_backbone(name, width=0.25, **kw).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 6, 6)).shape == (2, m.num_features)


def _preact_bottleneck_params(cin: int, mid: int, cout: int) -> int:
    # norm (2 per channel) before each conv; a 1x1 projection shortcut where the shape changes.
    return 2 * cin + cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * cout + (cin * cout if cin != cout else 0)


def test_cpc_v2_resnet161_layout_by_hand():
    """Hénaff et al. 2019, Sec. 4.1: ResNet-v2-101's first three stacks, the third with 46
    blocks, 512-d bottlenecks and 4096-d maps. Counted on the meta device (303M parameters)."""
    with torch.device("meta"):
        m = create_backbone("resnet161_cpc")
    expected = 3 * 64 * 7 * 7  # stem conv
    cin = 64
    for depth, mid, cout in [(3, 64, 256), (4, 128, 512), (46, 512, 4096)]:
        for _ in range(depth):
            expected += _preact_bottleneck_params(cin, mid, cout)
            cin = cout
    expected += 2 * 4096  # the final pre-activation norm
    assert _n(m) == expected
    assert m.num_features == 4096
    convs = [name for name, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and "downsample" not in name]
    assert len(convs) == 161 - 1  # the paper's count includes a classifier layer
    norms = [mod for mod in m.modules() if isinstance(mod, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(n, nn.GroupNorm) and n.num_groups == 1 for n in norms)  # layer norm


def test_cpc_v2_resnet161_runs_on_patches_at_small_width():
    m = create_backbone("resnet161_cpc", width=0.125).eval()
    x = torch.randn(2, 3, 64, 64)  # the paper's 64 px patches
    with torch.no_grad():
        assert m(x).shape == (2, 512) and m.forward_maps(x).shape == (2, 512, 4, 4)
        assert [s.shape[1] for k, s in m.forward_stages(x).items() if k.startswith("block")] == [32, 64, 512]
    # Layer norm: an image's features do not depend on the rest of the batch.
    with torch.no_grad():
        assert torch.allclose(m(x[:1]), m(x)[:1], atol=1e-5)
