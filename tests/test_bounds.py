"""Unit tests of tvtheory.bounds: layer norms, the T4 curvature bound, the T2(c)/T3 error bounds."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch.func import functional_call, jacrev, jvp

from tvtheory.activations import ACTIVATIONS, NotC2Error
from tvtheory.bounds import (
    LayerNorms,
    MLPHessianBound,
    aposteriori_error_bound,
    coarse_error_bound,
    dominance_number,
    layer_norms,
    mlp_hessian_bound,
    mlp_layers,
    require_matching_batches,
    step_hessian_bounds,
)
from tvtheory.curvature import dense_hessian
from tvtheory.losses import Loss, get_loss
from tvtheory.models import MLPConfig, make_mlp
from tvtheory.objective import Objective
from tvtheory.params import ParamLayout, flat_params
from tvtheory.trajectory import gradient_descent

U64 = 2.0 ** -53
SMOOTH = sorted(n for n, a in ACTIVATIONS.items() if a.is_c2)


def _random_theta(config, seed, scale=1.0):
    model = make_mlp(config.widths, config.activation, config.bias, seed=seed)
    return flat_params(model) * scale, model


# --------------------------------------------------------------------------------------------- layer norms


def test_mlp_layers_split_matches_nn_linear():
    config = MLPConfig((3, 5, 2))
    theta, model = _random_theta(config, 0)
    layers = mlp_layers(config, theta)
    assert len(layers) == 2
    for (w, b), lin in zip(layers, model.layers, strict=True):
        assert torch.equal(w, lin.weight.detach()) and torch.equal(b, lin.bias.detach())
    nobias = MLPConfig((3, 5, 2), bias=False)
    th, m = _random_theta(nobias, 0)
    assert all(b is None for _, b in mlp_layers(nobias, th))
    with pytest.raises(ValueError, match=r"theta has 31 entries, but an MLP with widths \(3, 5, 2\) \(bias=True\) "
                                         r"has 32 parameters"):
        mlp_layers(config, theta[:-1])


def _assert_norm_bound(s: float, w: torch.Tensor, exact: float | None = None) -> None:
    """s >= ||w||_2 (the exact value where given, else the float64 SVD raised by 4 K u, more than its own
    error) and s within the factor that layer_norms states: sqrt(1 + 1e-9 + 4 (k + 1) (K + 1) u), k <= K the
    sides of w."""
    k, K = sorted(w.shape)
    svd = float(torch.linalg.matrix_norm(w.double(), ord=2))
    assert s >= (exact if exact is not None else svd * (1 + 4 * K * U64)), (s, svd)
    assert s <= svd * math.sqrt(1 + 1e-9 + 4 * (k + 1) * (K + 1) * U64), (s, svd, s / svd - 1)


def test_the_norm_bound_check_can_fail():
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    svd = float(torch.linalg.matrix_norm(w, ord=2))
    for wrong in (svd * (1 - 1e-12), svd, svd * (1 + 1e-8)):          # below, at (no allowance), too far above
        with pytest.raises(AssertionError):
            _assert_norm_bound(wrong, w)


def test_layer_norms_bound_exact_spectral_norms():
    """W_1 = [[3, 4, 0], [0, 0, 0]] (||W||_2 = 5), W_2 = diag-like with ||W||_2 = 4, b = (3, 4) (||b|| = 5):
    the bounds are >= the exact values and within the stated factors (64 n u for the biases)."""
    config = MLPConfig((3, 2, 2))
    w1 = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    b1 = torch.tensor([3.0, 4.0])
    w2 = torch.tensor([[0.0, -4.0], [1.0, 0.0]])
    b2 = torch.tensor([0.0, 0.0])
    theta = torch.cat([w1.reshape(-1), b1, w2.reshape(-1), b2]).double()
    norms = layer_norms(config, theta)
    for got, exact, w in [(norms.weight[0], 5.0, w1), (norms.weight[1], 4.0, w2)]:
        _assert_norm_bound(float(got), w, exact)
    assert 5.0 <= float(norms.bias[0]) <= 5.0 * (1 + 64 * 2 * U64) * (1 + 2 * U64)
    assert float(norms.bias[1]) == 0.0


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norms_bound_svd_on_random_weights(bias):
    config = MLPConfig((6, 9, 4, 3), bias=bias)
    theta, _ = _random_theta(config, 3, scale=7.0)
    norms = layer_norms(config, theta.float())        # float32 input: computed in float64
    assert norms.weight.dtype == torch.float64 and norms.weight.shape == (3,) and norms.bias.shape == (3,)
    for l, (w, b) in enumerate(mlp_layers(config, theta.float().double())):
        _assert_norm_bound(float(norms.weight[l]), w)
        if bias:
            assert float(torch.linalg.vector_norm(b)) <= float(norms.bias[l])
        else:
            assert float(norms.bias[l]) == 0.0


def _with_singular_values(m, n, sv, seed):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(sv), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(sv), generator=g, dtype=torch.float64))
    return (u * sv) @ v.T


def _hard_weights(kind, m, n):
    g = torch.Generator().manual_seed(m + n)
    if kind == "nearly rank-one":
        w = torch.outer(torch.randn(m, generator=g, dtype=torch.float64), torch.randn(n, generator=g,
                                                                                     dtype=torch.float64))
        return w + 1e-9 * torch.randn(m, n, generator=g, dtype=torch.float64)
    if kind.startswith("condition"):
        sv = 2.0 * torch.logspace(0, -float(kind.split()[-1]), min(m, n) // 2, dtype=torch.float64)
        return _with_singular_values(m, n, sv, m * n)
    return torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kind", "widths"), [("nearly rank-one", (30, 40, 3)), ("condition 12", (20, 50, 3)),
                                              ("condition 16", (50, 20, 3)), ("random", (300, 420, 3))])
def test_layer_norms_on_hard_weights(dtype, kind, widths):
    """W_1 nearly rank-one, with condition number 1e12 or 1e16, or random with both sides above the
    eigvalsh size of tvtheory.spectral (a Lanczos estimate): never below ||W_l||_2, within the stated factor,
    for float32 and float64 parameters."""
    config = MLPConfig(widths)
    theta, _ = _random_theta(config, 1)
    w1 = _hard_weights(kind, widths[1], widths[0])
    theta = torch.cat([w1.reshape(-1), theta[w1.numel():]]).to(dtype)
    norms = layer_norms(config, theta)
    for l, (w, _) in enumerate(mlp_layers(config, theta.double())):
        _assert_norm_bound(float(norms.weight[l]), w)


def test_layer_norms_max_is_elementwise():
    a = LayerNorms(torch.tensor([1.0, 5.0], dtype=torch.float64), torch.tensor([2.0, 0.0], dtype=torch.float64))
    b = LayerNorms(torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    m = a.max(b)
    assert torch.equal(m.weight, torch.tensor([3.0, 5.0], dtype=torch.float64))
    assert torch.equal(m.bias, torch.tensor([2.0, 1.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ the T4 bound


def _example_fn(model, x):
    """theta -> f(x; theta) for one example x (output vector of size n_L)."""
    layout = ParamLayout.of(model)
    return lambda theta: functional_call(model, layout.unflatten(theta), (x[None],))[0]


@pytest.mark.parametrize("bias", [True, False])
def test_one_layer_mse_one_example_bound_is_tight(bias):
    """L = 1, MSE, one example: hess l = x~ x~^T (x) I with x~ = (x, 1) (or x without bias), so
    ||hess l||_2 = ||x~||^2 exactly, and the bound is lambda J^2 = e_1^2 = ||x~||^2 times its slack."""
    config = MLPConfig((4, 3), "tanh", bias)
    theta, model = _random_theta(config, 0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, generator=gen, dtype=torch.float64) * 2
    y = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    f = Objective(model, get_loss("mse"), x, y)
    dense = float(torch.linalg.eigvalsh(dense_hessian(f, theta)).abs().max())
    exact = sum(Fraction(float(v)) ** 2 for v in x[0]) + (1 if bias else 0)     # ||x~||^2 as a rational
    bound = mlp_hessian_bound(config, get_loss("mse"), x, y, layer_norms(config, theta))
    assert bound.per_example.shape == (1,)
    assert Fraction(bound.mean) >= exact                           # a valid bound ...
    assert Fraction(bound.mean) <= exact * (1 + Fraction(100 * U64))   # ... equal up to its slack 80u + rounding
    # the exact Hessian norm agrees with ||x~||^2 to eigvalsh rounding (P = 15: well within 64 u)
    assert abs(Fraction(dense) - exact) <= 64 * Fraction(U64) * exact
    assert dense <= bound.mean
    # J is tight too: ||Df|| = sigma_max of the Jacobian of (W, b) -> W x + b is ||x~||
    jac = jacrev(_example_fn(model, x[0]))(theta)
    assert abs(float(torch.linalg.matrix_norm(jac, 2)) - float(bound.J[0])) <= 100 * U64 * float(bound.J[0])
    assert float(bound.Q[0]) == 0.0


def test_one_layer_ce_two_classes_at_equal_logits_is_tight():
    """CE with p = (1/2, 1/2): the loss Hessian in f is [[1,-1],[-1,1]]/4 with norm 1/2 = lambda, so
    ||hess l|| = ||x~||^2 / 2 = the bound lambda J^2 (r Q = 0 for L = 1)."""
    config = MLPConfig((3, 2))
    theta = torch.zeros(8, dtype=torch.float64)
    model = make_mlp((3, 2))
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([1])
    f = Objective(model, get_loss("ce"), x, y)
    dense = float(torch.linalg.eigvalsh(dense_hessian(f, theta)).abs().max())
    exact = (1 + 4 + 0.25 + 1) / 2
    assert abs(dense - exact) <= 16 * U64 * exact
    bound = mlp_hessian_bound(config, get_loss("ce"), x, y, layer_norms(config, theta)).mean
    assert exact <= bound <= exact * (1 + 100 * U64)


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("bias", [True, False])
def test_J_and_Q_bound_the_network_derivatives(activation, bias):
    """||Df[v]|| <= J_L and ||D^2 f[v, v]|| <= Q_L per example, for unit v: v random, and v the top right
    singular vector of the example's Jacobian (which attains sup_v ||Df[v]|| = sigma_max)."""
    config = MLPConfig((4, 7, 5, 3), activation, bias)
    theta, model = _random_theta(config, 1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 1.5
    y = torch.zeros(6, 3, dtype=torch.float64)
    bound = mlp_hessian_bound(config, get_loss("mse"), x, y, layer_norms(config, theta))
    P = theta.numel()
    for i in range(6):
        fx = _example_fn(model, x[i])
        jac = jacrev(fx)(theta)
        _, svals, vh = torch.linalg.svd(jac)
        directions = [vh[0]] + [torch.randn(P, generator=gen, dtype=torch.float64) for _ in range(4)]
        assert float(svals[0]) <= float(bound.J[i])
        for v in directions:
            v = v / torch.linalg.vector_norm(v)
            d1 = jvp(fx, (theta,), (v,))[1]
            d2 = jvp(lambda th, fx=fx, v=v: jvp(fx, (th,), (v,))[1], (theta,), (v,))[1]
            assert float(torch.linalg.vector_norm(d1)) <= float(bound.J[i])
            assert float(torch.linalg.vector_norm(d2)) <= float(bound.Q[i])
    assert float(bound.Q.min()) > 0


def test_Q_is_nearly_attained_in_one_dimension():
    """widths 1,1,1, tanh: f = w2 tanh(w1 x + b1) + b2 with x = 1, b1 = 0, w1 = z* = artanh(1/sqrt 3) (where
    |tanh''| = c2) and w2 = 100. Along v = (1, 1, 0, 0)/sqrt 2 (dw1, db1), D^2 f[v,v] = w2 tanh''(z*) * 2,
    while Q_2 = 2 c1 J_1 + s_2 c2 J_1^2 = 2 sqrt 2 + 200 c2: the ratio is 0.982, so the recursion cannot be
    smaller than stated (e.g. a c2 too small, a missing factor) without this test failing."""
    config = MLPConfig((1, 1, 1))
    z = math.atanh(1 / math.sqrt(3))
    theta = torch.tensor([z, 0.0, 100.0, 0.0], dtype=torch.float64)
    model = make_mlp((1, 1, 1))
    x = torch.ones(1, 1, dtype=torch.float64)
    fx = _example_fn(model, x[0])
    v = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    d2 = float(jvp(lambda th: jvp(fx, (th,), (v,))[1], (theta,), (v,))[1].abs())
    bound = mlp_hessian_bound(config, get_loss("mse"), x, torch.zeros(1, 1, dtype=torch.float64),
                              layer_norms(config, theta))
    Q = float(bound.Q[0])
    assert d2 <= Q
    assert d2 >= 0.98 * Q
    c2 = ACTIVATIONS["tanh"].c2
    assert Q == pytest.approx(2 * math.sqrt(2) + 100 * c2 * 2, rel=1e-13, abs=0)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_per_example_and_mean_hessian_bounds_hold(activation, loss):
    """||hess l_i||_2 <= per_example[i] for each example, and ||hess L||_2 <= mean (dense, P = 51), also with
    the norms of a segment [theta_a, theta_b] at an interior point."""
    config = MLPConfig((4, 6, 3), activation)
    theta_a, model = _random_theta(config, 4, scale=1.5)
    theta_b = theta_a + 0.3 * torch.randn(theta_a.numel(), generator=torch.Generator().manual_seed(1),
                                          dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (5,), generator=gen)
    target = torch.nn.functional.one_hot(labels, 3).double() if loss == "mse" else labels
    norms = layer_norms(config, theta_a).max(layer_norms(config, theta_b))
    bound = mlp_hessian_bound(config, get_loss(loss), x, target, norms)
    assert isinstance(bound, MLPHessianBound)
    assert bound.mean == float(bound.per_example.mean())
    for theta in (theta_a, theta_b, 0.5 * (theta_a + theta_b)):
        for i in range(5):
            fi = Objective(model, get_loss(loss), x[i:i + 1], target[i:i + 1])
            true_i = float(torch.linalg.eigvalsh(dense_hessian(fi, theta)).abs().max())
            assert true_i <= float(bound.per_example[i])
        f = Objective(model, get_loss(loss), x, target)
        assert float(torch.linalg.eigvalsh(dense_hessian(f, theta)).abs().max()) <= bound.mean


def test_hessian_bound_refuses_relu():
    config = MLPConfig((4, 6, 3), "relu")
    theta, _ = _random_theta(config, 0)
    with pytest.raises(NotC2Error, match="the curvature bound T4 needs a C\\^2 activation"):
        mlp_hessian_bound(config, get_loss("ce"), torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64),
                          layer_norms(config, theta))


def test_hessian_bound_input_errors():
    config = MLPConfig((4, 6, 3))
    theta, _ = _random_theta(config, 0)
    norms = layer_norms(config, theta)
    x, y = torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
    wrong = LayerNorms(norms.weight[:1], norms.bias[:1])
    with pytest.raises(ValueError, match="norms are given for 1 layers, the MLP has 2"):
        mlp_hessian_bound(config, get_loss("ce"), x, y, wrong)
    with pytest.raises(ValueError, match="T4 knows the constants of the losses 'mse' and 'ce', not 'hinge'"):
        mlp_hessian_bound(config, Loss("hinge", lambda f, t: f.sum(), 1.0), x, y, norms)


def test_hessian_bound_recursion_by_hand():
    """Two layers, tanh (c1 = 1, c2 = c), MSE, one example, hand-computed J_2, Q_2 and the bound."""
    config = MLPConfig((2, 2, 1))
    # W1 = diag(2, 1) (s1 = 2), b1 = 0, W2 = [[0, 3]] (s2 = 3), b2 = (4) (beta2 = 4)
    theta = torch.tensor([2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 3.0, 4.0], dtype=torch.float64)
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)          # a0 = 5
    y = torch.tensor([[12.0]], dtype=torch.float64)               # ||y|| = 12
    c2 = ACTIVATIONS["tanh"].c2
    norms = LayerNorms(torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([0.0, 4.0], dtype=torch.float64))
    measured = layer_norms(config, theta)              # the same norms, rounded up (weights: by < 1e-9, relative)
    assert torch.all(measured.weight >= norms.weight) and torch.all(measured.weight <= norms.weight * (1 + 1e-9))
    assert torch.all(measured.bias >= norms.bias) and torch.all(measured.bias <= norms.bias * (1 + 1e-12))
    b = mlp_hessian_bound(config, get_loss("mse"), x, y, norms)
    a0, s1, s2, beta1, beta2 = 5.0, 2.0, 3.0, 0.0, 4.0
    J1 = math.sqrt(a0 ** 2 + 1)
    a1 = 0.0 * math.sqrt(2) + 1.0 * (s1 * a0 + beta1)              # tanh(0) = 0
    J2 = math.sqrt(a1 ** 2 + 1 + s2 ** 2 * J1 ** 2)
    Q2 = 2 * J1 + s2 * c2 * J1 ** 2
    r = s2 * a1 + beta2 + 12.0
    slack = 1 + 16 * 6 * U64
    assert float(b.J[0]) == pytest.approx(J2 * slack, rel=8 * U64, abs=0)
    assert float(b.Q[0]) == pytest.approx(Q2 * slack, rel=8 * U64, abs=0)
    assert float(b.per_example[0]) == pytest.approx((J2 ** 2 + r * Q2) * slack, rel=8 * U64, abs=0)
    assert float(b.J[0]) >= J2 and float(b.per_example[0]) >= J2 ** 2 + r * Q2


# ------------------------------------------------------------------------------------ T2(c) / T3 bounds


def test_aposteriori_error_bound_arithmetic():
    theta0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    thetas = [theta0, theta0 + torch.tensor([3.0, 4.0], dtype=torch.float64),
              theta0 + torch.tensor([0.0, -2.0], dtype=torch.float64)]
    # 0.5 * (10 * 0 + 2 * 5 + 4 * 2) = 9 (the s = 0 term vanishes)
    assert aposteriori_error_bound(0.5, [10.0, 2.0, 4.0], thetas) == 9.0
    assert aposteriori_error_bound(0.5, [1.0], thetas[:1]) == 0.0
    with pytest.raises(ValueError, match="2 Hessian bounds for 3 steps"):
        aposteriori_error_bound(0.5, [1.0, 2.0], thetas)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_coarse_bound_dominates_the_aposteriori_bound(k):
    """With M_s <= M and ||theta_s - theta_0|| <= s lr G: lr sum_s M_s ||theta_s - theta_0|| <= C(k,2) lr^2 M G."""
    lr, M, G = 0.125, 3.0, 2.0
    thetas = [torch.tensor([s * lr * G, 0.0], dtype=torch.float64) for s in range(k)]
    a = aposteriori_error_bound(lr, [M] * k, thetas)
    c = coarse_error_bound(lr, k, M, G)
    assert c == math.comb(k, 2) * lr ** 2 * M * G
    assert a == c                 # the extreme case is attained (dyadic numbers: both exact)


def test_dominance_number():
    assert dominance_number(0.1, 2.0, 3) == pytest.approx(0.6, rel=U64 * 2, abs=0)
    assert dominance_number(0.5, 4.0, 3) == 6.0
    assert dominance_number(0.5, 0.0, 3) == 0.0


def test_step_hessian_bounds_are_t4_on_each_segment_and_bound_the_hessian(make_small_problem):
    """M_s = T4 with the norms max(layer_norms(theta_0), layer_norms(theta_s)) and the batch of step s; it
    bounds ||hess L_{b_s}||_2 at theta_s (a point of the segment), computed densely."""
    p = make_small_problem(batches=2)
    traj = gradient_descent(p.objective, p.theta0, 0.3, 2, [torch.arange(0, 24), torch.arange(24, 48)])
    M = step_hessian_bounds(p, traj)
    assert len(M) == traj.num_steps == 4
    config = p.model.config
    for s, b in enumerate(traj.schedule):
        f = p.batch_objectives[b]
        norms = layer_norms(config, traj.theta0).max(layer_norms(config, traj.thetas[s]))
        assert M[s] == mlp_hessian_bound(config, p.loss, f.x, f.target, norms).mean
        assert M[s] >= float(torch.linalg.matrix_norm(dense_hessian(f, traj.thetas[s]), ord=2))


def test_step_hessian_bounds_refuse_other_batches_and_a_vit(make_small_problem, make_vit_problem):
    p = make_small_problem(batches=4)
    traj = gradient_descent(p.objective, p.theta0, 0.1, 2)            # one step per epoch, not 4
    with pytest.raises(ValueError, match=r"takes 1 steps per epoch but the problem has 4 batches; use "
                                         r"problem.with_batches\(1\)"):
        require_matching_batches(p, traj)
    with pytest.raises(ValueError, match="steps per epoch"):
        step_hessian_bounds(p, traj)
    vit = make_vit_problem()
    with pytest.raises(ValueError, match=r"T4 \(explicit Hessian bound\) does not apply"):
        step_hessian_bounds(vit, gradient_descent(vit.objective, vit.theta0, 0.1, 1))
