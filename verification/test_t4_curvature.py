"""T4: the explicit curvature bound for feed-forward networks.

For random networks (depth 1-5, widths 1-64, five C^2 activations, MSE and CE) in float64:
- per example, ||Df[v]|| <= J_L and ||D^2 f[v, v]|| <= Q_L for unit directions v (random ones and the top
  Hessian eigenvector direction);
- ||hess L(theta)||_2 <= M (the mean of lambda J_L^2 + r Q_L) at theta_0 and at points of a segment
  [theta_0, theta_1], with the norms bounded at the two endpoints. ||hess L||_2 is exact (dense eigvalsh)
  for P <= 300 and a Lanczos value (a lower estimate, tol 1e-6) above.
Floating point: the computed Hessian norm carries the rounding of the HVPs, modelled as gamma_m ||H|| with
m = 4 (N + max width + L); the bound itself is rounded up in tvtheory.bounds.

Random networks leave the bound 20-300x loose, so two more checks make a weakened bound fail:
- the pinned cases of ``tight_cases`` (depth 1-3, every activation, both losses), on which the bound is
  attained or within 2 % of ||hess L||_2: a term of the recursion made smaller by 10 % is violated there;
- the library's J_L, Q_L and bound equal the recursion as docs/theory.md states it, evaluated in 50-digit
  arithmetic from the same s_l, beta_l and x, to within the library's rounding-up slack (exact <= computed
  <= exact (1 + 32 (L + 4) u)). This one also catches a change that leaves a valid but different bound: the
  constant 2 in Q_l may be lowered to 1 without making the theorem false (2 nu_l mu <= nu_l^2 + mu^2 <= 1
  for the split of a unit direction between layer l and the layers below), so no Hessian can catch that.
The tightness ratio of every pinned case is printed at the end of the run (verification/conftest.py).
"""

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import problems
from tight_cases import t4_cases
from torch.func import functional_call, jvp

from tvtheory.activations import get_activation
from tvtheory.bounds import layer_norms, mlp_hessian_bound
from tvtheory.curvature import dense_hessian, hessian_norm
from tvtheory.fp import gamma, unit_roundoff
from tvtheory.losses import get_loss
from tvtheory.models.mlp import MLPConfig


def _hessian_norm(problem, theta):
    method = "dense" if theta.numel() <= 300 else "lanczos"
    return hessian_norm(problem.objective, theta, method=method, tol=1e-6).value


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

        def d1(th, v=v):
            return jvp(out, (th,), (v,))[1]

        first, second = jvp(d1, (theta0,), (v,))
        slack = 1 - _slack(problem)
        assert (torch.linalg.vector_norm(first, dim=1) * slack <= bounds.J).all()
        assert (torch.linalg.vector_norm(second, dim=1) * slack <= bounds.Q).all()


@pytest.mark.parametrize("case", t4_cases(), ids=lambda case: case.name)
def test_t4_bound_nearly_attained(case, report_tightness):
    """bound >= ||hess L||_2 (dense, exact up to rounding) on a case built to make terms of T4 tight, and the
    ratio ||hess L||_2 / bound reaches the case's ``min_ratio`` (1 for the attained ones, 0.98 otherwise)."""
    f = case.objective()
    h = float(torch.linalg.eigvalsh(dense_hessian(f, case.theta)).abs().max())
    bound = mlp_hessian_bound(case.config, get_loss(case.loss), case.x, case.target,
                              layer_norms(case.config, case.theta)).mean
    widths = case.config.widths
    slack = gamma(4 * (len(f) + max(widths) + len(widths)), unit_roundoff(torch.float64))
    report_tightness(case.name, h / bound, case.terms)
    assert bound >= h * (1 - slack), f"T4 violated on {case.name}: ||hess L||_2 = {h!r} > bound {bound!r}"
    assert h / bound >= case.min_ratio, f"{case.name} is no longer tight: ratio {h / bound} < {case.min_ratio}"


def _spec_recursion(config, loss, x, target, weight, bias):
    """J_L, Q_L and lambda J_L^2 + r Q_L per example, as docs/theory.md (T4) writes them, in mpmath.

    a_0 = ||x||, a_l = |sigma(0)| sqrt(n_l) + c1 (s_l a_(l-1) + beta_l); e_l = sqrt(a_(l-1)^2 + 1) (a_(l-1)
    without biases); J_l^2 = e_l^2 + (c1 s_l)^2 J_(l-1)^2, J_0 = 0; Q_1 = 0,
    Q_l = 2 c1 J_(l-1) + s_l c2 J_(l-1)^2 + s_l c1 Q_(l-1); MSE: lambda = 1, r = s_L a_(L-1) + beta_L + ||y||;
    CE: lambda = 1/2, r = sqrt 2. Inputs are taken as exact binary numbers.
    """
    act = get_activation(config.activation)
    c1, c2, sigma0 = mp.mpf(act.c1), mp.mpf(act.c2), mp.mpf(act.sigma0)
    s = [mp.mpf(float(v)) for v in weight]
    beta = [mp.mpf(float(v)) for v in bias]
    L, out = config.depth, []
    for i in range(x.shape[0]):
        a = mp.sqrt(mp.fsum(mp.mpf(float(v)) ** 2 for v in x[i].reshape(-1)))
        J, Q = mp.mpf(0), mp.mpf(0)
        for l in range(1, L + 1):
            e = mp.sqrt(a ** 2 + 1) if config.bias else a
            Q = 2 * c1 * J + s[l - 1] * c2 * J ** 2 + s[l - 1] * c1 * Q if l > 1 else mp.mpf(0)
            J = mp.sqrt(e ** 2 + (c1 * s[l - 1]) ** 2 * J ** 2)
            if l < L:
                a = sigma0 * mp.sqrt(config.widths[l]) + c1 * (s[l - 1] * a + beta[l - 1])
        if loss.name == "mse":
            y = mp.sqrt(mp.fsum(mp.mpf(float(v)) ** 2 for v in target[i].reshape(-1)))
            lam, r = mp.mpf(1), s[L - 1] * a + beta[L - 1] + y
        else:
            lam, r = mp.mpf(1) / 2, mp.sqrt(2)
        out.append((J, Q, lam * J ** 2 + r * Q))
    return out


def _check_against_spec(config, loss, x, target, norms):
    computed = mlp_hessian_bound(config, loss, x, target, norms)
    allowance = 1 + mp.mpf(32 * (config.depth + 4)) * mp.mpf(unit_roundoff(torch.float64))
    with mp.workdps(50):
        exact = _spec_recursion(config, loss, x, target, norms.weight, norms.bias)
        for i, values in enumerate(exact):
            for name, got, want in zip(("J", "Q", "bound"), (computed.J[i], computed.Q[i], computed.per_example[i]),
                                       values, strict=True):
                got = mp.mpf(float(got))
                assert want <= got <= want * allowance, (name, i, float(got), float(want))


@pytest.mark.parametrize("case", t4_cases(), ids=lambda case: case.name)
def test_t4_bound_is_the_spec_recursion_on_pinned_cases(case):
    _check_against_spec(case.config, get_loss(case.loss), case.x, case.target, layer_norms(case.config, case.theta))


@settings(max_examples=60)
@given(problem=problems(max_examples=4))
def test_t4_bound_is_the_spec_recursion(problem):
    f = problem.objective
    _check_against_spec(problem.model.config, problem.loss, f.x, f.target, layer_norms(problem.model.config,
                                                                                        problem.theta0))


def _matrix(family: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows, cols = 3 + seed % 9, 2 + (7 * seed) % 13

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if family == "gaussian":
        return randn(rows, cols)
    if family == "rank_one":
        return randn(rows, 1) @ randn(1, cols)
    if family == "nearly_rank_one":
        return randn(rows, 1) @ randn(1, cols) + 1e-9 * randn(rows, cols)
    if family == "ill_conditioned":
        q1, _ = torch.linalg.qr(randn(rows, rows))
        q2, _ = torch.linalg.qr(randn(cols, cols))
        k = min(rows, cols)
        s = torch.logspace(0, -12, k, dtype=torch.float64)
        return q1[:, :k] @ torch.diag(s) @ q2[:, :k].T
    if family == "equal_top":                       # a repeated top singular value
        q1, _ = torch.linalg.qr(randn(rows, rows))
        q2, _ = torch.linalg.qr(randn(cols, cols))
        k = min(rows, cols)
        s = torch.ones(k, dtype=torch.float64)
        s[k // 2:] = 0.5
        return q1[:, :k] @ torch.diag(s) @ q2[:, :k].T
    if family == "float32_scaled":
        return (randn(rows, cols) * 10.0 ** (seed % 17 - 8)).float().double()
    if family == "row":
        return randn(1, cols)
    return randn(rows, 1)                           # "column"


FAMILIES = ("gaussian", "rank_one", "nearly_rank_one", "ill_conditioned", "equal_top", "float32_scaled", "row",
            "column")


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_norms_are_certified_upper_bounds_of_the_exact_spectral_norm(family):
    """s_l of ``layer_norms`` is never below ||W_l||_2, computed exactly (50-digit SVD of the float64 entries),
    on random, rank-one, nearly rank-one, ill-conditioned (singular values down to 1e-12), repeated-top,
    float32-valued at scales 1e-8..1e8, one-row and one-column matrices; and it is a sharp bound (within a
    relative 1e-6 of the exact norm), so rounding the norm down or dropping its certificate's margin (the
    s_l of a power or Lanczos estimate, a lower bound) fails here."""
    mp.mp.dps = 50
    for seed in range(12):
        w = _matrix(family, seed)
        rows, cols = w.shape
        config = MLPConfig((cols, rows), "tanh", True)
        theta = torch.cat([w.reshape(-1), torch.zeros(rows, dtype=torch.float64)])
        s = float(layer_norms(config, theta).weight[0])
        exact = max(mp.svd_r(mp.matrix(w.tolist()), compute_uv=False))
        assert mp.mpf(s) >= exact, f"{family} seed {seed}: s_l = {s!r} < ||W||_2 = {mp.nstr(exact, 20)}"
        assert mp.mpf(s) <= exact * (1 + mp.mpf("1e-6")), f"{family} seed {seed}: s_l = {s!r} is loose"
