"""Unit tests of tvtheory.expansion: first- and second-order terms of the task vector (T2, T3)."""

from __future__ import annotations

import math

import pytest
import torch

from tvtheory.curvature import dense_hessian, gradient
from tvtheory.expansion import (
    batch_gradients,
    batch_hvps,
    first_order_terms,
    quadratic_series,
    second_order_terms,
)
from tvtheory.trajectory import epoch_schedule, gradient_descent

U64 = 2.0 ** -53


def _norm(v):
    return float(torch.linalg.vector_norm(v))


def test_first_order_terms():
    g = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([4.0, 4.0])]
    out = first_order_terms(0.5, g, epoch_schedule(3, 2), 3)
    assert len(out) == 2
    assert torch.equal(out[0], torch.tensor([-2.5, -3.0]))
    assert torch.equal(out[1], torch.tensor([-5.0, -6.0]))


def test_batch_gradients(make_small_problem):
    p = make_small_problem(batches=3)
    gb = batch_gradients(p.batch_objectives, p.theta0)
    assert len(gb) == 3
    assert all(torch.equal(a, gradient(f, p.theta0)) for a, f in zip(gb, p.batch_objectives, strict=True))


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_second_order_term_full_batch_is_c_k2_h_g(make_small_problem, loss):
    """B = 1: E_k's second-order term is lr^2 C(k,2) H g, k = 1..5 (H dense here, for the check only).

    Tolerance 16 u ||H|| ||g|| per unit of lr^2 C(k,2): the same rounding-level budget as hvp vs H v
    (test_curvature.py); the coefficient C(k,2) is an exact integer.
    """
    p = make_small_problem(loss=loss)
    f, theta0, lr, K = p.objective, p.theta0, 0.3, 5
    g = gradient(f, theta0)
    Hg = dense_hessian(f, theta0) @ g
    norm_h = float(torch.linalg.matrix_norm(dense_hessian(f, theta0), 2))
    terms = second_order_terms(batch_hvps([f], theta0), lr, [g], epoch_schedule(1, K), 1)
    assert len(terms) == K
    assert torch.equal(terms[0], torch.zeros_like(g))              # k = 1: C(1,2) = 0 (T1 is exact)
    for k in range(1, K + 1):
        expected = lr ** 2 * math.comb(k, 2) * Hg
        tol = 16 * U64 * norm_h * _norm(g) * lr ** 2 * math.comb(k, 2)
        assert _norm(terms[k - 1] - expected) <= tol


def _naive_second_order(batch_objectives, theta0, lr, gb, schedule, B):
    """lr^2 sum_s H_{b_s} sum_{s'<s} g_{b_s'} with dense batch Hessians, accumulated step by step."""
    Hs = [dense_hessian(f, theta0) for f in batch_objectives]
    prefix = torch.zeros_like(theta0)
    total, out = torch.zeros_like(theta0), []
    for s, b in enumerate(schedule):
        total = total + Hs[b] @ prefix
        prefix = prefix + gb[b]
        if (s + 1) % B == 0:
            out.append(lr ** 2 * total)
    return out, max(float(torch.linalg.matrix_norm(H, 2)) for H in Hs)


SHUFFLED = [0, 1, 2, 2, 0, 1, 1, 2, 0, 0, 2, 1]    # a different batch order every epoch: not epoch-periodic


@pytest.mark.parametrize("schedule, path, hvps", [
    (epoch_schedule(3, 2), "periodic closed form", 5),
    (epoch_schedule(3, 4), "periodic closed form", 5),
    (SHUFFLED[:6], "per-epoch", 5),
    (SHUFFLED, "pairs", 9),
])
def test_second_order_term_three_batches_every_code_path(make_small_problem, schedule, path, hvps):
    """B = 3 over K epochs equals the naive dense sum on every path. Epoch-periodic schedules take the closed
    form (2B - 1 = 5 HVPs for any K >= 2); other schedules the general paths: K = 2, B^2 = 9 > K B = 6, one HVP
    per batch with a nonzero prefix (2 in epoch 1, 3 in epoch 2); K = 4, B^2 <= K B, the 9 products H_b g_c,
    cached. The HVP count tells which path ran.
    """
    p = make_small_problem(batches=3)
    theta0, lr, B = p.theta0, 0.2, 3
    K = len(schedule) // B
    gb = batch_gradients(p.batch_objectives, theta0)
    calls = []
    real = batch_hvps(p.batch_objectives, theta0)
    terms = second_order_terms(lambda b, v: calls.append(b) or real(b, v), lr, gb, schedule, B)
    assert len(calls) == hvps, path
    naive, norm_h = _naive_second_order(p.batch_objectives, theta0, lr, gb, schedule, B)
    assert len(terms) == len(naive) == K
    G = sum(_norm(g) for g in gb)
    for k, (a, b) in enumerate(zip(terms, naive, strict=True), start=1):
        # the coefficient of the term is at most (number of step pairs) = C(kB, 2); rounding budget as above
        tol = 16 * U64 * norm_h * G * lr ** 2 * math.comb(k * B, 2)
        assert _norm(a - b) <= tol, (k, _norm(a - b), tol)
        assert _norm(b) > 1e3 * tol                       # the comparison is not vacuous


def test_second_order_term_refuses_a_partial_epoch(make_small_problem):
    p = make_small_problem(batches=3)
    gb = batch_gradients(p.batch_objectives, p.theta0)
    with pytest.raises(ValueError, match="whole number of 3-step epochs"):
        second_order_terms(batch_hvps(p.batch_objectives, p.theta0), 0.1, gb, [0, 1, 2, 0], 3)


def test_second_order_term_depends_on_batch_order(make_small_problem):
    """T3's term is order dependent: reversing the batch order changes it (H_b g_c != H_c g_b)."""
    p = make_small_problem(batches=3)
    gb = batch_gradients(p.batch_objectives, p.theta0)
    fwd = second_order_terms(batch_hvps(p.batch_objectives, p.theta0), 0.2, gb, [0, 1, 2], 3)[0]
    rev = second_order_terms(batch_hvps(p.batch_objectives, p.theta0), 0.2, gb, [2, 1, 0], 3)[0]
    assert _norm(fwd - rev) > 1e-3 * _norm(fwd)


def test_remainder_is_third_order_in_lr(make_small_problem):
    """T2(a)/T3: tau - first - second = O(lr^3): halving lr divides the remainder by ~8."""
    p = make_small_problem(batches=2)
    f, theta0, B, K = p.objective, p.theta0, 2, 2
    batches = [torch.arange(0, 24), torch.arange(24, 48)]
    gb = batch_gradients(p.batch_objectives, theta0)
    schedule = epoch_schedule(B, K)
    first1 = first_order_terms(1.0, gb, schedule, B)[-1]
    second1 = second_order_terms(batch_hvps(p.batch_objectives, theta0), 1.0, gb, schedule, B)[-1]
    rem = []
    for lr in (0.04, 0.02, 0.01):
        tau = gradient_descent(f, theta0, lr, K, batches).task_vector(K)
        rem.append(_norm(tau - lr * first1 - lr ** 2 * second1))
    ratios = [a / b for a, b in zip(rem, rem[1:], strict=False)]
    assert all(7.0 <= r <= 9.0 for r in ratios), (rem, ratios)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_quadratic_series_equals_gd_exactly(k):
    """T2(b) on L(theta) = g.(theta - theta0) + 0.5 (theta - theta0)^T H (theta - theta0) with small integer
    H, g, theta0 and lr = 1/16.

    Exact equality holds because every number involved is a dyadic rational with few bits: lr^(m+1) =
    2^(-4(m+1)), C(k, m+1) and H^m g are small integers, and each GD iterate is theta0 + (integer vector) /
    16^j with numerators below 2^40; float64 represents all of them, and the products and sums of such
    numbers (with results of < 53 significant bits) are computed without rounding, in any order.
    """
    H = torch.tensor([[2.0, -1.0, 0.0, 1.0], [-1.0, 3.0, 1.0, 0.0], [0.0, 1.0, 1.0, -2.0], [1.0, 0.0, -2.0, 4.0]],
                     dtype=torch.float64)
    g = torch.tensor([3.0, -1.0, 2.0, 5.0], dtype=torch.float64)
    theta0 = torch.tensor([1.0, -2.0, 0.0, 7.0], dtype=torch.float64)
    lr = 1 / 16

    def loss(theta):
        d = theta - theta0
        return g @ d + 0.5 * d @ (H @ d)

    series = quadratic_series(lambda v: H @ v, g, lr, k)
    # hand-written GD: theta_{j+1} = theta_j - lr (g + H (theta_j - theta0))
    theta = theta0.clone()
    for _ in range(k):
        theta = theta - lr * (g + H @ (theta - theta0))
    assert torch.equal(series, theta - theta0)
    # the library's GD on the quadratic (gradients by autograd: g + 0.5 (H + H^T) d, also exact)
    assert torch.equal(gradient_descent(loss, theta0, lr, k).task_vector(k), series)
    # and the closed form: sum_m (-1)^(m+1) lr^(m+1) C(k, m+1) H^m g
    closed = sum((-1) ** (m + 1) * lr ** (m + 1) * math.comb(k, m + 1) * torch.linalg.matrix_power(H, m) @ g
                 for m in range(k))
    assert torch.equal(series, closed)


def test_quadratic_series_uses_k_minus_1_hvps():
    calls = []

    def hvp_fn(v):
        calls.append(1)
        return 2 * v

    out = quadratic_series(hvp_fn, torch.ones(3, dtype=torch.float64), 0.25, 4)
    assert len(calls) == 3
    # scalar H = h = 2, lr = 1/4: GD gives tau = ((1 - lr h)^k - 1) / h * g = -15/32 g, exactly
    assert torch.equal(out, torch.full((3,), ((1 - 0.5) ** 4 - 1) / 2, dtype=torch.float64))
