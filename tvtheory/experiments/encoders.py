"""The pretrained encoder of a vision run, loaded once by the caller and passed to every library function.

``load_encoder(config)`` reads it as ``config`` says: a seeded random tiny ViT with ``synthetic`` (smoke
tests: ``SYNTHETIC_ENCODER``), the image tower of a CLIP checkpoint with ``pretrained =
"open_clip:<model>:<path>"``, else a CNN or ViT encoder file written by ``tvtheory.models.pretrained.save_encoder``
(default: the shipped ``cnn_cifar5``). The ``Encoder`` it returns holds the pretrained module (never modified:
``copy`` hands out fresh copies on a device, ``classifier`` puts a frozen head on one) and ``prepare``, the map
from uint8 images to the encoder's input: ``(x / 255 - mean) / std`` per channel in ``config.dtype``, with the
encoder's own statistics where its config has them (CLIP's) and CIFAR-10's otherwise (the small encoders were
pretrained on them).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..fp import dtype_of
from ..models.vit import ViT, ViTConfig
from .config import VisionConfig
from .errors import VisionError
from .probe import FrozenHeadClassifier

#: The random encoder of ``--synthetic`` runs: 3x8x8 images in 4x4 patches, dim 16, one block, no head.
SYNTHETIC_ENCODER = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)


@dataclass(frozen=True)
class Encoder:
    """A pretrained encoder with its config (``image_size``, ``dim``, ``to_dict()``) and input map ``prepare``."""

    model: nn.Module
    config: Any
    dtype: torch.dtype
    prepare: Callable[[torch.Tensor], torch.Tensor]
    source: str

    @property
    def image_size(self) -> int:
        """The side S of the (3, S, S) images the encoder takes; every task is read at this size."""
        return int(self.config.image_size)

    def copy(self, device: torch.device | str = "cpu") -> nn.Module:
        """A fresh copy of the pretrained encoder on ``device`` in the run's dtype."""
        return copy.deepcopy(self.model).to(device=device, dtype=self.dtype)

    def classifier(self, weight: torch.Tensor, bias: torch.Tensor,
                   device: torch.device | str = "cpu") -> FrozenHeadClassifier:
        """A fresh copy of the encoder with the frozen head (weight, bias), on ``device`` in the run's dtype."""
        return FrozenHeadClassifier(copy.deepcopy(self.model), weight, bias).to(device=device, dtype=self.dtype)


def load_encoder(config: VisionConfig) -> Encoder:
    """The encoder ``config`` names (module docstring); FileNotFoundError when its weights are missing,
    ModuleNotFoundError when open_clip is, VisionError when the file is not an encoder.
    """
    from ..models.pretrained import DEFAULT_PRETRAINED, load_pretrained
    from ..vision.clip import OPEN_CLIP_PREFIX, load_open_clip, parse_open_clip_spec
    from ..vision.datasets import MEAN, STD, normalize

    model: nn.Module
    cfg: Any
    if config.synthetic:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = ViT(SYNTHETIC_ENCODER)
        model, cfg, source = model.eval(), SYNTHETIC_ENCODER, "synthetic"
    elif config.pretrained and config.pretrained.startswith(OPEN_CLIP_PREFIX):
        model, cfg = load_open_clip(*parse_open_clip_spec(config.pretrained))
        source = config.pretrained
    else:
        from safetensors import SafetensorError

        path = config.pretrained or DEFAULT_PRETRAINED
        try:
            model, cfg = load_pretrained(path)
        except (ValueError, SafetensorError) as e:
            raise VisionError(f"--pretrained {path}: {e}; pass a file written by "
                              "tvtheory.models.pretrained.save_encoder or open_clip:<model>:<checkpoint>") from e
        source = str(path)
    dtype = dtype_of(config.dtype)
    prepare = functools.partial(normalize, dtype=dtype, mean=getattr(cfg, "mean", MEAN), std=getattr(cfg, "std", STD))
    return Encoder(model, cfg, dtype, prepare, source)
