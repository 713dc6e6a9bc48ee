"""T2(c): ||E_k|| <= eta sum_{j=1}^{k-1} M_j ||theta_j - theta_0|| <= C(k,2) eta^2 M G, M_j from T4.

M_j is the T4 bound on the segment [theta_0, theta_j], so the first inequality is a theorem about the
iterates actually computed; it must never fail. E_k is computed from rounded iterates, so the
comparison adds the rounding allowance of that computation (tvtheory.theorems.rounding_allowance).
"""

import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import learning_rates, problems

from tvtheory.bounds import coarse_error_bound
from tvtheory.optimizers import OptimizerSpec
from tvtheory.theorems import epoch_rows, step_hessian_bounds
from tvtheory.trajectory import DivergenceError, gradient_descent


@settings(max_examples=100)
@given(problem=problems(), lr=learning_rates(-3, 0.5), epochs=st.integers(2, 5))
def test_t2c_error_never_exceeds_bound(problem, lr, epochs):
    try:
        traj = gradient_descent(problem.objective, problem.theta0, lr, epochs)
    except DivergenceError:
        assume(False)
    rows = epoch_rows(problem, OptimizerSpec("gd", lr), traj)
    M = step_hessian_bounds(problem, traj)
    G = max(float(torch.linalg.vector_norm(g)) for g in traj.grads)
    for row in rows[1:]:
        k = row["k"]
        assert row["error_norm"] <= row["bound"] + row["rounding_allowance"], row
        coarse = coarse_error_bound(lr, k, max(M[:k]), G)
        assert row["bound"] <= coarse * (1 + 1e-12) + 1e-300, (row["bound"], coarse)
        assert math.isfinite(row["dominance"])
