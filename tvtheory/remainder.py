"""The O(eta^3) remainder of the expansion of the task vector, and its fitted slope in eta (T2(a), T3).

After K epochs of (mini-batch) GD, tau = eta F + eta^2 S + R(eta) with F and S the first- and second-order terms
at eta = 1 (:mod:`tvtheory.expansion`) and R(eta) = O(eta^3). So log ||R|| against log eta has slope 3 in the
asymptotic regime. ``remainder_slope`` fits that slope over eta_max / 2^i, keeping only the remainders that
rounding does not swamp (> ``RESOLVED_FACTOR`` times their floating-point allowance,
:func:`tvtheory.fp.rounding_allowance`); ``asymptotic_eta`` is the largest eta_max of that regime.
``resolved_slope`` chooses the grid for a user's eta: it starts at min(eta, asymptotic_eta) and, while fewer
than ``MIN_RESOLVED`` remainders rise above rounding (a small eta: R ~ eta^3 sinks below the allowance),
doubles the top up to asymptotic_eta; if even that grid cannot resolve them the fit is "not resolvable"
(its slope NaN), which is no evidence against the theorem.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import contiguous_batches
from .expansion import batch_gradients, batch_hvps, first_order_terms, second_order_terms
from .fp import gradient_sum_length, rounding_allowance
from .problem import Problem
from .task_vectors import norm
from .trajectory import epoch_schedule, gradient_descent

#: A remainder enters the slope fit only when it exceeds its rounding allowance this many times.
RESOLVED_FACTOR = 100.0
#: The fit needs at least this many resolved remainders.
MIN_RESOLVED = 3


def remainder_points(problem: Problem, etas: Sequence[float], epochs: int) -> list[dict]:
    """For each eta: ||R|| = ||tau - eta F - eta^2 S|| after ``epochs`` epochs of GD over the problem's batches
    (full-batch GD when it has one), with the rounding allowance of that computation (``fp.rounding_allowance``).

    F and S, the first- and second-order terms at eta = 1, are computed once and scaled by eta and eta^2.
    """
    theta0, B, n = problem.theta0, problem.num_batches, len(problem.objective)
    gb = batch_gradients(problem.batch_objectives, theta0)
    schedule = epoch_schedule(B, epochs)
    first1 = first_order_terms(1.0, gb, schedule, B)[-1]
    second1 = second_order_terms(batch_hvps(problem.batch_objectives, theta0), 1.0, gb, schedule, B)[-1]
    batches = None if B == 1 else contiguous_batches(n, B)
    sum_length = gradient_sum_length(problem.model, n)
    out = []
    for eta in etas:
        traj = gradient_descent(problem.objective, theta0, eta, epochs, batches)
        remainder = norm(traj.task_vector(epochs) - eta * first1 - eta ** 2 * second1)
        allowance = rounding_allowance(traj.thetas, traj.grads, eta, epochs * traj.steps_per_epoch, sum_length)
        out.append({"eta": eta, "remainder": remainder, "allowance": allowance})
    return out


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x)), np.log(np.asarray(y)), 1)[0])


def remainder_slope(problem: Problem, eta_max: float, epochs: int, halvings: int = 5) -> dict:
    """The fitted slope of log ||R|| against log eta over eta_max / 2^i, i = 0..halvings (expect 3).

    Only remainders resolved above rounding (> RESOLVED_FACTOR x allowance) are fitted; with fewer
    than ``MIN_RESOLVED`` such points the slope is NaN and ``resolved`` says how many there were.
    Returns {"points": ``remainder_points``, "resolved": count, "slope": fitted slope}.
    """
    return _fit(remainder_points(problem, _grid(eta_max, halvings), epochs))


def resolved_slope(problem: Problem, lr: float, hessian_norm: float, epochs: int, halvings: int = 5) -> dict:
    """``remainder_slope`` on a grid whose remainders rounding does not swamp, chosen for the user's ``lr``.

    The top starts at min(lr, asymptotic_eta(hessian_norm, S)) (S = epochs x batches) and doubles, capped at
    asymptotic_eta, while fewer than ``MIN_RESOLVED`` remainders are resolved; each grid point is computed once.
    Returns ``remainder_slope``'s dict with "grid": {"lr": lr, "eta_max": the top used, "raised": whether it
    was raised above min(lr, cap), "cap": asymptotic_eta, "resolvable": whether the fit has its points}.
    """
    cap = asymptotic_eta(hessian_norm, epochs * problem.num_batches)
    start = top = min(lr, cap)
    known: dict[float, dict] = {}

    def fit_at(top: float) -> dict:
        todo = [eta for eta in _grid(top, halvings) if eta not in known]
        known.update((p["eta"], p) for p in remainder_points(problem, todo, epochs))
        return _fit([known[eta] for eta in _grid(top, halvings)])

    fit = fit_at(top)
    while fit["resolved"] < MIN_RESOLVED and top < cap:
        top = min(2 * top, cap)
        fit = fit_at(top)
    grid = {"lr": lr, "eta_max": top, "raised": top > start, "cap": cap,
            "resolvable": fit["resolved"] >= MIN_RESOLVED}
    return {**fit, "grid": grid}


def _grid(eta_max: float, halvings: int) -> list[float]:
    return [eta_max / 2 ** i for i in range(halvings + 1)]


def _fit(points: list[dict]) -> dict:
    usable = [(p["eta"], p["remainder"]) for p in points if p["remainder"] > RESOLVED_FACTOR * p["allowance"]]
    slope = loglog_slope(*zip(*usable, strict=True)) if len(usable) >= MIN_RESOLVED else float("nan")
    return {"points": points, "resolved": len(usable), "slope": slope}


def asymptotic_eta(hessian_norm: float, steps: int) -> float:
    """A learning rate in the asymptotic regime of the expansion: eta ||H|| S = 0.1 for S steps."""
    return 0.1 / (max(hessian_norm, 1e-12) * steps)
