"""Which identity holds for the optimizer a user ran (T1, T3), and the floating-point model of each.

First step, per optimizer (torch.optim semantics; derivations in docs/theory.md):
- gd / sgd (no weight decay):   tau^(1) = -eta g                    exactly (T1; 4 roundings)
- momentum (heavy ball, no dampening): the buffer starts as g, so   tau^(1) = -eta g exactly (T1)
- weight decay lambda (SGD, coupled):  tau^(1) = -eta (g + lambda theta_0)   exactly; T1 fails by eta lambda theta_0
- adam: m_hat = g and v_hat = g^2 after one step, so              tau^(1) = -eta g / (|g| + eps)   (15 roundings)
  (elementwise; roughly -eta sign(g): Adam changes the direction, T1 does not hold).
Over k steps, to first order in eta (gradients frozen at theta_0):
- gd / sgd:  -eta sum_s g_{b_s};   momentum mu:  -eta sum_s sum_{i<=s} mu^(s-i) g_{b_i}  (= -eta c_k g, B = 1,
  c_k = sum_{j<k} (1 - mu^(j+1)) / (1 - mu));   weight decay adds -eta lambda theta_0 per step;
- adam: no first-order identity in terms of g is claimed beyond the first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .fp import ResidualCheck, compare, exact_residual, step_residual_bound

OPTIMIZERS = ("gd", "sgd", "momentum", "adam")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer as a user runs it: gd and sgd are torch.optim.SGD (gd with one full batch)."""

    name: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"the learning rate must be positive and finite, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")
        if self.name == "momentum" and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    @property
    def plain(self) -> bool:
        """gd or sgd without weight decay: theta_{s+1} = theta_s - eta grad L_{b_s}(theta_s), the update of T1-T3."""
        return self.name in ("gd", "sgd") and self.weight_decay == 0

    def make(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The torch.optim optimizer (single-tensor code path, whose arithmetic the models count)."""
        if self.name in ("gd", "sgd"):
            return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay, foreach=False)
        if self.name == "momentum":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                   foreach=False)
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                weight_decay=self.weight_decay, foreach=False)

    def to_dict(self) -> dict:
        """The spec's fields as a dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class FirstStepIdentity:
    """The exact first-step identity of an optimizer, or the reason none is claimed."""

    statement: str
    exact: bool               # True when tau^(1) = -eta g (T1 itself)
    predicted: torch.Tensor | None
    check: ResidualCheck | None


def first_step_identity(spec: OptimizerSpec, theta0: torch.Tensor, theta1: torch.Tensor,
                        g: torch.Tensor) -> FirstStepIdentity:
    """State and check the identity that holds for one step of ``spec`` from theta0 with gradient g."""
    dtype, lr, wd = theta0.dtype, spec.lr, spec.weight_decay
    tau = theta1 - theta0
    g64, th64 = g.detach().double(), theta0.detach().double()
    if spec.name == "adam":
        if wd:
            return FirstStepIdentity("Adam with weight decay: no exact first-step identity is claimed", False,
                                     None, None)
        pred = -lr * g64 / (g64.abs() + spec.eps)
        bound = step_residual_bound(theta0, pred, dtype, n=15, underflows=8)
        r = tau.double() - pred      # pred is not a product of two floats: float64 evaluation, error << u32
        return FirstStepIdentity("T1 does not hold for Adam: tau^(1) = -eta g / (|g| + eps) (direction changed)",
                                 False, pred, compare(r, bound, tau))
    if wd:
        pred = -lr * (g64 + wd * th64)
        bound = step_residual_bound(theta0, lr * (g64.abs() + wd * th64.abs()), dtype, n=7, underflows=3)
        r = exact_residual(tau, g64 + wd * th64, lr) if dtype == torch.float32 else tau.double() - pred
        return FirstStepIdentity(f"T1 does not hold with weight decay {wd:g}: "
                                 "tau^(1) = -eta (g + lambda theta_0) instead", False, pred, compare(r, bound, tau))
    pred = -lr * g64
    r = exact_residual(tau, g, lr)
    return FirstStepIdentity("T1: tau^(1) = -eta g exactly", True, pred,
                             compare(r, step_residual_bound(theta0, lr * g64.abs(), dtype), tau))


def momentum_coefficient(mu: float, k: int) -> float:
    """c_k = sum_{j=0}^{k-1} (1 - mu^(j+1)) / (1 - mu): tau^(k) = -eta c_k g + O(eta^2) for heavy ball (T3)."""
    return sum((1 - mu ** (j + 1)) / (1 - mu) for j in range(k))


def first_order_prediction(spec: OptimizerSpec, theta0: torch.Tensor, batch_grads: Sequence[torch.Tensor],
                           schedule: Sequence[int]) -> torch.Tensor | None:
    """The task vector to first order in eta after the steps in ``schedule`` (None for Adam).

    ``batch_grads[b]`` = grad L_b(theta_0); step s uses batch schedule[s].
    """
    if spec.name == "adam":
        return None
    decay = spec.weight_decay * theta0
    total = torch.zeros_like(theta0)
    buf = None
    for b in schedule:
        d = batch_grads[b] + decay
        if spec.name == "momentum":
            buf = d.clone() if buf is None else spec.momentum * buf + d
            d = buf
        total = total - spec.lr * d
    return total
