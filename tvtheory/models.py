"""The networks the theorem engine checks: the feed-forward network T4 bounds, and a ViT classifier.

MLP: h_0 = x,  z_l = W_l h_{l-1} + b_l (l = 1..L),  h_l = sigma(z_l) for l < L,  f = z_L.
ViTClassifier: ``tvtheory.vision.vit.ViT`` with a head, reading each flat input as a C x S x S image.
Each exposes ``act``, its elementwise activation: T2 and T3 need the network to be C^2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .activations import Activation, get_activation
from .vision.vit import ViT, ViTConfig


@dataclass(frozen=True)
class MLPConfig:
    """widths = (n_0, n_1, ..., n_L): input size, hidden sizes, output size."""

    widths: tuple[int, ...]
    activation: str = "tanh"
    bias: bool = True

    def __post_init__(self) -> None:
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least an input and an output size, got {self.widths}")
        if any(int(w) < 1 for w in self.widths):
            raise ValueError(f"every width must be >= 1, got {self.widths}")
        get_activation(self.activation)

    @property
    def depth(self) -> int:
        """L, the number of affine layers."""
        return len(self.widths) - 1

    def to_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    """The network of T4: affine layers with an activation between them (none after the last)."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.act: Activation = get_activation(config.activation)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=config.bias) for n_in, n_out in zip(config.widths[:-1], config.widths[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.widths[0]:
            raise ValueError(
                f"input has {x.shape[-1]} features but the MLP expects {self.config.widths[0]} "
                f"(widths {self.config.widths}); set the first width to the input size"
            )
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act.fn(h)
        return h


class ViTClassifier(nn.Module):
    """A ViT with a head on flat inputs: x (N x C*S*S) is reshaped to (N, C, S, S) images, f = ViT(x).

    Every operation (affine maps, softmax attention, LayerNorm with eps > 0, exact erf GELU) is C^infinity,
    so T1-T3 apply; T4's curvature bound covers only the MLP (``tvtheory.bounds.T4_NOTE``).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.num_classes < 1:
            raise ValueError(f"a ViT classifier needs num_classes >= 1, got {config.num_classes}")
        self.config = config
        self.act: Activation = get_activation("gelu")
        self.vit = ViT(config)

    @property
    def in_features(self) -> int:
        """C * S * S, the size of one flat input."""
        return self.config.channels * self.config.image_size ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"input has shape {tuple(x.shape)} but the ViT expects N x {self.in_features} "
                             f"(flat {c.channels}x{c.image_size}x{c.image_size} images)")
        return self.vit(x.reshape(x.shape[0], c.channels, c.image_size, c.image_size))


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """build() with the global torch RNG seeded (then restored): same seed, same weights."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(generator_state)


def make_mlp(widths, activation: str = "tanh", bias: bool = True, seed: int = 0, dtype=torch.float64) -> MLP:
    """An MLP with PyTorch's default initialisation drawn from ``seed`` (same seed, same weights)."""
    config = MLPConfig(tuple(int(w) for w in widths), activation, bias)
    return _seeded(lambda: MLP(config), seed).to(dtype)


def make_vit(config: ViTConfig, seed: int = 0, dtype=torch.float64) -> ViTClassifier:
    """A ViT classifier with the ViT's timm-style initialisation drawn from ``seed`` (same seed, same weights)."""
    return _seeded(lambda: ViTClassifier(config), seed).to(dtype)
