"""A certified upper bound on the spectral norm ||W||_2 of a matrix, without an SVD.

``spectral_norm_upper(W)`` returns s with s >= ||W||_2 = sqrt(lambda_max(W^T W)), rigorously: under the
standard model of IEEE double arithmetic with gradual underflow (every +, -, *, /, sqrt correctly rounded,
an FMA counting as one rounding, sums in any order), not only up to "the usual backward error". Power
iteration or Lanczos alone would give a LOWER estimate; the Cholesky step below is what certifies the
upper bound. Cost: one SYRK (K k^2 flops: the lower triangle of the Gram matrix), one Cholesky (k^3 / 3),
and a cheap estimate of lambda_max (eigvalsh for k <= 256, else Lanczos steps until the Ritz residual is
below the margin), where k = min(m, n), K = max(m, n). All of it is numpy/LAPACK under ``blas_threads()``
(``BLAS_THREADS`` threads, measured fastest: benchmarks/bench_curvature.py, check ``blas``): at the T4
bound's shapes OpenBLAS's SYRK and Cholesky run 2.5x faster than torch's GEMM and Cholesky on this machine.

Notation: u = 2^-53, eta = 2^-1075 (half the smallest subnormal: the largest error of a rounding that
underflows), gamma_j = j u / (1 - j u) (Higham, ASNA, Lemma 3.1). All scalar arithmetic on the bound is
done exactly (``fractions.Fraction``) and rounded up once at the end, so none of it needs a safeguard.

The bound and why it holds (W is m x n, float32 or float64; float32 converts to float64 exactly):

0. Scaling. e is chosen with max|w_ij| = f 2^e, f in [1/2, 1), and ws = fl(W 2^-e): exact but for
   entries that underflow, each off by at most eta, so ||W 2^-e - ws||_2 <= ||.||_F <= sqrt(mn) eta and
       ||W||_2 <= 2^e (||ws||_2 + sqrt(mn) eta).                                                      (0)
   Nothing below can overflow (|ws_ij| < 1), and ||ws||_2 >= max|ws_ij| >= 1/2, so every absolute
   underflow term below (multiples of eta ~ 2.5e-324) is negligible next to the quantities it is added to.
1. Gram matrix. G = ws^T ws (or ws ws^T, the k x k side; K is the inner dimension), Gh = fl(G) by one
   SYRK (BLAS dsyrk: the lower triangle), symmetrised from its lower triangle (Gs). Each entry is an inner
   product of length K, so
   (Higham Thm 3.5, plus eta per product that underflows, amplified by at most (1 + u)^K <= 2):
       |Gs - G| <= gamma_K |ws|^T |ws| + 2 K eta 1 1^T   entrywise.
   For symmetric E with |E| <= F entrywise, ||E||_2 <= ||F||_2; || |ws|^T |ws| ||_2 = || |ws| ||_2^2 <=
   ||ws||_F^2, and ||1 1^T||_2 = k. Hence
       lambda_max(G) <= lambda_max(Gs) + gamma_K Fro + 2 k K eta,                                     (1)
   where Fro >= ||ws||_F^2 is the computed sum of squares f raised as in (2).
2. Frobenius norm. f = fl(sum ws_ij^2) in any order: each square is ws^2 (1 + d) + e' (|d| <= u,
   |e'| <= eta), the sum adds a factor 1 + t, |t| <= gamma_{mn-1}, so f >= (1 - gamma_mn) ||ws||_F^2 - mn eta:
       ||ws||_F^2 <= (f + mn eta) / (1 - gamma_mn) =: Fro.                                            (2)
   ||ws||_2^2 <= Fro is also the fallback bound when no Cholesky certificate is found.
3. Shift. mu = (an estimate of lambda_max(Gs)) + margin; any float works: a poor estimate only makes
   step 4 fail (the margin then grows 1000x, up to 8 attempts) or the bound loose. A = fl(mu I - Gs):
   off-diagonal entries exact, A_ii = fl(mu - Gs_ii), so A = mu I - Gs + D, D diagonal,
   |D_ii| <= u |A_ii| (round to nearest; a subtraction that underflows is exact).                  (3)
4. Certificate. If the floating-point Cholesky factorisation A = R^T R (LAPACK potrf, any blocking) runs
   to completion, then R^T R = A + dA with |dA| <= gamma_{k+1} |R^T| |R| + U (Higham Thm 10.3; U covers
   underflow: eta per product in each inner product and r_jj eta from each division, both doubled for
   the later roundings, so |U_ij| <= 2 eta (k + r_max) with r_max = max_j r_jj, ||U||_2 <= k max|U_ij|).
   R^T R is positive semidefinite, so lambda_min(A) >= -||dA||_2 >= -(gamma_{k+1} ||R||_F^2 + ||U||_2),
   and ||R||_F^2 = tr(R^T R) = tr(A) + tr(dA) <= tr(A) + gamma_{k+1} ||R||_F^2 + tr|U| gives
   ||R||_F^2 <= (tr(A) + tr|U|) / (1 - gamma_{k+1}) (the argument of Rump's isspd, BIT 2006). With (3),
   lambda_min(mu I - Gs) >= lambda_min(A) - ||D||_2, i.e.
       lambda_max(Gs) <= mu + u max|A_ii| + gamma_{k+1} (tr A + kU) / (1 - gamma_{k+1}) + kU,        (4)
   kU := 2 k eta (k + r_max) >= ||U||_2, tr|U|; tr A is the exact sum of the computed diagonal, taken as
   the float just above its correctly rounded sum (math.fsum).
5. Result: s = 2^e (sqrt((4) + gamma_K Fro + 2 k K eta) + sqrt(mn) eta) by (0), (1), each square root,
   sum and the final product by 2^e rounded up (the last one matters when s is subnormal). For k = 1 the
   Gram matrix is one number and (4) is Gs itself.

How close? When the first attempt succeeds with the eigvalsh estimate (margin = rel_margin * theta), or
when the Frobenius bound is already below mu (nearly rank-one W: then it is returned, no attempt made),
(1)-(4) add to lambda_max(G) at most rel_margin + about (k (k + 1) + 2 k K + p(k)) u relative (tr A <= k mu,
||ws||_F^2 <= k ||ws||_2^2, p(k) u the eigvalsh error), so
    ||W||_2 <= s <= ||W||_2 sqrt(1 + relative_margin + 4 (k + 1) (K + 1) u),
with ``relative_margin`` as returned (margin / theta: rel_margin 1000^(attempts - 1), or the Lanczos
residual's share). For k <= 1024, K <= 10^6 and the default rel_margin = 1e-9 that is s / ||W||_2 - 1 < 3e-7.

``tvtheory.bounds.layer_norms`` takes its s_l from here (benchmarks/bench_curvature.py times it against
the SVD it replaced, check ``t4``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import numpy as np
import torch
from scipy.linalg import blas, eigh_tridiagonal, eigvalsh, lapack
from threadpoolctl import ThreadpoolController

#: unit roundoff of float64 (round to nearest) and half the smallest subnormal, exactly
U = Fraction(1, 2 ** 53)
ETA = Fraction(1, 2 ** 1075)
#: the estimate of lambda_max(G) is eigvalsh up to this k, Lanczos above
EIGVALSH_MAX = 256
MAX_ATTEMPTS = 8
#: BLAS threads of every numpy/scipy call of the library (this module's, and ARPACK's in tvtheory.curvature):
#: measured fastest on the 2-core machine of docs/performance.md (SYRK 13 vs 10-24 ms, Lanczos 3.3 vs 8.2 s
#: at P = 1e5 with the default two OpenBLAS threads; the benchmark's check ``blas`` measures it again)
BLAS_THREADS = 1


@cache
def _threadpools() -> ThreadpoolController:
    """The BLAS/OpenMP libraries loaded now (numpy's and scipy's OpenBLAS): found once, limited cheaply."""
    return ThreadpoolController()


@contextmanager
def blas_threads() -> Iterator[None]:
    """Run numpy/scipy BLAS and LAPACK calls with ``BLAS_THREADS`` threads (torch's own threads unchanged)."""
    with _threadpools().limit(limits=BLAS_THREADS, user_api="blas"):
        yield


@dataclass(frozen=True)
class SpectralNormBound:
    """A certified upper bound on ||W||_2 and how it was obtained.

    value              s >= ||W||_2 (inf if W has an infinite entry, nan if it has a NaN)
    method             "cholesky" (the certificate of steps 3-4), "gram-1x1" (k = 1: no certificate needed),
                       "frobenius" (no certificate found: ||W||_F rounded up), "zero" (W = 0 or empty),
                       or "non-finite" (an inf or NaN entry)
    attempts           Cholesky factorisations tried (0 unless method is "cholesky" or "frobenius")
    relative_margin    how far above the estimate theta of lambda_max(W^T W) (of the scaled matrix) the
                       bound starts, relative: margin / theta for "cholesky" (mu = theta + margin),
                       Fro / theta - 1 for "frobenius", 0 otherwise; it enters the tightness factor
    """

    value: float
    method: str
    attempts: int
    relative_margin: float


@cache
def gamma(j: int) -> Fraction:
    """gamma_j = j u / (1 - j u) for float64, exactly."""
    if j * U >= 1:
        raise ValueError(f"gamma_{j} is undefined in float64 (j u >= 1)")
    return j * U / (1 - j * U)


def _up(x: Fraction) -> float:
    """The smallest float >= x (inf above the float range)."""
    try:
        f = float(x)               # correctly rounded (integer true division)
    except OverflowError:
        return math.inf
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def _sqrt_up(x: Fraction) -> float:
    """A float s with s >= sqrt(x) (x >= 0): the correctly rounded root, raised one ulp when below."""
    f = _up(x)
    if math.isinf(f):
        return math.inf
    s = math.sqrt(f)
    return s if Fraction(s) ** 2 >= Fraction(f) else math.nextafter(s, math.inf)


def _times_power_of_two(w: np.ndarray, p: int) -> np.ndarray:
    """fl(w 2^p), by products with exact powers of two (two when 2^p itself would overflow).

    Exact but for results that underflow (each off by at most eta). (ldexp-style scaling by one factor
    2^p overflows for p > 1023.)
    """
    if p > 1000:
        return (w * 2.0 ** (p // 2)) * 2.0 ** (p - p // 2)
    return w * 2.0 ** p


def _gram_lower(ws: np.ndarray) -> np.ndarray:
    """Gh = fl(ws^T ws) if m >= n else fl(ws ws^T), the k x k side, by one BLAS dsyrk: the lower triangle
    (the strict upper triangle is 0). ws.T is Fortran-ordered, so no copy is made.
    """
    m, n = ws.shape
    return blas.dsyrk(1.0, ws.T, trans=0 if m >= n else 1, lower=1)


def _lanczos_top(G: np.ndarray, steps: int, rel_tol: float, seed: int = 0) -> tuple[float, float]:
    """Largest Ritz value of symmetric G after at most ``steps`` Lanczos steps (full reorthogonalisation,
    twice), and the residual norm of its Ritz vector; it stops early once that residual is <= rel_tol times
    the Ritz value (checked every 8 steps). An estimate of lambda_max(G) (from below), not a bound.
    """
    k = G.shape[0]
    steps = max(1, min(steps, k))
    q = np.asarray(np.random.default_rng(seed).standard_normal(k))
    q = q / float(np.linalg.norm(q))
    Q = np.empty((steps, k))
    alpha, beta = np.empty(steps), np.zeros(steps)

    def top(m: int, b: float) -> tuple[float, float]:
        if m == 1:
            return float(alpha[0]), abs(b)
        evals, evecs = eigh_tridiagonal(alpha[:m], beta[:m - 1])
        return float(evals[-1]), abs(b * float(evecs[-1, -1]))

    for j in range(steps):
        Q[j] = q
        w = G @ q
        alpha[j] = q @ w
        basis = Q[: j + 1]
        w -= basis.T @ (basis @ w)
        w -= basis.T @ (basis @ w)
        b = float(np.linalg.norm(w))
        if b <= 1e-14 * float(np.abs(alpha[: j + 1]).max()):       # invariant subspace found
            return top(j + 1, 0.0)[0], 0.0
        if j + 1 == steps or (j + 1) % 8 == 0:
            theta, resid = top(j + 1, b)
            if j + 1 == steps or resid <= rel_tol * theta:
                return theta, resid
        beta[j] = b
        q = w / b
    raise AssertionError("unreachable: the loop returns at its last step")


def certified_lambda_max(Gs: np.ndarray, mu: float) -> Fraction | None:
    """An upper bound on lambda_max(Gs) (Gs symmetric float64, k x k) certified by the Cholesky factorisation
    of fl(mu I - Gs) (LAPACK dpotrf), steps 3-4 of the module docstring, bound (4); None when it fails.

    Call it under ``blas_threads()`` for speed, as ``spectral_norm_upper`` does.
    """
    k = Gs.shape[0]
    A = -Gs
    A[np.diag_indices(k)] += mu                 # A_ii = fl(mu - Gs_ii), (3)
    diag = A.diagonal().tolist()
    R, info = lapack.dpotrf(A.T, lower=1, clean=0, overwrite_a=1)    # A.T = A, Fortran-ordered: no copy
    if info != 0:
        return None
    trace = Fraction(math.nextafter(math.fsum(diag), math.inf))
    r_max = Fraction(float(R.diagonal().max()))
    k_u = 2 * k * ETA * (k + r_max)
    g = gamma(k + 1)
    return Fraction(mu) + U * Fraction(max(abs(d) for d in diag)) + g * (trace + k_u) / (1 - g) + k_u     # (4)


def spectral_norm_upper(w: torch.Tensor, *, steps: int = 128, rel_margin: float = 1e-9) -> SpectralNormBound:
    """A certified upper bound s >= ||w||_2 of a 2-D floating-point tensor (see the module docstring).

    ``steps``: the most Lanczos steps of the estimate of lambda_max when min(m, n) > 256 (it stops when the
    Ritz residual is below rel_margin / 2); ``rel_margin``: the first shift above that estimate, relative.
    Neither affects the rigour of the bound, only its tightness and cost.
    """
    if w.dim() != 2:
        raise ValueError(f"spectral_norm_upper needs a matrix (2-D tensor), got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"spectral_norm_upper needs a floating-point matrix, got {w.dtype}; convert it first")
    if not rel_margin > 0:
        raise ValueError(f"rel_margin must be > 0, got {rel_margin}")
    a = w.detach().to(torch.float64).cpu().numpy()   # exact for float16, bfloat16, float32
    with blas_threads():
        return _spectral_norm_upper(a, steps, rel_margin)


def _spectral_norm_upper(a: np.ndarray, steps: int, rel_margin: float) -> SpectralNormBound:
    """``spectral_norm_upper`` of a float64 array, its arguments checked."""
    m, n = a.shape
    if a.size == 0:
        return SpectralNormBound(0.0, "zero", 0, 0.0)
    if np.isnan(a).any():
        return SpectralNormBound(math.nan, "non-finite", 0, 0.0)
    absmax = float(np.abs(a).max())
    if math.isinf(absmax):
        return SpectralNormBound(math.inf, "non-finite", 0, 0.0)
    if absmax == 0.0:
        return SpectralNormBound(0.0, "zero", 0, 0.0)
    e = math.frexp(absmax)[1]                      # absmax = f 2^e, f in [1/2, 1)
    ws = _times_power_of_two(a, -e)
    k, K = min(m, n), max(m, n)
    flat = ws.reshape(-1)
    lower = _gram_lower(ws)
    fro = (Fraction(float(flat @ flat)) + m * n * ETA) / (1 - gamma(m * n))                # (2)
    gram_err = gamma(K) * fro + 2 * k * K * ETA                                            # (1)
    scale_err = (math.isqrt(m * n) + 1) * ETA                                              # (0)

    def result(lambda_up: Fraction, method: str, attempts: int, relative_margin: float) -> SpectralNormBound:
        s = Fraction(_sqrt_up(lambda_up)) + scale_err
        # scaled back exactly and rounded up once (math.ldexp would round to nearest in the subnormal range)
        return SpectralNormBound(_up(s * Fraction(2) ** e), method, attempts, relative_margin)

    if k == 1:                                      # G is the number ||ws||^2 itself
        return result(Fraction(float(lower[0, 0])) + gram_err, "gram-1x1", 0, 0.0)
    Gs = lower + np.tril(lower, -1).T               # symmetric, from the lower triangle
    if k <= EIGVALSH_MAX:
        theta, resid = float(eigvalsh(Gs, subset_by_index=[k - 1, k - 1])[0]), 0.0
    else:
        theta, resid = _lanczos_top(Gs, steps, rel_margin / 2)
    theta = max(theta, 0.0)
    margin = max(2.0 * resid, rel_margin * theta, 1e-300)
    attempts = 0
    while attempts < MAX_ATTEMPTS:
        mu = theta + margin
        if Fraction(mu) >= fro:                     # the Frobenius bound is as good: stop here
            break
        attempts += 1
        lam = certified_lambda_max(Gs, mu)
        if lam is not None:
            return result(lam + gram_err, "cholesky", attempts, margin / theta if theta > 0 else math.inf)
        margin *= 1e3
    return result(fro, "frobenius", attempts, float(fro) / theta - 1 if theta > 0 else math.inf)
