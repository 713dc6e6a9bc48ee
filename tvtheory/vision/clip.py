"""A real CLIP image encoder (open_clip, from a local checkpoint) for the vision experiments.

``--pretrained open_clip:<model_name>:<checkpoint_path>`` (e.g. ``open_clip:ViT-B-32:/ckpt/model.bin``) builds
``open_clip.create_model(model_name, pretrained=checkpoint_path)`` and keeps its image tower, wrapped in
:class:`CLIPVisualEncoder`: what the pipeline needs from an encoder, like :class:`tvtheory.models.vit.ViT`
(``encode(x)`` -> features, ``config.image_size``, ``config.dim``, ``config.to_dict()``), plus the
per-channel statistics its inputs are normalised with (``config.mean`` / ``config.std``: CLIP's).

The checkpoint must be a local file: nothing is downloaded. open_clip is an optional dependency (the
``real`` extra); the tests use a stand-in module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MISSING_OPEN_CLIP",
    "OPEN_CLIP_PREFIX",
    "CLIPConfig",
    "CLIPVisualEncoder",
    "load_open_clip",
    "parse_open_clip_spec",
]

#: Per-channel RGB mean and std (pixel values in [0, 1]) that CLIP images are normalised with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: How ``--pretrained`` names an open_clip checkpoint: ``open_clip:<model_name>:<checkpoint_path>``.
OPEN_CLIP_PREFIX = "open_clip:"

MISSING_OPEN_CLIP = "open_clip is not installed: pip install -e '.[real]' (after torch==2.13.0)"


@dataclass(frozen=True)
class CLIPConfig:
    """What the pipeline reads of a CLIP image encoder: input side, feature size, input statistics, origin."""

    model_name: str
    checkpoint: str
    image_size: int
    dim: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


class CLIPVisualEncoder(nn.Module):
    """The image tower of an open_clip model as an encoder: ``encode(x)`` -> image features (N, config.dim).

    ``x`` is (N, 3, S, S) with S = ``config.image_size``, normalised with ``config.mean`` / ``config.std``.
    The tower runs with the math attention kernel: the fused CPU / CUDA kernels have neither a double
    backward nor forward-mode AD, and the second-order term of the analysis takes Hessian-vector products.
    """

    def __init__(self, visual: nn.Module, config: CLIPConfig) -> None:
        super().__init__()
        self.visual = visual
        self.config = config

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S), already normalised, -> features (N, dim)."""
        with sdpa_kernel(SDPBackend.MATH):
            return self.visual(x)


def parse_open_clip_spec(spec: str) -> tuple[str, Path]:
    """``open_clip:<model_name>:<checkpoint_path>`` -> (model_name, checkpoint path); ValueError if malformed."""
    model_name, _, checkpoint = spec.removeprefix(OPEN_CLIP_PREFIX).partition(":")
    if not spec.startswith(OPEN_CLIP_PREFIX) or not model_name or not checkpoint:
        raise ValueError(f"expected {OPEN_CLIP_PREFIX}<model_name>:<checkpoint_path> "
                         f"(e.g. {OPEN_CLIP_PREFIX}ViT-B-32:/ckpt/model.bin), got {spec!r}")
    return model_name, Path(checkpoint).expanduser()


def load_open_clip(model_name: str, checkpoint: str | Path) -> tuple[CLIPVisualEncoder, CLIPConfig]:
    """(encoder, config) of the image tower of open_clip model ``model_name`` with the weights of a local file.

    Raises FileNotFoundError for a missing checkpoint (before importing open_clip), ModuleNotFoundError
    with :data:`MISSING_OPEN_CLIP` when open_clip is not installed. The encoder is float32, in eval mode.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"open_clip checkpoint {path} not found: pass a local file (nothing is downloaded)")
    try:
        import open_clip
    except ModuleNotFoundError as e:
        if e.name != "open_clip":
            raise
        raise ModuleNotFoundError(MISSING_OPEN_CLIP, name="open_clip") from e
    visual = open_clip.create_model(model_name, pretrained=str(path.resolve())).visual
    size = visual.image_size                                  # an int or a (height, width) pair
    config = CLIPConfig(model_name, str(path), size if isinstance(size, int) else int(size[0]),
                        int(visual.output_dim))
    return CLIPVisualEncoder(visual, config).float().eval(), config
