"""Unit tests of tvtheory.curvature: gradients, Hessian-vector products, dense Hessians, ||H||_2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tvtheory.curvature import (
    dense_hessian,
    gradient,
    hessian_operator,
    hessian_spectral_norm,
    hvp,
)

U64 = 2.0 ** -53


def _unit(p, seed):
    v = torch.randn(p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / torch.linalg.vector_norm(v)


def _fd_errors(f_dir, exact, hs):
    """|central difference (f(+h) - f(-h)) / 2h - exact| for each h (vector norms for vector values)."""
    return [float(torch.linalg.vector_norm(torch.as_tensor((f_dir(h) - f_dir(-h)) / (2 * h) - exact))) for h in hs]


def _assert_second_order_convergence(errors):
    """Central differences have error c h^2 + O(h^4) + rounding O(u/h): for h in the truncation regime,
    halving h divides the error by 4. Each successive ratio must lie in [3.5, 4.5]; a wrong derivative
    leaves an O(1) error that does not shrink (ratio ~ 1)."""
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(3.5 <= r <= 4.5 for r in ratios), (errors, ratios)


HS = [4e-2, 2e-2, 1e-2, 5e-3]   # truncation ~ h^2 |f'''| ~ 1e-5..1e-7 >> rounding u |f| / h ~ 1e-14


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_gradient_matches_central_differences(make_small_problem, loss, activation):
    p = make_small_problem(loss=loss, activation=activation)
    f, theta = p.objective, p.theta0
    g = gradient(f, theta)
    for seed in range(3):
        v = _unit(theta.numel(), seed)
        errors = _fd_errors(lambda h: f(theta + h * v), g @ v, HS)
        _assert_second_order_convergence(errors)


def test_finite_difference_check_rejects_a_wrong_gradient(small_problem):
    """The convergence test can fail: a gradient off by 0.1% leaves an error that does not shrink."""
    f, theta = small_problem.objective, small_problem.theta0
    wrong = gradient(f, theta) * 1.001
    v = _unit(theta.numel(), 0)
    with pytest.raises(AssertionError):
        _assert_second_order_convergence(_fd_errors(lambda h: f(theta + h * v), wrong @ v, HS))


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_hvp_matches_central_differences_of_the_gradient(make_small_problem, loss):
    p = make_small_problem(loss=loss)
    f, theta = p.objective, p.theta0
    for seed in range(2):
        v = _unit(theta.numel(), seed)
        errors = _fd_errors(lambda h: gradient(f, theta + h * v), hvp(f, theta, v), HS)
        _assert_second_order_convergence(errors)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "silu"])
def test_hvp_equals_dense_hessian_times_v(make_small_problem, loss, activation):
    """|hvp - H v| <= 16 u ||H||_2 ||v||: both are rounding-level computations of the same quantity.

    Measured ratios |hvp - Hv| / (u ||H|| ||v||) are ~1 (up to 1.2 over 5 activations x 2 losses); 16
    leaves an order of magnitude for other shapes, and any mathematical error is ~1e15 u-units away.
    """
    p = make_small_problem(loss=loss, activation=activation)
    f, theta = p.objective, p.theta0
    H = dense_hessian(f, theta)
    assert H.shape == (51, 51)
    norm_h = float(torch.linalg.matrix_norm(H, 2))
    for seed in range(4):
        v = torch.randn(51, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10 ** (seed - 2)
        err = float(torch.linalg.vector_norm(hvp(f, theta, v) - H @ v))
        assert err <= 16 * U64 * norm_h * float(torch.linalg.vector_norm(v))


def test_dense_hessian_is_exactly_symmetric_and_matches_autograd(small_problem):
    f, theta = small_problem.objective, small_problem.theta0
    H = dense_hessian(f, theta)
    assert torch.equal(H, H.T)
    ref = torch.autograd.functional.hessian(f, theta)          # reverse-over-reverse, independent
    assert float(torch.linalg.matrix_norm(H - ref, 2)) <= 16 * U64 * float(torch.linalg.matrix_norm(H, 2))


def test_dense_hessian_refuses_large_p(small_problem):
    f, theta = small_problem.objective, small_problem.theta0
    with pytest.raises(ValueError, match=r"refusing to materialise a 51 x 51 Hessian \(P = 51 > max_params = 50\)") \
            as err:
        dense_hessian(f, theta, max_params=50)
    assert "hvp()" in str(err.value) and "hessian_spectral_norm()" in str(err.value)
    assert dense_hessian(f, theta, max_params=51).shape == (51, 51)


def test_hvp_shape_error(small_problem):
    f, theta = small_problem.objective, small_problem.theta0
    with pytest.raises(ValueError, match=r"direction v has shape \(50,\), expected \(51,\)"):
        hvp(f, theta, torch.zeros(50, dtype=torch.float64))


def test_hvp_casts_the_direction_to_thetas_dtype(small_problem):
    f, theta = small_problem.objective, small_problem.theta0
    v = _unit(51, 3)
    assert torch.equal(hvp(f, theta, v.float()), hvp(f, theta, v.float().double()))


def test_hessian_operator_matvec(small_problem):
    """The LinearOperator's products equal H v (same rounding budget as hvp vs dense), for 1-D and (P, 1)
    inputs, repeatedly at the same point."""
    f, theta = small_problem.objective, small_problem.theta0
    op = hessian_operator(f, theta)
    assert op.shape == (51, 51) and op.dtype == np.float64
    H = dense_hessian(f, theta)
    norm_h = float(torch.linalg.matrix_norm(H, 2))
    for seed in range(3):
        v = _unit(51, seed)
        ref = (H @ v).numpy()
        for out in (op.matvec(v.numpy()), op.matvec(v.numpy()[:, None]).reshape(-1)):
            assert out.shape == (51,)
            assert np.linalg.norm(out - ref) <= 16 * U64 * norm_h


@pytest.mark.parametrize("p", [5, 250])
def test_spectral_norm_of_a_zero_hessian_is_zero(p):
    """A linear loss has H = 0 (ARPACK cannot start from H v0 = 0): the norm is 0 by every method."""
    c = torch.linspace(-1, 1, p, dtype=torch.float64)

    def f(theta):
        return c @ theta

    theta = torch.ones(p, dtype=torch.float64)
    for method in ("auto", "dense", "lanczos"):
        assert hessian_spectral_norm(f, theta, method=method) == 0.0


def test_spectral_norm_lanczos_vs_dense_on_p_about_300(make_small_problem):
    """widths 10,20,4 (P = 304). Lanczos converges from below: it must not exceed the dense value by more
    than rounding, and with tol 1e-8 it must agree to 1e-6 relative."""
    p = make_small_problem(widths=(10, 20, 4), n=40)
    f, theta = p.objective, p.theta0
    assert theta.numel() == 304
    dense = hessian_spectral_norm(f, theta, method="dense")
    lanczos = hessian_spectral_norm(f, theta, method="lanczos", tol=1e-8)
    eig = torch.linalg.eigvalsh(dense_hessian(f, theta))
    assert dense == float(eig.abs().max())
    assert lanczos <= dense * (1 + 1e-12)
    assert abs(lanczos - dense) <= 1e-6 * dense
    assert hessian_spectral_norm(f, theta) == lanczos          # auto: Lanczos above P = 200, same seed


def test_spectral_norm_is_largest_magnitude_not_largest_algebraic():
    """A quadratic with eigenvalues -5, 1, 2, 3 (and a 2x2 block) has ||H||_2 = 5."""
    evals = torch.tensor([-5.0, 1.0, 2.0, 3.0, 0.5, -1.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    A = q @ torch.diag(evals) @ q.T
    A = 0.5 * (A + A.T)

    def f(theta):
        return 0.5 * theta @ (A @ theta)

    theta = torch.zeros(6, dtype=torch.float64)
    true = float(torch.linalg.eigvalsh(A).abs().max())
    assert math.isclose(true, 5.0, rel_tol=1e-14)
    for method in ("dense", "lanczos", "auto"):
        assert abs(hessian_spectral_norm(f, theta, method=method) - true) <= 1e-10 * true


def test_spectral_norm_small_p_and_unknown_method():
    A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)

    def f(theta):
        return 0.5 * theta @ (A @ theta)

    theta = torch.zeros(2, dtype=torch.float64)
    true = float(torch.linalg.eigvalsh(A).abs().max())
    assert hessian_spectral_norm(f, theta, method="lanczos") == hessian_spectral_norm(f, theta, method="dense")
    assert abs(hessian_spectral_norm(f, theta, method="lanczos") - true) <= 4 * U64 * true
    with pytest.raises(ValueError, match="unknown method 'power'; use 'auto', 'dense' or 'lanczos'"):
        hessian_spectral_norm(f, theta, method="power")
