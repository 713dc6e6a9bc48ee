"""Per-example losses l(f, y) and the constants T4 needs from them.

T4 uses two facts about a loss as a function of the network output f:
- lambda: a bound on ||d^2 l / df^2||_2, and
- r: a bound on ||d l / df||.
MSE  l = 0.5 ||f - y||^2:          lambda = 1,   r <= ||f|| + ||y|| (bounded through the network)
CE   l = logsumexp(f) - f_y:       lambda = 1/2, r = sqrt 2  (||softmax(f) - e_y||^2 <= 2 (1 - p_y)^2)
Losses are written with elementary operations (not F.mse_loss / F.cross_entropy) so that
forward-over-reverse Hessian-vector products work through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over examples of 0.5 * ||f(x_i) - y_i||^2 (target: float, same shape as out)."""
    return 0.5 * ((out - target) ** 2).sum(-1).mean()


def cross_entropy_terms(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per example, logsumexp(f(x_i)) - f(x_i)[y_i] (target: int64 class indices)."""
    return torch.logsumexp(out, dim=-1) - out.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over examples of ``cross_entropy_terms``."""
    return cross_entropy_terms(out, target).mean()


@dataclass(frozen=True)
class Loss:
    """A loss with the curvature constant lambda of T4 (the gradient bound r is computed in bounds)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    curvature: float  # lambda >= ||d^2 l/df^2||_2


LOSSES: dict[str, Loss] = {
    "mse": Loss("mse", mse, 1.0),
    "ce": Loss("ce", cross_entropy, 0.5),
}

CE_GRADIENT_BOUND = math.sqrt(2.0)


def get_loss(name: str) -> Loss:
    """Look up a loss by name ("mse" or "ce"), with a clear error listing the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None
