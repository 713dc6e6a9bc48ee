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


BatchHVP = Callable[[int, torch.Tensor], torch.Tensor]
"""(b, v) -> H_b v, the Hessian of batch b's loss at theta_0 applied to v."""


def batch_hvps(batch_objectives: Sequence[Objective], theta0: torch.Tensor) -> BatchHVP:
    """(b, v) -> hess L_b(theta_0) v by ``curvature.hvp`` on each batch objective."""
    return lambda b, v: hvp(batch_objectives[b], theta0, v)


def second_order_terms(batch_hvp: BatchHVP, lr: float, batch_grads: Sequence[torch.Tensor],
                       schedule: Sequence[int], steps_per_epoch: int) -> list[torch.Tensor]:
    """eta^2 * sum_{s < kB} H_{b_s} sum_{s' < s} g_{b_s'} after each epoch k = 1..K (T2(a), T3).

    ``batch_hvp(b, v)`` = H_b v with H_b = hess L_b(theta_0) (``batch_hvps`` for in-memory batch objectives; any
    other evaluation, e.g. chunked over memory-sized pieces, works the same), g_b = grad L_b(theta_0).

    Epoch-periodic schedule (batches 0..B-1 every epoch, ``trajectory.epoch_schedule``), in closed form: with
    S = sum_c g_c and P_b = sum_{c<b} g_c the prefix before step (k, b) is k S + P_b, so after k epochs the term
    is eta^2 (C(k,2) A + k C) with A = sum_b H_b S and C = sum_b H_b P_b: at most 2B - 1 HVPs for all K (GD: one,
    H g). Any other schedule: every prefix is a combination sum_c n_c g_c, so the term is sum_{b,c} n_{b,c} H_b g_c,
    at min(B^2, K B) HVPs (the B^2 products H_b g_c, or B per epoch on the accumulated vectors).
    """
    B, K = len(batch_grads), len(schedule) // steps_per_epoch
    if len(schedule) % steps_per_epoch or K == 0:
        raise ValueError(f"the schedule has {len(schedule)} steps, not a whole number of {steps_per_epoch}-step epochs")
    if list(schedule) == [b for _ in range(K) for b in range(B)] and steps_per_epoch == B:
        return _second_order_periodic(batch_hvp, lr, batch_grads, K)
    counts = torch.zeros(B, dtype=torch.float64)        # prefix = sum_c counts[c] g_c
    pending = torch.zeros(B, B, dtype=torch.float64)    # this epoch: sum over steps of batch b of prefix coefficients
    pairs: dict[tuple[int, int], torch.Tensor] = {}
    use_pairs = B * B <= K * B

    def epoch_term(coef: torch.Tensor) -> torch.Tensor:
        term = torch.zeros_like(batch_grads[0])
        for b in range(B):
            if use_pairs:
                for c in torch.nonzero(coef[b]).flatten().tolist():
                    if (b, c) not in pairs:
                        pairs[(b, c)] = batch_hvp(b, batch_grads[c])
                    term = term + float(coef[b, c]) * pairs[(b, c)]
            elif torch.any(coef[b] != 0):
                v = sum((float(coef[b, c]) * batch_grads[c] for c in range(B)), torch.zeros_like(term))
                term = term + batch_hvp(b, v)
        return term

    out, total = [], torch.zeros_like(batch_grads[0])
    for s, b in enumerate(schedule):
        pending[b] += counts
        counts[b] += 1
        if (s + 1) % steps_per_epoch == 0:
            total = total + epoch_term(pending)
            pending.zero_()
            out.append(lr ** 2 * total)
    return out


def _second_order_periodic(batch_hvp: BatchHVP, lr: float, batch_grads: Sequence[torch.Tensor],
                           epochs: int) -> list[torch.Tensor]:
    """eta^2 (C(k,2) A + k C) for k = 1..epochs (``second_order_terms``' closed form)."""
    total = torch.zeros_like(batch_grads[0])
    for g in batch_grads:
        total = total + g
    a = torch.zeros_like(total)
    c = torch.zeros_like(total)
    prefix = torch.zeros_like(total)
    for b in range(len(batch_grads)):
        if epochs >= 2:
            a = a + batch_hvp(b, total)
        if b > 0:
            c = c + batch_hvp(b, prefix)
        prefix = prefix + batch_grads[b]
    return [lr ** 2 * (math.comb(k, 2) * a + k * c) for k in range(1, epochs + 1)]


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
