"""A small residual CNN encoder in plain torch: smooth, normalised per example, safe for second derivatives.

Architecture (a ResNet without BatchNorm, widths ``widths = (w_1, ..., w_S)``):

    stem     : Conv3x3(channels -> w_1) -> GroupNorm -> GELU
    stage s  : (s > 1) Conv3x3 stride 2 (w_{s-1} -> w_s) -> GroupNorm -> GELU, halving the resolution;
               then ``blocks`` residual blocks  x -> GELU(x + GN(Conv3x3(GELU(GN(Conv3x3(x))))))
    feature  : the global average of the last stage, (N, w_S); ``encode(x)`` returns it, ``forward`` adds the
               optional linear head.

Why these choices: GroupNorm normalises each example on its own (no running statistics, no train/eval
difference), so the model is a pure function of its parameters and works with ``torch.func.functional_call``;
GELU (exact erf) is C^infinity, so T1-T3 apply and Hessian-vector products are well defined everywhere
(forward-over-reverse and reverse-over-reverse). Convolutions have no bias (GroupNorm's shift plays that role).
The model has no dropout and no buffers.

Why a CNN beside the ViT (``tvtheory.models.vit``): at 32 x 32 pixels and 25,000 pretraining images a ViT
learns weak features and finetunes poorly; this CNN pretrains to a higher accuracy in a fraction of the time
and its finetunes move accuracy by tens of points (``small_models/README.md`` has the measurements).

Weights are stored by ``tvtheory.models.pretrained.save_encoder`` (float32, no head, the config as JSON under
``CONFIG_METADATA_KEY``) and read back by ``tvtheory.models.pretrained.load_pretrained``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNNConfig", "CNN", "CONFIG_METADATA_KEY"]

#: Key of the JSON-encoded :class:`CNNConfig` in the safetensors metadata.
CONFIG_METADATA_KEY = "cnn_config"


@dataclass(frozen=True)
class CNNConfig:
    """Hyper-parameters of :class:`CNN`; ``num_classes = 0`` means no head (``forward`` returns the feature)."""

    image_size: int = 32
    channels: int = 3
    widths: tuple[int, ...] = (24, 48, 96)
    blocks: int = 1
    groups: int = 8
    num_classes: int = 0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"CNNConfig.widths must be positive, got {self.widths}")
        bad = [w for w in self.widths if self.groups <= 0 or w % self.groups]
        if bad:
            raise ValueError(f"CNNConfig.groups={self.groups} must divide every width; {bad} are not multiples")
        for name in ("image_size", "channels", "blocks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CNNConfig.{name} must be positive, got {getattr(self, name)}")
        if self.image_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"image_size={self.image_size} must be divisible by 2^{len(self.widths) - 1} "
                             f"(one halving per stage after the first)")
        if self.num_classes < 0:
            raise ValueError(f"CNNConfig.num_classes must be >= 0, got {self.num_classes}")

    @property
    def dim(self) -> int:
        """The feature size, the width of the last stage."""
        return self.widths[-1]

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable; widths as a list)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CNNConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they signal a version mismatch)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CNNConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)                             # __post_init__ makes widths a tuple


def _conv_norm(c_in: int, c_out: int, config: CNNConfig, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(config.groups, c_out, eps=config.norm_eps))


class ResidualBlock(nn.Module):
    """x -> GELU(x + GN(Conv(GELU(GN(Conv(x)))))) at constant width."""

    def __init__(self, width: int, config: CNNConfig) -> None:
        super().__init__()
        self.first = _conv_norm(width, width, config)
        self.second = _conv_norm(width, width, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, same shape as ``x``."""
        return F.gelu(x + self.second(F.gelu(self.first(x))))


class CNN(nn.Module):
    """The residual CNN encoder with an optional linear head (module docstring)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = [_conv_norm(c.channels, c.widths[0], c), nn.GELU()]
        for i, width in enumerate(c.widths):
            if i:
                layers += [_conv_norm(c.widths[i - 1], width, c, stride=2), nn.GELU()]
            layers += [ResidualBlock(width, c) for _ in range(c.blocks)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes > 0 else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W), already normalised, -> features (N, dim): the last stage's spatial mean."""
        c = self.config
        if x.shape[1:] != (c.channels, c.image_size, c.image_size):
            raise ValueError(f"expected input of shape (N, {c.channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(x.shape)}")
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) when the model has a head, else the features (N, dim)."""
        z = self.encode(x)
        return z if self.head is None else self.head(z)
