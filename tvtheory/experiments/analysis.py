"""E1/E2 statistics and the T2/T3 expansion terms of a finished finetuning run.

Reuses the library: ``task_vectors.cosine`` / ``per_layer_cosines`` (E2), ``expansion.first_order_terms``
(the first-order term -eta sum_s g_{b_s}), ``curvature.gradient`` / ``hvp`` (one chunk at a time).

What the library lacks, added here: batch gradients and Hessian-vector products of a batch whose loss does
not fit in one forward-over-reverse pass. A batch loss L_b = (1/n_b) sum_i l_i is the weighted sum
sum_c (n_c/n_b) L_c over chunks c (and over ranks), so
    grad L_b = sum_c (n_c/n_b) grad L_c,     H_b v = sum_c (n_c/n_b) H_c v,
each term by ``tvtheory.curvature`` on a chunk ``Objective``, summed, then all-reduced.

The second-order term (T2(a), T3) is ``tvtheory.expansion.second_order_terms`` with these chunked HVPs: for
the epoch-periodic schedule of ``finetune`` it takes at most 2B - 1 batch HVPs for all K epochs, so its cost
does not grow with K (the B batch gradients at theta_0 and the HVPs dominate; what grows with K is O(K P)
vector arithmetic and the K task vectors held in memory).

E2's reference direction is the run's converged task vector tau^(conv) (``direction_stats``' ``reference``):
the best-validation epoch of early-stopped sgd / adamw, the last step of gd; E1, E2 and the expansion cover
every epoch 1..K the run recorded, including those after the converged epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..bounds import T4_NOTE
from ..curvature import gradient, hvp
from ..expansion import first_order_terms, second_order_terms
from ..losses import get_loss
from ..objective import Objective
from ..params import ParamLayout
from ..task_vectors import cosine, norm, per_layer_cosines
from ..trajectory import epoch_schedule
from .dist import DistContext, shard


class ChunkedBatchLoss:
    """L_b(theta) = mean CE over ``index`` as a weighted sum of chunk objectives (this rank's shard)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, ctx: DistContext,
                 chunk_size: int, prepare: Callable | None = None):
        self.ctx, self.n = ctx, index.numel()
        p = next(model.parameters())
        loss = get_loss("ce")
        self.chunks: list[tuple[float, Objective]] = []
        for part in torch.split(shard(index, ctx), chunk_size):
            xb = x[part] if prepare is None else prepare(x[part])
            self.chunks.append((part.numel() / self.n,
                                Objective(model, loss, xb.to(device=p.device, dtype=p.dtype), y[part].to(p.device))))

    def _sum(self, fn: Callable[[Objective], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(like)
        for w, f in self.chunks:
            total = total + w * fn(f)
        return self.ctx.all_reduce_sum_(total)

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """grad L_b(theta) = sum_c (n_c / n_b) grad L_c(theta), summed over ranks."""
        return self._sum(lambda f: gradient(f, theta), theta)

    def hvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H_b(theta) v = sum_c (n_c / n_b) H_c(theta) v, summed over ranks."""
        return self._sum(lambda f: hvp(f, theta, v), theta)


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b = 0 (a zero first-order term: no relative error to speak of)."""
    return a / b if b > 0 else math.nan


def direction_stats(taus: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], layout: ParamLayout,
                    reference: int | None = None) -> dict:
    """E2: how much of the converged task vector tau^(conv) each epoch already points along, globally and per layer.

    ``taus[k-1]`` = tau^(k); ``grads[k-1]`` = grad L(theta_{k-1}), the full-batch gradient at the start of
    epoch k, k = 1..K. tau^(conv) = tau^(``reference``), the run's converged epoch (1-based; default K, the
    last): the best-validation epoch k* of early-stopped sgd / adamw, the last step of budget-limited gd.
    The keys keep the name "tauK" for tau^(conv) (a run with k* = K is the old tau^(K)); ``reference_epoch``
    says which epoch it is, and ``cos_tau1_tauconv`` = ``cos_tau1_tauK`` names it explicitly.
    Per epoch k = 1..K (all epochs, also those after k*): cos(tau^(k), tau^(conv)), cos(update_k, tau^(conv))
    with update_k = tau^(k) - tau^(k-1), and cos(-grad L(theta_{k-1}), tau^(conv)); cos(-g, tau^(conv)) with
    g = grad L(theta_0) is the k = 1 entry of the last. For full-batch GD, update_k = -eta grad L(theta_{k-1})
    (T1), so the last two lists agree.
    """
    ref = len(taus) if reference is None else reference
    if not 1 <= ref <= len(taus):
        raise ValueError(f"the reference epoch {ref} is not one of the epochs 1..{len(taus)}")
    tau_k = taus[ref - 1]
    updates = [taus[0]] + [taus[i] - taus[i - 1] for i in range(1, len(taus))]
    cos_1 = cosine(taus[0], tau_k)
    return {
        "reference_epoch": ref,
        "cos_tau1_tauconv": cos_1,
        "cos_tau1_tauK": cos_1,
        "cos_neg_g_tauK": cosine(-grads[0], tau_k),
        "cos_tau_k_tauK": [cosine(t, tau_k) for t in taus],
        "cos_update_k_tauK": [cosine(u, tau_k) for u in updates],
        "cos_neg_g_k_tauK": [cosine(-g, tau_k) for g in grads],
        "cos_tau_k_neg_g": [cosine(t, -grads[0]) for t in taus],
        "per_layer": {
            "cos_tau1_tauK": dict(per_layer_cosines(taus[0], tau_k, layout)),
            "cos_neg_g_tauK": dict(per_layer_cosines(-grads[0], tau_k, layout)),
            "cos_update_k_tauK": [dict(per_layer_cosines(u, tau_k, layout)) for u in updates],
        },
    }


def norm_stats(records: Sequence[dict]) -> dict:
    """E1: each epoch's gradient norm divided by the sum over epochs; is epoch 0 the largest?"""
    out = {}
    for key in ("full_grad_norm_start", "minibatch_grad_norm_mean"):
        vals = [r[key] for r in records]
        s = sum(vals)
        normed = [v / s for v in vals] if s > 0 else [math.nan] * len(vals)
        out[key] = {"normalised": normed, "epoch0_largest": bool(normed and normed[0] == max(normed))}
    return out


def expansion_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: Sequence[torch.Tensor],
                    theta0: torch.Tensor, taus: Sequence[torch.Tensor], optimizer: str, lr: float,
                    ctx: DistContext, chunk_size: int, prepare: Callable | None = None,
                    second_order: bool = True) -> dict:
    """||E_k|| = ||tau^(k) - first order|| and ||E_k - second order|| per epoch (T2 for gd, T3 for sgd).

    For AdamW no first-order identity in g holds (T3): the distance to the GD prediction -eta k sum_b g_b is
    reported under the same key, flagged, and the second-order term is not computed.
    """
    K = len(taus)
    losses = [ChunkedBatchLoss(model, x, y, b, ctx, chunk_size, prepare) for b in batches]
    grads = [f.grad(theta0) for f in losses]
    schedule = epoch_schedule(len(batches), K)
    first = first_order_terms(lr, grads, schedule, len(batches))
    rows = []
    for k in range(K):
        error, first_norm = norm(taus[k] - first[k]), norm(first[k])
        rows.append({"k": k + 1, "tau_norm": norm(taus[k]), "first_order_norm": first_norm, "error_norm": error,
                     "relative_error": _ratio(error, first_norm), "cos_tau_first_order": cosine(taus[k], first[k])})
    applies = optimizer in ("gd", "sgd")
    if applies and second_order:
        second = second_order_terms(lambda b, v: losses[b].hvp(theta0, v), lr, grads, schedule, len(batches))
        for k in range(K):
            rows[k]["second_order_norm"] = norm(second[k])
            rows[k]["second_order_residual_norm"] = norm(taus[k] - first[k] - second[k])
    statement = {"gd": "T2: tau^(k) = -k eta g + E_k, E_k = eta^2 C(k,2) H g + O(eta^3)",
                 "sgd": "T3: tau = -eta sum_s g_{b_s} + E, E = eta^2 sum_s H_{b_s} sum_{s'<s} g_{b_s'} + O(eta^3)",
                 "adamw": "none: AdamW changes the direction (first step ~ -eta sign(g)); error_norm is the "
                          "distance to the GD prediction -eta sum_s g_{b_s}, not an expansion error"}[optimizer]
    return {"statement": statement, "first_order_identity_applies": applies,
            "second_order_computed": applies and second_order, "epochs": rows, "T4": T4_NOTE}
