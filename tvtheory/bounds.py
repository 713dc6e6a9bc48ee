"""Explicit bounds: the a-posteriori error bound (T2(c), T3) and the MLP curvature bound (T4).

T2(c)/T3, for any sequence of steps theta_{s+1} = theta_s - eta * grad L_{b_s}(theta_s):
    E = tau - (first-order term) = -eta * sum_s (grad L_{b_s}(theta_s) - grad L_{b_s}(theta_0)),
    ||E|| <= eta * sum_s M_s * ||theta_s - theta_0||,
with M_s >= sup of ||hess L_{b_s}|| on the segment [theta_0, theta_s] (mean-value theorem).
Full-batch GD (B = 1) also gives the coarse form ||E_k|| <= C(k,2) eta^2 M G.

T4, for the MLP h_0 = x, z_l = W_l h_{l-1} + b_l, h_l = sigma(z_l) (l < L), f = z_L, on a segment where
s_l >= ||W_l||_2 and beta_l >= ||b_l||:
    a_0 = ||x||,  a_l = |sigma(0)| sqrt(n_l) + c1 (s_l a_{l-1} + beta_l)                 (||h_l|| <= a_l)
    e_l = sqrt(a_{l-1}^2 + 1)  (a_{l-1} without biases),  J_l^2 = e_l^2 + (c1 s_l)^2 J_{l-1}^2, J_0 = 0
    Q_1 = 0,  Q_l = 2 c1 J_{l-1} + s_l c2 J_{l-1}^2 + s_l c1 Q_{l-1}
    ||Df[v]|| <= J_L,  ||D^2 f[v, v]|| <= Q_L,  ||hess l(f(x), y)||_2 <= lambda J_L^2 + r Q_L
(J_l^2 = sum_{m<=l} rho_{m,l}^2 with rho_{m,l} = e_m prod_{k=m+1}^{l} c1 s_k, written as a recursion.)
The mean loss has Hessian norm at most the mean of the per-example bounds. ``step_hessian_bounds`` gives the
M_s of a trajectory: T4 for the batch of step s with the norms of the segment [theta_0, theta_s].
T4 covers this MLP only: for a ViT there is no such bound (``T4_NOTE``), and no M_s for T2(c)/T3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

import torch
from torch import nn

from .activations import get_activation, require_c2
from .fp import unit_roundoff
from .losses import CE_GRADIENT_BOUND, Loss
from .models.mlp import MLP, MLPConfig
from .problem import Problem
from .spectral import spectral_norm_upper
from .trajectory import Trajectory

_U64 = unit_roundoff(torch.float64)

T4_NOTE = ("T4 (explicit Hessian bound) does not apply: it covers feed-forward networks h_l = sigma(W_l h_{l-1} + "
           "b_l); the ViT has softmax attention (products of parameter-dependent matrices, no bound of that "
           "form) and LayerNorm. So no rigorous M_j and no T2(c)/T3 a-posteriori bound or dominance number "
           "eta*M*k is given; E_k and the second-order term are measured (by Hessian-vector products).")


def has_curvature_bound(model: nn.Module) -> TypeGuard[MLP]:
    """Whether T4 bounds this network's Hessian: the MLP only (see ``T4_NOTE``)."""
    return isinstance(model, MLP)


@dataclass(frozen=True)
class LayerNorms:
    """s_l >= ||W_l||_2 and beta_l >= ||b_l|| for l = 1..L (float64 tensors of length L)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def max(self, other: LayerNorms) -> LayerNorms:
        """Norm bounds valid on the whole segment between two points (norms are convex)."""
        return LayerNorms(torch.maximum(self.weight, other.weight), torch.maximum(self.bias, other.bias))


def mlp_layers(config: MLPConfig, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(W_l, b_l) for l = 1..L from a flat MLP parameter vector (nn.Linear layout, row-major)."""
    widths, out, start = config.widths, [], 0
    expected = sum(n_out * n_in + (n_out if config.bias else 0)
                   for n_in, n_out in zip(widths[:-1], widths[1:], strict=True))
    if theta.numel() != expected:
        raise ValueError(f"theta has {theta.numel()} entries, but an MLP with widths {widths} "
                         f"(bias={config.bias}) has {expected} parameters")
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        w = theta[start:start + n_out * n_in].view(n_out, n_in)
        start += n_out * n_in
        b = None
        if config.bias:
            b = theta[start:start + n_out]
            start += n_out
        out.append((w, b))
    return out


def layer_norms(config: MLPConfig, theta: torch.Tensor) -> LayerNorms:
    """Spectral norms of the weights and Euclidean norms of the biases at one point, rounded up.

    s_l = ``spectral_norm_upper(W_l)``: certified s_l >= ||W_l||_2 without an SVD (Gram matrix, Cholesky
    certificate; derivation in tvtheory.spectral), and s_l <= ||W_l||_2 sqrt(1 + m + 4 (k + 1) (K + 1) u),
    k <= K the sides of W_l, m = 1e-9 (the bound's relative_margin) whenever its first certificate holds (on
    every matrix tested), so s_l / ||W_l||_2 - 1 < 1e-9 for K <= 10^3. Cost: K k^2 + k^3 / 3 flops per layer,
    0.5 gradients for the 1e6-parameter MLP of docs/performance.md. beta_l = ||b_l|| in float64 raised by the
    relative amount 64 n u (n = len(b_l)), which covers the rounding of the sum of squares and the root.
    """
    weight, bias = [], []
    for w, b in mlp_layers(config, theta.detach().double()):
        weight.append(spectral_norm_upper(w).value)
        bias.append(torch.linalg.vector_norm(b) * (1.0 + 64 * b.numel() * _U64) if b is not None
                    else torch.zeros((), dtype=torch.float64))
    return LayerNorms(torch.tensor(weight, dtype=torch.float64), torch.stack(bias))


@dataclass(frozen=True)
class MLPHessianBound:
    """Per-example T4 quantities: J_L (first derivative), Q_L (second derivative), the Hessian bound."""

    J: torch.Tensor
    Q: torch.Tensor
    per_example: torch.Tensor

    @property
    def mean(self) -> float:
        """M: a bound on ||hess L||_2 for the mean loss over the examples."""
        return float(self.per_example.mean())


def _derivative_recursion(config: MLPConfig, x: torch.Tensor, norms: LayerNorms, order: int
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per example, D_1..D_order >= ||d^k f/dt^k|| along every unit direction (D_1 = J_L, D_2 = Q_L) on the set
    where ``norms`` hold, and a_{L-1} >= ||h_{L-1}||.

    D_1 is T4's J. For k >= 2, z_l^(k) = W_l h_{l-1}^(k) + k dW_l h_{l-1}^(k-1) (Leibniz; ||dW_l||_2 <= 1), so
    D_k(l) = s_l H_k(l-1) + k H_{k-1}(l-1), with H_k(l) >= ||h_l^(k)|| from Faa di Bruno (elementwise products,
    ||a * b|| <= ||a|| ||b||): H_1 = c1 D_1, H_2 = c2 D_1^2 + c1 D_2, H_3 = c3 D_1^3 + 3 c2 D_1 D_2 + c1 D_3,
    H_4 = c4 D_1^4 + 6 c3 D_1^2 D_2 + c2 (3 D_2^2 + 4 D_1 D_3) + c1 D_4; H_k(0) = 0 (h_0 = x is constant).
    """
    act = get_activation(config.activation)
    c1, c2 = require_c2(act, "the curvature bound T4" if order <= 2 else "the fourth-derivative bound of T6")
    c = [1.0, c1, c2, act.c3, act.c4]
    if order > 2 and (c[3] is None or c[4] is None):
        raise ValueError(f"the activation {act.name!r} has no bound on its third and fourth derivatives")
    s, beta, widths = norms.weight, norms.bias, config.widths
    L = config.depth
    if s.numel() != L:
        raise ValueError(f"norms are given for {s.numel()} layers, the MLP has {L}")
    x = x.detach().double().reshape(x.shape[0], -1)
    a = torch.linalg.vector_norm(x, dim=1)                      # a_0 = ||x||
    D = [torch.zeros_like(a) for _ in range(order + 1)]          # D[k] >= ||z_{l}^(k)||, D[0] unused
    for l in range(1, L + 1):
        s_l, b_l = s[l - 1], beta[l - 1]
        e = torch.sqrt(a ** 2 + 1.0) if config.bias else a       # e_l
        if l > 1:
            h = _faa_di_bruno(c, D, order)                       # H_k(l-1), k = 0..order
            D = [D[0]] + [s_l * h[k] + k * h[k - 1] if k >= 2 else D[1] for k in range(1, order + 1)]
        D[1] = torch.sqrt(e ** 2 + (c1 * s_l) ** 2 * D[1] ** 2)
        if l < L:
            a = act.sigma0 * math.sqrt(widths[l]) + c1 * (s_l * a + b_l)
    return D[1:], a


def _faa_di_bruno(c: list, D: list[torch.Tensor], order: int) -> list[torch.Tensor]:
    """H_0..H_order: bounds on ||d^k sigma(z(t))/dt^k|| from D_k >= ||z^(k)|| (H_0 is unused: 0)."""
    d1, d2 = D[1], D[2]
    h = [torch.zeros_like(d1), c[1] * d1, c[2] * d1 ** 2 + c[1] * d2]
    if order >= 3:
        d3 = D[3]
        h.append(c[3] * d1 ** 3 + 3 * c[2] * d1 * d2 + c[1] * d3)
    if order >= 4:
        d4 = D[4]
        h.append(c[4] * d1 ** 4 + 6 * c[3] * d1 ** 2 * d2 + c[2] * (3 * d2 ** 2 + 4 * d1 * d3) + c[1] * d4)
    return h


def _loss_gradient_bound(config: MLPConfig, loss: Loss, target: torch.Tensor, norms: LayerNorms,
                         a: torch.Tensor) -> torch.Tensor:
    """r >= ||dl/df|| per example: ||f - y|| <= s_L a_{L-1} + beta_L + ||y|| (MSE), sqrt 2 (CE)."""
    L = config.depth
    if loss.name == "mse":
        t = target.detach().double().reshape(target.shape[0], -1)
        return norms.weight[L - 1] * a + norms.bias[L - 1] + torch.linalg.vector_norm(t, dim=1)
    if loss.name == "ce":
        return torch.full_like(a, CE_GRADIENT_BOUND)
    raise ValueError(f"T4 knows the constants of the losses 'mse' and 'ce', not {loss.name!r}")


def mlp_hessian_bound(
    config: MLPConfig,
    loss: Loss,
    x: torch.Tensor,
    target: torch.Tensor,
    norms: LayerNorms,
) -> MLPHessianBound:
    """T4: bounds on ||Df||, ||D^2 f|| and ||hess l(f(x), y)||_2 for every example, given layer norm bounds.

    ``norms`` must bound the weights on the whole set considered: ``layer_norms(theta)`` for one point,
    ``layer_norms(a).max(layer_norms(b))`` for the segment [a, b]. Cost: O(N L) after the L spectral norms.
    """
    (J, Q), a = _derivative_recursion(config, x, norms, 2)
    r = _loss_gradient_bound(config, loss, target, norms, a)
    slack = 1.0 + 16 * (config.depth + 4) * _U64   # rounding of this recursion, so the result stays an upper bound
    return MLPHessianBound(J * slack, Q * slack, (loss.curvature * J ** 2 + r * Q) * slack)


def mlp_fourth_derivative_bound(config: MLPConfig, loss: Loss, x: torch.Tensor, target: torch.Tensor,
                                norms: LayerNorms) -> float:
    """K4 >= sup |d^4/dt^4 L(theta + t v)| over unit v and theta where ``norms`` hold (the mean loss; T6).

    Per example (Faa di Bruno for l(f(t)), D_k = ``_derivative_recursion``):
        kappa_4 D_1^4 + 6 kappa_3 D_1^2 D_2 + lambda (3 D_2^2 + 4 D_1 D_3) + r D_4,
    with the loss constants lambda, kappa_3, kappa_4 (``losses``) and r of T4; the mean over the examples
    bounds the mean loss. By Banach's theorem on symmetric multilinear forms in a Hilbert space, the same K4
    bounds |D^4 L[u, u, v, v]| for unit u, v, so ||d^2/dt^2 hess L(theta + t u)||_2 <= K4 (docs/theory.md, T6).
    """
    (d1, d2, d3, d4), a = _derivative_recursion(config, x, norms, 4)
    r = _loss_gradient_bound(config, loss, target, norms, a)
    k4 = loss.fourth * d1 ** 4 + 6 * loss.third * d1 ** 2 * d2 + loss.curvature * (3 * d2 ** 2 + 4 * d1 * d3) + r * d4
    slack = 1.0 + 32 * (config.depth + 4) * _U64
    return float(k4.mean()) * slack


def aposteriori_error_bound(lr: float, step_bounds: Sequence[float], thetas: Sequence[torch.Tensor]) -> float:
    """T2(c)/T3: eta * sum_s M_s ||theta_s - theta_0|| over the steps s = 0..S-1 given.

    ``step_bounds[s]`` bounds the Hessian of the loss used at step s on [theta_0, theta_s];
    ``thetas`` = theta_0..theta_{S-1} (the s = 0 term vanishes).
    """
    if len(step_bounds) != len(thetas):
        raise ValueError(f"{len(step_bounds)} Hessian bounds for {len(thetas)} steps")
    theta0 = thetas[0]
    return lr * sum(m * float(torch.linalg.vector_norm((t - theta0).double()))
                    for m, t in zip(step_bounds, thetas, strict=True))


def coarse_error_bound(lr: float, k: int, M: float, G: float) -> float:
    """T2(c), full-batch GD: ||E_k|| <= C(k,2) eta^2 M G with M >= max_j M_j, G >= max_j ||grad L(theta_j)||."""
    return math.comb(k, 2) * lr ** 2 * M * G


def dominance_number(lr: float, M: float, k: int) -> float:
    """eta * M * k: ||E_k|| / ||k eta g|| <= (eta M k / 2) G/||g||, so the first epoch dominates while it is small."""
    return lr * M * k


def require_matching_batches(problem: Problem, traj: Trajectory) -> None:
    """Refuse a trajectory whose steps per epoch are not the problem's batches (step s uses batch b_s of
    ``problem.batch_objectives``, so the two must agree).
    """
    if traj.steps_per_epoch != problem.num_batches:
        raise ValueError(f"the trajectory takes {traj.steps_per_epoch} steps per epoch but the problem has "
                         f"{problem.num_batches} batches; use problem.with_batches({traj.steps_per_epoch})")


def step_hessian_bounds(problem: Problem, traj: Trajectory) -> list[float]:
    """M_s: the T4 bound for the batch loss of step s on the segment [theta_0, theta_s] (MLP only), for every
    step of ``traj``: ``mlp_hessian_bound`` with s_l, beta_l = the larger of ``layer_norms`` at theta_0 and
    theta_s (norms are convex, so that bounds the whole segment).
    """
    model = problem.model
    if not has_curvature_bound(model):
        raise ValueError(T4_NOTE)
    require_matching_batches(problem, traj)
    norms0 = layer_norms(model.config, traj.theta0)
    out = []
    for s, b in enumerate(traj.schedule):
        f = problem.batch_objectives[b]
        norms = norms0.max(layer_norms(model.config, traj.thetas[s]))
        out.append(mlp_hessian_bound(model.config, problem.loss, f.x, f.target, norms).mean)
    return out
