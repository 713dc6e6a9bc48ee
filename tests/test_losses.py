"""Unit tests of tvtheory.losses: the hand-written MSE and cross-entropy and their HVPs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from tvtheory.curvature import hvp
from tvtheory.losses import CE_GRADIENT_BOUND, LOSSES, cross_entropy, get_loss, mse
from tvtheory.models import make_mlp
from tvtheory.params import ParamLayout, flat_params

U64 = 2.0 ** -53


def _gamma(n: int) -> float:
    return n * U64 / (1 - n * U64)


@pytest.mark.parametrize("n, c", [(1, 1), (7, 4), (33, 10)])
def test_mse_equals_half_mean_squared_error_by_hand(n, c):
    gen = torch.Generator().manual_seed(n)
    out = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
    y = torch.randn(n, c, generator=gen, dtype=torch.float64)
    value = mse(out, y)
    # exact rational value of 0.5 * sum_i ||f_i - y_i||^2 / N for the float inputs
    exact = Fraction(0)
    for i in range(n):
        for j in range(c):
            d = Fraction(float(out[i, j])) - Fraction(float(y[i, j]))
            exact += d * d
    exact = exact / 2 / n
    # n*c subtractions, squares and sums (nonnegative terms) plus a scaling: relative error <= gamma_{n c + 3}
    assert abs(Fraction(float(value)) - exact) <= Fraction(_gamma(n * c + 3)) * exact
    assert value.shape == ()


def test_mse_is_zero_at_the_target_and_quadratic():
    y = torch.tensor([[1.0, -2.0], [0.5, 0.25]], dtype=torch.float64)
    assert float(mse(y, y)) == 0.0
    # 0.5 * (1^2 + 2^2 + 0 + 0) / 2 = 1.25, exact in binary
    out = y + torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    assert float(mse(out, y)) == 1.25


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_cross_entropy_equals_torch_reference(scale):
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(50, 7, generator=gen, dtype=torch.float64) * scale
    y = torch.randint(0, 7, (50,), generator=gen)
    ours, ref = cross_entropy(out, y), F.cross_entropy(out, y)
    assert torch.isfinite(ours)
    # both evaluate logsumexp(f_i) - f_{i,y_i} (max-shifted) in float64; per example the rounding is a
    # few units of u relative to |logsumexp| + |f_y| + log C, and the mean does not amplify it
    mag = (torch.logsumexp(out, -1).abs() + out.gather(1, y[:, None]).abs().squeeze(1) + math.log(7)).mean()
    assert abs(float(ours) - float(ref)) <= 16 * U64 * float(mag)


def test_cross_entropy_exact_values_and_shift_invariance():
    # two equal logits: loss = log 2 for either label (lse = 3 + log 2 rounded, minus 3)
    out = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    for label in (0, 1):
        value = float(cross_entropy(out, torch.tensor([label])))
        assert abs(value - math.log(2)) <= 8 * U64 * 3       # rounding of 3 + log 2, relative to |lse| ~ 3.7
    # a large common shift of the logits changes nothing but rounding (logsumexp is max-shifted: no overflow)
    gen = torch.Generator().manual_seed(2)
    f = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=gen)
    base, shifted = float(cross_entropy(f, y)), float(cross_entropy(f + 1e4, y))
    assert math.isfinite(shifted)
    assert abs(shifted - base) <= 16 * U64 * 1e4          # rounding of values of size 1e4 (ulp ~ 2e-12)


def test_loss_table():
    assert get_loss("mse").curvature == 1.0 and get_loss("mse").fn is mse
    assert get_loss("ce").curvature == 0.5 and get_loss("ce").fn is cross_entropy
    assert CE_GRADIENT_BOUND == math.sqrt(2.0)
    assert set(LOSSES) == {"mse", "ce"}
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known losses: ce, mse"):
        get_loss("hinge")


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_forward_over_reverse_hvp_through_the_loss_equals_dense_hessian(loss, activation):
    """hvp (jvp of grad) through the hand-written losses = H v, with H from reverse-over-reverse autograd
    (torch.autograd.functional.hessian, an independent code path).

    Tolerance: 16 u ||H||_2 ||v||. The two computations differ only by rounding; measured worst ratios
    |hvp - H v| / (u ||H|| ||v||) over 5 activations x 2 losses were ~1.2, so 16 leaves an order of
    magnitude, while any real error (a missing term, a factor 2) is ~1e15 times larger.
    """
    model = make_mlp((4, 6, 5, 3), activation, seed=2)
    layout = ParamLayout.of(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (20,), generator=gen)
    target = F.one_hot(labels, 3).double() if loss == "mse" else labels
    fn = get_loss(loss).fn

    def f(theta):
        return fn(torch.func.functional_call(model, layout.unflatten(theta), (x,)), target)

    theta = flat_params(model)
    H = torch.autograd.functional.hessian(f, theta)
    norm_h = float(torch.linalg.matrix_norm(H, 2))
    for seed in range(3):
        v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        err = float(torch.linalg.vector_norm(hvp(f, theta, v) - H @ v))
        assert err <= 16 * U64 * norm_h * float(torch.linalg.vector_norm(v))


# ------------------------------------------------------------------- T6: third and fourth derivative constants


def _s_derivative(fn, order: int) -> torch.Tensor:
    """d^order/ds^order fn(s) at s = 0 (nested forward-mode jvp, float64)."""
    g = fn
    for _ in range(order):
        g = (lambda prev: (lambda s: torch.func.jvp(prev, (s,), (torch.ones_like(s),))[1]))(g)
    return g(torch.zeros((), dtype=torch.float64))


def _cumulants(f: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Var, kappa_3, kappa_4 of X = u_i under p = softmax(f) (batched over leading dims): the 2nd..4th
    derivatives of logsumexp(f + s u) in s at 0 (cumulants of the exponential family)."""
    p = torch.softmax(f, -1)
    d = u - (p * u).sum(-1, keepdim=True)
    var = (p * d ** 2).sum(-1)
    return var, (p * d ** 3).sum(-1), (p * d ** 4).sum(-1) - 3 * var ** 2


def _two_point(order: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, u) of the two-point extremiser: u = (1, -1, 0, ...)/sqrt 2 (range sqrt 2) with mass p, 1 - p on its
    two entries (the others at logit -60, mass ~1e-26). kappa_3 = 2 sqrt 2 p(1-p)(1-2p) is largest at
    p = (3 - sqrt 3)/6 (value sqrt 6 / 9 = 0.2722); kappa_4 = 4 p(1-p)(1 - 6p(1-p)) is most negative at p = 1/2
    (value -1/2)."""
    p = (3 - math.sqrt(3)) / 6 if order == 3 else 0.5
    f = torch.full((classes,), -60.0, dtype=torch.float64)
    f[0], f[1] = math.log(p), math.log(1 - p)
    u = torch.zeros(classes, dtype=torch.float64)
    u[0], u[1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    return f, u


def test_cumulant_formula_is_the_derivative_of_the_library_cross_entropy():
    """d^n/ds^n cross_entropy(f + s u, y) at 0 (n = 2, 3, 4; the label term is linear in s) = the n-th cumulant of
    u_i under softmax(f), for random f, u, labels and C = 2..20: the closed form the search below maximises is
    the library's loss."""
    gen = torch.Generator().manual_seed(0)
    for classes in (2, 3, 7, 20):
        for _ in range(5):
            f = torch.randn(1, classes, generator=gen, dtype=torch.float64) * 3
            u = torch.randn(1, classes, generator=gen, dtype=torch.float64)
            y = torch.randint(0, classes, (1,), generator=gen)
            expect = _cumulants(f, u)
            for order in (2, 3, 4):
                got = _s_derivative(lambda s, f=f, u=u, y=y: cross_entropy(f + s * u, y), order)
                assert float(got) == pytest.approx(float(expect[order - 2][0]), rel=1e-9, abs=1e-13)


def _ascend_cumulant(order: int, sign: float, classes: int, gen: torch.Generator, starts: int = 16,
                     steps: int = 150) -> float:
    """max of sign x kappa_order(f, u / ||u||) by Adam over (f, u) from ``starts`` random points (batched)."""
    f = (torch.randn(starts, classes, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    u = torch.randn(starts, classes, generator=gen, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([f, u], lr=0.05)
    for _ in range(steps):
        value = sign * _cumulants(f, u / torch.linalg.vector_norm(u, dim=-1, keepdim=True))[order - 2]
        opt.zero_grad()
        (-value.sum()).backward()
        opt.step()
    with torch.no_grad():
        return float((sign * _cumulants(f, u / torch.linalg.vector_norm(u, dim=-1, keepdim=True))[order - 2]).max())


def test_cross_entropy_third_and_fourth_derivative_constants():
    """kappa_3 = 1/sqrt 2 >= |d^3/ds^3 logsumexp(f + s u)| and kappa_4 = 1 >= |d^4/ds^4 ...| over unit u
    (losses docstring: the range R of u is <= sqrt 2, |kappa_3| <= R Var <= R^3/4, kappa_4 in [-3 R^4/16, R^4/4]):
    random (f, u) and gradient ascent on +-kappa_n for C = 2..20, plus the two-point extremisers evaluated through
    the library's loss. The ascent must reach 99 % of the two-point values (so the search is not vacuous). Largest
    found: |kappa_3| = sqrt 6 / 9 = 0.272 (the constant is 2.6x that), |kappa_4| = 1/2 (2x)."""
    ce = get_loss("ce")
    assert ce.third >= 1 / math.sqrt(2) and ce.third <= (1 / math.sqrt(2)) * (1 + 1e-12)
    assert ce.fourth == 1.0
    gen = torch.Generator().manual_seed(1)
    found = {3: 0.0, 4: 0.0}
    for classes in (2, 3, 5, 10, 20):
        f = torch.randn(400, classes, generator=gen, dtype=torch.float64) * 4
        u = torch.randn(400, classes, generator=gen, dtype=torch.float64)
        _, k3, k4 = _cumulants(f, u / torch.linalg.vector_norm(u, dim=-1, keepdim=True))
        found[3] = max(found[3], float(k3.abs().max()))
        found[4] = max(found[4], float(k4.abs().max()))
        for order, signs in ((3, (1.0,)), (4, (1.0, -1.0))):      # kappa_3 is odd in u: one sign suffices
            for sign in signs:
                found[order] = max(found[order], _ascend_cumulant(order, sign, classes, gen))
    for order in (3, 4):
        f, u = _two_point(order, 4)
        extremal = abs(float(_s_derivative(lambda s, f=f, u=u: cross_entropy((f + s * u)[None], torch.tensor([2])),
                                           order)))
        analytic = math.sqrt(6) / 9 if order == 3 else 0.5
        assert extremal == pytest.approx(analytic, rel=1e-9)
        assert found[order] >= 0.99 * analytic
        found[order] = max(found[order], extremal)
    assert found[3] <= ce.third, found
    assert found[4] <= ce.fourth, found


def test_mse_has_no_third_or_fourth_derivative():
    """MSE is quadratic in f: kappa_3 = kappa_4 = 0, and the nested jvp of the library's mse gives exactly 0 for
    the 3rd and 4th derivatives (the 2nd is ||u||^2 / N, so lambda = 1 for one example)."""
    m = get_loss("mse")
    assert m.third == 0.0 and m.fourth == 0.0
    gen = torch.Generator().manual_seed(2)
    for n, c in ((1, 1), (1, 5), (4, 3)):
        f = torch.randn(n, c, generator=gen, dtype=torch.float64) * 5
        u = torch.randn(n, c, generator=gen, dtype=torch.float64)
        y = torch.randn(n, c, generator=gen, dtype=torch.float64)
        fn = lambda s, f=f, u=u, y=y: mse(f + s * u, y)  # noqa: E731
        assert float(_s_derivative(fn, 2)) == pytest.approx(float((u ** 2).sum()) / n, rel=8 * U64)
        assert float(_s_derivative(fn, 3)) == 0.0
        assert float(_s_derivative(fn, 4)) == 0.0
