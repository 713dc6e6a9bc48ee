"""The per-epoch table of a run: for k = 1..K, what the theory says about the task vector tau_k.

Each row holds ||tau_k||, the first-order term (the optimizer's own, ``optimizers.first_order_prediction``;
-k eta B g for GD/SGD), ||E_k|| = ||tau_k - first-order term||, the second-order term and what it leaves
(plain GD/SGD on a C^2 network), the T2(c)/T3 bound with T6's certified M_s (``certificate``) and its ratio
to ||E_k||, the dominance number eta M k, the same two with T4's M_s beside them (MLP only), the rounding
allowance of E_k (plain GD/SGD) and whether ||E_k|| exceeds it, and cos(tau_k, -g). ``None`` where n/a.
Where ||E_k|| is within its rounding allowance E_k is rounding, not the second-order error, so its ratio to
the bound is not reported (``bound_ratio`` None, ``error_resolved`` False).
"""

from __future__ import annotations

from typing import TypedDict

from .bounds import (
    aposteriori_error_bound,
    dominance_number,
    has_curvature_bound,
    require_matching_batches,
    step_hessian_bounds,
)
from .certificate import StepCertificates, step_curvature_certificates
from .curvature import gradient
from .expansion import batch_gradients, batch_hvps, first_order_terms, second_order_terms
from .fp import gradient_sum_length, rounding_allowance
from .optimizers import OptimizerSpec, first_order_prediction
from .problem import Problem
from .task_vectors import cosine, norm
from .trajectory import Trajectory


class EpochRow(TypedDict):
    """One row of the table, after k epochs (None where n/a; the JSON report's "epochs" entries)."""

    k: int
    tau_norm: float                             # ||tau_k||
    first_order_norm: float                     # ||first-order term||
    error_norm: float                           # ||E_k|| = ||tau_k - first-order term||
    second_order_norm: float | None             # ||second-order term||         (plain GD/SGD, C^2)
    second_order_residual_norm: float | None    # ||E_k - second-order term||   (plain GD/SGD, C^2)
    bound: float | None                         # T2(c)/T3: eta sum_s M_s ||theta_s - theta_0||, M_s of T6 (MLP)
    bound_ratio: float | None                   # bound / ||E_k|| (None where either is 0 or E_k is rounding)
    bound_t4: float | None                      # the same bound with T4's M_s                     (MLP)
    bound_ratio_t4: float | None                # bound_t4 / ||E_k||
    cos_tau_neg_g: float                        # cos(tau_k, -grad L(theta_0))
    dominance: float | None                     # eta max_s M_s kB, M_s of T6       (MLP)
    dominance_t4: float | None                  # eta max_s M_s kB, M_s of T4       (MLP)
    rounding_allowance: float | None            # fp.rounding_allowance of E_k      (plain GD/SGD)
    error_resolved: bool | None                 # ||E_k|| > rounding allowance      (plain GD/SGD)


def epoch_rows(problem: Problem, spec: OptimizerSpec, traj: Trajectory,
               certificates: StepCertificates | None = None, certify: bool = True) -> list[EpochRow]:
    """Per-epoch quantities of a run of ``spec`` on ``problem``: ||tau_k||, the first-order term, E_k, the
    second-order term, the bound (keys: see the module docstring and README's JSON schema).

    ``certificates``: T6's M_s of this trajectory (``step_curvature_certificates``), made with the default
    ``CertificateConfig`` when not given and the bound applies (plain GD/SGD, a C^2 MLP). ``certify=False``
    skips T6 (bound, bound_ratio, dominance None) and reports the T4 columns alone, at T4's cost.
    """
    require_matching_batches(problem, traj)
    theta0, lr, B = traj.theta0, spec.lr, traj.steps_per_epoch
    g = gradient(problem.objective, theta0)
    gb = batch_gradients(problem.batch_objectives, theta0)
    plain = spec.plain
    smooth = problem.act.is_c2
    second = (second_order_terms(batch_hvps(problem.batch_objectives, theta0), lr, gb, traj.schedule, B)
              if plain and smooth else None)
    bounded = plain and smooth and has_curvature_bound(problem.model)
    if bounded and certificates is None and certify:
        certificates = step_curvature_certificates(problem, traj)
    M = certificates.values if bounded and certificates is not None else None
    M4 = (certificates.t4 if certificates is not None else step_hessian_bounds(problem, traj)) if bounded else None
    sum_length = gradient_sum_length(problem.model, len(problem.objective))
    gd_first = first_order_terms(lr, gb, traj.schedule, B)
    rows: list[EpochRow] = []
    for k in range(1, traj.epochs + 1):
        tau = traj.task_vector(k)
        first = first_order_prediction(spec, theta0, gb, traj.schedule[:k * B])
        first = gd_first[k - 1] if first is None else first
        error = tau - first
        error_norm = norm(error)
        row: EpochRow = {
            "k": k, "tau_norm": norm(tau), "first_order_norm": norm(first), "error_norm": error_norm,
            "second_order_norm": None, "second_order_residual_norm": None, "bound": None, "bound_ratio": None,
            "bound_t4": None, "bound_ratio_t4": None, "cos_tau_neg_g": cosine(tau, -g), "dominance": None,
            "dominance_t4": None, "rounding_allowance": None, "error_resolved": None}
        S = k * B
        if plain:
            allowance = rounding_allowance(traj.thetas, traj.grads, lr, S, sum_length)
            row["rounding_allowance"] = allowance
            row["error_resolved"] = error_norm > allowance
        if second is not None:
            row["second_order_norm"] = norm(second[k - 1])
            row["second_order_residual_norm"] = norm(error - second[k - 1])
        # k = 1 of full-batch GD: E_1 = 0 exactly and the bound is 0; E_1 is rounding, checked by T1
        resolved = error_norm > 0 and bool(row["error_resolved"])
        if M4 is not None:
            bound_t4 = aposteriori_error_bound(lr, M4[:S], traj.thetas[:S])
            row["bound_t4"] = bound_t4
            row["bound_ratio_t4"] = bound_t4 / error_norm if resolved and bound_t4 > 0 else None
            row["dominance_t4"] = dominance_number(lr, max(M4[:S]), S)
        if M is not None:
            bound = aposteriori_error_bound(lr, M[:S], traj.thetas[:S])
            row["bound"] = bound
            row["bound_ratio"] = bound / error_norm if resolved and bound > 0 else None
            row["dominance"] = dominance_number(lr, max(M[:S]), S)
        rows.append(row)
    return rows
