"""The feed-forward network of T4: h_0 = x, z_l = W_l h_{l-1} + b_l (l = 1..L), h_l = sigma(z_l) (l < L), f = z_L.

``MLP.act`` is its elementwise activation: T2 and T3 need the network to be C^2, T4 bounds its Hessian.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..activations import Activation, get_activation
from .seeding import seeded


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
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


class MLP(nn.Module):
    """The network of T4: affine layers with an activation between them (none after the last)."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.act: Activation = get_activation(config.activation)
        sizes = zip(config.widths[:-1], config.widths[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out, bias=config.bias) for n_in, n_out in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = z_L for inputs x (..., n_0)."""
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


    def check_data(self, features: int, classes: int) -> None:
        """The first width must be the number of input features and the last the number of classes."""
        widths = self.config.widths
        if features != widths[0]:
            raise ValueError(f"the data has {features} input features but the MLP's first width is {widths[0]} "
                             f"(widths {widths}): build it with widths ({features}, ..., {widths[-1]})")
        if widths[-1] != classes:
            raise ValueError(f"the data has {classes} classes but the MLP's last width is {widths[-1]} "
                             f"(widths {widths}): build it with widths ({widths[0]}, ..., {classes})")


def make_mlp(widths, activation: str = "tanh", bias: bool = True, seed: int = 0, dtype=torch.float64) -> MLP:
    """An MLP with PyTorch's default initialisation drawn from ``seed`` (same seed, same weights)."""
    config = MLPConfig(tuple(int(w) for w in widths), activation, bias)
    return seeded(lambda: MLP(config), seed).to(dtype)
