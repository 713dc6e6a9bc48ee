"""T2(c): ||E_k|| <= eta sum_{j=1}^{k-1} M_j ||theta_j - theta_0|| <= C(k,2) eta^2 M G, M_j from T4.

M_j is the T4 bound on the segment [theta_0, theta_j], so the first inequality is a theorem about the
iterates actually computed; it must never fail. E_k is computed from rounded iterates, so the
comparison adds the rounding allowance of that computation (tvtheory.theorems.rounding_allowance).
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import learning_rates, problems
from tight_cases import t4_cases

from tvtheory.bounds import coarse_error_bound, step_hessian_bounds
from tvtheory.curvature import dense_hessian
from tvtheory.data import Dataset
from tvtheory.fp import gamma, unit_roundoff
from tvtheory.losses import get_loss
from tvtheory.models import make_mlp
from tvtheory.optimizers import OptimizerSpec
from tvtheory.problem import Problem, make_problem
from tvtheory.table import epoch_rows
from tvtheory.trajectory import DivergenceError, Trajectory, gradient_descent


@settings(max_examples=100)
@given(problem=problems(), lr=learning_rates(-3, 0.5), epochs=st.integers(2, 5))
def test_t2c_error_never_exceeds_bound(problem, lr, epochs):
    try:
        traj = gradient_descent(problem.objective, problem.theta0, lr, epochs)
    except DivergenceError:
        assume(False)
    rows = epoch_rows(problem, OptimizerSpec("gd", lr), traj, certify=False)   # T4's M_s (T6's: test_t6_certificate)
    M = step_hessian_bounds(problem, traj)
    G = max(float(torch.linalg.vector_norm(g)) for g in traj.grads)
    for row in rows[1:]:
        k = row["k"]
        assert row["error_norm"] <= row["bound_t4"] + row["rounding_allowance"], row
        coarse = coarse_error_bound(lr, k, max(M[:k]), G)
        assert row["bound_t4"] <= coarse * (1 + 1e-12) + 1e-300, (row["bound_t4"], coarse)
        assert math.isfinite(row["dominance_t4"])


def test_t2c_bound_attained_one_layer_mse():
    """The first inequality of T2(c) is attained: L = 1, MSE, one example x, so hess L = x~ x~^T (x) I is constant
    (x~ = (x, 1)) and every g_j = (f_j - y) (x) x~ lies in its top eigenspace, with
    f_j - y = (1 - eta ||x~||^2)^j (f_0 - y): all theta_j - theta_0 are parallel eigenvectors, so
    ||E_k|| = eta sum_j ||x~||^2 ||theta_j - theta_0|| and M_j = J_1^2 = ||x~||^2 (up to its rounding slack).
    A bound weakened by more than rounding (e.g. a factor on eta, a step left out of the sum) fails here."""
    x = torch.tensor([[0.5, -1.0, 0.25]], dtype=torch.float64)          # ||x~||^2 = 2.3125
    model = make_mlp((3, 2), "tanh", seed=3)
    problem = make_problem(model, "mse", Dataset("pinned", x, torch.tensor([1]), 2))
    lr = 0.125                                                          # eta ||x~||^2 < 1: converges
    traj = gradient_descent(problem.objective, problem.theta0, lr, 5)
    for row in epoch_rows(problem, OptimizerSpec("gd", lr), traj, certify=False)[1:]:
        assert row["error_norm"] <= row["bound_t4"] + row["rounding_allowance"], row
        assert row["error_norm"] >= row["bound_t4"] * (1 - 1e-12) - row["rounding_allowance"], row


@pytest.mark.parametrize("case", t4_cases(), ids=lambda case: case.name)
@pytest.mark.parametrize("direction", ["doubled", "random"])
def test_step_bounds_cover_the_segment_on_tight_cases(case, direction):
    """M_s (``step_hessian_bounds``) bounds ||hess L|| on the whole segment [theta_0, theta_s], not only at
    theta_0: on the nearly attained T4 cases the bound at theta_0 is ||hess L(theta_0)||, so a segment along
    which the weights grow (theta_s = 2 theta_0, 0.5 everywhere if theta_0 = 0, or a random step of norm
    max(1, ||theta_0||)) exceeds it, and only the norms taken at both endpoints keep M_s above ||hess L|| at 11
    points of the segment (dense Hessians, exact up to rounding)."""
    f = case.objective()
    theta0 = case.theta
    d = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = theta0.clone() if direction == "doubled" else d / d.norm() * max(1.0, float(theta0.norm()))
    if float(d.norm()) == 0:                      # theta_0 = 0 (the sigma(0) cases): all weights to 0.5
        d = torch.full_like(theta0, 0.5)
    data = Dataset("pinned", case.x, torch.zeros(len(f), dtype=torch.int64), case.config.widths[-1])
    problem = Problem(case.model(), get_loss(case.loss), data, f, (f,), theta0)
    traj = Trajectory([theta0, theta0 + d, theta0 + d], 1, [0, 0])
    M = step_hessian_bounds(problem, traj)[1]
    widths = case.config.widths
    slack = gamma(4 * (len(f) + max(widths) + len(widths)), unit_roundoff(torch.float64))
    for t in torch.linspace(0, 1, 11, dtype=torch.float64):
        h = float(torch.linalg.eigvalsh(dense_hessian(f, theta0 + t * d)).abs().max())
        assert M >= h * (1 - slack), f"M_s = {M!r} < ||hess L|| = {h!r} at t = {float(t)} of the segment"
