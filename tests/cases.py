"""Shared cases of the unit tests: tiny, seeded problems, models and data (float64 unless a test asks otherwise).

- ``TINY_VIT``: a ViT classifier on flat 1x8x8 images (the theorem engine's ViT), ``MICRO_VIT`` the same at
  P = 103; ``build_problem`` and ``build_vit_problem`` bind an MLP or a ViT to a synthetic task.
- ``TINY_ENCODER``: a 3-channel 8x8 ViT encoder without head (the vision experiments' encoder);
  ``tiny_encoder`` / ``tiny_model`` / ``tiny_data`` / ``write_image_folder`` build what those tests need.
"""

from __future__ import annotations

import torch

from tvtheory.data import synthetic
from tvtheory.experiments.probe import FrozenHeadClassifier
from tvtheory.models import make_mlp, make_vit
from tvtheory.models.vit import ViT, ViTConfig
from tvtheory.problem import make_problem

# A tiny ViT classifier: 1x8x8 images in 4x4 patches, dim 8, one block, 2 heads, 3 classes (P = 827).
TINY_VIT = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=16, num_classes=3, channels=1)

# The same at dim 2 (one head, mlp_dim 2): P = 103, under the size where hessian_norm(method="auto") is dense.
MICRO_VIT = ViTConfig(image_size=8, patch_size=4, dim=2, depth=1, heads=1, mlp_dim=2, num_classes=3, channels=1)

# A tiny ViT encoder for the vision pipeline: 3x8x8 images, dim 16, one block, no head.
TINY_ENCODER = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32, num_classes=0)


def build_problem(widths=(4, 6, 3), activation="tanh", loss="ce", n=48, batches=1, seed=0,
                  dtype=torch.float64):
    """A synthetic task (n Gaussian inputs, linear teacher) bound to a seeded MLP."""
    data = synthetic(n, widths[0], widths[-1], seed, dtype)
    return make_problem(make_mlp(widths, activation, seed=seed, dtype=dtype), loss, data, batches, seed)


def build_vit_problem(loss="ce", n=32, batches=1, seed=0, dtype=torch.float64, config=TINY_VIT):
    """A synthetic task on flat 1x8x8 images (64 Gaussian features, linear teacher) bound to TINY_VIT (or
    another 1x8x8 ``config`` such as MICRO_VIT)."""
    data = synthetic(n, 64, config.num_classes, seed, dtype)
    return make_problem(make_vit(config, seed=seed, dtype=dtype), loss, data, batches, seed)


def tiny_encoder(seed: int = 0, dtype=torch.float64) -> ViT:
    torch.manual_seed(seed)
    enc = ViT(TINY_ENCODER).to(dtype)
    with torch.no_grad():                      # larger weights than the 0.02 init: visible curvature
        for p in enc.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return enc


def tiny_data(n: int = 24, classes: int = 3, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, TINY_ENCODER.image_size, TINY_ENCODER.image_size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def tiny_model(classes: int = 3, seed: int = 0, dtype=torch.float64) -> FrozenHeadClassifier:
    enc = tiny_encoder(seed, dtype)
    g = torch.Generator().manual_seed(seed + 100)
    return FrozenHeadClassifier(enc, torch.randn(classes, TINY_ENCODER.dim, generator=g, dtype=dtype),
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
