"""Re-derive the activation constants c_n = sup|sigma^(n)| (T4: n = 1, 2; T6: n = 3, 4) and |sigma(0)| with
mpmath.

For each activation the suprema are found from first principles (mp.dps = 40): the critical points of
sigma^(n) are the sign changes of sigma^(n+1), located on a grid over [-40, 40] and refined with
mp.findroot; sup|sigma^(n)| is the largest of |sigma^(n)| at those points and of its limits at
+-infinity (a maximum of a smooth function is either a sign change of its derivative or a limit).
Outside [-40, 40] every derivative is within exp(-40) of its limit. The derivative formulas are
written out analytically and cross-checked against mp.diff: orders 1-3 by hand, orders 1-5 (the fifth
locates the critical points of the fourth) from exact integer polynomial recurrences,
    tanh:      sigma^(n) = P_n(t), t = tanh x,      P_1 = 1 - t^2,  P_{n+1} = P_n'(t) (1 - t^2);
    sigmoid:   sigma^(n) = S_n(s), s = sigmoid x,   S_0 = s,        S_{n+1} = S_n'(s) s (1 - s);
    softplus^(n) = sigmoid^(n-1);   SiLU^(n) = x sigmoid^(n) + n sigmoid^(n-1);
    GELU:      sigma' = Phi + x phi,  sigma^(n) = phi G_n(x) (n >= 2),  G_2 = 2 - x^2,  G_{n+1} = G_n' - x G_n.
For every activation but SiLU the suprema of orders 2-4 are also found a second, independent way (the real
roots of the derivative polynomial, mp.polyroots); SiLU's are re-found on a finer, shifted, wider grid; and
closed forms are checked where they exist.

The table in tvtheory.activations must be a valid bound (>= the true supremum) and not loose
(<= supremum * (1 + 1e-11)); |sigma(0)| likewise. A float64 autograd sweep over [-30, 30] checks the
same constants (orders 1-4) against the functions the library actually evaluates (torch).
"""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from torch.func import grad, vmap

from tvtheory.activations import ACTIVATIONS

DPS = 40
REL_SLACK = "1e-11"  # the table rounds up at the 13th significant digit
ORDERS = 5           # derivatives known analytically: sigma', ..., sigma^(5) (the fifth locates the extrema of the 4th)


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


# ------------------------------------------------ polynomials: coefficient lists of integers, lowest degree first


def _pd(p: list) -> list:
    """p'."""
    return [i * c for i, c in enumerate(p)][1:] or [0]


def _pmul(p: list, q: list) -> list:
    out = [0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _padd(p: list, q: list) -> list:
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0) + (q[i] if i < len(q) else 0) for i in range(n)]


def _peval(p: list, x):
    return mp.polyval(list(reversed(p)), x)


def _chain_polys(first: list, dvar: list, top: int) -> list:
    """[p_1, ..., p_top] with p_{n+1} = p_n' dvar: sigma^(n) = p_n(w) for a variable with w' = dvar(w)."""
    polys = [first]
    while len(polys) < top:
        polys.append(_pmul(_pd(polys[-1]), dvar))
    return polys


TANH_POLYS = _chain_polys([1, 0, -1], [1, 0, -1], ORDERS)      # P_1..P_5 in t = tanh x (t' = 1 - t^2)
SIGMOID_POLYS = _chain_polys([0, 1, -1], [0, 1, -1], ORDERS)   # S_1..S_5 in s = sigmoid x (s' = s (1 - s))
GELU_POLYS: list = [None, [2, 0, -1]]                          # G_n (index n - 1) for n >= 2
while len(GELU_POLYS) < ORDERS + 1:                            # up to G_6, whose roots are the extrema of G_5 phi
    GELU_POLYS.append(_padd(_pd(GELU_POLYS[-1]), _pmul([0, -1], GELU_POLYS[-1])))


def recurrence_derivs(name: str, x) -> tuple:
    """(sigma'(x), ..., sigma^(5)(x)) from the polynomial recurrences of the module docstring."""
    if name == "tanh":
        t = mp.tanh(x)
        return tuple(_peval(p, t) for p in TANH_POLYS)
    if name == "gelu":
        phi = mp.npdf(x)
        return (mp.ncdf(x) + x * phi,) + tuple(phi * _peval(GELU_POLYS[n - 1], x) for n in range(2, ORDERS + 1))
    s = _s(x)
    sig = [s] + [_peval(p, s) for p in SIGMOID_POLYS]          # sigmoid^(0..5)
    if name == "sigmoid":
        return tuple(sig[1:])
    if name == "softplus":
        return tuple(sig[:ORDERS])
    if name == "silu":
        return tuple(x * sig[n] + n * sig[n - 1] for n in range(1, ORDERS + 1))
    raise KeyError(name)


def _with_higher(name: str, hand):
    """The hand-written sigma', sigma'', sigma''' followed by sigma^(4), sigma^(5) from the recurrences."""
    return lambda x: tuple(hand(x)) + recurrence_derivs(name, x)[3:]


_VANISH = ((0, 0),) * (ORDERS - 1)  # sigma^(n) -> 0 at both ends for n >= 2

# name: (sigma in mpmath, (sigma', ..., sigma^(5)) analytic, limits of sigma^(n), n = 1..5, at (-inf, +inf))
EXACT = {
    "tanh": (mp.tanh, _with_higher("tanh", _tanh_derivs), ((0, 0),) + _VANISH),
    "sigmoid": (_s, _with_higher("sigmoid", _sigmoid_derivs), ((0, 0),) + _VANISH),
    "softplus": (lambda x: mp.log1p(mp.exp(x)), _with_higher("softplus", _softplus_derivs), ((0, 1),) + _VANISH),
    "gelu": (lambda x: x * mp.ncdf(x), _with_higher("gelu", _gelu_derivs), ((0, 1),) + _VANISH),
    "silu": (lambda x: x * _s(x), _with_higher("silu", _silu_derivs), ((0, 1),) + _VANISH),
}


def _tanh_c4():
    """P_4 = 8 t (1 - t^2) (2 - 3 t^2); P_4' = 16 - 120 t^2 + 120 t^4 = 0 at t^2 = 1/2 - sqrt(105)/30 (the other
    root, t^2 = 1/2 + sqrt(105)/30, gives a smaller |P_4|)."""
    t = mp.sqrt(mp.mpf(1) / 2 - mp.sqrt(105) / 30)
    return 8 * t * (1 - t**2) * (2 - 3 * t**2)


def _gelu_c3():
    """|phi G_3| with G_3 = x^3 - 4 x at the smaller root x^2 = (7 - sqrt 33)/2 of G_4 = -x^4 + 7 x^2 - 4."""
    x = mp.sqrt((7 - mp.sqrt(33)) / 2)
    return abs(mp.npdf(x) * (x**3 - 4 * x))


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
        # T6: orders 3 and 4 (sigmoid^(n)(x) = tanh^(n)(x/2) / 2^(n+1), softplus^(n) = sigmoid^(n-1))
        ("tanh", 3): mp.mpf(2),                      # |P_3(0)|, P_3 = -2 + 8 t^2 - 6 t^4
        ("tanh", 4): _tanh_c4(),
        ("sigmoid", 3): mp.mpf(2) / 16,
        ("sigmoid", 4): _tanh_c4() / 32,
        ("softplus", 3): 1 / (6 * mp.sqrt(3)),
        ("softplus", 4): mp.mpf(1) / 8,
        ("gelu", 3): _gelu_c3(),
        ("gelu", 4): 4 * mp.npdf(0),                 # |G_4(0)| phi(0)
        ("silu", 4): mp.mpf(1) / 2,                  # SiLU''''(0) = 4 sigmoid'''(0) = -1/2
    }


def _critical_points(f, lo=-40, hi=40, n=1600, offset="0.0123"):
    """Sign changes of f on a grid (offset so that no grid point is a likely root), refined by findroot."""
    step = mp.mpf(hi - lo) / n
    xs = [lo + mp.mpf(offset) + i * step for i in range(n)]
    values = [f(x) for x in xs]
    return [
        mp.findroot(f, (a, b), solver="anderson")
        for a, b, fa, fb in zip(xs, xs[1:], values, values[1:], strict=False)
        if fa * fb < 0
    ]


def true_supremum(name: str, order: int, **grid) -> mp.mpf:
    """sup_x |sigma^(order)(x)| from the critical points of sigma^(order) and its limits at +-inf."""
    _, derivs, limits = EXACT[name]
    d = lambda x: derivs(x)[order - 1]  # noqa: E731
    d_next = lambda x: derivs(x)[order]  # noqa: E731
    candidates = [abs(d(c)) for c in _critical_points(d_next, **grid)]
    candidates += [abs(mp.mpf(lim)) for lim in limits[order - 1]]
    return max(candidates)


def polynomial_supremum(name: str, order: int) -> mp.mpf:
    """sup|sigma^(order)| without the x-grid. tanh/sigmoid/softplus: sigma^(n) = p(w) with w = tanh x over
    (-1, 1) or w = sigmoid x over (0, 1), so the extrema are at real roots of p' inside the range or at its ends
    (the limits at +-inf). GELU (n >= 2): (phi G_n)' = phi G_{n+1}, so the extrema are at the real roots of
    G_{n+1} (phi G_n -> 0 at +-inf)."""
    if name == "gelu":
        roots = mp.polyroots(list(reversed(GELU_POLYS[order])), maxsteps=200, extraprec=200)
        real = [mp.re(r) for r in roots if abs(mp.im(r)) < mp.mpf("1e-25")]
        return max(abs(mp.npdf(r) * _peval(GELU_POLYS[order - 1], r)) for r in real)
    if name == "tanh":
        p, lo, hi = TANH_POLYS[order - 1], -1, 1
    else:
        sig = [[0, 1]] + SIGMOID_POLYS                # sigmoid^(0..5) as polynomials in s
        p, lo, hi = sig[order if name == "sigmoid" else order - 1], 0, 1
    dp = _pd(p)
    while len(dp) > 1 and dp[-1] == 0:
        dp.pop()
    roots = mp.polyroots(list(reversed(dp)), maxsteps=200, extraprec=200) if len(dp) > 1 else []
    inside = [mp.re(r) for r in roots if abs(mp.im(r)) < mp.mpf("1e-25") and lo < mp.re(r) < hi]
    return max(abs(_peval(p, w)) for w in inside + [mp.mpf(lo), mp.mpf(hi)])


@pytest.mark.parametrize("name", sorted(EXACT))
def test_analytic_derivatives_match_mpmath_diff(name):
    """Orders 1-5 against mp.diff, and the hand-written orders 1-3 against the polynomial recurrences."""
    sigma, derivs, _ = EXACT[name]
    for x in (mp.mpf("-3.7"), mp.mpf("-0.4"), mp.mpf("0.9"), mp.mpf("2.6")):
        values = derivs(x)
        assert len(values) == ORDERS
        for order, value in enumerate(values, start=1):
            assert abs(value - mp.diff(sigma, x, order)) < mp.mpf("1e-25")
        for hand, rec in zip(values[:3], recurrence_derivs(name, x)[:3], strict=True):
            assert abs(hand - rec) < mp.mpf("1e-35")


@pytest.mark.parametrize("name", sorted(EXACT))
def test_limits_at_infinity(name):
    _, derivs, limits = EXACT[name]
    for order in range(1, ORDERS + 1):
        for x, lim in zip((mp.mpf(-200), mp.mpf(200)), limits[order - 1], strict=True):
            assert abs(derivs(x)[order - 1] - lim) < mp.mpf("1e-30")


@pytest.mark.parametrize("name", sorted(EXACT))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_table_constant_is_tight_valid_bound(name, order):
    sup = true_supremum(name, order)
    closed = closed_forms().get((name, order))
    if closed is not None:
        assert abs(sup - closed) <= mp.mpf("1e-30") * sup
    value = getattr(ACTIVATIONS[name], f"c{order}")
    assert value is not None, f"{name} has no c{order}"
    table = mp.mpf(value)  # exact value of the float64 in the table
    assert table >= sup, f"{name} c{order} = {value} < sup = {mp.nstr(sup, 20)}"
    assert table <= sup * (1 + mp.mpf(REL_SLACK)), f"{name} c{order} is loose: sup = {mp.nstr(sup, 20)}"


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus", "gelu"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_polynomial_roots_agree_with_the_grid_search(name, order):
    assert abs(polynomial_supremum(name, order) - true_supremum(name, order)) <= mp.mpf("1e-30")


@pytest.mark.parametrize("order", [3, 4])
def test_silu_supremum_is_stable_under_a_finer_wider_grid(order):
    """SiLU has no polynomial form: the same supremum from a grid 2x finer, shifted, over [-60, 60]."""
    fine = true_supremum("silu", order, lo=-60, hi=60, n=4800, offset="0.00371")
    assert abs(fine - true_supremum("silu", order)) <= mp.mpf("1e-30")


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
    assert relu.c3 is None and relu.c4 is None   # no third or fourth derivative bound either (T6 refuses ReLU)
    assert relu.c1 == 1.0 and relu.sigma0 == 0.0  # relu' is 0 or 1
    assert all(ACTIVATIONS[name].is_c2 for name in EXACT)
    assert set(ACTIVATIONS) == set(EXACT) | {"relu"}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_torch_autograd_grid_within_table(name):
    """float64 autograd (torch.func.grad up to four times) on a 1e-4 grid over [-30, 30], plus x = 0 exactly."""
    act = ACTIVATIONS[name]
    x = torch.arange(-300_000, 300_001, dtype=torch.float64) / 10_000
    f = lambda z: act.fn(z)  # noqa: E731
    d1 = vmap(grad(f))(x).abs()
    assert d1.max().item() <= act.c1
    if act.is_c2:
        d2 = vmap(grad(grad(f)))(x).abs()
        assert d2.max().item() <= act.c2
        assert act.c3 is not None and act.c4 is not None
        d3 = grad(grad(grad(f)))
        assert vmap(d3)(x).abs().max().item() <= act.c3
        assert vmap(grad(d3))(x).abs().max().item() <= act.c4
