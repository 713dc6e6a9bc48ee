"""Symbolic proofs of the expansions of T2(a) and T3 (tvtheory.symbolic), asserted term by term.

T2(a):  tau^(k) = -k eta g + eta^2 C(k,2) H g + R_k,  R_k = O(eta^3) and in general nonzero.
T3:     one epoch over B batches: tau = -eta sum_b g_b + eta^2 sum_b H_b sum_{c<b} g_c + O(eta^3),
        and the eta^2 term depends on the batch order.
T3 (heavy ball, torch.optim.SGD without dampening): tau^(k) = -eta c_k g + O(eta^2),
        c_k = sum_{j=0}^{k-1} (1 - mu^(j+1)) / (1 - mu), c_1 = 1.
"""

from __future__ import annotations

import sympy as sp

from tvtheory.symbolic import (
    prove_minibatch_second_order,
    prove_momentum_first_order,
    prove_second_order_coefficient,
)

K_MAX = 6


def test_t2a_first_and_second_order_coefficients():
    record = prove_second_order_coefficient(k_max=K_MAX)
    for k in range(1, K_MAX + 1):
        assert record["per_k"][k] == {
            "eta1": True, "eta2": True, "eta3": True,
            "matrix_eta1": True, "matrix_eta2": True, "matrix_eta3": True,
        }, k
    assert record["all_k_induction"] is True
    assert record["proven"] is True


def test_t2a_remainder_is_third_order_and_nonzero():
    """R_k starts at eta^3 with -C(k,3) h^2 g - (t g^2/2) sum_{j<k} j^2: zero for k = 1 only."""
    g, h, t = sp.symbols("g h t")
    eta3 = prove_second_order_coefficient(k_max=K_MAX)["eta3_coefficient"]
    assert eta3[1] == 0  # one step is exact (T1)
    assert sp.expand(eta3[2] + t * g**2 / 2) == 0  # k = 2: C(2,3) = 0, only the third derivative
    for k in range(3, K_MAX + 1):
        coefficient = sp.Poly(eta3[k], g, h, t)
        assert coefficient.coeff_monomial(g * h**2) == -sp.binomial(k, 3)
        assert coefficient.coeff_monomial(g**2 * t) == -sp.Rational(sum(j * j for j in range(k)), 2)
        assert len(coefficient.terms()) == 2


def test_t3_minibatch_expansion():
    record = prove_minibatch_second_order(B_max=4)
    for n_batches in range(1, 5):
        assert record["per_B"][n_batches] == {
            "eta0": True, "eta1": True, "eta2": True, "general_loss": True,
        }, n_batches
    assert record["proven"] is True


def test_t3_second_order_term_depends_on_batch_order():
    record = prove_minibatch_second_order(B_max=2)
    H0, H1, g0, g1 = sp.symbols("H_0 H_1 g_0 g_1", commutative=False)
    assert sp.expand(record["eta2_order_01"] - H1 * g0) == 0
    assert sp.expand(record["eta2_order_10"] - H0 * g1) == 0
    assert record["order_dependent"] is True


def test_t3_momentum_first_order_scale():
    record = prove_momentum_first_order(k_max=K_MAX)
    for k in range(1, K_MAX + 1):
        assert record["per_k"][k] == {"constant_gradient": True, "general_eta1": True, "closed_form": True}, k
    assert record["c1_is_one"] is True
    assert record["all_k_induction"] is True
    assert record["proven"] is True
