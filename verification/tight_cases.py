"""Pinned networks on which the T4 bound (tvtheory.bounds.mlp_hessian_bound) is nearly or exactly attained.

Random networks leave the bound 20-300x loose, so a weakened constant goes unnoticed there. Each case below
is built so that one group of inequalities of the derivation (docs/theory.md, T4) holds with equality:
widths 1 (spectral norms are |w|), inputs along the rows of W_1, pre-activations where |sigma'| = c1 or
|sigma''| = c2, scales that make the other terms negligible. ``T4Case.terms`` says which terms it makes
tight, ``T4Case.min_ratio`` is the ||hess L||_2 / bound the construction reaches (derived in each
builder's docstring); ``verification/test_t4_curvature.py`` checks bound >= ||hess L||_2 and that ratio.

The cases, one example each (so the mean bound is the per-example bound):
- ``gauss_newton``: f = y and h_1 = 0, so hess l = f' f'^T with ||f'||^2 = J_2^2 exactly (e_l with biases,
  the c1 s_l J_{l-1} term of J, lambda).
- ``hidden_at_sigma0``: W = 0, x = 0: ||h_1|| = |sigma(0)| sqrt(n_1) = a_1, hess l = lambda-part only.
- ``small_preactivation``: tanh(z) = z up to z^3/3 at z = 1e-4, so ||h_1|| = c1 s_1 a_0 (the c1 of a_l).
- ``c2_term``: z_1 at the maximiser of |sigma''|, s_2 J_1 large: D^2 f = s_2 c2 J_1^2 dominates Q_2
  (MSE with a large target, so ||f - y|| ~ r; CE with a wide logit gap, so ||softmax - e_y|| ~ sqrt 2).
- ``q_recursion``: depth 3 with z_2 where sigma' = c1 and s_2 small, so s_3 c1 Q_2 dominates Q_3.
All numbers are fixed (no seed): the cases are the same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tvtheory.activations import get_activation
from tvtheory.losses import get_loss
from tvtheory.models import make_mlp
from tvtheory.models.mlp import MLP, MLPConfig
from tvtheory.objective import Objective

SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu")


def _silu_c1_point() -> float:
    """The root of silu''(z) = s(z)(1 - s(z))(2 + z(1 - 2 s(z))) in [2, 3], where silu' = c1 (bisection)."""
    lo, hi = 2.0, 3.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        s = 1.0 / (1.0 + math.exp(-mid))
        lo, hi = (mid, hi) if 2.0 + mid * (1.0 - 2.0 * s) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def c1_point(activation: str) -> float:
    """A pre-activation where |sigma'| = c1 (softplus: c1 = 1 is a limit; at z = 36, 1 - sigma' < 3e-16)."""
    return {"tanh": 0.0, "sigmoid": 0.0, "softplus": 36.0, "gelu": math.sqrt(2.0), "silu": _silu_c1_point()}[activation]


def c2_point(activation: str) -> float:
    """The pre-activation where |sigma''| = c2: artanh(1/sqrt 3) for tanh, ln(2 + sqrt 3) for the sigmoid, else 0."""
    return {"tanh": math.atanh(1.0 / math.sqrt(3.0)), "sigmoid": math.log(2.0 + math.sqrt(3.0))}.get(activation, 0.0)


@dataclass(frozen=True)
class T4Case:
    """One network, one example and its target, with the terms of T4 it makes tight."""

    name: str
    config: MLPConfig
    theta: torch.Tensor
    x: torch.Tensor
    target: torch.Tensor
    loss: str
    terms: str
    min_ratio: float

    def model(self) -> MLP:
        """The network (its own weights are unused: the objective takes theta)."""
        return make_mlp(self.config.widths, self.config.activation, self.config.bias)

    def objective(self) -> Objective:
        """L(theta) on the case's one example."""
        return Objective(self.model(), get_loss(self.loss), self.x, self.target)


def _case(name, widths, activation, bias, layers, x, target, loss, terms, min_ratio) -> T4Case:
    """Assemble theta from per-layer (W_l, b_l) lists in nn.Linear layout (b_l ignored without biases)."""
    parts = []
    for w, b in layers:
        parts.append(torch.tensor(w, dtype=torch.float64).reshape(-1))
        if bias:
            parts.append(torch.tensor(b, dtype=torch.float64).reshape(-1))
    target_dtype = torch.float64 if loss == "mse" else torch.int64
    return T4Case(name, MLPConfig(tuple(widths), activation, bias), torch.cat(parts),
                  torch.tensor(x, dtype=torch.float64), torch.tensor(target, dtype=target_dtype), loss, terms,
                  min_ratio)


def gauss_newton() -> T4Case:
    """tanh, biases, widths (2, 1, 1): W_1 = 0, b_1 = 0 (h_1 = 0, a_1 = 0), w_2 = 10, b_2 = 0, y = 0 = f.

    Then f - y = 0 and r = s_2 a_1 + beta_2 + ||y|| = 0, so hess l = f' f'^T, whose norm is
    ||grad f||^2 = h_1^2 + 1 + w_2^2 tanh'(0)^2 (||x||^2 + 1) = e_2^2 + (c1 s_2 e_1)^2 = J_2^2: attained.
    x = (0.3, 0.4) keeps the bias part of e_1 (1 of e_1^2 = 1.25) visible.
    """
    return _case("gauss_newton[tanh-mse]", (2, 1, 1), "tanh", True, [([[0.0, 0.0]], [0.0]), ([[10.0]], [0.0])],
                 [[0.3, 0.4]], [[0.0]], "mse", "J: e_l with biases, c1 s_l J_(l-1); lambda", 1.0 - 1e-12)


def hidden_at_sigma0(activation: str, loss: str) -> T4Case:
    """No biases, widths (2, 3, 2), W = 0, x = 0: h_1 = sigma(0) 1, so ||h_1|| = |sigma(0)| sqrt 3 = a_1.

    f = 0 and (MSE) y = 0, so hess l = f' f'^T with ||f'||^2 = ||h_1||^2 = J_2^2; (CE) the logits are equal,
    ||hess_f l|| = 1/2 = lambda along e_0 - e_1, and D^2 f = 0 (x = 0, W = 0): hess L = lambda J_2^2. Attained.
    """
    target = [[0.0, 0.0]] if loss == "mse" else [0]
    zeros = (torch.zeros(3, 2).tolist(), None), (torch.zeros(2, 3).tolist(), None)
    return _case(f"hidden_at_sigma0[{activation}-{loss}]", (2, 3, 2), activation, False, list(zeros), [[0.0, 0.0]],
                 target, loss, "a_l: |sigma(0)| sqrt(n_l); lambda", 1.0 - 1e-12)


def small_preactivation() -> T4Case:
    """tanh, no biases, widths (2, 1, 1): x = (0.6, 0.8), W_1 = 1e-4 x (z_1 = 1e-4 = s_1 a_0), w_2 = 0, y = 0.

    f = 0 = y, so hess l = f' f'^T with ||f'||^2 = h_1^2 = tanh(1e-4)^2, and J_2 = e_2 = a_1 = c1 s_1 a_0:
    the ratio is (tanh(z)/z)^2 >= 1 - 2 z^2/3 = 1 - 7e-9.
    """
    layers = [([[0.6e-4, 0.8e-4]], None), ([[0.0]], None)]
    return _case("small_preactivation[tanh-mse]", (2, 1, 1), "tanh", False, layers, [[0.6, 0.8]], [[0.0]], "mse",
                 "a_l: c1 (s_l a_(l-1) + beta_l)", 1.0 - 1e-8)


def c2_term(activation: str, loss: str) -> T4Case:
    """Biases, widths (1, 1, n_2), one example x = X; w_1 = z/X with z the maximiser of |sigma''|, b_1 = 0.

    Along dw_1 (with db_1: the direction x~ = (x, 1) / e_1), D^2 f = w_2 sigma''(z) e_1^2, against
    Q_2 = 2 c1 e_1 + s_2 c2 e_1^2 with s_2 = t/e_1: the ratio is 1 - O(1/t) - O(1/(c2 X)); the directions
    mixing layers 1 and 2 only add to ||hess l||.
    MSE (n_2 = 1, X = 1e4, t = 1e3): y = -100, so ||f - y|| >= 100 - |f| against r = s_2 a_1 + ||y||;
    lambda J_2^2 ~ t^2 is 1e-3 of r Q_2.
    CE (n_2 = 2, X = 1e8, t = 1e3): W_2 = s_2 (1, -1)/sqrt 2, b_2 = (40, -40), y = 1, so
    softmax - e_y = (1, -1) up to e^-80 (||.|| = sqrt 2 = r) and hess_f l ~ e^-80; u^T W_2 = s_2.
    """
    z = c2_point(activation)
    if loss == "mse":
        big_x, t, width, target = 1e4, 1e3, 1, [[-100.0]]
    else:
        big_x, t, width, target = 1e8, 1e3, 2, [1]
    s2 = t / math.sqrt(big_x ** 2 + 1.0)
    if width == 1:
        layer2 = ([[s2]], [0.0])
    else:
        layer2 = ([[s2 / math.sqrt(2.0)], [-s2 / math.sqrt(2.0)]], [40.0, -40.0])
    return _case(f"c2_term[{activation}-{loss}]", (1, 1, width), activation, True, [([[z / big_x]], [0.0]), layer2],
                 [[big_x]], target, loss,
                 "Q: s_l c2 J_(l-1)^2; " + ("r = ||f|| + ||y||" if loss == "mse" else "r = sqrt 2"), 0.98)


def q_recursion(activation: str) -> T4Case:
    """Biases, widths (1, 1, 1, 1), MSE, x = X = 1e6: z_1 = maximiser of |sigma''|, w_2 = 1e-3, b_2 chosen so
    that z_2 is where |sigma'| = c1, w_3 = 1, y = -1e3.

    Along dw_1, D^2 f = w_3 sigma'(z_2) w_2 sigma''(z_1) e_1^2 = s_3 c1 (s_2 c2 J_1^2): the s_l c1 Q_(l-1) term
    of Q_3, which dominates the others (2 c1 J_2 ~ s_2 e_1, s_3 c2 J_2^2 ~ s_2^2 e_1^2, 2 c1 J_1 in Q_2) by
    s_2 c2 e_1 >> 2 and s_2 << 1; ||f - y|| ~ r as in ``c2_term``.
    """
    act = get_activation(activation)
    big_x, w2 = 1e6, 1e-3
    z1 = c2_point(activation)
    h1 = float(act.fn(torch.tensor(z1, dtype=torch.float64)))
    b2 = c1_point(activation) - w2 * h1
    layers = [([[z1 / big_x]], [0.0]), ([[w2]], [b2]), ([[1.0]], [0.0])]
    return _case(f"q_recursion[{activation}-mse]", (1, 1, 1, 1), activation, True, layers, [[big_x]], [[-1e3]], "mse",
                 "Q: s_l c1 Q_(l-1) (depth 3)", 0.98)


def t4_cases() -> list[T4Case]:
    """Every pinned case (fresh tensors on each call)."""
    out = [gauss_newton(), small_preactivation()]
    out += [hidden_at_sigma0(a, loss) for a in ("sigmoid", "softplus") for loss in ("mse", "ce")]
    out += [c2_term(a, loss) for a in SMOOTH_ACTIVATIONS for loss in ("mse", "ce")]
    out += [q_recursion(a) for a in SMOOTH_ACTIVATIONS]
    return out
