"""Each statement of the theory checked on one problem, returned as a :class:`Verdict`.

- ``verify_t1``: one full-batch GD step, torch.optim.SGD and the plain functional step, against the
  floating-point model of :mod:`tvtheory.fp`.
- ``verify_c1``: sum_t tau_t^(1) = -eta T grad L_MT(theta_0) for tasks split from the data.
- ``verify_t2``: full-batch GD over k epochs: the a-posteriori bound T2(c) with M_j from T6 and from T4, and the
  remainder slope of T2(a); T2(b) is a property of the update alone, proven once by the suite
  (``QUADRATIC_SERIES`` names the test), not per problem.
- ``verify_t3``: one epoch of mini-batch SGD: the bound and the remainder slope of T3.
- ``verify_t4``: the T4 bound against ||hess L||_2 (Lanczos on HVPs) at theta_0 and at theta_K.
- ``verify_t6``: the T6 certificate against the same norms at the same points.
- ``verify_t5``: ATM (alternating tuning and merging) against multitask GD: (a) exact for one step per round,
  to its floating-point model; (b) within the discrete Gronwall bound for k steps per round (``tvtheory.atm``).
- ``verify_optimizer``: which identity holds for the optimizer the user ran, and every step of the run replayed
  against it (``tvtheory.replay``).
T1, C1 and the optimizer check run on any network, T2(a) and T3's slope on any C^2 one (MLP or ViT),
through gradients and Hessian-vector products; what needs T4's M (T4 itself, the T2(c)/T3 bounds and eta M k)
is n/a for a ViT (``bounds.T4_NOTE``).
The measurements come from :mod:`tvtheory.table` (the per-epoch rows, with the T4 bounds of
:mod:`tvtheory.bounds`) and :mod:`tvtheory.remainder` (the slope fit); this module only judges them.
Floating point: E_k is computed from rounded iterates, so inequalities on E_k are checked against the
bound plus ``fp.rounding_allowance`` (the model of that computation), a term of relative size ~1e-13 here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .atm import ATMSchedule, run_atm
from .bounds import T4_NOTE, has_curvature_bound, layer_norms, mlp_hessian_bound
from .certificate import T6_NOTE, CertificateConfig, StepCertificates, certified_norms, step_curvature_certificates
from .curvature import gradient
from .curvature import hessian_norm as measure_hessian_norm
from .data import Dataset, contiguous_batches
from .expansion import batch_gradients
from .fp import (
    check_t1,
    compare,
    detectable_lr_error,
    exact_residual,
    gamma,
    gradient_sum_length,
    step_residual_bound,
    unit_roundoff,
)
from .objective import Objective
from .optimizers import OptimizerSpec, first_order_prediction, first_step_identity, momentum_coefficient
from .problem import Problem, make_problem
from .remainder import RESOLVED_FACTOR, resolved_slope
from .replay import replay_check
from .table import EpochRow, epoch_rows
from .task_vectors import cosine, norm, relative_error
from .trajectory import Trajectory, gradient_descent, run_optimizer

SLOPE_THRESHOLD = 2.7   # T2(a)/T3: the fitted log-log slope of ||R|| against eta must exceed this (expect 3)

#: T2(b), reported by ``verify_t2`` as a property of the library (it does not depend on the problem).
QUADRATIC_SERIES = ("T2(b): for a quadratic loss, k full-batch GD steps give exactly tau^(k) = sum_{m=0}^{k-1} "
                    "(-1)^(m+1) eta^(m+1) C(k, m+1) H^m g; proven symbolically for every k (sympy, induction on "
                    "the closed form) by verification/test_t2b_quadratic_series.py::"
                    "test_symbolic_series_k_up_to_6_and_all_k, run by pytest verification/, not per problem")


@dataclass(frozen=True)
class Verdict:
    """Whether a statement holds on this problem, by how much, and what exactly was checked."""

    theorem: str
    holds: bool | None          # None: the statement does not apply (e.g. ReLU for T2-T4)
    margin: float | None        # the headline number (see ``message`` for its meaning)
    message: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The verdict as JSON: holds, applicable (holds is not None), margin, message and the details."""
        return {"holds": self.holds, "applicable": self.holds is not None, "margin": self.margin,
                "message": self.message, **self.details}

    @property
    def label(self) -> str:
        """"holds", "FAILS" or "n/a" (not applicable), as the report prints it."""
        return {True: "holds", False: "FAILS", None: "n/a"}[self.holds]


def _not_c2(theorem: str, problem: Problem) -> Verdict | None:
    act = problem.act
    if act.is_c2:
        return None
    return Verdict(theorem, None, None, f"not applicable: {act.name} is not C^2, so no Hessian bound exists "
                   "(T2-T4 need sigma in C^2); T1 still holds")


def _slope_verdict(slope: dict, what: str) -> tuple[bool | None, str]:
    """Judge a ``remainder.resolved_slope`` fit: the slope must exceed SLOPE_THRESHOLD; a fit that no grid
    could resolve above rounding is not judged (None), since it is no evidence either way.
    """
    grid = slope["grid"]
    span = f"eta in [{grid['eta_max'] / 2 ** (len(slope['points']) - 1):.3g}, {grid['eta_max']:.3g}]"
    raised = (f"; grid raised from lr {grid['lr']:g} so the remainders rise above rounding" if grid["raised"]
              else "")
    if not grid["resolvable"]:
        return None, (f"{what}: not resolvable (fewer than 3 remainders exceed {RESOLVED_FACTOR:g}x their rounding "
                      f"allowance even at the asymptotic limit {span}), not judged")
    return (slope["slope"] > SLOPE_THRESHOLD,
            f"{what} = {slope['slope']:.3f} (> {SLOPE_THRESHOLD}) over {span}{raised}")


def _combine(*parts: bool | None) -> bool | None:
    """All judged parts hold (None when none was judged)."""
    judged = [p for p in parts if p is not None]
    return all(judged) if judged else None


def _within_bound(row: EpochRow) -> bool:
    """||E_k|| <= bound + rounding allowance, for the bound with T6's M_s and for the one with T4's (False where
    the row has no bound).
    """
    allowance = row["rounding_allowance"]
    return allowance is not None and all(b is not None and row["error_norm"] <= b + allowance
                                         for b in (row["bound"], row["bound_t4"]))


def _certificates(problem: Problem, traj: Trajectory, config: CertificateConfig | None) -> StepCertificates | None:
    """T6's M_s for a plain GD/SGD trajectory of an MLP (None where T6 does not apply: epoch_rows says n/a)."""
    if not has_curvature_bound(problem.model):
        return None
    return step_curvature_certificates(problem, traj, config)


def verify_t1(problem: Problem, lr: float) -> Verdict:
    """T1: one full-batch GD step gives tau = -eta g, to the floating-point model, elementwise."""
    theta0, f = problem.theta0, problem.objective
    traj = run_optimizer(f, theta0, OptimizerSpec("gd", lr).make, epochs=1, lr_for_messages=lr)
    by_sgd = check_t1(theta0, traj.thetas[1], traj.grads[0], lr)
    g = gradient(f, theta0)
    by_fn = check_t1(theta0, theta0 - lr * g, g, lr)
    worst = max(by_sgd.max_ratio, by_fn.max_ratio)
    holds = by_sgd.holds and by_fn.holds
    detectable = detectable_lr_error(theta0, g, lr)
    u = unit_roundoff(theta0.dtype)
    return Verdict("T1", holds, worst,
                   f"tau = -eta g {'holds' if holds else 'FAILS'}: max |r|/model = {worst:.3f} (<= 1 required) over "
                   f"P = {theta0.numel()} coordinates, torch.optim.SGD and functional step, {theta0.dtype}; "
                   f"detects a learning rate off by a relative {detectable:.2g} (= {detectable / u:.3g} u) or more",
                   {"torch_sgd": by_sgd.to_dict(), "functional": by_fn.to_dict(),
                    "detectable_lr_relative_error": detectable})


def verify_c1(problem: Problem, lr: float, tasks: Sequence[Dataset]) -> Verdict:
    """C1: the sum of one-step task vectors is one multitask GD step, sum_t tau_t = -eta T grad L_MT.

    Each task finetunes problem's model from theta_0 for one full-batch step on its own data.
    Floating-point model: each tau_t carries the T1 residual, and the sum of T vectors adds at most
    gamma_{T-1} sum_t |tau_t| (any summation order).
    """
    theta0, dtype, num_tasks = problem.theta0, problem.theta0.dtype, len(tasks)
    taus, grads, objectives = [], [], []
    for task in tasks:
        f = Objective(problem.model, problem.loss, task.x, task.targets(problem.loss.name))
        traj = run_optimizer(f, theta0, OptimizerSpec("gd", lr).make, epochs=1, lr_for_messages=lr)
        taus.append(traj.task_vector(1))
        grads.append(traj.grads[0])
        objectives.append(f)
    merged = torch.stack(taus).sum(0)
    r = exact_residual(merged, grads, lr)
    u = unit_roundoff(dtype)
    bound = sum(step_residual_bound(theta0, lr * g.double().abs(), dtype) for g in grads)
    bound = bound + gamma(max(num_tasks - 1, 0), u) * torch.stack(taus).double().abs().sum(0)
    check = compare(r, bound, merged)
    mt_grad = gradient(lambda th: torch.stack([f(th) for f in objectives]).mean(), theta0)
    step_gap = relative_error(theta0 + merged / num_tasks, theta0 - lr * mt_grad)
    # the alpha = 1/T merge against one multitask step computed by autograd of L_MT, normwise:
    # ||merged/T + eta grad L_MT|| <= ||C1 model||/T + eta (2 gamma_m + gamma_T + 2u) sum_t ||g_t|| / T
    # (two computations of each task's gradient, the backward of the mean) + 2 u64 ||merged|| / T
    gap = norm(exact_residual(merged.double() / num_tasks, mt_grad, lr))
    m = gradient_sum_length(problem.model, sum(len(f) for f in objectives))
    gradients = lr * (2 * gamma(m, u) + gamma(num_tasks, u) + 2 * u) * sum(norm(g) for g in grads)
    gap_model = (norm(bound) + gradients + 2 * unit_roundoff(torch.float64) * norm(merged)) / num_tasks
    gap_ratio = gap / gap_model if gap > 0 else 0.0
    holds = check.holds and gap_ratio <= 1
    return Verdict("C1", holds, max(check.max_ratio, gap_ratio),
                   f"sum of {num_tasks} one-step task vectors = -eta T grad L_MT "
                   f"{'holds' if holds else 'FAILS'}: "
                   f"max |r|/model = {check.max_ratio:.3f}; alpha = 1/T merge vs one multitask GD step "
                   f"(autograd of L_MT): ||gap||/model = {gap_ratio:.3g} (<= 1 required), relative gap {step_gap:.1e}",
                   {"check": check.to_dict(), "num_tasks": num_tasks, "alpha_1_over_T_relative_gap": step_gap,
                    "merge_gap": {"holds": gap_ratio <= 1, "gap_norm": gap, "model_norm": gap_model,
                                  "ratio": gap_ratio}})


def verify_t2(problem: Problem, lr: float, epochs: int, hessian_norm: float | None = None,
              certificate: CertificateConfig | None = None, rows: list[EpochRow] | None = None) -> Verdict:
    """T2 on full-batch GD for k = 1..epochs: (c) ||E_k|| <= bound_k (T6's M_j, and T4's; n/a without them) and (a) the
    slope of ||R_k|| ~ 3; (b), the quadratic series, is reported as proven by the suite (``QUADRATIC_SERIES``).

    The margin is the tightest bound/||E_k|| of (c), or the slope of (a) where (c) is n/a (a ViT).
    ``rows``: the per-epoch rows of a float64 full-batch GD run with this lr and epochs on this problem (the
    CLI's own run, so its T6 certificates are not made twice); by default such a run is made here.
    """
    refused = _not_c2("T2", problem)
    if refused:
        return refused
    p64 = problem.to(torch.float64).with_batches(1)
    if rows is None:
        traj = gradient_descent(p64.objective, p64.theta0, lr, epochs)
        rows = epoch_rows(p64, OptimizerSpec("gd", lr), traj, _certificates(p64, traj, certificate))
    elif len(rows) != epochs:
        raise ValueError(f"{len(rows)} rows for {epochs} epochs")
    k_slope = max(epochs, 3)
    h = hessian_norm if hessian_norm is not None else measure_hessian_norm(p64.objective, p64.theta0).value
    slope = resolved_slope(p64, lr, h, k_slope)
    expansion_holds, slope_text = _slope_verdict(slope, f"(a) slope of ||R_{k_slope}|| vs eta")
    slope_text += "; (b) quadratic series: a library property, proven symbolically by pytest verification/"
    details = {"slope": slope, "slope_holds": expansion_holds, "quadratic_series": QUADRATIC_SERIES}
    if rows[0]["bound"] is None:
        return Verdict("T2", expansion_holds, slope["slope"],
                       f"(c) n/a: no T4 bound M_j for this network; {slope_text}",
                       {"bound_holds": None, "min_bound_ratio": None, "min_bound_ratio_t4": None, **details})
    checked = [r for r in rows if r["k"] >= 2]   # E_1 = 0 exactly: that is T1
    ratios = [r["bound_ratio"] for r in checked if r["bound_ratio"] is not None]
    ratios_t4 = [r["bound_ratio_t4"] for r in checked if r["bound_ratio_t4"] is not None]
    bound_holds = all(_within_bound(r) for r in checked)
    tight = min(ratios) if ratios else math.inf
    tight_t4 = min(ratios_t4) if ratios_t4 else math.inf
    return Verdict("T2", _combine(bound_holds, expansion_holds), tight,
                   f"(c) ||E_k|| <= bound for k = 2..{epochs}: {'yes' if bound_holds else 'NO'} "
                   f"(tightest bound/||E_k|| = {tight:.3g} with T6's M, {tight_t4:.3g} with T4's); {slope_text}",
                   {"bound_holds": bound_holds, "min_bound_ratio": tight, "min_bound_ratio_t4": tight_t4, **details})


def verify_t3(problem: Problem, lr: float, num_batches: int, hessian_norm: float | None = None,
              certificate: CertificateConfig | None = None) -> Verdict:
    """T3 on one epoch of B-batch SGD: ||E|| <= eta sum_b M_b ||theta_b - theta_0|| (n/a without T4), and
    ||R|| = O(eta^3). The margin is bound/||E||, or the slope where the bound is n/a (a ViT).
    """
    refused = _not_c2("T3", problem)
    if refused:
        return refused
    p64 = problem.to(torch.float64).with_batches(num_batches)
    n, B = len(p64.objective), num_batches
    batches = contiguous_batches(n, B)
    traj = gradient_descent(p64.objective, p64.theta0, lr, 1, batches)
    row = epoch_rows(p64, OptimizerSpec("sgd", lr), traj, _certificates(p64, traj, certificate))[0]
    h = hessian_norm if hessian_norm is not None else measure_hessian_norm(p64.objective, p64.theta0).value
    slope = resolved_slope(p64, lr, h, 1)
    slope_holds, slope_text = _slope_verdict(slope, "slope of ||R|| vs eta")
    details = {"bound_holds": None, "num_batches": B, "epoch": row, "slope": slope, "slope_holds": slope_holds}
    if row["bound"] is None:
        return Verdict("T3", slope_holds, slope["slope"],
                       f"one epoch of {B} batches: ||E|| = {row['error_norm']:.3g}, bound n/a (no T4 bound M_b for "
                       f"this network); {slope_text}", details)
    bound_holds = _within_bound(row)
    ratio = ("||E|| is within its rounding allowance" if row["bound_ratio"] is None else
             f"bound/||E|| = {row['bound_ratio']:.3g} with T6's M, {row['bound_ratio_t4']:.3g} with T4's")
    return Verdict("T3", _combine(bound_holds, slope_holds), row["bound_ratio"],
                   f"one epoch of {B} batches: ||E|| = {row['error_norm']:.3g} <= bound {row['bound']:.3g}: "
                   f"{'yes' if bound_holds else 'NO'} ({ratio}); {slope_text}",
                   {**details, "bound_holds": bound_holds})


def verify_t4(problem: Problem, thetas: Sequence[torch.Tensor],
              hessian_norms: Sequence[float | None] | None = None) -> Verdict:
    """T4: the curvature bound is >= ||hess L||_2 (Lanczos on HVPs, a lower estimate) at each given point.

    ``hessian_norms`` may carry norms already computed for some of the points (None: compute it).
    Not applicable to a network without T4's form (a ViT: ``T4_NOTE``).
    """
    refused = _not_c2("T4", problem)
    if refused:
        return refused
    p64 = problem.to(torch.float64)
    model, f = p64.model, p64.objective
    if not has_curvature_bound(model):
        return Verdict("T4", None, None, T4_NOTE)
    config = model.config
    points = []
    known = list(hessian_norms) if hessian_norms is not None else [None] * len(thetas)
    for theta, true in zip(thetas, known, strict=True):
        theta = theta.double()
        true = true if true is not None else measure_hessian_norm(f, theta).value
        bound = mlp_hessian_bound(config, p64.loss, f.x, f.target, layer_norms(config, theta)).mean
        points.append({"hessian_norm": true, "bound": bound, "tightness": bound / true if true > 0 else math.inf})
    holds = all(p["bound"] >= p["hessian_norm"] for p in points)
    tight = min(p["tightness"] for p in points)
    return Verdict("T4", holds, tight,
                   f"bound >= ||H||_2 at theta_0 and theta_K: {'yes' if holds else 'NO'}; bound/||H||_2 = "
                   + ", ".join(f"{p['tightness']:.3g}" for p in points)
                   + f" (||H(theta_0)||_2 = {points[0]['hessian_norm']:.4g})",
                   {"points": points})


def verify_t6(problem: Problem, thetas: Sequence[torch.Tensor], hessian_norms: Sequence[float | None] | None = None,
              certificate: CertificateConfig | None = None) -> Verdict:
    """T6 at points: the certificate (``certificate.certified_norms``, failure <= certificate.delta for all points
    together) is >= ||hess L||_2 (Lanczos on HVPs, a lower estimate) at each given point. The margin is the
    tightest certificate/||H||_2 (T6's segment form is what T2(c)/T3 use). Not applicable to a ViT (``T6_NOTE``).
    """
    refused = _not_c2("T6", problem)
    if refused:
        return refused
    if not has_curvature_bound(problem.model):
        return Verdict("T6", None, None, T6_NOTE)
    p64 = problem.to(torch.float64)
    certs = certified_norms(p64, thetas, certificate)
    known = list(hessian_norms) if hessian_norms is not None else [None] * len(thetas)
    points = []
    for theta, true, cert in zip(thetas, known, certs, strict=True):
        true = true if true is not None else measure_hessian_norm(p64.objective, theta.double()).value
        points.append({"hessian_norm": true, "certificate": cert.value, "estimate": cert.estimate,
                       "products": cert.products, "failure": cert.failure,
                       "tightness": cert.value / true if true > 0 else math.inf})
    holds = all(p["certificate"] >= p["hessian_norm"] for p in points)
    tight = min(p["tightness"] for p in points)
    failure = sum(p["failure"] for p in points)
    return Verdict("T6", holds, tight,
                   f"certificate >= ||H||_2 at theta_0 and theta_K: {'yes' if holds else 'NO'}; certificate/||H||_2 = "
                   + ", ".join(f"{p['tightness']:.4g}" for p in points)
                   + f" (failure probability <= {failure:.1e}; in the bound and eta*M*k columns it covers each "
                     "segment [theta_0, theta_s])",
                   {"points": points, "failure": failure})


def verify_optimizer(problem: Problem, spec: OptimizerSpec, traj: Trajectory) -> Verdict:
    """The run replayed against the claimed optimizer, step by step (``replay.replay_check``: every step's
    gradient is the claimed batch's and every update the claimed optimizer's, to their floating-point
    models), the identity its first step satisfies, and how far its task vectors are from -eta g after K epochs
    (relative error, cosine).
    """
    identity = first_step_identity(spec, traj.theta0, traj.thetas[1], traj.grads[0])
    replay = replay_check(spec, traj, problem.batch_objectives, problem.objective.layout)
    g = gradient(problem.objective, traj.theta0)
    K, B = traj.epochs, traj.steps_per_epoch
    tau_K = traj.task_vector(K)
    gd_prediction = -spec.lr * K * B * g
    details = {"statement": identity.statement, "exact_t1": identity.exact,
               "first_step": identity.check.to_dict() if identity.check else None,
               "replay": replay.to_dict(),
               "relative_error_vs_minus_k_eta_g": relative_error(tau_K, gd_prediction),
               "cos_tau_K_neg_g": cosine(tau_K, -g)}
    own = first_order_prediction(spec, traj.theta0, batch_gradients(problem.batch_objectives, traj.theta0),
                                 traj.schedule)
    details["relative_error_vs_first_order"] = None if own is None else relative_error(tau_K, own)
    if spec.name == "momentum":
        details["momentum_c_k"] = [momentum_coefficient(spec.momentum, k) for k in range(1, K + 1)]
    steps = f"all {traj.num_steps} steps replayed from theta_0"
    judged = (f"{steps}: max |r|/model = {replay.max_update_ratio:.3f}, max ||g - grad L_b||/model = "
              f"{replay.max_gradient_ratio:.3g}" if replay.holds else
              f"{steps}: FAILS at {replay.failure}")
    return Verdict("optimizer", replay.holds, replay.max_update_ratio,
                   f"{spec.name}: {identity.statement}; {judged}; after {K} epochs ||tau - (-K B eta g)||/||K B eta g||"
                   f" = {details['relative_error_vs_minus_k_eta_g']:.3g}"
                   + ("" if spec.plain or own is None else
                      f", vs its own first-order prediction {details['relative_error_vs_first_order']:.3g}")
                   + f", cos(tau_K, -g) = {details['cos_tau_K_neg_g']:.4f}",
                   details)


def verify_t5(problem: Problem, lr: float, tasks: Sequence[Dataset], rounds: int, steps: int) -> Verdict:
    """T5: ATM (alpha = 1/T) over ``tasks`` against multitask GD from theta_0 (``tvtheory.atm``).

    (a) One full-batch step per task per round, in the problem's precision: every round is one multitask step
        within the floating-point model of ``atm.check_round`` (max |r|/model <= 1), and the R-round gap to
        multitask GD run in the same arithmetic is within the amplified rounding (``ATMRun.amplification``).
    (b) ``steps`` epochs per task per round, in float64: ||theta^(r) - theta_MT^(r)|| <= the discrete Gronwall
        bound (measured ||E_t||) and <= the certified one (T2(c)/T3 bounds of ||E_t||) for r = 1..R.
    Without T4's M (a ViT, or a non-C^2 activation) the bounds are n/a and only (a)'s elementwise check is judged.
    The margin is the tightest Gronwall bound/gap of (b), or (a)'s max |r|/model where (b) has no bound.
    """
    def bind(p: Problem) -> list[Problem]:
        return [make_problem(p.model, p.loss.name, task.to(p.theta0.dtype), 1, theta0=p.theta0) for task in tasks]

    exact = run_atm(bind(problem), ATMSchedule(lr, rounds, 1))
    checks = [r.exact_check for r in exact.rounds if r.exact_check is not None]
    fp_ratio = max(c.max_ratio for c in checks)
    fp_holds = all(c.holds for c in checks)
    amplified = exact.amplification
    amp_holds = None if amplified is None else all(g <= b for g, b in zip(exact.gaps, amplified, strict=True))
    a_text = (f"(a) k = 1: each of {rounds} rounds = one multitask step, max |r|/model = {fp_ratio:.3f} "
              f"({'holds' if fp_holds else 'FAILS'}); R-round gap {exact.gaps[-1]:.3g}"
              + ("" if amplified is None else f" <= amplified rounding {amplified[-1]:.3g}: "
                 f"{'yes' if amp_holds else 'NO'} (factor prod(1 + lambda M) = {exact.amplification_factor:.3g})"))
    details = {"alpha": exact.alpha, "num_tasks": exact.num_tasks, "rounds_count": rounds, "steps": steps,
               "exact": {"holds": fp_holds and amp_holds is not False, "max_ratio": fp_ratio,
                         "gaps": list(exact.gaps), "amplification": None if amplified is None else list(amplified),
                         "amplification_factor": exact.amplification_factor}}
    run = run_atm(bind(problem.to(torch.float64)), ATMSchedule(lr, rounds, steps))
    rows = run.table()
    details.update({"multitask_lr": run.multitask_lr, "rounds": rows})
    if run.gronwall is None or run.certified is None:
        details.update({"gronwall_holds": None, "certified_holds": None, "min_tightness": None})
        return Verdict("T5", fp_holds, fp_ratio, f"{a_text}; (b) n/a: no T4 bound M for this network", details)
    gronwall_holds = all(g <= b for g, b in zip(run.gaps, run.gronwall, strict=True))
    certified_holds = all(g <= b for g, b in zip(run.gaps, run.certified, strict=True))
    tightness = [row["tightness"] for row in rows if row["tightness"] is not None]
    tight = min(tightness) if tightness else float("inf")
    details.update({"gronwall_holds": gronwall_holds, "certified_holds": certified_holds, "min_tightness": tight})
    holds = fp_holds and amp_holds is not False and gronwall_holds and certified_holds
    return Verdict("T5", holds, tight,
                   f"{a_text}; (b) k = {steps}: ||theta^(r) - theta_MT^(r)|| <= Gronwall bound for r = 1..{rounds}: "
                   f"{'yes' if gronwall_holds else 'NO'} (tightest bound/gap = {tight:.3g}), <= certified (T2(c)) "
                   f"bound: {'yes' if certified_holds else 'NO'}",
                   details)
