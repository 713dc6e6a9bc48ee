"""Unit tests of T6 (tvtheory.certificate) and its fourth-derivative bound K4 (tvtheory.bounds), against dense
float64 oracles.

1. The Chebyshev test (``chebyshev_accepts``, ``chebyshev_failure``). For A = U diag(x, y, ..., y) (|x| > 1 >= |y|)
   and b uniform on the unit sphere in R^n with first coordinate c, the exact iterates y_k = T_k(A/U) b have
       ||y_k||^2 = T_k(x)^2 c^2 + T_k(y)^2 (1 - c^2),   ||A y_k||^2 / U^2 = x^2 T_k(x)^2 c^2 + y^2 T_k(y)^2 (1 - c^2),
   so in exact arithmetic the test accepts iff c^2 <= min_k (tau^2 - beta_k) / (alpha_k - beta_k) over its
   conditions (k = 1..m for tau = TAU, k = 0..m-1 for tau = TAU_W; alpha_k, beta_k the coefficients of c^2 and
   of 1 - c^2 above): an event on c^2 ~ Beta(1/2, (n-1)/2) whose probability scipy.stats.beta gives. y = 0
   (odd m) makes the event |c| <= TAU / T_m(x) exactly: the worst case of Lemma 1 at x = 1 + eps.
   ``chebyshev_failure(n, m, eps, 0)`` must be >= that probability for every |x| >= 1 + eps and, at |x| = 1 + eps,
   within 3x of it (a factor the lemma's two inequalities cannot lose: 2/sqrt 3 from the y = +-1 cases and the
   Wendel ratio).
2. ``certify_norm`` with a dense matvec: never below the dense ||A||_2, never above its own value rule, the
   fallback to the a-priori bound, a level below ||A||_2 that is accepted (the certificate must then add the
   factor 1 + eps), and rising levels.
3. ``chebyshev_plan``: failure <= target, degree minimal, cost r m minimal, ValueError for a large phi.
4. K4 = ``mlp_fourth_derivative_bound`` >= |d^4/dt^4 L(theta + t v)| and D_k of ``_derivative_recursion`` >=
   ||d^k f/dt^k|| per example (nested torch.func.jvp in float64), with hand-computed and nearly attained cases.

Run ``python tests/test_certificate.py`` for the measured tightness numbers (K4, D_3, D_4, acceptance bound /
exact probability).
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy.stats import beta
from torch.func import functional_call, jvp

from tvtheory.activations import ACTIVATIONS, NotC2Error
from tvtheory.bounds import (
    LayerNorms,
    _derivative_recursion,
    layer_norms,
    mlp_fourth_derivative_bound,
    mlp_hessian_bound,
)
from tvtheory.certificate import (
    LEVEL_MARGIN,
    MAX_DRAWS,
    TAU,
    TAU_W,
    CertificateConfig,
    certify_norm,
    chebyshev_accepts,
    chebyshev_failure,
    chebyshev_plan,
)
from tvtheory.losses import get_loss
from tvtheory.models import MLPConfig, make_mlp
from tvtheory.params import ParamLayout, flat_params

U64 = 2.0 ** -53
SMOOTH = sorted(n for n, a in ACTIVATIONS.items() if a.is_c2)


def _gamma(n: int) -> float:
    return n * U64 / (1 - n * U64)


# ------------------------------------------------------------------ 1. the exact acceptance probability (oracle)


def _chebyshev_values(x, m: int) -> list:
    """T_0(x), ..., T_m(x) in mpmath (50 digits) by the three-term recurrence."""
    with mp.workdps(50):
        x = mp.mpf(x)
        t = [mp.mpf(1), x]
        while len(t) <= m:
            t.append(2 * x * t[-1] - t[-2])
        return t[:m + 1]


def exact_acceptance(n: int, m: int, x: float, y: float) -> float:
    """P[the test of degree m accepts] in exact arithmetic for A = U diag(x, y, ..., y), b uniform on S^{n-1}
    (module docstring, part 1). n = 1: b = +-1, so the answer is 0 or 1."""
    with mp.workdps(50):
        tx, ty = _chebyshev_values(x, m), _chebyshev_values(y, m)
        thr = mp.inf
        conditions = [(tx[k] ** 2, ty[k] ** 2, TAU) for k in range(1, m + 1)]
        conditions += [((x * tx[k]) ** 2, (y * ty[k]) ** 2, TAU_W) for k in range(m)]
        for a, b, tau in conditions:
            assert b <= 1 < tau ** 2            # |y| <= 1: the 1 - c^2 part alone never violates a threshold
            if a > b:
                thr = min(thr, (tau ** 2 - b) / (a - b))
        if thr >= 1:
            return 1.0
        if n == 1:
            return 0.0
        return float(beta.cdf(float(thr), 0.5, (n - 1) / 2))


WORST_CASES = [(sign, y) for sign in (1.0, -1.0) for y in (0.0, 1.0, -1.0)]   # A/U = diag(sign x, y, ..., y)


def _bound_vs_exact(ns, ms, epsilons, growths=(1.0, 1.5, 4.0)):
    """(n, m, eps, x, y, bound, exact) over the worst cases, with |x| = growth (1 + eps)."""
    rows = []
    for n in ns:
        for m in ms:
            for eps in epsilons:
                bound = chebyshev_failure(n, m, eps, 0.0)
                for g in growths:
                    for sign, y in WORST_CASES:
                        x = sign * g * (1 + eps)
                        rows.append((n, m, eps, x, y, bound, exact_acceptance(n, m, x, y)))
    return rows


MS = (5, 8, 13, 21, 34, 60)
EPSILONS = (0.01, 0.1, 0.5, 1.0)


@pytest.mark.parametrize("n", [3, 4, 10, 100, 1000, 10_000])
def test_chebyshev_failure_bounds_the_exact_worst_case_acceptance(n):
    """bound >= exact for every |x| >= 1 + eps; at |x| = 1 + eps also bound <= 3 exact (so a bound that drops
    the factor sqrt(2 (n - 1) / pi), or uses T_m(1 + eps)^2, fails here)."""
    for _, m, eps, x, y, bound, exact in _bound_vs_exact([n], MS, EPSILONS):
        assert bound >= exact, (n, m, eps, x, y, bound, exact)
        if abs(x) == 1 + eps:
            assert bound <= 3 * exact, (n, m, eps, x, y, bound, exact)

def test_chebyshev_failure_bounds_the_exact_acceptance_for_n_2():
    """n = 2: c = q^T b is the cosine of a uniform angle, density 1/(pi sqrt(1 - c^2)) (largest at |c| = 1, so the
    n >= 3 density bound fails), and the library uses P[|c| <= s] = (2/pi) asin(s) exactly."""
    for _, m, eps, x, y, bound, exact in _bound_vs_exact([2], MS + (7, 9, 10, 11), (0.01, 0.02) + EPSILONS):
        assert bound >= exact, (m, eps, x, y, bound, exact)


def test_chebyshev_failure_n_1_is_deterministic():
    """n = 1: b = +-1, |y_m| = T_m(|x|) >= T_m(1 + eps): rejection is certain once T_m(1 + eps) > TAU (s < 1)."""
    for m in range(1, 30):
        for eps in EPSILONS:
            bound = chebyshev_failure(1, m, eps, 0.0)
            assert bound in (0.0, 1.0)
            assert bound == (0.0 if math.cosh(m * math.acosh(1 + eps)) > TAU else 1.0)
            for g in (1.0, 2.0):
                assert exact_acceptance(1, m, g * (1 + eps), 0.0) <= bound


def test_chebyshev_failure_formula_with_rounding_term():
    """p = min(1, s sqrt(2 (n - 1) / pi)), s = TAU / T_m(1 + eps) + phi / (sinh t (1 - e^-t)), cosh t = 1 + eps,
    evaluated by hand: the library's value is at least that and at most 1 + 1e-7 times it (room for a
    conservative rounding factor on the thresholds, such as a computed norm's (1 + gamma_n)); nondecreasing in
    phi and nonincreasing in m; a T_m that overflows leaves the phi term alone."""
    for n in (3, 50, 10 ** 6):          # (n = 2 is the exact arcsine law: its own test above)
        for eps in (0.01, 0.1, 1.0):
            t = math.acosh(1 + eps)
            for phi in (0.0, 1e-15, 1e-9, 1e-3):
                prev = 1.0
                for m in (1, 5, 40, 200):
                    s = TAU / math.cosh(m * t) + phi / (math.sinh(t) * (1 - math.exp(-t)))
                    expect = min(1.0, s * math.sqrt(2 * (n - 1) / math.pi))
                    got = chebyshev_failure(n, m, eps, phi)
                    assert expect * (1 - 4 * U64) <= got <= min(1.0, expect * (1 + 1e-7)), (n, eps, phi, m)
                    assert got <= prev
                    prev = got
                    assert chebyshev_failure(n, m, eps, 2 * phi + 1e-12) >= got
    t = math.acosh(1.1)
    floor = 1e-9 / (math.sinh(t) * (1 - math.exp(-t))) * math.sqrt(2 * 99 / math.pi)
    assert floor * (1 - 4 * U64) <= chebyshev_failure(100, 10 ** 6, 0.1, 1e-9) <= floor * (1 + 1e-7)


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    b = rng.standard_normal(n)
    return b / np.linalg.norm(b)


@pytest.mark.parametrize("n, m, x, y", [(3, 7, 1.05, 0.0), (3, 6, -1.05, 1.0), (2, 7, 1.02, 0.0), (10, 5, 1.2, -1.0)])
def test_exact_acceptance_oracle_matches_the_library_test(n, m, x, y):
    """The oracle describes what chebyshev_accepts does: its empirical acceptance rate over 4,000 draws (seeded)
    is within 5 binomial standard deviations of exact_acceptance (float64 rounding moves the thresholds by
    ~m^2 u, far below the resolution of 4,000 draws)."""
    A = np.diag([x] + [y] * (n - 1))
    p = exact_acceptance(n, m, x, y)
    assert 0.1 < p < 0.9                                     # an informative case
    rng = np.random.default_rng(7)
    draws = 4000
    accepted = sum(chebyshev_accepts(lambda v: A @ v, _sphere(rng, n), 1.0, m)[0] for _ in range(draws))
    assert abs(accepted / draws - p) <= 5 * math.sqrt(p * (1 - p) / draws), (accepted / draws, p)


# ------------------------------------------------------------------------------ 1b. accept / reject behaviour


def _with_eigenvalues(eigs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(eigs)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * eigs) @ q.T
    return (a + a.T) / 2


def _bounded_matrices(n: int, level: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Symmetric matrices with ||A||_2 <= level (up to the rounding of their construction, ~n u)."""
    uni = rng.uniform(-level, level, n)
    uni[rng.integers(n)] = level * rng.choice([-1.0, 1.0])    # the norm attained exactly
    out = {
        "uniform": _with_eigenvalues(uni, rng),
        "plus-minus": _with_eigenvalues(level * rng.choice([-1.0, 1.0], n), rng),
        "identity": level * np.eye(n),
        "minus-identity": -level * np.eye(n),
        "repeated": _with_eigenvalues(np.where(np.arange(n) < (n + 1) // 2, level, -level * 0.3), rng),
        "half": _with_eigenvalues(rng.uniform(-0.5, 0.5, n) * level, rng),
        "zero": np.zeros((n, n)),
    }
    return out


@pytest.mark.parametrize("level", [1e-12, 1.0, 3e8])
def test_accepts_whenever_the_norm_is_at_most_the_level(level):
    """||A||_2 <= U: every ||y_k|| <= 1 in exact arithmetic, so the test accepts (any draw, any degree):
    n = 1..60, seven kinds (||A|| = U attained, eigenvalues +-U, +-U I, repeated, 0), three draws each, the
    planned degree for eps = 0.1 and, for a few n, degree 500 (rounding grows like m^2 u: still far below
    TAU - 1)."""
    rng = np.random.default_rng(11)
    for n in range(1, 61):
        degrees = [chebyshev_plan(n, 0.1, 0.0, 1e-10)[0]] + ([500] if n in (1, 2, 3, 17, 60) else [])
        for kind, A in _bounded_matrices(n, level, rng).items():
            for m in degrees:
                for _ in range(3):
                    ok, made = chebyshev_accepts(A.__matmul__, _sphere(rng, n), level, m)
                    assert ok, (n, kind, m)
                    assert made == m


def test_rejects_when_the_norm_is_at_least_twice_the_level():
    """||A||_2 >= 2U (ratios 2, 3, 10, 1e3; dominant eigenvalue of either sign; n = 1..50; 3 draws each):
    every draw rejects. The degree is the least with a one-draw failure <= 1e-9 at eps = 1, with the rounding
    term phi of a dense product (||fl(Av) - Av|| <= gamma_n ||A||_F ||v||; it alone gives ~4e-10 at ratio 1e3,
    n = 50). The tolerated chance of a false accept is the sum of the library's own one-draw bounds over all
    1,200 draws, checked below to be < 1.2e-6."""
    rng = np.random.default_rng(5)
    tolerated = 0.0
    for n in range(1, 51):
        for ratio in (2.0, 3.0, 10.0, 1e3):
            for sign in (1.0, -1.0):
                eigs = rng.uniform(-1.0, 1.0, n) * ratio
                eigs[0] = sign * ratio
                A = _with_eigenvalues(eigs, rng)
                phi = 2 * _gamma(n) * float(np.linalg.norm(A)) * TAU + _gamma(3) * (2 * TAU_W + TAU)
                m = _least_degree(n, 1.0, phi, 1e-9, 1)
                assert m is not None
                for _ in range(3):
                    ok, made = chebyshev_accepts(A.__matmul__, _sphere(rng, n), 1.0, m)
                    assert not ok, (n, ratio, sign, m)
                    assert 1 <= made <= m
                    tolerated += chebyshev_failure(n, m, 1.0, phi)
    assert tolerated < 1.2e-6


def test_rejects_nonfinite_and_stops_at_the_first_violation():
    """A NaN product or a product above TAU_W U rejects at once (1 product); an iterate above TAU after the
    first product rejects with 1 product counted."""
    n = 4
    assert chebyshev_accepts(lambda v: v * np.nan, _sphere(np.random.default_rng(0), n), 1.0, 10) == (False, 1)
    assert chebyshev_accepts(lambda v: 5.0 * v, _sphere(np.random.default_rng(0), n), 1.0, 10) == (False, 1)
    assert chebyshev_accepts(lambda v: 3.0 * v, _sphere(np.random.default_rng(0), n), 1.0, 10) == (False, 1)


# ------------------------------------------------------------------------------------------- 2. certify_norm


def _random_symmetric(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    scale = 10.0 ** rng.uniform(-3, 3)
    if kind == "indefinite":
        g = rng.standard_normal((n, n))
        return (g + g.T) / 2 * scale
    if kind == "negative":                    # the dominant eigenvalue is negative
        eigs = rng.uniform(-0.6, 0.9, n)
        eigs[0] = -1.0
        return _with_eigenvalues(eigs * scale, rng)
    if kind == "clustered":                   # top eigenvalues within 1e-9..1e-6 of each other, both signs
        eigs = rng.uniform(-0.5, 0.5, n)
        top = [1.0, 1 - 1e-9, 1 - 1e-7, -(1 - 1e-8), 1 - 1e-6][:n]
        eigs[:len(top)] = top
        return _with_eigenvalues(eigs * scale, rng)
    if kind == "rank-one":
        u = rng.standard_normal(n)
        return np.outer(u, u) * scale * rng.choice([-1.0, 1.0])
    if kind == "tiny":
        g = rng.standard_normal((n, n))
        return (g + g.T) / 2 * 1e-12
    raise KeyError(kind)


KINDS = ("indefinite", "negative", "clustered", "rank-one", "tiny")


def _check_value_rule(cert, norm: float, config: CertificateConfig, target: float) -> None:
    """value = (1 + eps) U for an accepted level U = U_0 (1 + eps)^(rungs - 1), U_0 = (1 + LEVEL_MARGIN) x the
    Lanczos estimate (a Ritz value, so <= ||A||_2 up to rounding); hence value <= (1 + eps)(1 + margin)||A||
    (1 + eps)^(rungs - 1) (allowance 1e-12 for the rounding of the estimate and of the products, and for the
    library rounding its value up)."""
    eps = config.epsilon
    assert not cert.fallback
    assert cert.level * (1 + eps) <= cert.value <= cert.level * (1 + eps) * (1 + 1e-12)
    assert cert.estimate <= norm * (1 + 1e-12)
    u0 = cert.estimate * (1 + LEVEL_MARGIN)
    assert cert.level == pytest.approx(u0 * (1 + eps) ** (cert.rungs - 1), rel=4 * cert.rungs * U64, abs=0)
    assert cert.value <= (1 + eps) * (1 + LEVEL_MARGIN) * norm * (1 + eps) ** (cert.rungs - 1) * (1 + 1e-12)
    assert cert.failure == target and cert.degree >= 1 and 1 <= cert.draws <= MAX_DRAWS
    assert 1 <= cert.rungs <= config.max_rungs


def test_certify_norm_is_never_below_the_dense_norm():
    """>= 300 random symmetric matrices (5 kinds x n = 1, 2, 3 and 57 random sizes up to 60), a-priori bound
    2 ||A||_F (a valid bound, far enough above ||A|| that no fallback happens). Each certificate may be below
    ||A||_2 with probability <= its target 1e-9, so all 300+ hold with probability >= 1 - 3.1e-7. The first
    level is accepted (rungs = 1) whenever it is a true bound (>= ||A||_2 (1 + 1e-9)): Lemma 1 never rejects a
    true bound."""
    config = CertificateConfig()
    rng = np.random.default_rng(2024)
    target = 1e-9
    count = 0
    for kind in KINDS:
        for n in [1, 2, 3] + [int(k) for k in rng.integers(4, 61, 57)]:
            A = _random_symmetric(kind, n, rng)
            norm = float(np.linalg.norm(A, 2))
            cert, _ = certify_norm(A.__matmul__, n, 2 * float(np.linalg.norm(A)), n, target, config, rng)
            assert cert.value >= norm, (kind, n, cert, norm)
            _check_value_rule(cert, norm, config, target)
            if cert.estimate * (1 + LEVEL_MARGIN) >= norm * (1 + 1e-9):
                assert cert.rungs == 1, (kind, n, cert)
            count += 1
    assert count >= 300


def _block(top: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A = diag(top, B) with ||B||_2 = 1 (B random symmetric), and a start vector v0 = (0, random) orthogonal to
    e_1: every Krylov vector of (A, v0) has first entry exactly 0 (A maps e_1^perp to itself, exactly in float64),
    so ARPACK's estimate is ||B|| = 1, below ||A|| = top whenever top > 1."""
    g = rng.standard_normal((n - 1, n - 1))
    b = (g + g.T) / 2
    b /= np.abs(np.linalg.eigvalsh(b)).max()
    A = np.zeros((n, n))
    A[0, 0] = top
    A[1:, 1:] = b
    return A, np.concatenate([[0.0], rng.standard_normal(n - 1)])


def test_a_level_just_below_the_norm_is_accepted_and_the_value_adds_the_factor():
    """The forced level: with the block matrix of ``_block``, U = (1 + LEVEL_MARGIN) x 1 and ||A|| = U (1 + 1e-4),
    between U and (1 + eps) U. The test accepts U (|T_k(1 + 1e-4)| <= cosh(m sqrt(2e-4)) < 2 for m <= 90), so the
    certificate must be (1 + eps) U >= ||A||: reporting the accepted level U itself would be below ||A||."""
    config = CertificateConfig()
    rng = np.random.default_rng(3)
    n = 40
    level = 1.0 * (1 + LEVEL_MARGIN)
    A, v0 = _block(level * (1 + 1e-4), n, rng)
    norm = float(np.linalg.norm(A, 2))
    assert norm == level * (1 + 1e-4)
    for _ in range(5):                     # chebyshev_accepts at that level, directly
        m = chebyshev_plan(n, config.epsilon, 0.0, 1e-10)[0]
        assert chebyshev_accepts(lambda v: A @ v, _sphere(rng, n), level, m)[0]
    cert, _ = certify_norm(lambda v: A @ v, n, 10.0, n, 1e-9, config, rng, v0=v0)
    assert cert.estimate == pytest.approx(1.0, rel=1e-6)
    assert cert.level < norm                       # the accepted level is not itself a bound ...
    assert cert.rungs == 1 and not cert.fallback
    assert cert.value >= cert.level * (1 + config.epsilon) >= norm     # ... the certificate is
    _check_value_rule(cert, norm, config, 1e-9)


def test_levels_rise_after_rejections():
    """||A|| = 1.5 with a Lanczos estimate of 1 (``_block``): levels 1.001 (1.1)^j are tried until one is accepted;
    the first one is below 1.5 / (1 + eps), so it is rejected (except with probability <= 1e-9 / 16), and the
    certificate is >= 1.5 (except with probability <= 1e-9). ||A|| = 100: all 16 levels (up to 1.001 x 1.1^15 =
    4.2) are rejected and the value is the a-priori bound, with the failure bound of the tests that ran."""
    config = CertificateConfig()
    rng = np.random.default_rng(4)
    A, v0 = _block(1.5, 30, rng)
    cert, _ = certify_norm(lambda v: A @ v, 30, 10.0, 30, 1e-9, config, rng, v0=v0)
    assert cert.rungs >= 2 and cert.value >= 1.5
    _check_value_rule(cert, 1.5, config, 1e-9)
    A, v0 = _block(100.0, 30, rng)
    cert, _ = certify_norm(lambda v: A @ v, 30, 200.0, 30, 1e-9, config, rng, v0=v0)
    assert cert.fallback and cert.value == 200.0 and cert.rungs == config.max_rungs
    assert cert.failure == 1e-9                      # tests ran: their union bound is reported


@pytest.mark.parametrize("n", [1, 2, 3, 10, 40])
def test_fallback_to_the_a_priori_bound_and_zero(n):
    """a_priori <= (1 + eps)(1 + margin) x estimate: no test can improve on it, value = a_priori, failure 0.
    a_priori <= 0 (the zero matrix, where 0 is a valid bound): value 0."""
    config = CertificateConfig()
    rng = np.random.default_rng(n)
    A = _random_symmetric("indefinite", n, rng)
    norm = float(np.linalg.norm(A, 2))
    for a_priori in (norm, norm * 1.05, norm * (1 + config.epsilon) * (1 + LEVEL_MARGIN) * (1 - 1e-4)):
        cert, _ = certify_norm(lambda v: A @ v, n, a_priori, n, 1e-9, config, rng)
        assert cert.estimate == pytest.approx(norm, rel=1e-5)       # ARPACK's tol is 1e-6
        assert cert.fallback and cert.value == a_priori and cert.failure == 0.0 and cert.draws == 0
    zero = np.zeros((n, n))
    cert, _ = certify_norm(lambda v: zero @ v, n, 0.0, n, 1e-9, config, rng)
    assert cert.value == 0.0 and cert.failure == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 40])
@pytest.mark.parametrize("norm", [0.0, 1e-13])
def test_a_matrix_far_below_its_a_priori_bound_gets_a_certificate(n, norm):
    """||A|| = 0 or 1e-13 with a_priori = 2 (valid): the level is max(1.001 x estimate, 1e-12 a_priori) ~ 2e-12,
    and the certificate must be a value >= ||A|| (or the fallback a_priori), never an exception: the rounding
    term phi = 2 gamma_m a_priori TAU / level grows like a_priori / level, and where chebyshev_plan has no test for
    it (phi ~ 1e-3..1e-2 here) certify_norm moves to the next level or falls back to a_priori (it used to raise)."""
    config = CertificateConfig()
    rng = np.random.default_rng(n)
    A = _random_symmetric("indefinite", n, rng)
    A *= norm / max(float(np.linalg.norm(A, 2)), 1e-300)
    cert, _ = certify_norm(lambda v: A @ v, n, 2.0, n, 1e-9, config, rng)
    assert cert.value >= norm
    assert cert.fallback or cert.value >= cert.level * (1 + config.epsilon)


# --------------------------------------------------------------------------------------- 3. chebyshev_plan


def _least_degree(n: int, eps: float, phi: float, target: float, r: int, top: int = 2000) -> int | None:
    for m in range(1, top + 1):
        if chebyshev_failure(n, m, eps, phi) ** r <= target:
            return m
    return None


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 10 ** 6])
def test_chebyshev_plan_reaches_the_target_at_least_cost(n):
    """failure = chebyshev_failure(m)^r <= target; m - 1 misses it with r draws; r m is minimal over r <= MAX_DRAWS
    (least degrees by linear search); a plan exists exactly when some r <= MAX_DRAWS reaches the target."""
    for eps in (0.01, 0.1, 1.0):
        for phi in (0.0, 1e-14, 1e-10, 1e-6):
            for target in (1e-3, 1e-9, 1e-15):
                least = {r: _least_degree(n, eps, phi, target, r) for r in range(1, MAX_DRAWS + 1)}
                costs = [r * m for r, m in least.items() if m is not None]
                if not costs:
                    with pytest.raises(ValueError, match="phi = .* is too large"):
                        chebyshev_plan(n, eps, phi, target)
                    continue
                m, r, failure = chebyshev_plan(n, eps, phi, target)
                assert 1 <= r <= MAX_DRAWS
                assert failure == chebyshev_failure(n, m, eps, phi) ** r <= target
                assert m == 1 or chebyshev_failure(n, m - 1, eps, phi) ** r > target
                assert r * m == min(costs)


def test_chebyshev_plan_refuses_a_large_rounding_term():
    """phi = 1e-3 (eps = 0.1, n = 10^4): the phi term alone gives p ~ 0.47 per draw, p^4 > 1e-9."""
    with pytest.raises(ValueError, match="no Chebyshev test reaches failure 1e-09 with 4 draws"):
        chebyshev_plan(10_000, 0.1, 1e-3, 1e-9)


# ----------------------------------------------------------------------- 4. K4 and the derivative recursion


def _nth(fn, theta: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """d^order/dt^order fn(theta + t v) at t = 0 by nested forward-mode jvp (float64)."""
    g = fn
    for _ in range(order):
        g = (lambda prev: (lambda th: jvp(prev, (th,), (v,))[1]))(g)
    return g(theta)


def _problem(widths, activation, bias, loss, seed, n=5):
    model = make_mlp(widths, activation, bias, seed=seed)
    layout = ParamLayout.of(model)
    gen = torch.Generator().manual_seed(seed)
    theta_a = flat_params(model) * 1.5
    theta_b = theta_a + 0.3 * torch.randn(theta_a.numel(), generator=gen, dtype=torch.float64)
    x = torch.randn(n, widths[0], generator=gen, dtype=torch.float64) * 1.5
    if loss == "mse":
        target = torch.randn(n, widths[-1], generator=gen, dtype=torch.float64)
    else:
        target = torch.randint(0, widths[-1], (n,), generator=gen)
    return model, layout, theta_a, theta_b, x, target, gen


def _unit(gen, p):
    v = torch.randn(p, generator=gen, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v)


K4_WIDTHS = [(3, 4), (2, 5, 3), (1, 1, 2), (4, 16, 3), (3, 7, 5, 2), (2, 3, 4, 6, 3)]


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_fourth_derivative_bound_dominates_the_directional_derivative(activation, loss):
    """K4 (with the norms of a segment [theta_a, theta_b]) >= |d^4/dt^4 L(theta + t v)| at theta_a and the midpoint
    for random unit v: depths 1-4, widths 1-16, biases on and off, N = 5. One-layer MSE: K4 = 0 exactly (L is
    quadratic in theta)."""
    lf = get_loss(loss)
    for i, widths in enumerate(K4_WIDTHS):
        for bias in (True, False):
            model, layout, theta_a, theta_b, x, target, gen = _problem(widths, activation, bias, loss, 10 * i + bias)
            config = model.config
            norms = layer_norms(config, theta_a).max(layer_norms(config, theta_b))
            k4 = mlp_fourth_derivative_bound(config, lf, x, target, norms)

            def L(th, model=model, layout=layout, x=x, target=target):
                return lf.fn(functional_call(model, layout.unflatten(th), (x,)), target)

            if len(widths) == 2 and loss == "mse":
                assert k4 == 0.0
            else:
                assert k4 > 0
            for theta in (theta_a, 0.5 * (theta_a + theta_b)):
                for _ in range(2):
                    d4 = float(_nth(L, theta, _unit(gen, theta.numel()), 4))
                    assert abs(d4) <= k4, (widths, bias, d4, k4)


def test_fourth_derivative_bound_one_layer_by_hand():
    """L = 1: f = W x + b is linear in theta, so D_1 = ||(x, 1)||, D_2 = D_3 = D_4 = 0 and K4 = kappa_4 mean D_1^4
    (CE; MSE: 0) times the recursion's slack 1 + 32 (L + 4) u; the true fourth derivative of one example is
    below it."""
    config = MLPConfig((3, 4), "tanh", True)
    model = make_mlp((3, 4), "tanh")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=gen)
    theta = flat_params(model)
    norms = layer_norms(config, theta)
    d, _ = _derivative_recursion(config, x, norms, 4)
    e = torch.sqrt((x ** 2).sum(1) + 1)
    assert torch.allclose(d[0], e, rtol=4 * U64, atol=0)
    assert all(float(dk.abs().max()) == 0.0 for dk in d[1:])
    ce = get_loss("ce")
    k4 = mlp_fourth_derivative_bound(config, ce, x, y, norms)
    assert k4 == pytest.approx(ce.fourth * float((e ** 4).mean()) * (1 + 32 * 5 * U64), rel=16 * U64, abs=0)
    assert mlp_fourth_derivative_bound(config, get_loss("mse"), x, torch.zeros(6, 4, dtype=torch.float64),
                                       norms) == 0.0
    layout = ParamLayout.of(model)

    def L(th):
        return ce.fn(functional_call(model, layout.unflatten(th), (x,)), y)

    for _ in range(5):
        assert abs(float(_nth(L, theta, _unit(gen, theta.numel()), 4))) <= k4


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("bias", [True, False])
def test_derivative_recursion_bounds_each_examples_output_derivatives(activation, bias):
    """D_k[i] >= ||d^k f(x_i; theta + t v)/dt^k|| at t = 0, k = 1..4, per example, for random unit v (the batch
    output differentiated at once), at theta_a and theta_b with the segment's norms; D_1, D_2 are T4's J, Q."""
    for i, widths in enumerate([(2, 6, 5, 3), (1, 1, 1, 1), (3, 16, 2), (2, 4, 3, 4, 2)]):
        model, layout, theta_a, theta_b, x, _, gen = _problem(widths, activation, bias, "mse", 7 + i)
        config = model.config
        norms = layer_norms(config, theta_a).max(layer_norms(config, theta_b))
        d, _ = _derivative_recursion(config, x, norms, 4)
        t4 = mlp_hessian_bound(config, get_loss("mse"), x, torch.zeros(len(x), widths[-1], dtype=torch.float64),
                               norms)
        slack = 1 + 16 * (config.depth + 4) * U64
        assert torch.allclose(d[0] * slack, t4.J, rtol=4 * U64, atol=0)
        assert torch.allclose(d[1] * slack, t4.Q, rtol=4 * U64, atol=0)

        def f(th, model=model, layout=layout, x=x):
            return functional_call(model, layout.unflatten(th), (x,))

        for theta in (theta_a, theta_b):
            for _ in range(3):
                v = _unit(gen, theta.numel())
                for k in range(1, 5):
                    measured = torch.linalg.vector_norm(_nth(f, theta, v, k), dim=1)
                    assert torch.all(measured <= d[k - 1]), (widths, k, measured, d[k - 1])


def test_derivative_recursion_by_hand_three_layers():
    """widths (2, 2, 2, 1), tanh, given norms s = (2, 3, 0.5), beta = (1, 0, 2), x = (3, 4): D_1..D_4 of the
    docstring's recursion computed by hand (plain floats)."""
    act = ACTIVATIONS["tanh"]
    assert act.c1 is not None and act.c2 is not None and act.c3 is not None and act.c4 is not None
    c = [1.0, act.c1, act.c2, act.c3, act.c4]
    config = MLPConfig((2, 2, 2, 1), "tanh", True)
    s, bt = [2.0, 3.0, 0.5], [1.0, 0.0, 2.0]
    norms = LayerNorms(torch.tensor(s, dtype=torch.float64), torch.tensor(bt, dtype=torch.float64))
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    a = 5.0
    D = [0.0] * 5
    for layer in range(3):
        e = math.sqrt(a * a + 1)
        if layer > 0:
            d1, d2, d3, d4 = D[1:]
            H = [0.0, c[1] * d1, c[2] * d1 ** 2 + c[1] * d2, c[3] * d1 ** 3 + 3 * c[2] * d1 * d2 + c[1] * d3,
                 c[4] * d1 ** 4 + 6 * c[3] * d1 ** 2 * d2 + c[2] * (3 * d2 ** 2 + 4 * d1 * d3) + c[1] * d4]
            D = [0.0, D[1]] + [s[layer] * H[k] + k * H[k - 1] for k in (2, 3, 4)]
        D[1] = math.sqrt(e * e + (c[1] * s[layer] * D[1]) ** 2)
        if layer < 2:
            a = act.sigma0 * math.sqrt(2) + c[1] * (s[layer] * a + bt[layer])
    got, a_last = _derivative_recursion(config, x, norms, 4)
    assert float(a_last[0]) == pytest.approx(a, rel=4 * U64)
    for k in range(1, 5):
        assert float(got[k - 1][0]) == pytest.approx(D[k], rel=16 * U64, abs=0), k
    assert D[3] > 0 and D[4] > 0


@pytest.mark.parametrize("k", [3, 4])
def test_derivative_recursion_nearly_attained_in_one_dimension(k):
    """widths 1,1,1, tanh, f = w2 tanh(w1 x + b1) + b2 with x = 1, b1 = 0, w2 = 100 and w1 = z* where |tanh^(k)| =
    c_k (z* = 0 for k = 3; tanh^2 z* = 1/2 - sqrt(105)/30 for k = 4). Along v = (1, 1, 0, 0)/sqrt 2,
    f^(k) = w2 tanh^(k)(z*) 2^(k/2), while D_k = s_2 c_k 2^(k/2) + k c_{k-1} 2^((k-1)/2): ratio > 0.98, so the
    recursion (and the constants c3, c4) cannot be smaller than stated without this test failing."""
    z = 0.0 if k == 3 else math.atanh(math.sqrt(0.5 - math.sqrt(105) / 30))
    theta = torch.tensor([z, 0.0, 100.0, 0.0], dtype=torch.float64)
    model = make_mlp((1, 1, 1))
    layout = ParamLayout.of(model)
    x = torch.ones(1, 1, dtype=torch.float64)
    v = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    measured = abs(float(_nth(lambda th: functional_call(model, layout.unflatten(th), (x,)), theta, v, k)))
    d, _ = _derivative_recursion(model.config, x, layer_norms(model.config, theta), 4)
    bound = float(d[k - 1][0])
    act = ACTIVATIONS["tanh"]
    ck, ck1 = getattr(act, f"c{k}"), getattr(act, f"c{k - 1}")
    assert bound == pytest.approx(100 * ck * 2 ** (k / 2) + k * ck1 * 2 ** ((k - 1) / 2), rel=1e-9)
    assert measured <= bound
    assert measured >= 0.98 * bound


def test_fourth_derivative_bound_refuses_relu():
    config = MLPConfig((3, 4, 2), "relu")
    theta = flat_params(make_mlp((3, 4, 2), "relu"))
    with pytest.raises(NotC2Error):
        mlp_fourth_derivative_bound(config, get_loss("ce"), torch.zeros(2, 3, dtype=torch.float64),
                                    torch.zeros(2, dtype=torch.int64), layer_norms(config, theta))


# ------------------------------------------------------------------------------------------- measurements


def _ascend(fn, theta, v, order, steps=25, lr=0.3):
    """A few steps of normalised gradient ascent on ||d^order fn(theta + t v)/dt^order|| over unit v (the best
    value seen)."""
    def value(w):
        return torch.linalg.vector_norm(_nth(fn, theta, w / torch.linalg.vector_norm(w), order))

    best = float(value(v))
    for _ in range(steps):
        w = v.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(value(w), w)
        v = (v + lr * g / (torch.linalg.vector_norm(g) + 1e-300)).detach()
        v = v / torch.linalg.vector_norm(v)
        best = max(best, float(value(v)))
    return best


def _measure() -> None:  # pragma: no cover - run by hand: python tests/test_certificate.py
    torch.set_num_threads(1)
    ratios = []
    for n in (3, 10, 100, 1000, 10_000):
        for _, m, eps, x, y, bound, exact in _bound_vs_exact([n], MS, EPSILONS, growths=(1.0,)):
            if 0 < exact and bound < 1:
                ratios.append((bound / exact, n, m, eps, x, y))
    ratios.sort()
    print(f"acceptance, n >= 3, |x| = 1 + eps, bound < 1: bound / exact min {ratios[0]}, max {ratios[-1]}")
    for m, eps in ((9, 0.01), (7, 0.02), (10, 0.01), (5, 0.05)):
        print(f"n = 2, m = {m}, eps = {eps}: bound {chebyshev_failure(2, m, eps, 0.0):.4f}, exact "
              f"{max(exact_acceptance(2, m, s * (1 + eps), y) for s, y in WORST_CASES):.4f}")
    k4r: list = []
    dr: dict[int, list] = {3: [], 4: []}
    for activation in SMOOTH:
        for loss in ("mse", "ce"):
            for i, widths in enumerate(K4_WIDTHS[1:]):
                model, layout, theta, _, x, target, gen = _problem(widths, activation, True, loss, i)
                config, lf = model.config, get_loss(loss)
                norms = layer_norms(config, theta)
                k4 = mlp_fourth_derivative_bound(config, lf, x, target, norms)

                def L(th, model=model, layout=layout, x=x, target=target, lf=lf):
                    return lf.fn(functional_call(model, layout.unflatten(th), (x,)), target)

                best = max(_ascend(L, theta, _unit(gen, theta.numel()), 4) for _ in range(3))
                k4r.append((k4 / best, activation, loss, widths))
                if loss == "mse":
                    d, _ = _derivative_recursion(config, x[:1], norms, 4)

                    def f0(th, model=model, layout=layout, x=x):
                        return functional_call(model, layout.unflatten(th), (x[:1],))[0]

                    for k in (3, 4):
                        best_k = max(_ascend(f0, theta, _unit(gen, theta.numel()), k) for _ in range(3))
                        dr[k].append((float(d[k - 1][0]) / best_k, activation, widths))
    k4r.sort()
    print(f"K4 / max_v |d^4 L| (3 ascents of 25 steps): min {k4r[0]}, median {k4r[len(k4r) // 2]}, max {k4r[-1]}")
    for k in (3, 4):
        dr[k].sort()
        print(f"D_{k} / max_v ||d^{k} f|| (example 0, 3 ascents): min {dr[k][0]}, median {dr[k][len(dr[k]) // 2]}, "
              f"max {dr[k][-1]}")


if __name__ == "__main__":  # pragma: no cover
    _measure()
