"""Per-task learning rates from the curvature at the pretrained point: eta = c / lambda_max(H(theta_0)).

One learning rate for every task does not work here: with the frozen probe heads the sharpness
lambda_max of the finetuning loss differs by more than an order of magnitude between tasks, so a step
that is cautious on one task diverges on another (measured: full-batch GD at eta = 1e-3 decreases the
loss on dtd10 and gtsrb and blows it up on mnist, 0.56 -> 44 in two steps). Gradient descent on a
quadratic is stable for eta < 2 / lambda_max, and the theory's expansion (T2) is accurate when
eta ||H|| k is small, so the step size is set relative to the curvature:

    eta_task = c / lambda_hat,   lambda_hat = |v^T H v| after ``iterations`` power iterations v <- Hv/||Hv||

with H the Hessian of the mean loss over a seeded subset of ``subset`` training images, by Hessian-vector
products (``tvtheory.experiments.analysis.ChunkedBatchLoss``; no Hessian is formed). The Rayleigh quotient
is a lower bound of ||H||_2, so c is taken well below 2: ``LR_SCALE`` (c = 1 for gd, 0.5 for sgd; docs/vision.md
says how they were chosen).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from ..params import flat_params
from .analysis import ChunkedBatchLoss
from .dist import DistContext
from .errors import VisionError

#: c of eta = c / lambda_hat for the optimizers whose learning rate may be set from the curvature ("auto").
LR_SCALE: Mapping[str, float] = MappingProxyType({"gd": 1.0, "sgd": 0.5})


def sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: DistContext, chunk_size: int,
              prepare: Callable | None = None, subset: int = 512, iterations: int = 10, seed: int = 0) -> dict:
    """lambda_hat: power iteration on the Hessian of the mean loss over ``subset`` images (module docstring).

    Returns {"lambda": lambda_hat, "subset": n, "iterations": ..., "history": [Rayleigh quotient per step]}.
    """
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=g)[:min(subset, n)].sort().values
    loss = ChunkedBatchLoss(model, x, y, index, ctx, chunk_size, prepare)
    theta = flat_params(model)
    v = torch.randn(theta.numel(), generator=g, dtype=torch.float64).to(theta)
    v = v / torch.linalg.vector_norm(v)
    history = []
    for _ in range(iterations):
        hv = loss.hvp(theta, v)
        history.append(float(torch.dot(v.double(), hv.double())))
        norm = torch.linalg.vector_norm(hv)
        if not torch.isfinite(norm) or norm == 0:
            break
        v = hv / norm
    lam = abs(history[-1]) if history else math.nan
    return {"lambda": lam, "subset": int(index.numel()), "iterations": iterations, "history": history}


def learning_rate(lam: float, scale: float) -> float:
    """eta = scale / lambda_hat (the module docstring); a VisionError for a flat (0) or broken (NaN, inf) estimate."""
    if not (math.isfinite(lam) and lam > 0):
        raise VisionError(f"the curvature estimate is {lam}: cannot set the learning rate from it; "
                          "pass a number to --lr-gd / --lr-sgd instead of 'auto'")
    return scale / lam
