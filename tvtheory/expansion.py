"""The expansion of the task vector in the learning rate (T2, T3).

For steps theta_{s+1} = theta_s - eta * grad L_{b_s}(theta_s), s = 0..S-1 (full-batch GD: b_s = 0):
    tau = -eta * sum_s g_{b_s} + E,          g_b = grad L_b(theta_0)            (first-order term)
    E   = eta^2 * sum_s H_{b_s} * sum_{s'<s} g_{b_s'} + O(eta^3),  H_b = hess L_b(theta_0)   (second-order term)
For GD this is E_k = eta^2 C(k,2) H g + R_k (T2(a)); for one epoch of B batches it is T3's term. The
second-order term is computed with Hessian-vector products grouped by batch: at most B HVPs per epoch.
For a quadratic loss the expansion is a finite series (T2(b)), ``quadratic_series``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .curvature import gradient, hvp
from .objective import Objective


def task_vector_error(tau: torch.Tensor, first_order: torch.Tensor) -> torch.Tensor:
    """E = tau - (first-order term)."""
    return tau - first_order


def batch_gradients(batch_objectives: Sequence[Objective], theta0: torch.Tensor) -> list[torch.Tensor]:
    """g_b = grad L_b(theta_0) for every batch."""
    return [gradient(f, theta0) for f in batch_objectives]


def first_order_terms(lr: float, batch_grads: Sequence[torch.Tensor], schedule: Sequence[int],
                      steps_per_epoch: int) -> list[torch.Tensor]:
    """-eta * sum_{s < kB} g_{b_s} after each epoch k = 1..K (= -k eta B g for epochs over all batches)."""
    out, total = [], torch.zeros_like(batch_grads[0])
    for s, b in enumerate(schedule):
        total = total + batch_grads[b]
        if (s + 1) % steps_per_epoch == 0:
            out.append(-lr * total)
    return out


def second_order_terms(batch_objectives: Sequence[Objective], theta0: torch.Tensor, lr: float,
                       batch_grads: Sequence[torch.Tensor], schedule: Sequence[int],
                       steps_per_epoch: int) -> list[torch.Tensor]:
    """eta^2 * sum_{s < kB} H_{b_s} sum_{s' < s} g_{b_s'} after each epoch k = 1..K (T2(a), T3).

    Every prefix sum_{s'<s} g_{b_s'} is a combination sum_c n_c g_c of the B batch gradients, so the
    term is sum_{b,c} n_{b,c} H_b g_c. Cost: min(B^2, K B) batch Hessian-vector products (the B^2
    products H_b g_c, or B per epoch on the accumulated vectors); full-batch GD needs one, H g.
    """
    B, K = len(batch_objectives), len(schedule) // steps_per_epoch
    counts = torch.zeros(B, dtype=torch.float64)        # prefix = sum_c counts[c] g_c
    pending = torch.zeros(B, B, dtype=torch.float64)    # this epoch: sum over steps of batch b of prefix coefficients
    pairs: dict[tuple[int, int], torch.Tensor] = {}
    use_pairs = B * B <= K * B

    def epoch_term(coef: torch.Tensor) -> torch.Tensor:
        term = torch.zeros_like(theta0)
        for b in range(B):
            if use_pairs:
                for c in torch.nonzero(coef[b]).flatten().tolist():
                    if (b, c) not in pairs:
                        pairs[(b, c)] = hvp(batch_objectives[b], theta0, batch_grads[c])
                    term = term + float(coef[b, c]) * pairs[(b, c)]
            elif torch.any(coef[b] != 0):
                v = sum(float(coef[b, c]) * batch_grads[c] for c in range(B))
                term = term + hvp(batch_objectives[b], theta0, v)
        return term

    out, total = [], torch.zeros_like(theta0)
    for s, b in enumerate(schedule):
        pending[b] += counts
        counts[b] += 1
        if (s + 1) % steps_per_epoch == 0:
            total = total + epoch_term(pending)
            pending.zero_()
            out.append(lr ** 2 * total)
    assert len(out) == K
    return out


def quadratic_series(hvp_fn: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, lr: float,
                     k: int) -> torch.Tensor:
    """T2(b): sum_{m=0}^{k-1} (-1)^(m+1) eta^(m+1) C(k, m+1) H^m g, with H applied by ``hvp_fn``.

    Equals tau^(k) exactly when the loss is quadratic with Hessian H (k - 1 Hessian-vector products).
    """
    total = torch.zeros_like(g)
    power = g                                           # H^m g
    for m in range(k):
        total = total + ((-1) ** (m + 1)) * lr ** (m + 1) * math.comb(k, m + 1) * power
        if m + 1 < k:
            power = hvp_fn(power)
    return total


def gd_second_order_term(objective: Objective, theta0: torch.Tensor, lr: float, k: int) -> torch.Tensor:
    """eta^2 C(k,2) H g for full-batch GD (T2(a)): one Hessian-vector product."""
    g = gradient(objective, theta0)
    return lr ** 2 * math.comb(k, 2) * hvp(objective, theta0, g)
