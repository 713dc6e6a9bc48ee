"""T6: a curvature certificate close to the truth, M >= sup of ||hess L||_2 on a segment, with failure
probability at most delta over the algorithm's own random draws (never over the data).

Two parts (theorem and proofs in docs/theory.md, T6):

1. **At a point: a Chebyshev filter test.** For a symmetric A (here H(theta), by Hessian-vector products) and a
   level U chosen before the test's draws, run y_0 = b, y_1 = A b / U, y_{k+1} = 2 A y_k / U - y_{k-1} (so
   y_k = T_k(A/U) b) from b uniform on the unit sphere, and accept when every ||y_k|| <= TAU and every
   ||A y_k|| <= TAU_W U. If ||A||_2 <= U, |T_k| <= 1 on the spectrum and the test accepts (barring rounding).
   If some eigenvalue has |lambda| >= (1 + eps) U, its component grows like T_m(1 + eps), and the computed
   iterates (each step off by at most phi, the floating-point model below) can stay small only if
       |q^T b| <= s = TAU / T_m(1 + eps) + phi / (sinh t (1 - e^-t)),   cosh t = 1 + eps,
   which for b uniform has probability at most s sqrt(2 (n - 1) / pi) (Beta(1/2, (n-1)/2) tail, Wendel's
   inequality). r independent draws all accepting: at most that to the power r. Accepting certifies
   ||A||_2 <= (1 + eps) U. U starts at the Lanczos estimate times (1 + ``LEVEL_MARGIN``) (its start vector is
   a separate draw) and rises by (1 + eps) per rejection, at most ``CertificateConfig.max_rungs`` times; the
   union bound covers every rung.
   Floating point: each step's error is the product's (the HVP rounding model ||fl(Hv) - Hv|| <= gamma_m M_a
   ||v||, m = ``fp.gradient_sum_length``, M_a an a-priori bound on ||H||, here T4) plus gamma_3 for the scaling
   and the subtraction: phi = 2 gamma_m M_a TAU / U + gamma_3 (2 TAU_W + TAU).
2. **On a segment: a fourth-derivative bound.** Along a segment of length h, G(t) = hess L(a + t (b - a)) is
   within t (1 - t) h^2 sup||G''|| / 2 of the chord (1 - t) G(0) + t G(1) (for each unit w, apply the
   interpolation error of a C^2 function to w^T G w), and ||G''|| <= h^2 K4 (``bounds.mlp_fourth_derivative_bound``
   with the segment's norms). So sup over [a, b] of ||H|| <= max(||H(a)||, ||H(b)||) + h^2 K4 / 8: the segment
   is cut into pieces short enough that h^2 K4 / 8 <= ``slack`` x (estimate), and M = max over the grid of the
   point certificates + h^2 K4 / 8 (and never above T4's bound on the segment, which holds deterministically).

Applies to the MLP of T4 with a smooth activation (tanh, sigmoid, softplus, GELU, SiLU; c1..c4 bounded), MSE or
cross-entropy, any batch loss, evaluated in float64. Not to ReLU (no Hessian) or the ViT: part 1 works for any
C^2 network given an a-priori bound M_a for its floating-point term, part 2 needs a fourth-derivative bound,
which attention and LayerNorm have only on a bounded parameter set (``T6_NOTE``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence

from .bounds import (
    T4_NOTE,
    has_curvature_bound,
    layer_norms,
    mlp_fourth_derivative_bound,
    mlp_hessian_bound,
    require_matching_batches,
)
from .curvature import hessian_operator, top_eigenpair
from .fp import gamma, gradient_sum_length, unit_roundoff
from .objective import Objective
from .problem import Problem
from .trajectory import Trajectory

TAU = 2.0            # accept only if every ||y_k|| <= TAU (exact iterates have ||y_k|| <= 1 when ||A|| <= U)
TAU_W = 4.0          # ... and every ||A y_k|| <= TAU_W U
LEVEL_MARGIN = 1e-3  # U_0 = (1 + LEVEL_MARGIN) x the Lanczos estimate (a lower estimate of ||A||)
MAX_DRAWS = 4        # r: independent test vectors per level, chosen with the degree m to minimise r m
#: the thresholds as the proof uses them: a computed norm <= TAU may be a true norm up to (1 + gamma_n) TAU,
#: gamma_n < 1e-8 for vectors of up to 9e7 entries
_NORM_ROUNDING = 1.0 + 1e-8

T6_NOTE = ("T6 (curvature certificate) does not apply: its segment part needs a fourth-derivative bound, which "
           "the feed-forward network of T4 has (c1..c4 of a smooth activation) and attention and LayerNorm have "
           "only on a bounded parameter set; the point test would also need an a-priori Hessian bound for its "
           "floating-point term. " + T4_NOTE)

Matvec = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CertificateConfig:
    """Parameters of T6. ``delta`` is the failure probability of all certificates of one call together."""

    epsilon: float = 0.1     # a point certificate is (1 + epsilon) U
    slack: float = 0.1       # grid: h^2 K4 / 8 <= slack x the estimate of ||H(a)||
    delta: float = 1e-9
    max_grid: int = 64       # at most this many pieces per segment (then the slack term is what it is)
    max_points: int = 96     # grid points of all segments of one trajectory together (a cost budget)
    max_rungs: int = 16      # levels U_0 (1 + epsilon)^j, j < max_rungs, before falling back to T4
    lanczos_tol: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and self.slack > 0 and 0 < self.delta < 1 and self.max_grid >= 1
                and self.max_rungs >= 1 and self.max_points >= 1):
            raise ValueError(f"invalid CertificateConfig {self}: need epsilon, slack > 0, 0 < delta < 1, "
                             "max_grid, max_rungs, max_points >= 1")


def chebyshev_failure(n: int, degree: int, epsilon: float, phi: float) -> float:
    """The probability bound of one draw: min(1, s sqrt(2 (n - 1) / pi)), s = TAU / T_m(1 + eps) + phi /
    (sinh t (1 - e^-t)), cosh t = 1 + eps (module docstring; the density bound behind it needs n >= 3: n = 2 is
    (2 / pi) asin(s) exactly, n = 1 is deterministic, 0 when s < 1).
    """
    t = math.acosh(1.0 + epsilon)
    growth = math.cosh(degree * t) if degree * t < 700 else math.inf
    s = TAU * _NORM_ROUNDING / growth + phi / (math.sinh(t) * (1.0 - math.exp(-t)))
    if n == 1:
        return 0.0 if s < 1 else 1.0
    if n == 2:               # c = cos of a uniform angle: P[|c| <= s] = (2 / pi) asin(s) exactly
        return (2.0 / math.pi) * math.asin(min(s, 1.0))
    return min(1.0, s * math.sqrt(2.0 * (n - 1) / math.pi))


def chebyshev_plan(n: int, epsilon: float, phi: float, target: float, max_degree: int = 2000) -> tuple[int, int, float]:
    """(degree m, draws r, failure p^r) with p^r <= target at the least cost r m (r <= ``MAX_DRAWS``)."""
    best: tuple[int, int, float] | None = None
    for r in range(1, MAX_DRAWS + 1):
        lo, hi = 1, max_degree
        if chebyshev_failure(n, hi, epsilon, phi) ** r > target:
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if chebyshev_failure(n, mid, epsilon, phi) ** r <= target:
                hi = mid
            else:
                lo = mid + 1
        if best is None or r * lo < best[0] * best[1]:
            best = (lo, r, chebyshev_failure(n, lo, epsilon, phi) ** r)
    if best is None:
        raise ValueError(f"no Chebyshev test reaches failure {target:.3g} with {MAX_DRAWS} draws: the floating-point "
                         f"term phi = {phi:.3g} is too large (float64 and an a-priori bound closer to ||H|| help)")
    return best


def chebyshev_accepts(matvec: Matvec, b: np.ndarray, level: float, degree: int) -> tuple[bool, int]:
    """(accepted, products made): y_k = T_k(A / level) b for k <= degree with every ||y_k|| <= TAU and every
    ||A y_k|| <= TAU_W level (stops at the first violation).
    """
    y_prev, y = b, b
    for k in range(degree):
        w = matvec(y)
        if not np.all(np.isfinite(w)) or np.linalg.norm(w) > TAU_W * level:
            return False, k + 1
        y_prev, y = y, (w * (1.0 / level) if k == 0 else w * (2.0 / level) - y_prev)
        if np.linalg.norm(y) > TAU:
            return False, k + 1
    return True, degree


@dataclass(frozen=True)
class PointCertificate:
    """||A||_2 <= value with probability >= 1 - failure (``certify_norm``)."""

    value: float        # (1 + epsilon) x the accepted level U (or the a-priori bound if no level was accepted)
    estimate: float     # the Lanczos estimate (a lower estimate of ||A||_2)
    level: float        # the accepted U
    rungs: int          # levels visited, U_0 (1 + eps)^j for j < rungs (the accepted one included)
    degree: int         # m
    draws: int          # r
    failure: float      # the union bound over the max_rungs levels (each planned with p^r <= its share); 0 if none ran
    products: int       # Hessian-vector products made (Lanczos and tests)
    fallback: bool      # no level accepted within max_rungs: value is the a-priori bound


def lanczos_estimate(matvec: Matvec, n: int, rng: np.random.Generator, tol: float,
                     v0: np.ndarray | None = None) -> tuple[float, np.ndarray | None, int]:
    """(max |lambda| by ARPACK, its Ritz vector, products): a lower estimate of ||A||_2 (from v0, or a draw)."""
    count = 0

    def counted(v: np.ndarray) -> np.ndarray:
        nonlocal count
        count += 1
        return matvec(v)

    start = rng.standard_normal(n) if v0 is None else v0
    if n < 3:
        cols = np.stack([counted(e) for e in np.eye(n)])
        return float(np.abs(np.linalg.eigvalsh(0.5 * (cols + cols.T))).max()), None, count
    try:
        top = top_eigenpair(counted, start, tol=tol, vectors=True)
    except ArpackNoConvergence:          # no Ritz value at all: 0 is still a lower estimate
        return 0.0, None, count
    if top is None:                      # A v0 = 0
        return 0.0, None, count
    return top[0], top[1], count


def certify_norm(matvec: Matvec, n: int, a_priori: float, sum_length: int, failure_target: float,
                 config: CertificateConfig, rng: np.random.Generator, v0: np.ndarray | None = None
                 ) -> tuple[PointCertificate, np.ndarray | None]:
    """T6 at a point: a bound on ||A||_2 from products ``matvec`` (float64), with failure <= failure_target.

    ``a_priori`` >= ||A||_2 (deterministic, e.g. T4) enters the floating-point model; ``sum_length`` is its m.
    Returns the certificate and the Ritz vector (a warm start for a nearby point).
    """
    estimate, ritz, products = lanczos_estimate(matvec, n, rng, config.lanczos_tol, v0)
    if a_priori <= 0:
        return PointCertificate(0.0, estimate, 0.0, 0, 0, 0, 0.0, products, True), ritz
    u = unit_roundoff(torch.float64)
    level = max(estimate * (1.0 + LEVEL_MARGIN), 1e-12 * a_priori)
    per_rung = failure_target / config.max_rungs
    tried = visited = 0
    for rung in range(config.max_rungs):
        if level * (1.0 + config.epsilon) >= a_priori:
            break
        visited = rung + 1
        phi = (2 * gamma(sum_length, u) * a_priori * TAU / level + gamma(3, u) * (2 * TAU_W + TAU)) * _NORM_ROUNDING
        try:
            degree, draws, _ = chebyshev_plan(n, config.epsilon, phi, per_rung)
        except ValueError:   # ||A|| far below a_priori: the rounding term has no test; a higher level may
            level *= 1.0 + config.epsilon
            continue
        tried += 1
        accepted = True
        for _ in range(draws):
            b = rng.standard_normal(n)
            b /= np.linalg.norm(b)
            ok, made = chebyshev_accepts(matvec, b, level, degree)
            products += made
            if not ok:
                accepted = False
                break
        if accepted:
            value = level * (1.0 + config.epsilon) * (1.0 + 4 * u)       # rounded up
            return PointCertificate(value, estimate, level, rung + 1, degree, draws, failure_target, products,
                                    False), ritz
        level *= 1.0 + config.epsilon
    return PointCertificate(a_priori, estimate, level, visited, 0, 0, failure_target if tried else 0.0,
                            products, True), ritz


@dataclass(frozen=True)
class SegmentCertificate:
    """M >= sup of ||hess L||_2 on [a, b] with probability >= 1 - failure (``certify_segment``)."""

    value: float                 # min(T4 on the segment, max over the grid of the point values + remainder)
    t4: float                    # T4's deterministic bound on the segment
    grid_max: float              # max over the grid points of the point certificates
    remainder: float             # h^2 K4 / 8
    fourth: float                # K4
    pieces: int                  # grid pieces (pieces + 1 points)
    failure: float
    products: int
    points: tuple[PointCertificate, ...] = field(repr=False)


def segment_constants(f: Objective, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(T4's bound, K4, length) on the segment [a, b] for the mean loss ``f`` of an MLP (norms of T4: the larger
    of the two ends).
    """
    model = f.model
    if not has_curvature_bound(model):
        raise ValueError(T6_NOTE)
    a, b = a.detach().double(), b.detach().double()
    norms = layer_norms(model.config, a).max(layer_norms(model.config, b))
    t4 = mlp_hessian_bound(model.config, f.loss, f.x, f.target, norms).mean
    k4 = mlp_fourth_derivative_bound(model.config, f.loss, f.x, f.target, norms)
    return t4, k4, float(torch.linalg.vector_norm(b - a))


def pieces_needed(length: float, k4: float, scale: float, config: CertificateConfig) -> int:
    """The fewest pieces with h^2 K4 / 8 <= slack x scale, at most max_grid (0 for a point, 1 when K4 = 0)."""
    if length == 0:
        return 0
    if k4 == 0:
        return 1
    return min(config.max_grid, math.ceil(length * math.sqrt(k4 / (8 * config.slack * max(scale, 1e-300)))))


def certify_segment(f: Objective, a: torch.Tensor, b: torch.Tensor, config: CertificateConfig,
                    failure_target: float, rng: np.random.Generator,
                    known: PointCertificate | None = None, pieces: int | None = None) -> SegmentCertificate:
    """T6 on the segment [a, b] for the mean loss ``f`` of an MLP (float64): see the module docstring.

    ``known`` may carry the certificate at ``a`` (shared by every segment from theta_0); ``pieces`` overrides
    ``pieces_needed`` (a budget). Where the grid cannot beat T4 (certificate at a + h^2 K4 / 8 >= T4) no
    further point is tested and the value is T4's.
    """
    return _certify_grid(f, a, b, segment_constants(f, a, b), config, failure_target, rng, known, pieces)


def _certify_grid(f: Objective, a: torch.Tensor, b: torch.Tensor, constants: tuple[float, float, float],
                  config: CertificateConfig, failure_target: float, rng: np.random.Generator,
                  known: PointCertificate | None, pieces: int | None) -> SegmentCertificate:
    """``certify_segment`` with its ``segment_constants`` (T4, K4, length) already computed."""
    t4, k4, length = constants
    a, b = a.detach().double(), b.detach().double()
    sum_length = gradient_sum_length(f.model, len(f))
    n = a.numel()
    products, ritz = 0, None
    first = known
    if first is None:
        first, ritz = certify_norm(hessian_operator(f, a).matvec, n, t4, sum_length, failure_target / 2, config, rng)
        products += first.products
    points = [first]
    if pieces is None:
        pieces = pieces_needed(length, k4, first.estimate, config)
    if length > 0:
        pieces = max(pieces, 1)
    h = length / pieces if pieces else 0.0
    remainder = h * h * k4 / 8 * (1.0 + 8 * unit_roundoff(torch.float64))
    if first.value + remainder < t4:
        for i in range(1, pieces + 1):
            theta = a + (b - a) * (i / pieces)
            cert, ritz = certify_norm(hessian_operator(f, theta).matvec, n, t4, sum_length,
                                      failure_target / 2 / pieces, config, rng, v0=ritz)
            products += cert.products
            points.append(cert)
    # else hopeless: T4 is at least as good as anything the grid gives, and no further point is tested
    grid_max = max(p.value for p in points)
    failure = sum(p.failure for p in points[0 if known is None else 1:])
    value = min(t4, grid_max + remainder) if len(points) == pieces + 1 else t4
    return SegmentCertificate(value, t4, grid_max, remainder, k4, pieces, failure, products, tuple(points))


def _equal_remainders(constants: list[tuple[float, float]], budget: int) -> list[int]:
    """Pieces p_s per segment (K4_s, length_s) with sum p_s <= budget (or one per segment, if more) minimising the
    largest remainder (length_s / p_s)^2 K4_s / 8: the pieces for a common remainder rho, the least rho that fits
    (bisection on log rho).
    """
    def pieces(rho: float) -> list[int]:
        return [0 if length == 0 else 1 if k4 == 0 else max(1, math.ceil(length * math.sqrt(k4 / (8 * rho))))
                for k4, length in constants]

    worst = max((length * length * k4 / 8 for k4, length in constants), default=0.0)
    if worst == 0 or sum(pieces(worst)) >= budget:
        return pieces(worst)
    lo, hi = math.log(worst) - 60.0, math.log(worst)       # pieces(exp(hi)) fits the budget
    for _ in range(80):
        mid = (lo + hi) / 2
        if sum(pieces(math.exp(mid))) <= budget:
            hi = mid
        else:
            lo = mid
    return pieces(math.exp(hi))


@dataclass(frozen=True)
class StepCertificates:
    """M_s for every step s of a trajectory (T6) beside T4's, with the total failure probability."""

    values: list[float]
    t4: list[float]
    failure: float
    products: int
    segments: list[SegmentCertificate]


def _certify_point(f: Objective, theta: torch.Tensor, failure_target: float, config: CertificateConfig,
                   rng: np.random.Generator) -> PointCertificate:
    """Lemma 1 at one point of an MLP's loss, with T4 at that point as the a-priori bound."""
    model = f.model
    if not has_curvature_bound(model):
        raise ValueError(T6_NOTE)
    theta = theta.detach().double()
    t4 = mlp_hessian_bound(model.config, f.loss, f.x, f.target, layer_norms(model.config, theta)).mean
    cert, _ = certify_norm(hessian_operator(f, theta).matvec, theta.numel(), t4, gradient_sum_length(model, len(f)),
                           failure_target, config, rng)
    return cert


def step_curvature_certificates(problem: Problem, traj: Trajectory,
                                config: CertificateConfig | None = None) -> StepCertificates:
    """T6's M_s >= sup of ||hess L_{b_s}||_2 on [theta_0, theta_s] for every step s (the batch loss of step s),
    all together with failure probability <= config.delta: half for the certificates at theta_0 (one per batch
    loss, shared by its segments), half for the segments.
    """
    config = config or CertificateConfig()
    if not has_curvature_bound(problem.model):
        raise ValueError(T6_NOTE)
    require_matching_batches(problem, traj)
    p64 = problem.to(torch.float64)
    batches = sorted(set(traj.schedule))
    per_origin = config.delta / 2 / len(batches)
    per_segment = config.delta / 2 / max(len(traj.schedule) - 1, 1)
    rng = np.random.default_rng(config.seed)
    theta0 = traj.theta0.detach().double()
    origin = {bt: _certify_point(p64.batch_objectives[bt], theta0, per_origin, config, rng) for bt in batches}
    failure = sum(c.failure for c in origin.values())
    products = sum(c.products for c in origin.values())
    constants = [segment_constants(p64.batch_objectives[bt], theta0, traj.thetas[s])
                 for s, bt in enumerate(traj.schedule)]
    needed = [pieces_needed(length, k4, origin[bt].estimate, config)
              for (_, k4, length), bt in zip(constants, traj.schedule, strict=True)]
    if sum(needed) > config.max_points:
        needed = _equal_remainders([(k4, length) for _, k4, length in constants], config.max_points)
    segments = [_certify_grid(p64.batch_objectives[bt], theta0, traj.thetas[s], constants[s], config, per_segment,
                              rng, origin[bt], needed[s]) for s, bt in enumerate(traj.schedule)]
    failure += sum(seg.failure for seg in segments)
    products += sum(seg.products for seg in segments)
    return StepCertificates([seg.value for seg in segments], [seg.t4 for seg in segments], failure, products,
                            segments)


def certified_norms(problem: Problem, thetas: Sequence[torch.Tensor], config: CertificateConfig | None = None
                    ) -> list[PointCertificate]:
    """T6 at each of the given points for the full loss (failure <= config.delta in all)."""
    config = config or CertificateConfig()
    f = problem.to(torch.float64).objective
    rng = np.random.default_rng(config.seed)
    return [_certify_point(f, theta, config.delta / len(thetas), config, rng) for theta in thetas]
