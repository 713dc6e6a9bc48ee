"""Unit tests of tvtheory.symbolic: the formulas, and that each proof can fail."""

from __future__ import annotations

import sympy as sp

from tvtheory import symbolic
from tvtheory.symbolic import (
    ETA,
    H_SCALAR,
    gd_step,
    momentum_scale,
    prove_minibatch_second_order,
    prove_momentum_first_order,
    prove_quadratic_series,
    prove_second_order_coefficient,
    quadratic_gd_series,
)

eta, h = ETA, H_SCALAR


def wrong_sign_step(x, eta, grad):
    """Gradient ascent: wrong at first order."""
    return x + eta * grad


def wrong_second_order_step(x, eta, grad):
    """Correct at first order, wrong at eta^2 (learning rate eta (1 + eta))."""
    return x - eta * (1 + eta) * grad


def test_quadratic_gd_series_small_k():
    assert quadratic_gd_series(0) == 0
    assert sp.expand(quadratic_gd_series(1) + eta) == 0
    assert sp.expand(quadratic_gd_series(2) - (-2 * eta + eta**2 * h)) == 0
    assert sp.expand(quadratic_gd_series(3) - (-3 * eta + 3 * eta**2 * h - eta**3 * h**2)) == 0


def test_quadratic_gd_series_is_the_binomial_expansion():
    for k in range(1, 8):
        assert sp.expand(quadratic_gd_series(k) * h - ((1 - eta * h) ** k - 1)) == 0


def test_gd_step():
    x, g = sp.symbols("x g")
    assert gd_step(x, eta, g) == x - eta * g


def test_truncate_and_coefficients_noncommutative():
    H, g = sp.symbols("H g", commutative=False)
    expr = eta * g + eta**2 * H * g + eta**3 * H * H * g
    assert symbolic._truncate(expr, 2) == eta * g + eta**2 * H * g
    assert symbolic._coefficients(expr, 3) == [0, g, H * g, H**2 * g]


def test_prove_quadratic_series_passes():
    record = prove_quadratic_series(k_max=4)
    assert record["per_k"] == {1: True, 2: True, 3: True, 4: True}
    assert record["all_k_closed_form"] is True and record["proven"] is True


def test_prove_quadratic_series_detects_wrong_recursion():
    for step in (wrong_sign_step, wrong_second_order_step):
        record = prove_quadratic_series(k_max=4, step=step)
        assert record["proven"] is False
        assert record["all_k_closed_form"] is False
    record = prove_quadratic_series(k_max=3, step=wrong_second_order_step)
    assert record["per_k"] == {1: False, 2: False, 3: False}


def test_prove_second_order_detects_wrong_recursion():
    record = prove_second_order_coefficient(k_max=3, step=wrong_sign_step)
    assert record["proven"] is False and record["per_k"][1]["eta1"] is False
    record = prove_second_order_coefficient(k_max=3, step=wrong_second_order_step)
    assert record["proven"] is False and record["all_k_induction"] is False
    assert all(record["per_k"][k]["eta1"] for k in (1, 2, 3))  # first order is still right ...
    assert not any(record["per_k"][k]["eta2"] for k in (1, 2, 3))  # ... the eta^2 term is not
    assert not any(record["per_k"][k]["matrix_eta2"] for k in (1, 2, 3))


def test_prove_minibatch_detects_wrong_recursion():
    record = prove_minibatch_second_order(B_max=3, step=wrong_second_order_step)
    assert record["proven"] is False
    assert all(record["per_B"][b]["eta1"] for b in (1, 2, 3))
    assert not any(record["per_B"][b]["eta2"] for b in (1, 2, 3))


def test_minibatch_single_batch_is_t1():
    record = prove_minibatch_second_order(B_max=1)
    assert record["per_B"][1]["eta2"] is True  # eta^2 coefficient is the empty sum


def test_momentum_scale():
    mu = sp.Symbol("mu")
    assert sp.simplify(momentum_scale(1, mu) - 1) == 0
    assert sp.simplify(momentum_scale(2, mu) - (2 + mu)) == 0
    assert sp.simplify(momentum_scale(3, mu) - (3 + 2 * mu + mu**2)) == 0
    assert momentum_scale(4, 0) == 4  # mu = 0 is plain GD: c_k = k


def test_momentum_with_dampening_is_not_proven():
    """torch's dampening changes c_k for k >= 2: the statement is for dampening = 0 only."""
    record = prove_momentum_first_order(k_max=3, dampening=sp.Rational(1, 10))
    assert record["proven"] is False
    assert record["per_k"][1]["constant_gradient"] is True  # buf_0 = g_0 undamped: one step is T1
    assert record["per_k"][2]["constant_gradient"] is False
