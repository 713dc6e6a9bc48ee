"""Unit tests of tvtheory.remainder: the O(eta^3) remainder of the expansion and its fitted slope.

On a quadratic loss (a linear model with MSE) the remainder is known exactly from T2(b):
R_k = tau^(k) - (-k eta g) - eta^2 C(k,2) H g = sum_{m>=2} (-1)^(m+1) eta^(m+1) C(k, m+1) H^m g.
"""

from __future__ import annotations

import math

import pytest
import torch

from tvtheory.curvature import gradient, hvp
from tvtheory.expansion import quadratic_series
from tvtheory.remainder import (
    RESOLVED_FACTOR,
    asymptotic_eta,
    loglog_slope,
    remainder_points,
    remainder_slope,
    resolved_slope,
)

U64 = 2.0 ** -53


def test_loglog_slope_and_asymptotic_eta():
    x = [1.0, 0.5, 0.25, 0.125]
    assert loglog_slope(x, [3 * t ** 3 for t in x]) == pytest.approx(3.0, abs=1e-12)
    assert asymptotic_eta(2.0, 5) == pytest.approx(0.01, rel=2 * 2.0 ** -53, abs=0)
    assert math.isfinite(asymptotic_eta(0.0, 5))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_remainder_of_a_quadratic_loss_is_the_t2b_tail(make_small_problem, k):
    """widths (4, 3): f = W x + b is linear in theta, so the MSE loss is quadratic and T2(b) gives R_k exactly."""
    p = make_small_problem(widths=(4, 3), loss="mse")
    g = gradient(p.objective, p.theta0)

    def H(v: torch.Tensor) -> torch.Tensor:
        return hvp(p.objective, p.theta0, v)

    for eta in (0.3, 0.05):
        tau = quadratic_series(H, g, eta, k)                                    # exact for a quadratic loss
        expected = tau - (-k * eta * g) - eta ** 2 * math.comb(k, 2) * H(g)
        (point,) = remainder_points(p, [eta], k)
        # both sides are float64 evaluations of the same O(||tau||) quantities over k steps
        assert point["remainder"] == pytest.approx(float(expected.norm()), abs=1e3 * k * U64 * float(tau.norm()))
        assert 0 < point["allowance"] < 1e3 * k * U64 * float(tau.norm())


def test_remainder_slope_is_3_on_a_smooth_network(small_problem):
    h = 2.0
    result = remainder_slope(small_problem, asymptotic_eta(h, 3), 3)
    assert [p["eta"] for p in result["points"]] == [asymptotic_eta(h, 3) / 2 ** i for i in range(6)]
    assert result["resolved"] >= 3
    assert result["slope"] == pytest.approx(3.0, abs=0.1)


def test_remainders_below_rounding_are_not_fitted(small_problem):
    """At eta = 1e-9 every remainder (~eta^3) is far below its rounding allowance: nothing is fitted."""
    result = remainder_slope(small_problem, 1e-9, 2, halvings=3)
    assert all(p["remainder"] <= RESOLVED_FACTOR * p["allowance"] for p in result["points"])
    assert result["resolved"] == 0 and math.isnan(result["slope"])


def test_resolved_slope_raises_the_grid_from_a_small_lr(small_problem):
    """At lr = 1e-9 the user's own grid resolves nothing; the grid is raised (by doublings, up to the asymptotic
    limit) until it does, and says so."""
    h = 2.0
    result = resolved_slope(small_problem, 1e-9, h, 2)
    grid = result["grid"]
    assert grid["raised"] and grid["resolvable"] and grid["lr"] == 1e-9
    assert 1e-9 < grid["eta_max"] <= asymptotic_eta(h, 2) == grid["cap"]
    assert [p["eta"] for p in result["points"]] == [grid["eta_max"] / 2 ** i for i in range(6)]
    assert result["resolved"] >= 3 and result["slope"] == pytest.approx(3.0, abs=0.1)
    # the top was raised no further than needed: half of it resolved too few remainders
    below = remainder_slope(small_problem, grid["eta_max"] / 2, 2)
    assert below["resolved"] < 3


def test_resolved_slope_keeps_a_resolvable_lr_and_caps_a_large_one(small_problem):
    h = 2.0
    small = resolved_slope(small_problem, asymptotic_eta(h, 2) / 4, h, 2)
    assert not small["grid"]["raised"] and small["grid"]["eta_max"] == asymptotic_eta(h, 2) / 4
    large = resolved_slope(small_problem, 10.0, h, 2)
    assert not large["grid"]["raised"] and large["grid"]["eta_max"] == asymptotic_eta(h, 2)


def test_resolved_slope_says_not_resolvable_when_no_grid_can_resolve(small_problem):
    """A (claimed) huge ||H|| puts the asymptotic limit where every remainder is rounding: not resolvable,
    slope NaN, rather than a slope to fail on."""
    result = resolved_slope(small_problem, 0.1, 1e12, 2)
    assert not result["grid"]["resolvable"] and result["resolved"] < 3 and math.isnan(result["slope"])
