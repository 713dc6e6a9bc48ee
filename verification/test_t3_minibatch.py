"""T3: one epoch of B-batch SGD, and the first-step identities of other optimizers.

- tau = -eta B g + E, ||E|| <= eta sum_b M_b ||theta_b - theta_0|| (M_b: T4 on the batch loss and segment),
  never violated (plus the rounding allowance of computing E);
- E - eta^2 sum_b H_b sum_{c<b} g_c = O(eta^3): fitted slope > 2.7;
- heavy-ball momentum: tau^(k) + eta c_k g = O(eta^2) (slope ~ 2), and its first step is exactly T1;
- weight decay: tau^(1) = -eta (g + lambda theta_0) to its floating-point model, and T1 itself fails
  (lambda raised where needed so that the decay dominates some coordinate);
- Adam: tau^(1) = -eta g / (|g| + eps) to its floating-point model (15 roundings).
"""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import learning_rates, problems

from tvtheory.curvature import gradient, hessian_norm
from tvtheory.data import contiguous_batches
from tvtheory.fp import check_t1
from tvtheory.optimizers import OptimizerSpec, first_step_identity, momentum_coefficient
from tvtheory.remainder import asymptotic_eta, loglog_slope, remainder_slope
from tvtheory.table import epoch_rows
from tvtheory.theorems import SLOPE_THRESHOLD
from tvtheory.trajectory import DivergenceError, gradient_descent, run_optimizer


def _batches(problem):
    n, B = len(problem.objective), problem.num_batches
    return contiguous_batches(n, B)


@settings(max_examples=80)
@given(problem=problems(max_batches=8), lr=learning_rates(-3, 0.5))
def test_t3_error_never_exceeds_bound(problem, lr):
    try:
        traj = gradient_descent(problem.objective, problem.theta0, lr, 1, _batches(problem))
    except DivergenceError:
        assume(False)
    row = epoch_rows(problem, OptimizerSpec("sgd", lr), traj, certify=False)[0]   # T4's M_b (T6's: test_t6_certificate)
    assert row["error_norm"] <= row["bound_t4"] + row["rounding_allowance"], row


@settings(max_examples=30)
@given(problem=problems(max_batches=8, max_width=24))
def test_t3_remainder_is_third_order(problem):
    assume(problem.num_batches >= 2)
    h = hessian_norm(problem.objective, problem.theta0).value
    assume(h > 0)
    result = remainder_slope(problem, asymptotic_eta(h, problem.num_batches), 1)
    assume(result["resolved"] >= 4)
    assert result["slope"] > SLOPE_THRESHOLD, result


@settings(max_examples=25)
@given(problem=problems(max_width=24), k=st.integers(2, 5), mu=st.sampled_from((0.5, 0.9)))
def test_momentum_first_order_coefficient(problem, k, mu):
    """||tau^(k) + eta c_k g|| = O(eta^2): slope > 1.7 over eta_max / 2^i (expect 2)."""
    theta0 = problem.theta0
    g = gradient(problem.objective, theta0)
    h = hessian_norm(problem.objective, theta0).value
    assume(h > 0 and float(torch.linalg.vector_norm(g)) > 1e-6)
    etas = [0.1 / (h * k) / 2 ** i for i in range(6)]
    errs = []
    for eta in etas:
        traj = run_optimizer(problem.objective, theta0, OptimizerSpec("momentum", eta, momentum=mu).make, k)
        errs.append(float(torch.linalg.vector_norm(traj.task_vector(k) + eta * momentum_coefficient(mu, k) * g)))
    assume(min(errs) > 1e-11 * float(torch.linalg.vector_norm(theta0)))
    assert loglog_slope(etas, errs) > 1.7, errs


@settings(max_examples=100)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-4, 0),
       wd=st.floats(1e-3, 0.5))
def test_weight_decay_identity(problem, lr, wd):
    spec = OptimizerSpec("sgd", lr, weight_decay=wd)
    traj = run_optimizer(problem.objective, problem.theta0, spec.make, 1)
    identity = first_step_identity(spec, traj.theta0, traj.thetas[1], traj.grads[0])
    assert not identity.exact and identity.check.holds, identity.check


@settings(max_examples=50)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-4, 0),
       wd=st.floats(1e-3, 0.5), margin=st.floats(1.5, 10.0))
def test_weight_decay_breaks_t1(problem, lr, wd, margin):
    """T1 rejects a weight-decay step wherever the decay eta lambda |theta_0,i| exceeds 1e3 times the model's
    allowance for that coordinate (taken as eta |g_i| + 2^-20 |theta_0,i|, above gamma_4 |eta g_i| +
    u |theta_0,i| in float32 and float64). lambda is raised where needed so that some coordinate has
    ``margin`` times that decay: every example performs the check."""
    theta0 = problem.theta0.double()
    g = gradient(problem.objective, problem.theta0).double()
    nonzero = theta0 != 0
    needed = 1e3 * (lr * g[nonzero].abs() + theta0[nonzero].abs() * 2 ** -20) / (lr * theta0[nonzero].abs())
    wd = max(wd, margin * float(needed.min()))
    spec = OptimizerSpec("sgd", lr, weight_decay=wd)
    traj = run_optimizer(problem.objective, problem.theta0, spec.make, 1)
    decay = (lr * wd * traj.theta0.double()).abs()
    allowance = lr * traj.grads[0].double().abs() + traj.theta0.double().abs() * 2 ** -20
    assert (decay > 1e3 * allowance).any(), "lambda was raised so that the decay dominates some coordinate"
    assert not check_t1(traj.theta0, traj.thetas[1], traj.grads[0], lr).holds


@settings(max_examples=100)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-4, 0),
       eps=st.sampled_from((1e-8, 1e-6, 1e-3)))
def test_adam_first_step(problem, lr, eps):
    spec = OptimizerSpec("adam", lr, eps=eps)
    traj = run_optimizer(problem.objective, problem.theta0, spec.make, 1)
    identity = first_step_identity(spec, traj.theta0, traj.thetas[1], traj.grads[0])
    assert not identity.exact
    assert identity.check.holds, identity.check
