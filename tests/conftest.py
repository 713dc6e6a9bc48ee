"""Shared fixtures of the unit tests: tiny, seeded problems (float64 unless a test asks otherwise)."""

from __future__ import annotations

import pytest
import torch
from cases import build_problem, build_vit_problem


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
