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
