"""The floating-point model of T1: how exactly does a computed task vector equal -eta * g?

One optimizer step computes theta_1 = fl(theta_0 - fl(eta' * g)) (eta' = eta rounded to the working
precision; torch fuses some of these operations, which only removes roundings), and the task vector is
tau = fl(theta_1 - theta_0). In the standard model fl(a op b) = (a op b)(1 + d), |d| <= u, the residual
    r = tau + eta * g          (computed exactly, see ``exact_residual``)
obeys, elementwise (derivation in docs/theory.md, T1):
    |r| <= u (1 + u) |theta_0| + gamma_4 |eta g| + 2 eta_min,    gamma_n = n u / (1 - n u),
where u = 2^-53 (float64) or 2^-24 (float32) and eta_min is half the smallest subnormal (underflow of
the product). The four roundings on the eta*g path are: eta -> eta', eta' * g, the update, the
subtraction. Other optimizers change the update and therefore the number of roundings n (``gamma``).

Over many steps, E_k (task vector minus first-order term) is computed from rounded iterates and rounded
gradients; ``rounding_allowance`` models ||computed E_k - E_k|| (T2(c), T3 and the remainder fits compare
against bound + allowance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .task_vectors import norm

_SPLITTER = 134217729.0  # 2^27 + 1, Veltkamp's constant for float64


#: The floating-point formats the checks cover, by name (command lines, configs and result files use the names).
DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype called ``name`` ("float64" or "float32")."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-p: 2^-53 for float64, 2^-24 for float32 (round to nearest)."""
    if dtype == torch.float64:
        return 2.0 ** -53
    if dtype == torch.float32:
        return 2.0 ** -24
    raise ValueError(f"the T1 floating-point model covers float32 and float64, not {dtype}")


def underflow_unit(dtype: torch.dtype) -> float:
    """The smallest positive subnormal, 2 u x (smallest normal): it bounds the absolute error of a product
    that underflows (half of it would be sharp, but 2^-1075 is not representable in float64).
    """
    return float(torch.finfo(dtype).smallest_normal) * 2 * unit_roundoff(dtype)


def gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u): bounds |prod_{i<=n} (1 + d_i)^{+-1} - 1| for |d_i| <= u (Higham, Lemma 3.1)."""
    if n * u >= 1:
        raise ValueError(f"gamma_{n} is undefined for u = {u}")
    return n * u / (1 - n * u)


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s + e == a + b exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p + e == a * b exactly, p = fl(a * b) (Dekker), barring underflow/overflow."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def exact_residual(tau: torch.Tensor, grads: torch.Tensor | Sequence[torch.Tensor], lr: float) -> torch.Tensor:
    """r = tau + lr * sum(grads), with tau and the grads floating-point vectors and lr a float64 number.

    Computed in float64 double-double arithmetic (error-free transformations): the products lr * g and
    the running sum are exact, and only the accumulation of the (tiny) error terms rounds. With one
    gradient the result is r to within a relative 2^-52; with several, to within 2^-52 |r| plus
    2^-105 sum |lr g| (the error terms can cancel), far below every model here.
    Inputs must stay below 2^995 in magnitude (Veltkamp's split overflows above).
    """
    s = tau.detach().double()
    err = torch.zeros_like(s)
    for g in ([grads] if isinstance(grads, torch.Tensor) else grads):
        g = g.detach().double()
        if abs(float(lr)) >= 2.0 ** 995 or bool((g.abs() >= 2.0 ** 995).any()):
            raise ValueError("exact_residual needs |lr| and |g| below 2^995 (the error-free product overflows)")
        p, p_err = _two_prod(torch.full_like(s, float(lr)), g)
        s, s_err = _two_sum(s, p)
        err = err + (s_err + p_err)
    return s + err


def step_residual_bound(theta0: torch.Tensor, update: torch.Tensor, dtype: torch.dtype, n: int = 4,
                        underflows: int = 2) -> torch.Tensor:
    """u (1 + u) |theta_0| + gamma_n |update| + underflows * eta_min, elementwise, in float64.

    ``update`` is the exact update the identity predicts (eta * g for T1); ``n`` counts the roundings on
    its path (4 for SGD, see the module docstring).
    """
    u = unit_roundoff(dtype)
    return (u * (1 + u) * theta0.detach().double().abs() + gamma(n, u) * update.detach().double().abs()
            + underflows * underflow_unit(dtype))


@dataclass(frozen=True)
class ResidualCheck:
    """A residual measured against its floating-point model, elementwise."""

    max_ratio: float        # max_i |r_i| / bound_i  (holds when <= 1)
    residual_norm: float    # ||r||
    bound_norm: float       # ||bound||
    tau_norm: float
    exact_zero_fraction: float  # share of coordinates where r is exactly 0

    @property
    def holds(self) -> bool:
        """|r| <= bound in every coordinate (max_ratio <= 1)."""
        return self.max_ratio <= 1.0

    def to_dict(self) -> dict:
        """The summary as JSON-ready numbers, with ``holds``."""
        return {"holds": self.holds, "max_ratio": self.max_ratio, "residual_norm": self.residual_norm,
                "bound_norm": self.bound_norm, "tau_norm": self.tau_norm,
                "exact_zero_fraction": self.exact_zero_fraction}


def compare(residual: torch.Tensor, bound: torch.Tensor, tau: torch.Tensor) -> ResidualCheck:
    """Summarise |r| <= bound elementwise."""
    # a coordinate whose residual is exactly 0 satisfies the model even where the bound is 0 (0/0)
    ratio = torch.where(residual == 0, torch.zeros_like(bound), residual.abs() / bound)
    return ResidualCheck(
        max_ratio=float(ratio.max()) if ratio.numel() else 0.0,
        residual_norm=float(torch.linalg.vector_norm(residual)),
        bound_norm=float(torch.linalg.vector_norm(bound)),
        tau_norm=float(torch.linalg.vector_norm(tau.double())),
        exact_zero_fraction=float((residual == 0).double().mean()) if residual.numel() else 1.0,
    )


def check_t1(theta0: torch.Tensor, theta1: torch.Tensor, g: torch.Tensor, lr: float) -> ResidualCheck:
    """T1: tau = fl(theta_1 - theta_0) against -lr * g, within the floating-point model, elementwise.

    ``g`` is the gradient the step used (the optimizer's own), theta0/theta1 the parameters before and after.
    """
    if not (theta0.shape == theta1.shape == g.shape):
        raise ValueError(f"theta0, theta1 and g must have one shape, got {tuple(theta0.shape)}, "
                         f"{tuple(theta1.shape)}, {tuple(g.shape)}")
    dtype = theta0.dtype
    tau = theta1 - theta0                       # the task vector, in the working precision
    r = exact_residual(tau, g, lr)
    bound = step_residual_bound(theta0, float(lr) * g.detach().double().abs(), dtype)
    return compare(r, bound, tau)


def detectable_lr_error(theta0: torch.Tensor, g: torch.Tensor, lr: float) -> float:
    """The smallest relative learning-rate error delta that ``check_t1`` is guaranteed to reject on this step.

    A step taken with lr' = lr (1 + d), |d| = delta, leaves r' = tau + lr' g within b(lr') (its own model), so
    its residual against lr, r = r' - d lr g, has |r_i| >= delta lr |g_i| - b_i(lr'), while the check accepts
    |r_i| <= b_i(lr). With b_i(lr') <= b_i(lr) + delta gamma_4 lr |g_i| this is rejected in coordinate i once
        delta > delta_i = 2 b_i(lr) / ((1 - gamma_4) lr |g_i|),
    and the step is rejected once delta > min_i delta_i (inf where g = 0: no step to get wrong). delta_i is
    about 8u where |lr g_i| >> |theta_0,i| and about 2u |theta_0,i| / |lr g_i| where theta_0 dominates: a
    small step against large weights hides a proportionally larger error in the learning rate.
    """
    u = unit_roundoff(theta0.dtype)
    step = float(lr) * g.detach().double().abs()
    moving = step > 0
    if not bool(moving.any()):
        return float("inf")
    bound = step_residual_bound(theta0, step, theta0.dtype)
    return float((2 * bound[moving] / ((1 - gamma(4, u)) * step[moving])).min())


def gradient_sum_length(model: nn.Module, num_examples: int) -> int:
    """m = 4 (N + n + L): N examples, n the largest side of a weight matrix, L the number of weight matrices
    plus one. For the MLP, n = max width and L = len(widths); for the ViT, n bounds the sums of its Linear
    maps (its attention sums over the tokens, fewer than n in the CLI's ViTs).
    """
    matrices = [p.shape for p in model.parameters() if p.ndim == 2]
    return 4 * (num_examples + max((max(shape) for shape in matrices), default=0) + len(matrices) + 1)


def rounding_allowance(thetas: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: float, steps: int,
                       sum_length: int) -> float:
    """A floating-point model of ||computed E - E|| after the first ``steps`` steps of the functional GD/SGD
    iteration theta_{s+1} = theta_s - lr g_s (``thetas`` = theta_0, theta_1, ..., ``grads`` = g_0, g_1, ...).

    Step s computes theta_{s+1} = fl(theta_s - fl(eta g_s)), off by at most gamma_2 (|eta g_s| + |theta_{s+1}|)
    elementwise; the task vector adds u |tau|; each gradient evaluation is modelled as accurate to
    gamma_m ||g|| with m = ``sum_length`` (backward-stable backpropagation with sums of that length,
    ``gradient_sum_length``). Returns, with S = ``steps``,
        || sum_{s<S} gamma_2 (|eta g_s| + |theta_{s+1}|) + u |theta_S - theta_0| ||
        + 2 eta gamma_m sum_{s<S} (||g_s|| + ||g_0||).
    """
    u = unit_roundoff(thetas[0].dtype)
    steps_term = sum(gamma(2, u) * (lr * grads[s].double().abs() + thetas[s + 1].double().abs())
                     for s in range(steps))
    task = u * (thetas[steps] - thetas[0]).double().abs()
    grads_term = 2 * lr * gamma(sum_length, u) * sum(norm(grads[s]) + norm(grads[0]) for s in range(steps))
    return norm(steps_term + task) + grads_term
