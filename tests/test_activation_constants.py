"""Re-derive the T4 activation constants c1 = sup|sigma'|, c2 = sup|sigma''| and |sigma(0)| with mpmath.

For each activation the suprema are found from first principles (mp.dps = 40): the critical points of
sigma^(n) are the sign changes of sigma^(n+1), located on a grid over [-40, 40] and refined with
mp.findroot; sup|sigma^(n)| is the largest of |sigma^(n)| at those points and of its limits at
+-infinity (a maximum of a smooth function is either a sign change of its derivative or a limit).
Outside [-40, 40] every derivative is within exp(-40) of its limit. The derivative formulas are
written out analytically and cross-checked against mp.diff.

The table in tvtheory.activations must be a valid bound (>= the true supremum) and not loose
(<= supremum * (1 + 1e-11)); |sigma(0)| likewise. A float64 autograd sweep over [-30, 30] checks the
same constants against the functions the library actually evaluates (torch).
"""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from torch.func import grad, vmap

from tvtheory.activations import ACTIVATIONS

DPS = 40
REL_SLACK = "1e-11"  # the table rounds up at the 13th significant digit


@pytest.fixture(autouse=True)
def _precision():
    """Work at mp.dps = 40 inside each test, restoring mpmath's global precision afterwards."""
    with mp.workdps(DPS):
        yield


def _s(x):
    return 1 / (1 + mp.exp(-x))


def _tanh_derivs(x):
    t = mp.tanh(x)
    q = 1 - t**2
    return q, -2 * t * q, q * (6 * t**2 - 2)


def _sigmoid_derivs(x):
    s = _s(x)
    q = s * (1 - s)
    return q, q * (1 - 2 * s), q * (1 - 6 * s + 6 * s**2)


def _softplus_derivs(x):
    s = _s(x)
    q = s * (1 - s)
    return s, q, q * (1 - 2 * s)


def _gelu_derivs(x):
    phi = mp.npdf(x)
    return mp.ncdf(x) + x * phi, phi * (2 - x**2), phi * (x**3 - 4 * x)


def _silu_derivs(x):
    s = _s(x)
    q = s * (1 - s)
    return s + x * q, q * (2 + x * (1 - 2 * s)), q * ((1 - 2 * s) * (3 + x * (1 - 2 * s)) - 2 * x * q)


# name: (sigma in mpmath, (sigma', sigma'', sigma''') analytic, limits of (sigma', sigma'') at (-inf, +inf))
EXACT = {
    "tanh": (mp.tanh, _tanh_derivs, ((0, 0), (0, 0))),
    "sigmoid": (_s, _sigmoid_derivs, ((0, 0), (0, 0))),
    "softplus": (lambda x: mp.log1p(mp.exp(x)), _softplus_derivs, ((0, 1), (0, 0))),
    "gelu": (lambda x: x * mp.ncdf(x), _gelu_derivs, ((0, 1), (0, 0))),
    "silu": (lambda x: x * _s(x), _silu_derivs, ((0, 1), (0, 0))),
}


def closed_forms() -> dict:
    """Closed forms of the suprema where they exist (independent of the numerical search below)."""
    return {
        ("tanh", 1): mp.mpf(1),
        ("tanh", 2): 4 / (3 * mp.sqrt(3)),
        ("sigmoid", 1): mp.mpf(1) / 4,
        ("sigmoid", 2): 1 / (6 * mp.sqrt(3)),
        ("softplus", 1): mp.mpf(1),
        ("softplus", 2): mp.mpf(1) / 4,
        ("gelu", 1): mp.ncdf(mp.sqrt(2)) + mp.sqrt(2) * mp.npdf(mp.sqrt(2)),
        ("gelu", 2): mp.sqrt(2 / mp.pi),
        ("silu", 2): mp.mpf(1) / 2,
    }


def _critical_points(f, lo=-40, hi=40, n=1600):
    """Sign changes of f on a grid (offset so that no grid point is a likely root), refined by findroot."""
    step = mp.mpf(hi - lo) / n
    xs = [lo + mp.mpf("0.0123") + i * step for i in range(n)]
    values = [f(x) for x in xs]
    return [
        mp.findroot(f, (a, b), solver="anderson")
        for a, b, fa, fb in zip(xs, xs[1:], values, values[1:], strict=False)
        if fa * fb < 0
    ]


def true_supremum(name: str, order: int) -> mp.mpf:
    """sup_x |sigma^(order)(x)| from the critical points of sigma^(order) and its limits at +-inf."""
    _, derivs, limits = EXACT[name]
    d = lambda x: derivs(x)[order - 1]  # noqa: E731
    d_next = lambda x: derivs(x)[order]  # noqa: E731
    candidates = [abs(d(c)) for c in _critical_points(d_next)]
    candidates += [abs(mp.mpf(lim)) for lim in limits[order - 1]]
    return max(candidates)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_analytic_derivatives_match_mpmath_diff(name):
    sigma, derivs, _ = EXACT[name]
    for x in (mp.mpf("-3.7"), mp.mpf("-0.4"), mp.mpf("0.9"), mp.mpf("2.6")):
        for order, value in enumerate(derivs(x), start=1):
            assert abs(value - mp.diff(sigma, x, order)) < mp.mpf("1e-25")


@pytest.mark.parametrize("name", sorted(EXACT))
def test_limits_at_infinity(name):
    _, derivs, limits = EXACT[name]
    for order in (1, 2):
        for x, lim in zip((mp.mpf(-200), mp.mpf(200)), limits[order - 1], strict=True):
            assert abs(derivs(x)[order - 1] - lim) < mp.mpf("1e-30")


@pytest.mark.parametrize("name", sorted(EXACT))
@pytest.mark.parametrize("order", [1, 2])
def test_table_constant_is_tight_valid_bound(name, order):
    sup = true_supremum(name, order)
    closed = closed_forms().get((name, order))
    if closed is not None:
        assert abs(sup - closed) <= mp.mpf("1e-30") * sup
    act = ACTIVATIONS[name]
    table = mp.mpf(act.c1 if order == 1 else act.c2)  # exact value of the float64 in the table
    assert table >= sup, f"{name} c{order} = {act.c1 if order == 1 else act.c2} < sup = {mp.nstr(sup, 20)}"
    assert table <= sup * (1 + mp.mpf(REL_SLACK)), f"{name} c{order} is loose: sup = {mp.nstr(sup, 20)}"


def test_silu_c1_location():
    """sup|SiLU'| is attained at the positive root of SiLU'' (x ~ 2.399357), value ~ 1.099839."""
    roots = _critical_points(lambda x: _silu_derivs(x)[1])
    assert len(roots) == 2  # x tanh(x/2) = 2 has the two roots +-x_star
    x_star = max(roots)
    assert abs(x_star - mp.mpf("2.399357")) < mp.mpf("1e-6")
    assert abs(_silu_derivs(x_star)[0] - true_supremum("silu", 1)) < mp.mpf("1e-35")


@pytest.mark.parametrize("name", sorted(EXACT))
def test_sigma0(name):
    sigma, _, _ = EXACT[name]
    true = abs(sigma(mp.mpf(0)))
    table = mp.mpf(ACTIVATIONS[name].sigma0)
    assert true <= table <= true * (1 + mp.mpf(REL_SLACK))


def test_relu_is_not_c2():
    relu = ACTIVATIONS["relu"]
    assert relu.c2 is None and relu.is_c2 is False
    assert relu.c1 == 1.0 and relu.sigma0 == 0.0  # relu' is 0 or 1
    assert all(ACTIVATIONS[name].is_c2 for name in EXACT)
    assert set(ACTIVATIONS) == set(EXACT) | {"relu"}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_torch_autograd_grid_within_table(name):
    """float64 autograd (torch.func.grad twice) on a 1e-4 grid over [-30, 30], plus x = 0 exactly."""
    act = ACTIVATIONS[name]
    x = torch.arange(-300_000, 300_001, dtype=torch.float64) / 10_000
    f = lambda z: act.fn(z)  # noqa: E731
    d1 = vmap(grad(f))(x).abs()
    assert d1.max().item() <= act.c1
    if act.is_c2:
        d2 = vmap(grad(grad(f)))(x).abs()
        assert d2.max().item() <= act.c2
