"""Unit tests of tvtheory.fp: the exact residual, gamma_n, and the T1 floating-point model.

The residual r = tau + lr * g is compared with exact rational arithmetic (fractions.Fraction); the T1
model |r| <= u(1+u)|theta_0| + gamma_4 |lr g| + 2 eta_min is checked on real torch.optim.SGD steps
(it must hold) and on deliberately wrong steps (it must fail), in float64 and float32.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvtheory.fp import (
    ResidualCheck,
    check_t1,
    compare,
    exact_residual,
    gamma,
    gradient_sum_length,
    rounding_allowance,
    step_residual_bound,
    underflow_unit,
    unit_roundoff,
)
from tvtheory.trajectory import gradient_descent

U64 = 2.0 ** -53
HALF_SUBNORMAL64 = 2.0 ** -1075   # the largest rounding error of a result in float64's subnormal range


def exact_r(tau: torch.Tensor, grads: list[torch.Tensor], lr: float) -> list[Fraction]:
    """r_i = tau_i + lr * sum_j g_j[i] in exact rational arithmetic (every float is a rational)."""
    out = []
    for i in range(tau.numel()):
        total = Fraction(float(tau[i])) + Fraction(lr) * sum(Fraction(float(g[i])) for g in grads)
        out.append(total)
    return out


def assert_accurate(res: torch.Tensor, exact: list[Fraction], abs_slack: list[Fraction] | None = None) -> None:
    """|res - r| <= 2u|r| + 2^-1075 (+ abs_slack) elementwise, checked in exact arithmetic.

    One gradient: exact_residual returns fl(s + fl(s_err + p_err)) with s + s_err + p_err = r exactly;
    the two roundings give at most u|r| + u^2(|s| + |lr g|) <= (u + 4u^2)|r| when s is not exact
    (then |s| >= |lr g|/2) and exactly u|r| when it is (Sterbenz): 2u|r| is a safe statement of
    "a few units of 2^-53, relative". The 2^-1075 term is the rounding of a subnormal result.
    """
    assert res.dtype == torch.float64
    for i, r in enumerate(exact):
        err = abs(Fraction(float(res[i])) - r)
        allowed = 2 * Fraction(U64) * abs(r) + Fraction(HALF_SUBNORMAL64)
        if abs_slack is not None:
            allowed += abs_slack[i]
        assert err <= allowed, f"coordinate {i}: computed {float(res[i])!r}, exact {float(r)!r}"


def nonzero_float(lo: int, hi: int):
    """+-(1 + m 2^-52) 2^e with e in [lo, hi] and a random 52-bit mantissa m: every magnitude 2^lo..2^(hi+1)."""
    return st.builds(lambda neg, m, e: math.ldexp(-(1 + m * 2.0 ** -52) if neg else 1 + m * 2.0 ** -52, e),
                     st.booleans(), st.integers(0, 2 ** 52 - 1), st.integers(lo, hi))


def scaled_float(lo: int, hi: int):
    """nonzero_float or exactly 0."""
    return st.one_of(nonzero_float(lo, hi), st.just(0.0))


# Dekker's product is error-free while neither factor's split overflows (|a| < 2^995) and the
# partial products do not underflow; the domain below keeps |lr|, |g| <= 2^401 and |lr * g| >= 2^-800
# or exactly zero, i.e. "tiny" and "huge" far beyond anything an optimizer step produces.
VEC = 4


@settings(deadline=None, derandomize=True, max_examples=200)
@given(
    tau=st.lists(scaled_float(-700, 700), min_size=VEC, max_size=VEC),
    g=st.lists(scaled_float(-400, 400), min_size=VEC, max_size=VEC),
    lr=nonzero_float(-400, 0),
    cancel=st.lists(st.booleans(), min_size=VEC, max_size=VEC),
)
def test_exact_residual_matches_fractions_float64(tau, g, lr, cancel):
    """float64 inputs, one gradient; 'cancel' replaces tau_i by the T1 task vector fl(fl(t - lr g) - t)."""
    g_t = torch.tensor(g, dtype=torch.float64)
    tau_t = torch.tensor(tau, dtype=torch.float64)
    theta0 = tau_t.clone()
    stepped = (theta0 - lr * g_t) - theta0          # the cancelling case: r is a few rounding errors
    tau_t = torch.where(torch.tensor(cancel), stepped, tau_t)
    small = (lr * g_t).abs() < 2.0 ** -800
    g_t = torch.where(small, torch.zeros_like(g_t), g_t)
    res = exact_residual(tau_t, g_t, lr)
    assert_accurate(res, exact_r(tau_t, [g_t], lr))


@settings(deadline=None, derandomize=True, max_examples=200)
@given(
    theta0=st.lists(scaled_float(-30, 30), min_size=VEC, max_size=VEC),
    g=st.lists(scaled_float(-60, 60), min_size=VEC, max_size=VEC),
    lr=nonzero_float(-30, 2),
)
def test_exact_residual_matches_fractions_float32(theta0, g, lr):
    """float32 task vectors and gradients (the float32 T1 case), lr a float64 number."""
    th = torch.tensor(theta0, dtype=torch.float32)
    g_t = torch.tensor(g, dtype=torch.float32)
    tau = (th - lr * g_t) - th                      # a float32 T1 task vector, with cancellation
    res = exact_residual(tau, g_t, lr)
    assert_accurate(res, exact_r(tau, [g_t], lr))
    # and an unrelated float32 tau (no cancellation)
    res2 = exact_residual(th, g_t, lr)
    assert_accurate(res2, exact_r(th, [g_t], lr))


@pytest.mark.parametrize(
    "tau, g, lr",
    [
        (0.0, 5e-324, 1.0),                     # smallest subnormal gradient
        (5e-324, -5e-324, 1.0),                 # cancels to exactly 0
        (1e300, 1e-300, 1e-10),                 # huge tau, tiny product
        (-0.1, 1.0, 0.1),                       # r = 0 exactly (0.1 is the same float on both sides)
        (-(0.1 * 0.3), 0.3, 0.1),               # r = the rounding error of 0.1 * 0.3
        (1.0, 2.0 ** 60, 2.0 ** -60),           # product exactly 1
        (2.0 ** 900, -(2.0 ** 400), 2.0 ** 499),  # huge, cancelling: r = 2^900 - 2^899
    ],
)
def test_exact_residual_adversarial_examples(tau, g, lr):
    tau_t, g_t = torch.tensor([tau], dtype=torch.float64), torch.tensor([g], dtype=torch.float64)
    res = exact_residual(tau_t, g_t, lr)
    assert_accurate(res, exact_r(tau_t, [g_t], lr))


def test_exact_residual_rounding_error_of_a_product_is_recovered():
    """r = -fl(0.1 * 0.3) + 0.1 * 0.3 is the (nonzero) rounding error of the product, not 0."""
    p = 0.1 * 0.3
    res = exact_residual(torch.tensor([-p], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), 0.1)
    exact = -Fraction(p) + Fraction(0.1) * Fraction(0.3)
    assert exact != 0
    assert float(res[0]) == float(exact)


@settings(deadline=None, derandomize=True, max_examples=100)
@given(
    tau=st.lists(scaled_float(-40, 40), min_size=VEC, max_size=VEC),
    grads=st.lists(st.lists(scaled_float(-40, 40), min_size=VEC, max_size=VEC), min_size=2, max_size=5),
    lr=nonzero_float(-20, 0),
)
def test_exact_residual_several_gradients_absolute_accuracy(tau, grads, lr):
    """S gradients: the error terms are summed in plain float64, so the error is absolute,
    at most 2u|r| + 4 S^2 u^2 (|tau| + sum_j |lr g_j|) (S error terms of size <= u * partial sums)."""
    tau_t = torch.tensor(tau, dtype=torch.float64)
    gs = [torch.tensor(g, dtype=torch.float64) for g in grads]
    res = exact_residual(tau_t, gs, lr)
    S = len(gs)
    slack = [4 * S * S * Fraction(U64) ** 2 * (abs(Fraction(float(tau_t[i])))
                                               + sum(abs(Fraction(lr) * Fraction(float(g[i]))) for g in gs))
             for i in range(VEC)]
    assert_accurate(res, exact_r(tau_t, gs, lr), slack)


def test_exact_residual_several_gradients_documented_accuracy():
    """With cancelling gradients the error terms can cancel too: the documented accuracy is
    2^-52 |r| + 2^-105 sum |lr g| (here r = 2^-120 while sum |lr g| ~ 2)."""
    grads = [torch.tensor([x], dtype=torch.float64) for x in (1.0, 2.0 ** -60, 2.0 ** -120, -1.0, -(2.0 ** -60))]
    tau = torch.zeros(1, dtype=torch.float64)
    exact = exact_r(tau, grads, 1.0)             # = 2^-120
    assert exact[0] == Fraction(2) ** -120
    res = Fraction(float(exact_residual(tau, grads, 1.0)[0]))
    scale = sum(abs(Fraction(float(g[0]))) for g in grads)
    assert abs(res - exact[0]) <= Fraction(2) ** -52 * abs(exact[0]) + Fraction(2) ** -105 * scale


def test_exact_residual_refuses_inputs_that_would_overflow():
    g = torch.tensor([1e305], dtype=torch.float64)
    tau = torch.tensor([-1e295], dtype=torch.float64)
    with pytest.raises(ValueError, match="2\\^995"):
        exact_residual(tau, g, 1e-10)


def test_unit_roundoff_and_underflow_unit_float32():
    assert unit_roundoff(torch.float64) == 2.0 ** -53
    assert unit_roundoff(torch.float32) == 2.0 ** -24
    assert Fraction(underflow_unit(torch.float32)) == Fraction(1, 2 ** 149)   # float32's smallest subnormal
    with pytest.raises(ValueError, match="float32 and float64"):
        unit_roundoff(torch.float16)


def test_underflow_unit_float64_is_positive():
    # the underflow error of a float64 product is at most half the smallest subnormal; 2^-1074 bounds it
    assert underflow_unit(torch.float64) > 0


@pytest.mark.parametrize("n", [0, 1, 2, 4, 15, 1000])
@pytest.mark.parametrize("u", [2.0 ** -53, 2.0 ** -24])
def test_gamma_formula_and_bound(n, u):
    gn = gamma(n, u)
    exact = n * Fraction(u) / (1 - n * Fraction(u))
    # n u and 1 - n u are exact in float64 here; only the division rounds
    assert abs(Fraction(gn) - exact) <= Fraction(U64) * exact
    # Higham's Lemma 3.1: |prod (1 + d_i)^{+-1} - 1| <= gamma_n for |d_i| <= u; the extremes are all +u
    # or all -u (with the power -1), checked exactly
    uu = Fraction(u)
    extremes = [(1 + uu) ** n - 1, 1 - (1 - uu) ** n, (1 - uu) ** -n - 1, 1 - (1 + uu) ** -n]
    assert max(extremes) <= exact


def test_gamma_undefined_when_nu_reaches_one():
    with pytest.raises(ValueError, match="undefined"):
        gamma(2 ** 24, 2.0 ** -24)
    with pytest.raises(ValueError, match="undefined"):
        gamma(2 ** 30, 2.0 ** -24)


def test_step_residual_bound_formula():
    theta0 = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float32)
    update = torch.tensor([0.5, 0.0, -3.0], dtype=torch.float64)
    u = 2.0 ** -24
    expected = u * (1 + u) * theta0.double().abs() + gamma(4, u) * update.abs() + 2 * 2.0 ** -150
    assert torch.equal(step_residual_bound(theta0, update, torch.float32), expected)
    assert step_residual_bound(theta0, update, torch.float32).dtype == torch.float64


def test_compare_summary():
    r = torch.tensor([0.0, 1.0, -3.0], dtype=torch.float64)
    bound = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    c = compare(r, bound, torch.tensor([3.0, 4.0, 0.0]))
    assert isinstance(c, ResidualCheck)
    assert c.max_ratio == 1.5 and not c.holds
    assert c.residual_norm == math.sqrt(10.0)
    assert c.bound_norm == 3.0
    assert c.tau_norm == 5.0
    assert c.exact_zero_fraction == pytest.approx(1 / 3, abs=0)
    assert set(c.to_dict()) == {"holds", "max_ratio", "residual_norm", "bound_norm", "tau_norm",
                                "exact_zero_fraction"}
    assert compare(r[:2], bound[:2], r[:2]).holds


# ------------------------------------------------------------------------------------------------------ check_t1


def _params(dtype, n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    # gradients over many orders of magnitude, with exact zeros
    g = (torch.randn(n, generator=gen, dtype=torch.float64)
         * torch.pow(10.0, torch.randint(-8, 3, (n,), generator=gen).double())).to(dtype)
    g[::97] = 0
    return theta0, g


def _sgd_step(theta0, g, lr):
    p = torch.nn.Parameter(theta0.clone())
    p.grad = g.clone()
    torch.optim.SGD([p], lr=lr, foreach=False).step()
    return p.detach().clone()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lr", [0.1, 1e-3, 0.7, 1 / 3])
def test_check_t1_holds_for_torch_sgd_and_functional_step(dtype, lr):
    theta0, g = _params(dtype)
    for theta1 in (_sgd_step(theta0, g, lr), theta0 - lr * g):
        check = check_t1(theta0, theta1, g, lr)
        assert check.holds, check.max_ratio
        assert 0 < check.tau_norm


@pytest.mark.parametrize("dtype", [torch.float64,
                                   torch.float32])
def test_check_t1_holds_with_theta0_zero_and_tiny_gradients(dtype):
    """theta_0 = 0 removes the u|theta_0| term: only gamma_4 |lr g| and the underflow terms remain."""
    _, g = _params(dtype, seed=1)
    tiny = torch.tensor([torch.finfo(dtype).smallest_normal, torch.finfo(dtype).tiny * 3,
                         float(torch.finfo(dtype).smallest_normal) / 8], dtype=dtype)
    g = torch.cat([g, tiny, -tiny])
    theta0 = torch.zeros_like(g)
    for lr in (0.1, 1e-3):
        assert check_t1(theta0, _sgd_step(theta0, g, lr), g, lr).holds


@pytest.mark.parametrize("dtype", [torch.float64,
                                   torch.float32])
def test_check_t1_exact_zero_coordinate(dtype):
    """A parameter that is exactly 0 with an exactly 0 gradient (e.g. an embedding's padding row) has
    tau_i = r_i = 0: it satisfies T1 and must not turn the verdict into FAILS."""
    theta0 = torch.tensor([0.0, 1.0, -0.5], dtype=dtype)
    g = torch.tensor([0.0, 1.0, 2.0], dtype=dtype)
    check = check_t1(theta0, _sgd_step(theta0, g, 0.1), g, 0.1)
    assert check.max_ratio <= 1.0
    assert check.holds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_check_t1_fails_for_a_relatively_wrong_update(dtype):
    """theta_0 - lr * g * (1 + 1e-6): far outside the model in both precisions (1e-6 >> 2^-24)."""
    theta0, g = _params(dtype)
    lr = 0.1
    wrong = theta0 - lr * (g.double() * (1 + 1e-6)).to(dtype)
    assert not check_t1(theta0, wrong, g, lr).holds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_check_t1_catches_a_learning_rate_off_by_a_few_ulps(dtype):
    """The model is sharp: with theta_0 = 0 it allows gamma_4 |lr g| ~ 4u |lr g|, so a step taken with
    lr moved 8 units in the last place (relative 8 ulp(lr)/lr >= 8u) is caught, the exact lr is not."""
    _, g = _params(dtype, seed=2)
    g = g[g != 0]
    theta0 = torch.zeros_like(g)
    lr = 0.1
    lr_w = torch.tensor(lr, dtype=dtype)
    off = lr_w.clone()
    for _ in range(8):
        off = torch.nextafter(off, torch.tensor(1.0, dtype=dtype))
    assert check_t1(theta0, _sgd_step(theta0, g, float(lr_w)), g, lr).holds
    bad = check_t1(theta0, _sgd_step(theta0, g, float(off)), g, lr)
    assert not bad.holds
    assert bad.max_ratio > 1.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_check_t1_catches_theta1_off_by_three_ulps(dtype):
    """With |theta_0| tiny the model allows about 4u |lr g|; theta_1 in (-2, -1] moved by 3 ulps = 6u
    (absolute) is outside it wherever |g| < 1.5, so the check must fail (and pass without the shift)."""
    n = 200
    theta0 = torch.full((n,), 1e-6, dtype=dtype)
    g = torch.linspace(1.0, 2.0, n, dtype=dtype)
    lr = 1.0
    good = theta0 - lr * g
    assert check_t1(theta0, good, g, lr).holds
    bad = torch.nextafter(good, torch.full_like(good, -math.inf))
    bad = torch.nextafter(bad, torch.full_like(good, -math.inf))
    bad = torch.nextafter(bad, torch.full_like(good, -math.inf))
    assert not check_t1(theta0, bad, g, lr).holds


def test_check_t1_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        check_t1(torch.zeros(3), torch.zeros(4), torch.zeros(3), 0.1)


def test_gradient_sum_length_of_an_mlp_is_n_plus_max_width_plus_layers(make_small_problem):
    p = make_small_problem(widths=(4, 9, 6, 3), n=40)
    assert gradient_sum_length(p.model, len(p.objective)) == 4 * (40 + 9 + 4)


def test_rounding_allowance_of_one_step_by_hand():
    """One step theta_1 = theta_0 - lr g: gamma_2 (|lr g| + |theta_1|) + u |theta_1 - theta_0| in the norm,
    plus 2 lr gamma_m (||g|| + ||g||)."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64)
    lr, m, u = 0.125, 10, U64
    theta1 = theta0 - lr * g                                    # exact: lr and g are powers of two times small ints
    per_coordinate = gamma(2, u) * (lr * g.abs() + theta1.abs()) + u * (lr * g).abs()
    expected = float(per_coordinate.norm()) + 2 * lr * gamma(m, u) * 2 * float(g.norm())
    assert rounding_allowance([theta0, theta1], [g], lr, 1, m) == pytest.approx(expected, rel=4 * U64)
    assert rounding_allowance([theta0, theta1], [g], lr, 0, m) == 0.0     # no step, nothing rounded
    # float32: every term scales with u (to first order), 2^-24 instead of 2^-53
    float32 = rounding_allowance([theta0.float(), theta1.float()], [g.float()], lr, 1, m)
    assert float32 == pytest.approx(2 ** 29 * expected, rel=1e-5)


def test_rounding_allowance_covers_the_float32_error_of_a_short_gd_run(make_small_problem):
    """The model of ||computed E_k - E_k||: a float32 run stays within it of the float64 run (whose own
    rounding is ~2^29 times smaller), for a few small steps (eta ||H|| k << 1, little error propagation)."""
    p64 = make_small_problem()
    p32 = p64.to(torch.float32)
    p64 = p32.to(torch.float64)                                   # the same theta_0, exactly representable
    lr, steps = 0.01, 3
    t32 = gradient_descent(p32.objective, p32.theta0, lr, steps)
    t64 = gradient_descent(p64.objective, p64.theta0, lr, steps)
    gap = float((t32.task_vector(steps).double() - t64.task_vector(steps)).norm())
    allowance = rounding_allowance(t32.thetas, t32.grads, lr, steps, gradient_sum_length(p32.model, 48))
    assert 0 < gap <= allowance
