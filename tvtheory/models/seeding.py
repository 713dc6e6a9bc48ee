"""Seeded construction: the same seed gives the same initial weights, whatever the global RNG holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

M = TypeVar("M")


def seeded(build: Callable[[], M], seed: int) -> M:
    """build() with the global torch RNG seeded (then restored): same seed, same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
