"""Shared fixtures of the unit tests: tiny, seeded problems (float64 unless a test asks otherwise)."""

from __future__ import annotations

import pytest
import torch

from tvtheory.data import synthetic
from tvtheory.models import make_mlp, make_vit
from tvtheory.models.vit import ViTConfig
from tvtheory.problem import make_problem

# A tiny ViT classifier: 1x8x8 images in 4x4 patches, dim 8, one block, 2 heads, 3 classes (P = 827).
TINY_VIT = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=16, num_classes=3, channels=1)


def build_problem(widths=(4, 6, 3), activation="tanh", loss="ce", n=48, batches=1, seed=0,
                  dtype=torch.float64):
    """A synthetic task (n Gaussian inputs, linear teacher) bound to a seeded MLP."""
    data = synthetic(n, widths[0], widths[-1], seed, dtype)
    return make_problem(make_mlp(widths, activation, seed=seed, dtype=dtype), loss, data, batches, seed)


def build_vit_problem(loss="ce", n=32, batches=1, seed=0, dtype=torch.float64):
    """A synthetic task on flat 1x8x8 images (64 Gaussian features, linear teacher) bound to TINY_VIT."""
    data = synthetic(n, 64, TINY_VIT.num_classes, seed, dtype)
    return make_problem(make_vit(TINY_VIT, seed=seed, dtype=dtype), loss, data, batches, seed)


@pytest.fixture
def small_problem():
    """widths 4,6,3 (P = 51), tanh, cross-entropy, N = 48, float64."""
    return build_problem()


@pytest.fixture
def make_small_problem():
    """The factory behind ``small_problem``, for tests that vary its arguments."""
    return build_problem


@pytest.fixture
def make_vit_problem():
    """The ViT analogue of ``make_small_problem`` (TINY_VIT, N = 32, float64)."""
    return build_vit_problem


def pytest_configure(config):
    # One intra-op thread: the tensors here are tiny, and on a shared 2-core machine OpenMP threads that
    # spin-wait for a busy core make small kernels 10-100x slower (a 304 x 304 eigvalsh took 7 s with 2
    # threads under load, 8 ms with 1).
    torch.set_num_threads(1)
