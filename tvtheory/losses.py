"""Per-example losses l(f, y) and the constants T4 needs from them.

T4 uses two facts about a loss as a function of the network output f:
- lambda: a bound on ||d^2 l / df^2||_2, and
- r: a bound on ||d l / df||.
MSE  l = 0.5 ||f - y||^2:          lambda = 1,   r <= ||f|| + ||y|| (bounded through the network)
CE   l = logsumexp(f) - f_y:       lambda = 1/2, r = sqrt 2  (||softmax(f) - e_y||^2 <= 2 (1 - p_y)^2)
T6 (tvtheory.certificate) also needs bounds on the third and fourth derivatives as symmetric forms,
kappa_n >= sup over unit u of |d^n l / df^n [u, ..., u]|:
MSE  kappa_3 = kappa_4 = 0 (l is quadratic in f)
CE   the n-th derivative of logsumexp along u is the n-th cumulant of X = u_i under p = softmax(f). With
     R = max u_i - min u_i <= sqrt 2 (u_i - u_j <= sqrt(2 (u_i^2 + u_j^2))), Var X <= R^2/4 <= 1/2 and
     |X - E X| <= R, so |kappa_3| <= E|X - E X|^3 <= R Var X <= 1/sqrt 2 and
     kappa_4 = E(X - E X)^4 - 3 Var^2 lies in [-3/4, R^2 Var X] subset [-3/4, 1]: kappa_4 = 1.
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
    """A loss with the curvature constant lambda of T4 (the gradient bound r is computed in bounds) and the
    third- and fourth-derivative constants kappa_3, kappa_4 of T6.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    curvature: float  # lambda >= ||d^2 l/df^2||_2
    third: float = 0.0   # kappa_3 >= sup_{||u|| = 1} |d^3 l/df^3 [u, u, u]|
    fourth: float = 0.0  # kappa_4 >= sup_{||u|| = 1} |d^4 l/df^4 [u, u, u, u]|


LOSSES: dict[str, Loss] = {
    "mse": Loss("mse", mse, 1.0),
    "ce": Loss("ce", cross_entropy, 0.5, 0.7071067811866, 1.0),
}

CE_GRADIENT_BOUND = math.sqrt(2.0)


def get_loss(name: str) -> Loss:
    """Look up a loss by name ("mse" or "ce"), with a clear error listing the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None
