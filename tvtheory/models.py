"""Feed-forward networks in the form T4 bounds.

h_0 = x,  z_l = W_l h_{l-1} + b_l (l = 1..L),  h_l = sigma(z_l) for l < L,  f = z_L.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .activations import Activation, get_activation


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


def make_mlp(widths, activation: str = "tanh", bias: bool = True, seed: int = 0, dtype=torch.float64) -> MLP:
    """An MLP with PyTorch's default initialisation drawn from ``seed`` (same seed, same weights)."""
    config = MLPConfig(tuple(int(w) for w in widths), activation, bias)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = MLP(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype)
