"""Pretext targets checked against the geometry they claim to encode."""
import numpy as np
import pytest
import torch

from methods.components.patches import Grid, cut_tiles, drop_channels, normalize_tiles
from methods.components.permutations import max_hamming_permutations, min_pairwise_hamming
from methods.jigsaw import JigsawTransform, shuffle_tiles, unshuffle_tiles
from methods.relative_patch import NEIGHBOURS, OFFSETS


def coordinate_image(size: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 a constant."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    return torch.stack([ys, xs, torch.ones_like(ys)])


def test_permutation_set_is_distinct_far_apart_and_fixed():
    p = max_hamming_permutations(100)
    assert p.shape == (100, 9)
    assert all(sorted(row) == list(range(9)) for row in p.tolist())
    assert len({tuple(r) for r in p.tolist()}) == 100
    assert min_pairwise_hamming(p) >= 6  # greedy max-min selection keeps puzzles far apart
    np.testing.assert_array_equal(p, max_hamming_permutations.__wrapped__(100))


def test_known_permutation_reassembles_the_image():
    grid = Grid(3, 10, 10)  # tiles fill their cells: reassembly must give back the image
    img = torch.rand(3, 30, 30)
    tiles = cut_tiles(img, grid, jitter=False)
    perm = torch.from_numpy(max_hamming_permutations(100)[17])
    shuffled = shuffle_tiles(tiles, perm)
    assert not torch.equal(shuffled, tiles)
    restored = unshuffle_tiles(shuffled, perm)
    rebuilt = restored.view(3, 3, 3, 10, 10).permute(2, 0, 3, 1, 4).reshape(3, 30, 30)
    torch.testing.assert_close(rebuilt, img)


def test_jigsaw_transform_label_matches_its_shuffle():
    from PIL import Image

    grid = Grid(3, 10, 8)
    perms = torch.from_numpy(max_hamming_permutations(100))
    t = JigsawTransform(grid, perms, grey_p=0.0, channel_shift=0)
    img = Image.fromarray((np.random.default_rng(0).random((30, 30, 3)) * 255).astype(np.uint8))
    torch.manual_seed(3)
    tiles, index = t(img)
    torch.manual_seed(3)
    tiles2, index2 = t(img)
    assert index == index2 and torch.equal(tiles, tiles2)  # deterministic under the seed
    assert tiles.shape == (9, 3, 8, 8)
    torch.testing.assert_close(tiles.mean(dim=(1, 2, 3)), torch.zeros(9), atol=1e-5, rtol=0)  # per-tile normalised


@pytest.mark.parametrize("jitter", [None, 1])
def test_tiles_keep_gaps_and_stay_in_their_cells(jitter):
    grid = Grid(3, 10, 6, jitter)
    img = coordinate_image(30)
    for seed in range(20):
        torch.manual_seed(seed)
        tiles = cut_tiles(img, grid)
        for k in range(9):
            y0, x0 = int(tiles[k, 0, 0, 0]), int(tiles[k, 1, 0, 0])
            r, c = divmod(k, 3)
            assert r * 10 <= y0 <= r * 10 + 4 and c * 10 <= x0 <= c * 10 + 4
            if jitter is not None:
                assert abs(y0 - (r * 10 + 2)) <= jitter and abs(x0 - (c * 10 + 2)) <= jitter


def test_relative_patch_labels_match_geometry():
    grid = Grid(3, 10, 6, jitter=1)
    img = coordinate_image(30)
    torch.manual_seed(0)
    tiles = cut_tiles(img, grid)
    centre = tiles[4, :2, 0, 0]
    for label, (dr, dc) in enumerate(OFFSETS):
        neighbour = tiles[NEIGHBOURS[label], :2, 0, 0]
        dy, dx = (neighbour - centre).tolist()
        # The displacement points to the labelled neighbour, up to twice the jitter.
        assert abs(dy - 10 * dr) <= 2 and abs(dx - 10 * dc) <= 2
    assert sorted(OFFSETS) == sorted((r, c) for r in (-1, 0, 1) for c in (-1, 0, 1) if (r, c) != (0, 0))


def test_colour_dropping_keeps_one_channel():
    torch.manual_seed(0)
    tiles = torch.rand(16, 3, 6, 6) + 1.0
    dropped = drop_channels(tiles)
    kept = (dropped > 0.5).flatten(2).all(dim=2)  # the kept channel keeps its values > 1
    assert kept.sum(dim=1).tolist() == [1] * 16


def test_normalize_tiles_zero_mean_unit_std():
    x = normalize_tiles(torch.rand(5, 3, 8, 8) * 7 + 3)
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(1, 2, 3)), torch.ones(5), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["masking", "salt_pepper"])
def test_corruption_masks_cover_the_stated_ratio(kind):
    from methods.denoising_ae import corrupt

    torch.manual_seed(0)
    x = torch.rand(3, 64, 64) * 0.5 + 0.25  # strictly inside (0, 1): 0 and 1 only come from noise
    noisy, mask = corrupt(x, kind, 0.3)
    assert abs(mask.mean().item() - 0.3) < 0.02
    m = mask.bool().expand_as(x)
    torch.testing.assert_close(noisy[~m], x[~m])  # untouched pixels unchanged
    values = set(noisy[m].unique().tolist())
    assert values == ({0.0} if kind == "masking" else {0.0, 1.0})


def test_gaussian_corruption_touches_everything():
    from methods.denoising_ae import corrupt

    torch.manual_seed(0)
    x = torch.full((3, 16, 16), 0.5)
    noisy, mask = corrupt(x, "gaussian", 0.1)
    assert mask.all() and abs((noisy - x).std().item() - 0.1) < 0.02


def test_denoising_loss_weights_corrupted_pixels():
    from methods.denoising_ae import denoising_loss

    target = torch.zeros(1, 3, 2, 2)
    recon = torch.ones(1, 3, 2, 2)
    corrupted = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # one corrupted pixel (3 channels) at alpha, three clean at beta, over 12 elements
    assert denoising_loss(recon, target, corrupted, 1.0, 0.5).item() == pytest.approx((3 * 1.0 + 9 * 0.5) / 12)


def test_grid_tile_features_average_centred_tiles():
    from methods.components.patches import grid_tile_features

    grid = Grid(3, 10, 6)
    seen = []

    def backbone(tiles):
        seen.append(tiles)
        return tiles.flatten(1)[:, :1]  # first pixel of each tile

    x = torch.randn(2, 3, 32, 32)
    out = grid_tile_features(backbone, x, grid)
    assert seen[0].shape == (18, 3, 6, 6) and out.shape == (2, 1)
    # Tile (0, 0) of image 0 is the centred 6px tile of the first cell, inside the 30px crop.
    expected = normalize_tiles(x[:1, :, 1 + 2:1 + 8, 1 + 2:1 + 8])
    torch.testing.assert_close(seen[0][0], expected[0])


def test_lab_matches_scikit_image_and_round_trips():
    from skimage.color import rgb2lab

    from methods.components.color import lab_to_rgb, rgb_to_lab

    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    ref = torch.from_numpy(rgb2lab(x.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(rgb_to_lab(x), ref, atol=1e-3, rtol=0)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4, rtol=0)


def test_colorization_bins_round_trip_ab_values():
    from methods.components.color import annealed_mean, gamut_bins, soft_encode

    centres = gamut_bins(10)
    assert 200 < len(centres) < 400  # the paper's in-gamut count is 313
    ab = centres[torch.randperm(len(centres), generator=torch.Generator().manual_seed(0))[:12]]
    ab = ab.t().reshape(1, 2, 3, 4)  # 12 pixels, each exactly on a bin centre
    soft = soft_encode(ab, centres)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(1, 3, 4))
    assert ((soft > 0).sum(dim=1) == 5).all()
    # The nearest bin wins, and decoding the (log) soft targets near T->0 returns the value.
    nearest = centres[soft.argmax(dim=1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(nearest, ab)
    torch.testing.assert_close(annealed_mean(torch.log(soft + 1e-12), centres, 0.01), ab, atol=1e-3, rtol=0)
    # Off-centre values come back within half a bin diagonal.
    off = ab + 3.0
    back = annealed_mean(torch.log(soft_encode(off, centres) + 1e-12), centres, 1.0)
    assert (back - off).abs().max() < 5.0


def test_rebalancing_up_weights_rare_bins():
    from methods.components.color import gamut_bins, rebalancing_weights

    centres = gamut_bins(10)
    prior = torch.ones(len(centres))
    prior[0] = 1000.0
    w = rebalancing_weights(prior, 0.5, 5.0, centres)
    assert w[0] < w[1:].min()  # the common bin is down-weighted
    w0 = rebalancing_weights(prior, 0.5, 0.0)  # without smoothing the expectation is exact
    p = prior / prior.sum()
    assert (p * w0).sum().item() == pytest.approx(1.0, abs=1e-4)  # E_prior[w] = 1, as in the paper
    assert w0[0].item() == pytest.approx(1.0 / ((0.5 * p[0] + 0.5 / len(p)) * (p * (1 / (0.5 * p + 0.5 / len(p)))).sum()).item())


@pytest.mark.parametrize("kind", ["central", "random_block", "random_region"])
def test_context_encoder_masks_cover_the_stated_ratio(kind):
    from methods.context_encoder import make_mask

    torch.manual_seed(0)
    for _ in range(5):
        m = make_mask(32, kind, 0.25)
        assert m.shape == (1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert 0.2 <= m.mean().item() <= 0.4
    if kind == "central":
        assert m[0, 16, 16] == 1 and m[0, 0, 0] == 0


def test_masked_l2_ignores_unmasked_pixels():
    from methods.context_encoder import masked_l2_loss

    target = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    pred[..., 0, 0] = 2.0  # wrong, but outside the mask
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 3, 3] = 1
    assert masked_l2_loss(pred, target, mask).item() == 0.0
    pred[..., 3, 3] = 1.0
    assert masked_l2_loss(pred, target, mask).item() == pytest.approx(1.0)


def test_split_brain_halves_see_only_their_channels():
    from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from harness.pipeline import RunRequest, build_config
    from methods.components.color import lab_to_rgb
    from methods.split_brain import SplitBrain

    cfg = build_config(RunRequest(method="split_brain"))[0]
    torch.manual_seed(0)
    m = SplitBrain(cfg).eval()
    enc = m.backbone
    assert enc.num_features == enc.l_net.num_features + enc.ab_net.num_features
    assert not {id(p) for p in enc.l_net.parameters()} & {id(p) for p in enc.ab_net.parameters()}
    # Two images with the same lightness and different colour.
    L = torch.rand(1, 1, 32, 32) * 40 + 30
    ab1, ab2 = torch.randn(1, 2, 32, 32) * 8, torch.randn(1, 2, 32, 32) * 8
    norm = lambda rgb: (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x1, x2 = norm(lab_to_rgb(torch.cat([L, ab1], 1))), norm(lab_to_rgb(torch.cat([L, ab2], 1)))
    with torch.no_grad():
        f1, f2 = enc(x1), enc(x2)
    d = enc.l_net.num_features
    torch.testing.assert_close(f1[:, :d], f2[:, :d], atol=1e-3, rtol=1e-3)  # the L half is colour-blind
    assert not torch.allclose(f1[:, d:], f2[:, d:], atol=1e-3)  # the ab half is not


def test_exemplar_triplet_loss_against_explicit_triplets():
    from methods.exemplar import exemplar_triplet_loss

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 2, 4, generator=g)
    z = torch.nn.functional.normalize(emb.flatten(0, 1), dim=1)
    ident = [0, 0, 1, 1, 2, 2]
    terms = []
    for a in range(6):
        for p in range(6):
            for n in range(6):
                if p != a and ident[p] == ident[a] and ident[n] != ident[a]:
                    v = max(0.0, (z[a] - z[p]).norm().item() - (z[a] - z[n]).norm().item() + 0.5)
                    if v > 0:
                        terms.append(v)
    assert exemplar_triplet_loss(emb, 0.5).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # Copies that coincide and images far apart satisfy every margin: zero loss.
    far = torch.eye(3).repeat_interleave(2, dim=0).view(3, 2, 3) * 10
    assert exemplar_triplet_loss(far, 0.5).item() == 0.0


def test_mae_masks_cover_the_stated_ratio_and_restore_order():
    from methods.mae import random_masking

    torch.manual_seed(0)
    keep, mask, restore = random_masking(4, 64, 0.75, "cpu")
    assert keep.shape == (4, 16) and (mask.sum(dim=1) == 48).all()
    for b in range(4):
        assert set(keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    order = restore.argsort(dim=1)
    assert torch.equal(torch.gather(order, 1, restore), torch.arange(64).expand(4, -1))


def test_mae_patchify_round_trip_and_masked_loss():
    from methods.mae import mae_loss, patchify, unpatchify

    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    torch.testing.assert_close(p[0, 1].view(4, 4, 3).permute(2, 0, 1), x[0, :, 0:4, 4:8])
    torch.testing.assert_close(unpatchify(p, 4, 8, 12), x)
    mask = torch.zeros(2, 6)
    mask[:, 0] = 1
    pred = p.clone()
    pred[:, 1:] += 5.0  # errors on visible patches do not count
    assert mae_loss(pred, p, mask, norm_pix=False).item() == 0.0
    pred[:, 0] += 1.0
    assert mae_loss(pred, p, mask, norm_pix=False).item() == pytest.approx(1.0)


def test_vit_backbone_matches_timm_and_exposes_maps():
    import timm

    from harness.backbones import create_backbone

    ours = create_backbone("vit_tiny")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    small = create_backbone("vit_tiny", img_size=32, patch_size=4)
    x = torch.randn(2, 3, 32, 32)
    assert small(x).shape == (2, 192) and small.forward_maps(x).shape == (2, 192, 8, 8)


def test_exemplar_views_are_grey_and_standardised_as_in_revisiting():
    from PIL import Image

    from methods.exemplar import ExemplarViews

    torch.manual_seed(0)
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    views = ExemplarViews(32, copies=6, grayscale_p=1.0)(img)
    assert views.shape == (6, 3, 32, 32)
    torch.testing.assert_close(views[:, 0], views[:, 1])  # grey: all channels equal
    torch.testing.assert_close(views.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(views.std(dim=(1, 2, 3)), torch.ones(6), atol=1e-3, rtol=0)
    colour = ExemplarViews(32, copies=6, grayscale_p=0.0)(img)
    assert not torch.allclose(colour[:, 0], colour[:, 1])
