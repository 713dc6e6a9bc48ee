"""tvtheory.spectral.spectral_norm_upper: a certified upper bound on ||W||_2.

"Never below": checked exactly where cheap (s^2 I - W^T W positive (semi)definite, by Gaussian elimination
in rational arithmetic; ||w||^2 as an exact sum for vectors), else against the float64 SVD raised by its
own error allowance. "Not far above": within the factor sqrt(1 + relative_margin + 4 (k + 1) (K + 1) u) that
the module docstring derives, after a first certificate attempt that succeeds.
"""

from __future__ import annotations

import math
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

from tvtheory.spectral import (
    BLAS_THREADS,
    EIGVALSH_MAX,
    SpectralNormBound,
    blas_threads,
    certified_lambda_max,
    spectral_norm_upper,
)

U64 = 2.0 ** -53
DTYPES = (torch.float32, torch.float64)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exact_gram(w: torch.Tensor) -> list[list[Fraction]]:
    """W^T W or W W^T (the smaller side), exactly."""
    rows = [[Fraction(x) for x in row] for row in w.double().tolist()]
    if len(rows) < len(rows[0]):
        cols = rows
    else:
        cols = [list(c) for c in zip(*rows, strict=True)]
    return [[sum((a * b for a, b in zip(ci, cj, strict=True)), Fraction(0)) for cj in cols] for ci in cols]


def _exactly_above(s: float, w: torch.Tensor) -> bool:
    """s >= ||w||_2 exactly: s^2 I - G is positive semidefinite (G the exact Gram matrix)."""
    return _psd_shift(Fraction(s) ** 2, _exact_gram(w))


def _psd_shift(s2: Fraction, g: list[list[Fraction]]) -> bool:
    """s2 >= lambda_max(g) exactly: s2 I - g positive semidefinite, by exact Gaussian elimination. All pivots
    > 0 proves definiteness; a zero pivot is accepted only when its whole remaining row is zero (then that
    direction is semidefinite and is dropped)."""
    k = len(g)
    m = [[(s2 if i == j else 0) - g[i][j] for j in range(k)] for i in range(k)]
    for i in range(k):
        p = m[i][i]
        if p < 0:
            return False
        if p == 0:
            if any(m[i][j] != 0 for j in range(i + 1, k)):
                return False
            continue
        for r in range(i + 1, k):
            f = m[r][i] / p
            for c in range(i, k):
                m[r][c] -= f * m[i][c]
    return True


def _svd(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.double(), ord=2))


def _assert_certified_and_tight(w: torch.Tensor, methods=("cholesky",)) -> SpectralNormBound:
    r = spectral_norm_upper(w)
    m, n = w.shape
    k, K = min(m, n), max(m, n)
    svd = _svd(w)
    # never below: the SVD's own error is at most a few k u relative (backward stable); 4 K u covers it
    assert r.value >= svd * (1 + 4 * K * U64), (r, svd)
    # within the derived factor, on the first attempt
    assert r.method in methods and r.attempts == (1 if r.method == "cholesky" else 0), r
    assert r.value <= svd * math.sqrt(1 + r.relative_margin + 4 * (k + 1) * (K + 1) * U64), (r, svd)
    return r


def _with_singular_values(m: int, n: int, sv: torch.Tensor, seed: int) -> torch.Tensor:
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(sv), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(sv), generator=g, dtype=torch.float64))
    return (u * sv) @ v.T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (64, 14), (14, 64), (128, 64), (2, 2)])
def test_random_matrices(shape, dtype):
    w = torch.randn(*shape, generator=_gen(sum(shape)), dtype=torch.float64).to(dtype)
    _assert_certified_and_tight(w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lanczos_estimate_above_the_eigvalsh_size(dtype):
    """k = 300 > 256: the estimate comes from Lanczos; the bound is as rigorous and as tight."""
    w = torch.randn(300, 420, generator=_gen(1), dtype=torch.float64).to(dtype)
    assert min(w.shape) > EIGVALSH_MAX
    r = _assert_certified_and_tight(w)
    assert r.relative_margin == 1e-9                  # Lanczos ran until its residual was below the margin


def test_the_t4_benchmark_shape():
    """1024 x 784 (the first layer of the 1e6-parameter MLP of docs/performance.md), float32 weights."""
    w = (torch.randn(1024, 784, generator=_gen(8), dtype=torch.float64) / 28).float()
    assert _assert_certified_and_tight(w).relative_margin == 1e-9


def test_blas_threads_limits_numpy_blas_inside_only():
    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    with blas_threads():
        assert blas() and all(n == BLAS_THREADS for n in blas())
    assert blas() == before


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise", [0.0, 1e-12, 1e-6])
def test_nearly_rank_one(dtype, noise):
    g = _gen(2)
    a, b = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    w = torch.outer(a, b)
    w = (w + noise * torch.randn(40, 30, generator=g, dtype=torch.float64)).to(dtype)
    # ||W||_F is within the margin of ||W||_2 here: the Frobenius bound is returned, as tight
    _assert_certified_and_tight(w, methods=("cholesky", "frobenius"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("condition", [1e8, 1e12, 1e16])
def test_ill_conditioned(dtype, condition):
    sv = torch.logspace(0, -math.log10(condition), 12, dtype=torch.float64) * 3.0
    w = _with_singular_values(50, 20, sv, seed=3).to(dtype)
    _assert_certified_and_tight(w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_cluster_of_top_singular_values(dtype):
    sv = torch.tensor([2.0, 2.0 - 1e-13, 2.0 - 1e-9, 1.0, 0.5], dtype=torch.float64)
    _assert_certified_and_tight(_with_singular_values(30, 10, sv, seed=4).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (1, 5000), (5000, 1)])
def test_vectors_exactly(shape, dtype):
    """1 x N and N x 1: the bound is at least the exact Euclidean norm and within (K + 2) u of it."""
    w = torch.randn(*shape, generator=_gen(5), dtype=torch.float64).to(dtype)
    r = spectral_norm_upper(w)
    exact2 = sum((Fraction(x) ** 2 for x in w.double().flatten().tolist()), Fraction(0))
    assert r.method == "gram-1x1" and Fraction(r.value) ** 2 >= exact2
    assert r.value <= math.sqrt(float(exact2)) * (1 + (max(shape) + 2) * U64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4), (1, 6), (6, 1), (0, 5), (5, 0), (0, 0)])
def test_zero_and_empty_matrices_have_norm_zero(shape, dtype):
    assert spectral_norm_upper(torch.zeros(shape, dtype=dtype)) == SpectralNormBound(0.0, "zero", 0, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n"), [(2, 2), (3, 2), (2, 5), (4, 4), (6, 3)])
def test_tiny_matrices_exactly(m, n, dtype):
    for seed in range(3):
        w = torch.randn(m, n, generator=_gen(10 * seed + m + n), dtype=torch.float64).to(dtype)
        r = spectral_norm_upper(w)
        assert _exactly_above(r.value, w)
        # the exact check itself can fail: a value just below the norm is rejected
        assert not _exactly_above(_svd(w) * (1 - 1e-9), w)


@pytest.mark.parametrize("scale", [2.0 ** -1060, 2.0 ** -1000, 1e-300, 1e300, 2.0 ** 1000])
def test_extreme_scales_exactly(scale):
    """Entries near underflow (subnormal) and near overflow: the scaling by a power of two keeps the bound."""
    w = torch.randn(4, 3, generator=_gen(6), dtype=torch.float64) * scale
    r = spectral_norm_upper(w)
    assert math.isfinite(r.value) and _exactly_above(r.value, w)
    if scale >= 1e-300:      # no entry is subnormal: the bound is as tight as at scale 1
        assert r.value <= _svd(w) * (1 + 1e-8)


def test_a_norm_above_the_float_range_is_inf():
    w = torch.full((3, 3), 1.5e308, dtype=torch.float64)       # ||w||_2 = 4.5e308 > float max
    assert spectral_norm_upper(w).value == math.inf


def test_non_finite_entries():
    w = torch.ones(3, 3, dtype=torch.float64)
    w[1, 2] = math.inf
    assert spectral_norm_upper(w).value == math.inf
    w[0, 0] = math.nan
    assert math.isnan(spectral_norm_upper(w).value)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_cholesky_certificate_near_the_top_eigenvalue(k):
    """Shifts mu within 24 ulps of lambda_max(G), below and above: whenever the factorisation
    succeeds, bound (4) is >= lambda_max of the float matrix exactly. (Cholesky rarely succeeds below
    lambda_max; then only the rounding terms of (4) keep the bound above it.)"""
    gen = _gen(100 + k)
    certified = 0
    for _ in range(30):
        w = torch.randn(k + 3, k, generator=gen, dtype=torch.float64)
        G = (w.T @ w).numpy()
        G = np.tril(G) + np.tril(G, -1).T
        exact = [[Fraction(x) for x in row] for row in G.tolist()]
        lam = float(np.linalg.eigvalsh(G)[-1])
        for j in range(-24, 25):
            bound = certified_lambda_max(G, lam * (1 + j * U64))
            if bound is not None:
                certified += 1
                assert _psd_shift(bound, exact), (k, j)
    assert certified > 500          # most shifts above lambda_max certify


def test_without_a_certificate_the_frobenius_bound_is_returned():
    """rel_margin so small that no shift within 8 attempts certifies: the result is ||W||_F, rounded up."""
    w = torch.randn(20, 10, generator=_gen(7), dtype=torch.float64)
    r = spectral_norm_upper(w, rel_margin=1e-300)
    assert r.method == "frobenius" and r.attempts == 8
    fro = float(torch.linalg.vector_norm(w))
    assert fro <= r.value <= fro * (1 + 1e-12) and _exactly_above(r.value, w)


def test_user_errors_are_one_clear_line():
    with pytest.raises(ValueError, match=r"needs a matrix \(2-D tensor\), got shape \(3,\)"):
        spectral_norm_upper(torch.ones(3))
    with pytest.raises(ValueError, match="needs a floating-point matrix, got torch.int64; convert it first"):
        spectral_norm_upper(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="rel_margin must be > 0, got 0.0"):
        spectral_norm_upper(torch.ones(2, 2), rel_margin=0.0)


_FLOATS64 = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False, allow_subnormal=True)
_FLOATS32 = st.floats(min_value=-2.0 ** 100, max_value=2.0 ** 100, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(1, 5), single=st.booleans(), shift=st.integers(-1074, 0),
       rel_margin=st.sampled_from([1e-9, 1e-15, 1e-300]))
def test_property_never_below_the_exact_norm(data, m, n, single, shift, rel_margin):
    """Any finite matrix up to 5 x 5, entries of any magnitude (subnormal to 1e300), float32 or float64; and
    the same float64 matrix moved down by 2^shift, into the subnormal range. A margin at or below rounding
    level leaves only the derived safeguards of steps 1-4 between the estimate and the true norm."""
    dtype = np.float32 if single else np.float64
    w = torch.from_numpy(data.draw(hnp.arrays(dtype, (m, n), elements=_FLOATS32 if single else _FLOATS64)))
    r = spectral_norm_upper(w, rel_margin=rel_margin)
    assert r.value >= 0 and _exactly_above(r.value, w), (w, r)
    w = w.double() * 2.0 ** shift
    r = spectral_norm_upper(w, rel_margin=rel_margin)
    assert r.value >= 0 and _exactly_above(r.value, w), (w, r)
