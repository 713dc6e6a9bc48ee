"""T2(a): E_k = eta^2 C(k,2) H g + R_k with ||R_k|| = O(eta^3).

For random networks (float64) and k in 2..5, ||R_k|| is measured at eta_max / 2^i, i = 0..5, with
eta_max ||H|| k = 0.1 (the asymptotic regime), and the least-squares slope of log ||R_k|| against log eta
must exceed 2.7 (it is 3 when the eta^3 coefficient -C(k,3) H^2 g - ... is nonzero). Only remainders
resolved above their floating-point allowance enter the fit; examples where fewer than 4 are resolved
(e.g. g = 0, or k = 2 on an exactly quadratic loss where R_2 = 0) are skipped, and a fixed network
checks that the slope is really measured.
"""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import problems

from tvtheory.curvature import hessian_norm
from tvtheory.data import digits
from tvtheory.models import make_mlp
from tvtheory.problem import make_problem
from tvtheory.remainder import asymptotic_eta, remainder_slope
from tvtheory.theorems import SLOPE_THRESHOLD


def _slope(problem, k, h):
    return remainder_slope(problem, asymptotic_eta(h, k), k)


@settings(max_examples=40)
@given(problem=problems(max_width=24, max_examples=12), k=st.integers(2, 5))
def test_t2a_remainder_is_third_order(problem, k):
    h = hessian_norm(problem.objective, problem.theta0).value
    assume(h > 0)
    result = _slope(problem, k, h)
    assume(result["resolved"] >= 4)
    assert result["slope"] > SLOPE_THRESHOLD, result


def test_t2a_slope_on_digits_network():
    data = digits()
    problem = make_problem(make_mlp((64, 16, 10), "tanh", seed=0), "ce", data.subset(torch.arange(256)))
    h = hessian_norm(problem.objective, problem.theta0).value
    result = _slope(problem, 4, h)
    assert result["resolved"] == 6
    assert abs(result["slope"] - 3) < 0.1, result
