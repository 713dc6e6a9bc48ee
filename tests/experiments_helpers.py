"""Tiny stand-ins for the vision experiments' tests: a random-init ViT (dim 16, depth 1) and synthetic images."""

from __future__ import annotations

import torch

from tvtheory.experiments.probe import FrozenHeadClassifier
from tvtheory.models.vit import ViT, ViTConfig

TINY = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32, num_classes=0)


def tiny_encoder(seed: int = 0, dtype=torch.float64) -> ViT:
    torch.manual_seed(seed)
    enc = ViT(TINY).to(dtype)
    with torch.no_grad():                      # larger weights than the 0.02 init: visible curvature
        for p in enc.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return enc


def tiny_data(n: int = 24, classes: int = 3, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, TINY.image_size, TINY.image_size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def tiny_model(classes: int = 3, seed: int = 0, dtype=torch.float64) -> FrozenHeadClassifier:
    enc = tiny_encoder(seed, dtype)
    g = torch.Generator().manual_seed(seed + 100)
    return FrozenHeadClassifier(enc, torch.randn(classes, TINY.dim, generator=g, dtype=dtype),
                                torch.randn(classes, generator=g, dtype=dtype))


def write_image_folder(root, classes=("circle", "square", "star"), counts=(("train", 10), ("test", 3)),
                       size: int = 12, seed: int = 0):
    """Tiny RGB PNGs at ``root/<split>/<class>/<i>.png`` (a --task-folder task); class k is brightest in
    channel k % 3, so the classes are learnable. Returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in counts:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
                a[..., k % 3] += 127
                Image.fromarray(a).save(folder / f"{i:03d}.png")
    return root
