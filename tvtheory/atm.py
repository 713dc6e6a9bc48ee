"""ATM (alternating tuning and merging) against multitask gradient descent (T5).

Rounds r = 0..R-1 start at theta^(0) = theta_0. In round r every task t runs k epochs of GD over its B equal
batches (learning rate eta) from theta^(r), giving tau_t^(r) = theta_{t,kB} - theta^(r); the merge is
theta^(r+1) = theta^(r) + alpha sum_t tau_t^(r) (``task_vectors.merge``). With
    E_t^(r) = tau_t^(r) + eta sum_s g_{t,b_s}(theta^(r))          (T2/T3 error of task t from theta^(r))
and L_MT = (1/T) sum_t L_t (mean over tasks), one round is exactly
    theta^(r+1) = theta^(r) - lambda grad L_MT(theta^(r)) + alpha sum_t E_t^(r),    lambda = alpha k eta B T,
so multitask GD theta_MT^(r+1) = theta_MT^(r) - lambda grad L_MT(theta_MT^(r)) from theta_0 is the reference:
(a) k = 1, B = 1: E_t is rounding only (T1): every round is one multitask step, checked elementwise against
    the floating-point model of ``check_round``; the R-round gap is bounded by the roundings amplified by
    the Gronwall factors below (``ATMRun.amplification``);
(b) the discrete Gronwall bound (docs/theory.md, T5), G_0 = 0,
    G_{r+1} = (1 + lambda M_r) G_r + alpha sum_t ||E_t^(r)|| + rounding_r,
    i.e. ||theta^(R) - theta_MT^(R)|| <= sum_r prod_{s>r} (1 + lambda M_s) (alpha sum_t ||E_t^(r)|| + rounding_r),
    with M_s >= sup ||hess L_MT|| on the segment [theta^(s), theta_MT^(s)] (``multitask_segment_bound``, T4:
    MLP only) and rounding_r the floating-point model of round r of both runs (``round_rounding``);
    ``ATMRun.certified`` puts the T2(c)/T3 bound of each ||E_t^(r)|| (plus its rounding allowance) in its place;
(c) B > 1: the same with lambda = alpha k eta B T and E_t the T3 error (k epochs of B batches).
The floating-point models are derived in docs/theory.md (T5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypedDict

import torch

from .bounds import (
    aposteriori_error_bound,
    has_curvature_bound,
    layer_norms,
    mlp_hessian_bound,
    step_hessian_bounds,
)
from .data import contiguous_batches
from .expansion import batch_gradients
from .fp import (
    ResidualCheck,
    compare,
    exact_residual,
    gamma,
    gradient_sum_length,
    rounding_allowance,
    step_residual_bound,
    underflow_unit,
    unit_roundoff,
)
from .models.mlp import MLPConfig
from .objective import Objective
from .problem import Problem
from .task_vectors import merge, norm, task_vector
from .trajectory import Trajectory, check_loss, gradient_descent

_U64 = unit_roundoff(torch.float64)


class MultitaskObjective(Objective):
    """L_MT(theta) = (1/T) sum_t L_t(theta): the mean over tasks of the task losses (each a mean over its examples;
    tasks of different sizes weigh the same). ``x``/``target``/``len`` are the union of the tasks' examples; it
    has no batches (``subset`` refuses).
    """

    def __init__(self, tasks: Sequence[Objective]):
        if not tasks:
            raise ValueError("L_MT needs at least one task")
        first = tasks[0]
        super().__init__(first.model, first.loss, torch.cat([f.x for f in tasks]),
                         torch.cat([f.target for f in tasks]))
        self.tasks = tuple(tasks)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """(1/T) sum_t L_t(theta)."""
        return torch.stack([f(theta) for f in self.tasks]).mean()

    def subset(self, index: torch.Tensor) -> Objective:
        """Refused: L_MT is a mean over tasks, not over examples."""
        raise ValueError("L_MT is a mean over tasks, not over examples, so it has no batches: run multitask GD "
                         "full-batch (split each task into batches instead)")


@dataclass(frozen=True)
class ATMSchedule:
    """R rounds of k epochs per task at learning rate eta, merged with alpha (None: 1/T)."""

    lr: float
    rounds: int
    steps: int
    alpha: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the ATM learning rate must be a positive finite number, got {self.lr}")
        if self.rounds < 1:
            raise ValueError(f"ATM needs at least one round, got rounds = {self.rounds}")
        if self.steps < 1:
            raise ValueError(f"ATM needs at least one epoch per task per round, got steps = {self.steps}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"the merge coefficient alpha must be a positive finite number (or None for 1/T), "
                             f"got {self.alpha}")


@dataclass(frozen=True)
class ATMRound:
    """Round r: what each task's run from theta^(r) (``ATMRun.thetas[r]``) gave, and the round's floating-point model.

    ``errors[t]`` = E_t^(r) = tau_t + eta sum_s g_{t,b_s}(theta^(r)) in float64 (``fp.exact_residual``: one rounding);
    ``error_bounds`` / ``error_allowances``: T2(c)/T3 bound of ||E_t|| and its rounding allowance (MLP, C^2;
    else None); ``segment_bound`` = M_r (MLP, C^2; else None); ``rounding`` = rounding_r of (b);
    ``exact_check`` / ``exact_injection``: the T5(a) elementwise check of the round and its rounding injection
    (k = 1, B = 1 only; else None).
    """

    task_vectors: tuple[torch.Tensor, ...]
    errors: tuple[torch.Tensor, ...]
    error_bounds: tuple[float, ...] | None
    error_allowances: tuple[float, ...] | None
    segment_bound: float | None
    rounding: float
    exact_check: ResidualCheck | None
    exact_injection: float | None

    @property
    def error_norms(self) -> tuple[float, ...]:
        """||E_t^(r)|| for every task."""
        return tuple(norm(e) for e in self.errors)


class ATMRow(TypedDict):
    """One row of ``ATMRun.table``, after round r (None where n/a; the CLI's T5 table and JSON "rounds" entries)."""

    round: int                       # r = 1..R
    gap: float                       # ||theta^(r) - theta_MT^(r)||
    bound: float | None              # the bound in force: T5(a)'s amplified rounding (k = B = 1), else T5(b) Gronwall
    tightness: float | None          # bound / gap (None where the gap is 0)
    certified: float | None          # T5(b) with the T2(c)/T3 bounds of ||E_t||
    merged_error: float              # alpha sum_t ||E_t^(r-1)||
    segment_bound: float | None      # M_(r-1) on [theta^(r-1), theta_MT^(r-1)]


@dataclass(frozen=True)
class ATMRun:
    """An ATM run and multitask GD from the same start.

    ``thetas`` = theta^(0..R), ``multitask`` = theta_MT^(0..R) (``trajectory.gradient_descent`` on L_MT with
    learning rate ``multitask_lr`` = alpha k eta B T), ``gaps[r]`` = ||theta^(r) - theta_MT^(r)|| (r = 0..R).
    Bounds on the gaps (r = 0..R, None without T4's M): ``gronwall`` (T5(b), measured ||E_t||), ``certified``
    (T5(b) with the T2(c)/T3 bounds of ||E_t||), ``amplification`` (T5(a), k = 1 and B = 1 only).
    """

    schedule: ATMSchedule
    alpha: float
    num_tasks: int
    num_batches: int
    rounds: tuple[ATMRound, ...]
    thetas: tuple[torch.Tensor, ...]
    multitask: Trajectory
    multitask_lr: float
    gaps: tuple[float, ...]
    gronwall: tuple[float, ...] | None
    certified: tuple[float, ...] | None
    amplification: tuple[float, ...] | None

    @property
    def exact(self) -> bool:
        """Whether T5(a)'s exact identity is claimed (one full-batch step per task per round)."""
        return self.schedule.steps == 1 and self.num_batches == 1

    @property
    def amplification_factor(self) -> float | None:
        """prod_{s=1}^{R-1} (1 + lambda M_s): the most by which any round's deviation is amplified up to round R."""
        if self.rounds[0].segment_bound is None:
            return None
        return math.prod(1 + self.multitask_lr * r.segment_bound for r in self.rounds[1:]
                         if r.segment_bound is not None)

    def table(self) -> list[ATMRow]:
        """Per round r = 1..R: the gap, the bound in force (``amplification`` for T5(a), else ``gronwall``), its
        tightness bound/gap, the certified bound, alpha sum_t ||E_t^(r-1)|| and M_(r-1) (None where n/a).
        """
        bound = self.amplification if self.exact else self.gronwall
        rows: list[ATMRow] = []
        for r in range(1, len(self.thetas)):
            b = None if bound is None else bound[r]
            gap = self.gaps[r]
            rows.append({"round": r, "gap": gap, "bound": b,
                         "tightness": None if b is None or gap == 0 else b / gap,
                         "certified": None if self.certified is None else self.certified[r],
                         "merged_error": self.alpha * sum(self.rounds[r - 1].error_norms),
                         "segment_bound": self.rounds[r - 1].segment_bound})
        return rows


def multitask_segment_bound(config: MLPConfig, tasks: Sequence[Objective], a: torch.Tensor,
                            b: torch.Tensor) -> float:
    """M >= sup_{s in [0,1]} ||hess L_MT(a + s (b - a))||_2, L_MT = (1/T) sum_t L_t (T4, MLP only).

    The mean over tasks of ``mlp_hessian_bound`` with s_l, beta_l the larger of ``layer_norms`` at a and at b
    (norms are convex, so they bound the whole segment), raised by gamma_T for the rounding of that mean.
    """
    norms = layer_norms(config, a).max(layer_norms(config, b))
    total = sum(mlp_hessian_bound(config, f.loss, f.x, f.target, norms).mean for f in tasks)
    return total / len(tasks) * (1 + gamma(len(tasks), _U64))


def gronwall_bounds(lr: float, segment_bounds: Sequence[float], injections: Sequence[float]) -> list[float]:
    """G_0 = 0, G_{r+1} = (1 + lr M_r) G_r + injections[r], r = 0..R-1: the discrete Gronwall bound
    G_R = sum_r prod_{s>r} (1 + lr M_s) injections[r] on ||theta^(R) - theta_MT^(R)|| (docs/theory.md, T5).
    """
    if len(segment_bounds) != len(injections):
        raise ValueError(f"{len(segment_bounds)} Hessian bounds for {len(injections)} rounds")
    bounds = [0.0]
    for m, injection in zip(segment_bounds, injections, strict=True):
        bounds.append((1 + lr * m) * bounds[-1] + injection)
    return bounds


def merge_rounding(theta_next: torch.Tensor, task_vectors: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """Elementwise bound on |theta' - theta - alpha sum_t tau_t| for theta' = ``merge(theta, tau, alpha)`` computed
    in the precision of the tensors: alpha gamma_{T+1} sum_t |tau_t| + u/(1-u) |theta'| + eta_min
    (T - 1 additions in any order, the cast of alpha and the product, the final addition; float64 result).
    """
    dtype = theta_next.dtype
    u = unit_roundoff(dtype)
    total = torch.stack([t.detach().double().abs() for t in task_vectors]).sum(0)
    return (alpha * gamma(len(task_vectors) + 1, u) * total + u / (1 - u) * theta_next.detach().double().abs()
            + underflow_unit(dtype))


def _exact_product(a: float, b: float) -> tuple[float, float]:
    """hi + lo = a * b exactly (hi = fl(a b), lo the float64 rounding of the remainder, |lo| <= u |hi|)."""
    hi = a * b
    return hi, float(Fraction(a) * Fraction(b) - Fraction(hi))


def check_round(theta: torch.Tensor, theta_next: torch.Tensor, task_vectors: Sequence[torch.Tensor],
                grads: Sequence[torch.Tensor], lr: float, alpha: float) -> ResidualCheck:
    """T5(a): one ATM round with one full-batch GD step per task is one multitask step, elementwise.

    v = fl(theta' - theta) (the round's update in the working precision) against -alpha eta sum_t g_t, g_t the
    gradient task t's step used (sum_t g_t = T grad L_MT, so this is one multitask step of learning rate
    alpha eta T). The residual r = v + alpha eta sum_t g_t is computed exactly (double-double, alpha eta split
    exactly) and compared with
        |r| <= alpha sum_t (u (1+u) |theta| + gamma_4 |eta g_t| + 2 eta_min)        (T1 residual of each task)
               + alpha gamma_{T+1} sum_t |tau_t| + u/(1-u) |theta'| + eta_min       (``merge_rounding``)
               + u/(1-u) |v|                                                        (the subtraction giving v).
    """
    if len(task_vectors) != len(grads) or not task_vectors:
        raise ValueError(f"{len(task_vectors)} task vectors for {len(grads)} gradients (one per task, at least one)")
    dtype = theta.dtype
    u = unit_roundoff(dtype)
    update = task_vector(theta_next, theta)
    hi, lo = _exact_product(alpha, lr)
    residual = exact_residual(update, grads, hi) + lo * torch.stack([g.detach().double() for g in grads]).sum(0)
    model = iterate_model(theta, theta_next, task_vectors, grads, lr, alpha) + u / (1 - u) * update.double().abs()
    return compare(residual, model, update)


def iterate_model(theta: torch.Tensor, theta_next: torch.Tensor, task_vectors: Sequence[torch.Tensor],
                  grads: Sequence[torch.Tensor], lr: float, alpha: float) -> torch.Tensor:
    """Elementwise bound on |theta' - (theta - alpha eta sum_t g_t)| for a k = 1, B = 1 round (``check_round``
    without its last term): the T1 residual of every task step, scaled by alpha, plus ``merge_rounding``.
    """
    dtype = theta.dtype
    steps = sum(step_residual_bound(theta, lr * g.detach().double().abs(), dtype) for g in grads)
    return alpha * steps + merge_rounding(theta_next, task_vectors, alpha)


def _multitask_step_rounding(mt: Trajectory, r: int, lr: float, sum_length: int) -> float:
    """||computed theta_MT^(r+1) - (theta_MT^(r) - lambda grad L_MT(theta_MT^(r)))|| for the exact lambda:
    ``fp.rounding_allowance`` of the one step r (update roundings, gradient error gamma_m) plus gamma_2(u64) lambda
    ||g|| for lambda = alpha k eta B T evaluated in float64 (two products).
    """
    g = mt.grads[r]
    return rounding_allowance(mt.thetas[r:r + 2], mt.grads[r:r + 1], lr, 1, sum_length) + gamma(2, _U64) * lr * norm(g)


def run_atm(tasks: Sequence[Problem], schedule: ATMSchedule) -> ATMRun:
    """ATM over ``tasks`` (each a Problem at the same theta_0, with the same model, loss and batch count B), and
    multitask GD from theta_0 with learning rate alpha k eta B T; every quantity of T5 (see the module docstring).

    Each task's run is ``trajectory.gradient_descent`` over its batches (``contiguous_batches``, as the problem
    stores them). Raises DivergenceError when a task run, the ATM iterates or multitask GD diverge.
    """
    _check_tasks(tasks)
    T, B, k, eta = len(tasks), tasks[0].num_batches, schedule.steps, schedule.lr
    alpha = 1.0 / T if schedule.alpha is None else schedule.alpha
    theta0, model = tasks[0].theta0, tasks[0].model
    config = model.config if has_curvature_bound(model) and tasks[0].act.is_c2 else None   # T4's M: MLP, C^2
    exact = k == 1 and B == 1
    u = unit_roundoff(theta0.dtype)
    mt_lr = alpha * eta * (k * B * T)
    objectives = [task.objective for task in tasks]
    mt = gradient_descent(MultitaskObjective(objectives), theta0, mt_lr, schedule.rounds)
    mt_sum_length = gradient_sum_length(model, sum(len(f) for f in objectives) + T)
    batches = [None if B == 1 else contiguous_batches(len(f), B) for f in objectives]
    first_losses: list[float] = []
    rounds, thetas = [], [theta0]
    segments: list[float] = []                         # M_r (MLP, C^2)
    measured, certified_in, exact_in = [], [], []       # the injections of the three Gronwall bounds
    for r in range(schedule.rounds):
        theta = thetas[-1]
        taus, errors, bounds, allowances, step_grads = [], [], [], [], []
        gradient_error = 0.0
        for t, task in enumerate(tasks):
            traj = gradient_descent(task.objective, theta, eta, k, batches[t])
            first_losses += [traj.losses[0]] if r == 0 else []
            check_loss(traj.losses[0], first_losses[t], f"ATM round {r + 1} (task {t})", eta)
            tau = traj.task_vector(k)
            gb = [traj.grads[0], *batch_gradients(task.batch_objectives[1:], theta)]   # g_{t,b}(theta^(r))
            firsts = [gb[b] for b in traj.schedule]
            errors.append(exact_residual(tau, firsts, eta))
            sum_length = gradient_sum_length(model, len(task.batch_objectives[0]))
            gradient_error += alpha * eta * gamma(sum_length, u) * sum(norm(g) for g in firsts)
            if config is not None:        # one step: the bound's only term, M_0 ||theta_0 - theta_0||, is 0
                bounds.append(aposteriori_error_bound(eta, step_hessian_bounds(task, traj), traj.thetas[:k * B])
                              if k * B > 1 else 0.0)
                allowances.append(rounding_allowance(traj.thetas, traj.grads, eta, k * B, sum_length))
            taus.append(tau)
            step_grads.append(traj.grads[0])
        theta_next = merge(theta, taus, alpha)
        common = gradient_error + _multitask_step_rounding(mt, r, mt_lr, mt_sum_length)
        rounding = norm(merge_rounding(theta_next, taus, alpha)) + common
        check = injection = None
        if exact:
            check = check_round(theta, theta_next, taus, step_grads, eta, alpha)
            injection = norm(iterate_model(theta, theta_next, taus, step_grads, eta, alpha)) + common
            exact_in.append(injection)
        segment = None
        if config is not None:
            segment = multitask_segment_bound(config, objectives, theta, mt.thetas[r])
            segments.append(segment)
            certified_in.append(alpha * (sum(bounds) + sum(allowances)) + rounding)
        round_ = ATMRound(tuple(taus), tuple(errors), tuple(bounds) if config else None,
                          tuple(allowances) if config else None, segment, rounding, check, injection)
        measured.append(alpha * sum(round_.error_norms) + rounding)
        rounds.append(round_)
        thetas.append(theta_next)
    for t, f in enumerate(objectives):       # the last merge is never trained from: its loss must not explode
        with torch.no_grad():
            check_loss(float(f(thetas[-1])), first_losses[t], f"ATM after round {schedule.rounds} (task {t})", eta)
    gaps = tuple(norm(a.double() - b.double()) for a, b in zip(thetas, mt.thetas, strict=True))
    gronwall = certified = amplification = None
    if config is not None:
        gronwall = tuple(gronwall_bounds(mt_lr, segments, measured))
        certified = tuple(gronwall_bounds(mt_lr, segments, certified_in))
        amplification = tuple(gronwall_bounds(mt_lr, segments, exact_in)) if exact else None
    return ATMRun(schedule, alpha, T, B, tuple(rounds), tuple(thetas), mt, mt_lr, gaps, gronwall, certified,
                  amplification)


def _check_tasks(tasks: Sequence[Problem]) -> None:
    """One model, one theta_0, one batch count and one precision for all tasks (one clear line otherwise)."""
    if not tasks:
        raise ValueError("ATM needs at least one task")
    first = tasks[0]
    for t, task in enumerate(tasks[1:], start=1):
        if task.theta0.shape != first.theta0.shape or not torch.equal(task.theta0, first.theta0):
            raise ValueError(f"task {t} starts from a different theta_0 than task 0; build every task problem from "
                             "the same model and theta0 (make_problem(..., theta0=theta0))")
        if type(task.model) is not type(first.model):
            raise ValueError(f"task {t} has a {type(task.model).__name__}, task 0 a {type(first.model).__name__}; "
                             "ATM merges one model: use the same network for every task")
        if task.loss.name != first.loss.name:
            raise ValueError(f"task {t} uses the {task.loss.name} loss, task 0 the {first.loss.name} loss; L_MT "
                             "needs one loss for every task")
        if task.num_batches != first.num_batches:
            raise ValueError(f"task {t} has {task.num_batches} batches, task 0 has {first.num_batches}; use "
                             "problem.with_batches(B) with one B for every task")
