"""PIRL: a representation invariant to the jigsaw transformation, learnt by NCE against a
memory bank of image representations (Misra & van der Maaten, CVPR 2020).

Each image gives two inputs: an augmented view v_I and a jigsaw view v_It, nine tiles of a
3x3 grid in random order. The same backbone encodes the image and every tile; the image
head f gives f(v_I), the tile head embeds each tile and a linear layer maps the nine
concatenated embeddings to g(v_It). The memory bank holds an EMA m_I of f(v_I), and
L = lambda L_NCE(m_I, g(v_It)) + (1 - lambda) L_NCE(m_I, f(v_I)) (Sec. 3.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from harness.config import Config, P
from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from methods.base import Method, glyphs_budget
from methods.components.distributed import concat_all_gather
from methods.components.memory import MemoryBank
from methods.components.patches import Grid, cut_tiles
from methods.components.views import augment_from_cfg
from methods.instdisc import bank_loss

MISRA = "Misra & van der Maaten 2020 (PIRL)"
VISSL = "VISSL configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet.yaml"


def tile_augment(jitter: float, hue: float, jitter_p: float, grayscale_p: float, flip: bool) -> T.Compose:
    """Photometric augmentation of one tile (a float tensor in [0, 1]): VISSL applies its
    colour jitter, greyscale and flip to every patch on its own, then normalises."""
    steps = []
    if jitter_p > 0 and (jitter > 0 or hue > 0):
        steps.append(T.RandomApply([T.ColorJitter(jitter, jitter, jitter, hue)], p=jitter_p))
    if grayscale_p > 0:
        steps.append(T.RandomGrayscale(grayscale_p))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class PIRLViews:
    """PIL image -> (image view [3, S, S], jigsaw view [n*n, 3, tile, tile]).

    The jigsaw view is cut from its own random resized crop of the image (VISSL's
    ``ImgPilToPatchesAndImage``: a 255px crop, scale 0.6-1, as 3x3 cells of 85px with a 64px
    tile drawn in each), each tile augmented on its own, and the tiles permuted at random.
    """

    def __init__(self, image_view, grid: Grid, crop_scale, tile_aug):
        self.image_view, self.grid, self.tile_aug = image_view, grid, tile_aug
        self.crop = T.Compose([
            T.RandomResizedCrop(grid.size, scale=tuple(crop_scale), antialias=True),
            T.ToImage(), T.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, img):
        tiles = cut_tiles(self.crop(img), self.grid, jitter=True)
        tiles = torch.stack([self.tile_aug(t) for t in tiles])
        return self.image_view(img), tiles[torch.randperm(len(tiles))]


class PIRL(Method):
    name = "pirl"
    family = "contrastive"
    description = "PIRL: image and jigsaw-tile representations pulled to a memory bank of image features (NCE)"
    source = "Misra & van der Maaten, Self-Supervised Learning of Pretext-Invariant Representations, CVPR 2020"
    needs_index = True
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{MISRA}, Sec. 4: ResNet-50"),
            "method.embedding_dim": P(128, f"{MISRA}, Sec. 3.2: 128-d f and g / {VISSL}"),
            "method.cell": P(85, f"{VISSL}: 255px crop in a 3x3 grid"),
            "method.tile": P(64, f"{MISRA}, Sec. 3.2: 64x64 patches (VISSL ImgPatchesFromTensor, jitter 21)"),
            "method.tile_crop_scale": P([0.6, 1.0], f"{VISSL}: crop_scale_patches"),
            "method.nce_k": P(32000, f"{MISRA}, Sec. 3.1: 32,000 negatives / {VISSL}"),
            "method.temperature": P(0.07, f"{MISRA}, Sec. 3.1 / {VISSL}"),
            "method.bank_momentum": P(0.5, f"{MISRA}, Sec. 3.1 / {VISSL}"),
            "method.lambda": P(0.5, f"{MISRA}, Sec. 3.1 (lambda = 0.5) / {VISSL} loss_weights [0.5, 0.5]"),
            "method.aug.crop_scale": P([0.08, 1.0], f"{VISSL}: crop_scale_image"),
            "method.aug.flip": P(True, VISSL),
            "method.aug.jitter": P(0.4, f"{VISSL}: ColorJitter(0.4, 0.4, 0.4, 0.2)"),
            "method.aug.hue": P(0.2, f"{VISSL}: ColorJitter(0.4, 0.4, 0.4, 0.2)"),
            "method.aug.jitter_p": P(1.0, f"{VISSL}: jitter always applied"),
            "method.aug.grayscale_p": P(0.2, f"{VISSL}: RandomGrayscale(p=0.2)"),
            "train.optimizer": P("sgd", f"{MISRA}, Sec. 4 / {VISSL}"),
            "train.lr": P(0.12, f"{VISSL}: 0.03 per 256 x 1024/256"),
            "train.min_lr_ratio": P(0.001, f"{VISSL}: cosine from 0.12 to 0.00012"),
            "train.momentum": P(0.9, VISSL),
            "train.weight_decay": P(1e-4, VISSL),
            "train.batch_size": P(1024, f"{VISSL}: 32 per GPU x 32 GPUs"),
            "train.epochs": P(800, f"{MISRA}, Sec. 4 (800 epochs) / {VISSL}"),
            "train.warmup_epochs": P(0, VISSL),
            "train.schedule": P("cosine", VISSL),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "method.cell": 10,  # 8px tiles in 10px cells, as jigsaw's digits profile
            "method.tile": 8,
            "method.nce_k": 0,  # exact softmax over the 2,876-entry bank; see instdisc's profile
            "method.aug.crop_scale": [0.4, 1.0],
            "method.aug.flip": False,  # digits are not mirror-symmetric
            "train.batch_size": 64,
            "train.lr": 0.06,
            "train.min_lr_ratio": 0.0,
            # Nine tiles per image, each augmented on its own: data loading is PIRL's main cost.
            # 60 epochs (2,640 steps): kNN top-1 15.6 % at 8 epochs, 40.9 % at 60, against the
            # random initialisation's 35.4 % (bench/RESULTS.md, issue 4).
            "train.epochs": 60,
            "train.warmup_epochs": 1,
        },
        "glyphs": glyphs_budget(4),  # 6 epochs took 623 s with two runs at once
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.grid = Grid(3, int(cfg["method.cell"]), int(cfg["method.tile"]))
        # Image and tiles share one backbone, built for the image (its stem decides the
        # geometry; tiles are pooled to a vector like the image is).
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        d, dim, n = self.backbone.num_features, int(cfg["method.embedding_dim"]), self.grid.n ** 2
        self.image_head = nn.Linear(d, dim)
        self.tile_head = nn.Linear(d, dim)
        self.jigsaw_head = nn.Linear(n * dim, dim)
        self.memory = MemoryBank(dim)
        self.register_buffer("z", torch.zeros(()))  # NCE normaliser, shared by both terms; 0 = not set

    def prepare(self, dataset) -> None:
        self.memory.allocate(len(dataset))
        self.memory.bank = F.normalize(self.memory.bank, dim=1)  # VISSL memory_params.norm_init

    def train_transform(self):
        c = self.cfg
        tile_aug = tile_augment(float(c["method.aug.jitter"]), float(c["method.aug.hue"]), float(c["method.aug.jitter_p"]),
                                float(c["method.aug.grayscale_p"]), bool(c["method.aug.flip"]))
        return PIRLViews(augment_from_cfg(c, "method.image"), self.grid, c["method.tile_crop_scale"], tile_aug)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """f(v_I), L2-normalised."""
        return F.normalize(self.image_head(self.backbone(x)), dim=1)

    def jigsaw_embedding(self, tiles: torch.Tensor) -> torch.Tensor:
        """g(v_It) from tiles [B, n*n, 3, t, t]: every tile through the backbone and the tile
        head, the embeddings concatenated in the tiles' (shuffled) order, then projected."""
        b, n = tiles.shape[:2]
        per_tile = self.tile_head(self.backbone(tiles.flatten(0, 1)))
        return F.normalize(self.jigsaw_head(per_tile.view(b, -1)), dim=1)

    def training_step(self, batch):
        (x, tiles), _, indices = batch
        c = self.cfg
        k, t, lam = int(c["method.nce_k"]), float(c["method.temperature"]), float(c["method.lambda"])
        f = self.image_embedding(x)
        g = self.jigsaw_embedding(tiles)
        # The jigsaw term first: Z is estimated on it and shared, as in VISSL's loss.
        loss_jigsaw = bank_loss(g, self.memory, indices, k, t, self.z)
        loss_image = bank_loss(f, self.memory, indices, k, t, self.z)
        loss = lam * loss_jigsaw + (1 - lam) * loss_image
        # The bank holds image representations only (m_I, Sec. 3.1).
        self.memory.update(concat_all_gather(indices), concat_all_gather(f), float(c["method.bank_momentum"]))
        return {"loss": loss, "loss_jigsaw": loss_jigsaw.detach(), "loss_image": loss_image.detach()}
