"""T2(b): k full-batch GD steps on a quadratic loss give exactly the finite series

    tau^(k) = sum_{m=0}^{k-1} (-1)^(m+1) eta^(m+1) C(k, m+1) H^m g.

(a) symbolically (sympy, k <= 6, and for all k by induction on the closed form), (b) exactly in rational
arithmetic on random integer quadratics, (c) in float64 against a derived forward error bound.

Loss: L(theta_0 + delta) = g.delta + delta^T H delta / 2 (H symmetric), so grad = g + H delta and GD is
delta_0 = 0, delta_{j+1} = delta_j - eta (g + H delta_j).
"""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tvtheory.symbolic import prove_quadratic_series

U = Fraction(1, 2**53)  # unit roundoff of float64 (round to nearest)
TINY = Fraction(1, 2**1074)  # smallest subnormal: covers the underflow error of one product


# ----------------------------------------------------------------------------------------------------
# helpers (generic over the scalar type: Fraction object arrays or float64 arrays)
# ----------------------------------------------------------------------------------------------------


def gd(H: np.ndarray, g: np.ndarray, eta, k: int) -> np.ndarray:
    """k GD steps delta <- delta - eta (g + H delta) from delta = 0 (in the arrays' own arithmetic)."""
    delta = g * 0
    for _ in range(k):
        delta = delta - eta * (g + H @ delta)
    return delta


def series(H: np.ndarray, g: np.ndarray, eta, k: int) -> np.ndarray:
    """sum_{m=0}^{k-1} (-1)^(m+1) eta^(m+1) C(k, m+1) H^m g, with H^m g by repeated H-multiplication."""
    total, v = g * 0, g
    for m in range(k):
        total = total + (-1) ** (m + 1) * eta ** (m + 1) * comb(k, m + 1) * v
        v = H @ v
    return total


def to_fraction(a: np.ndarray) -> np.ndarray:
    """Exact rational copy of a float64 array (every float is a dyadic rational)."""
    return np.array([Fraction(float(x)) for x in a.flat], dtype=object).reshape(a.shape)


def gamma(n: int) -> Fraction:
    """gamma_n = n u / (1 - n u)."""
    return n * U / (1 - n * U)


def gd_float64_with_bound(H: np.ndarray, g: np.ndarray, eta: float, k: int, eta_used: float | None = None):
    """Run GD in float64 and return (computed delta_k, exact componentwise bound on |computed - exact|).

    The float64 step is, in this order (each line one rounding per component, the matvec any order):
        s = fl(H d),  r = fl(g + s),  p = fl(eta * r),  d' = fl(d - p).
    ``eta_used`` (default: eta) is the step size the float code actually uses: a value != eta simulates
    a broken optimizer, and the bound (built for the correct step eta) must then fail.
    See test_float64_within_derived_bound for the derivation of the bound.
    """
    eta_used = eta if eta_used is None else eta_used
    n = g.shape[0]
    Hq, etaq = to_fraction(H), Fraction(eta)
    abs_step = np.abs(np.eye(n, dtype=int) - etaq * Hq)  # |I - eta H|, exact
    abs_H = np.abs(Hq)
    d = np.zeros_like(g)
    bound = np.full(n, Fraction(0), dtype=object)
    for _ in range(k):
        s = H @ d
        r = g + s
        p = eta_used * r
        d_next = d - p
        rounding = (
            abs(etaq) * (gamma(n) * (abs_H @ np.abs(to_fraction(d))) + n * TINY)  # e1: matvec
            + abs(etaq) * U * np.abs(to_fraction(r))  # e2: g + s
            + U * np.abs(to_fraction(p)) + TINY  # e3: eta * r
            + U * np.abs(to_fraction(d_next))  # e4: d - p
        )
        bound = abs_step @ bound + rounding
        d = d_next
    return d, bound


# ----------------------------------------------------------------------------------------------------
# (a) symbolic
# ----------------------------------------------------------------------------------------------------


def test_symbolic_series_k_up_to_6_and_all_k():
    record = prove_quadratic_series(k_max=6)
    assert record["per_k"] == {k: True for k in range(1, 7)}
    assert record["closed_form_equals_series"] == {k: True for k in range(1, 7)}
    assert record["all_k_closed_form"] is True
    assert record["proven"] is True


# ----------------------------------------------------------------------------------------------------
# (b) exact rational arithmetic
# ----------------------------------------------------------------------------------------------------


@st.composite
def integer_quadratics(draw):
    """Random symmetric integer H (dims 1..6), integer g, rational eta (any sign)."""
    n = draw(st.integers(1, 6))
    entries = st.integers(-5, 5)
    upper = [[draw(entries) for _ in range(n - i)] for i in range(n)]
    H = np.empty((n, n), dtype=object)
    for i in range(n):
        for j in range(i, n):
            H[i, j] = H[j, i] = Fraction(upper[i][j - i])
    g = np.array([Fraction(draw(st.integers(-9, 9))) for _ in range(n)], dtype=object)
    eta = draw(st.fractions(min_value=-2, max_value=2, max_denominator=17))
    return H, g, eta


@settings(max_examples=150)
@given(problem=integer_quadratics(), k=st.integers(1, 8))
def test_series_exact_in_rationals(problem, k):
    H, g, eta = problem
    assert np.array_equal(gd(H, g, eta, k), series(H, g, eta, k))


def test_series_exact_detects_wrong_series():
    """The exact comparison is sharp: changing one binomial coefficient breaks it."""
    H = np.array([[Fraction(2), Fraction(1)], [Fraction(1), Fraction(3)]], dtype=object)
    g = np.array([Fraction(1), Fraction(-1)], dtype=object)
    eta, k = Fraction(1, 3), 3
    wrong = series(H, g, eta, k) + eta**3 * (H @ (H @ g))  # coefficient C(3,3) = 1 replaced by 0
    assert not np.array_equal(gd(H, g, eta, k), wrong)


# ----------------------------------------------------------------------------------------------------
# (c) float64 against a derived forward error bound
# ----------------------------------------------------------------------------------------------------


@st.composite
def float_quadratics(draw, well_scaled: bool = False):
    """Random float64 symmetric H, g and eta > 0; power-of-two scalings (exact) unless well_scaled."""
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = rng.standard_normal((n, n))
    H = (A + A.T) / (2 * np.sqrt(n))
    g = rng.standard_normal(n)
    if not well_scaled:
        H = H * 2.0 ** draw(st.integers(-10, 4))
        g = g * 2.0 ** draw(st.integers(-20, 20))
    eta = draw(st.floats(min_value=1e-3, max_value=0.5))
    return H, g, eta


@settings(max_examples=100)
@given(problem=float_quadratics(), k=st.integers(1, 8))
def test_float64_within_derived_bound(problem, k):
    """float64 GD vs the exact series: |computed - exact| <= b_k componentwise, b_k derived as follows.

    Standard model (round to nearest, u = 2^-53): fl(x) = x / (1 + d), |d| <= u, so
    |fl(x) - x| <= u |fl(x)| (bounded by the computed value). A dot product of length n in any order
    (with or without FMA) satisfies |fl(a.b) - a.b| <= gamma_n |a|.|b|, gamma_n = n u / (1 - n u).
    Underflow: a sum/difference that underflows is exact; each product adds at most 2^-1075
    absolutely, covered by TINY = 2^-1074 per product (n TINY for a matvec).

    One computed step from d^_j (hats are computed values):
        s^ = H d^_j + e1,      |e1| <= gamma_n |H| |d^_j| + n TINY
        r^ = g + s^ + e2,      |e2| <= u |r^|
        p^ = eta r^ + e3,      |e3| <= u |p^| + TINY
        d^_{j+1} = d^_j - p^ + e4,   |e4| <= u |d^_{j+1}|
    so d^_{j+1} = (I - eta H) d^_j - eta g + rho_j with rho_j = -eta (e1 + e2) - e3 + e4. The exact
    iterates satisfy d_{j+1} = (I - eta H) d_j - eta g, hence err_j = d^_j - d_j obeys
        err_0 = 0,   err_{j+1} = (I - eta H) err_j + rho_j,
        |err_{j+1}| <= |I - eta H| |err_j| + |eta| (gamma_n |H| |d^_j| + n TINY) + |eta| u |r^|
                       + u |p^| + TINY + u |d^_{j+1}|  =: b_{j+1}   (running error analysis).
    b_k is evaluated in exact rational arithmetic from the computed quantities (no rounding in the
    check itself); the exact reference d_k is the T2(b) series, evaluated in rationals on the same
    float64 inputs (and checked equal to exact GD).
    """
    H, g, eta = problem
    computed, bound = gd_float64_with_bound(H, g, eta, k)
    Hq, gq, etaq = to_fraction(H), to_fraction(g), Fraction(eta)
    exact = series(Hq, gq, etaq, k)
    assert np.array_equal(exact, gd(Hq, gq, etaq, k))
    error = np.abs(to_fraction(computed) - exact)
    assert all(e <= b for e, b in zip(error, bound, strict=True)), (error, bound)


@settings(max_examples=50)
@given(problem=float_quadratics(well_scaled=True), k=st.integers(1, 8))
def test_float64_bound_is_not_vacuous(problem, k):
    """For well-scaled inputs (eta ||H|| <~ 1, |g| ~ 1) the bound is below 1e-10 relative to ||tau||_inf."""
    H, g, eta = problem
    _, bound = gd_float64_with_bound(H, g, eta, k)
    exact = series(to_fraction(H), to_fraction(g), Fraction(eta), k)
    assert max(bound) <= Fraction(1, 10**10) * max(np.abs(exact))


@settings(max_examples=30)
@given(problem=float_quadratics(well_scaled=True), k=st.integers(1, 8))
def test_float64_bound_catches_broken_gd(problem, k):
    """A GD whose step size is off by a relative 1e-9 violates the bound in some component."""
    H, g, eta = problem
    computed, bound = gd_float64_with_bound(H, g, eta, k, eta_used=eta * (1 + 1e-9))
    exact = series(to_fraction(H), to_fraction(g), Fraction(eta), k)
    error = np.abs(to_fraction(computed) - exact)
    assert any(e > b for e, b in zip(error, bound, strict=True))
