"""Unit tests of tvtheory.optimizers: which first-step identity holds for the optimizer a user ran."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from tvtheory.fp import check_t1
from tvtheory.optimizers import (
    OPTIMIZERS,
    FirstStepIdentity,
    OptimizerSpec,
    first_order_prediction,
    first_step_identity,
    momentum_coefficient,
)


def _point(dtype, n=3000, seed=0):
    """theta_0 ~ N(0, 1) and gradients spanning 1e-8..1e2 in magnitude, with exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    g = (torch.randn(n, generator=gen, dtype=torch.float64)
         * torch.pow(10.0, torch.randint(-8, 3, (n,), generator=gen).double())).to(dtype)
    g[::101] = 0
    return theta0, g


def _step(spec: OptimizerSpec, theta0: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Real torch.optim steps with the given gradients; returns theta_0, theta_1, ..."""
    p = torch.nn.Parameter(theta0.clone())
    opt = spec.make([p])
    out = [theta0.clone()]
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


SPECS = {
    "gd": OptimizerSpec("gd", 0.1),
    "sgd": OptimizerSpec("sgd", 0.05),
    "momentum": OptimizerSpec("momentum", 0.1, momentum=0.9),
    "sgd+wd": OptimizerSpec("sgd", 0.1, weight_decay=0.01),
    "momentum+wd": OptimizerSpec("momentum", 0.1, momentum=0.5, weight_decay=0.05),
    "adam": OptimizerSpec("adam", 1e-3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(SPECS))
def test_first_step_identity_holds_on_real_torch_steps(name, dtype):
    spec = SPECS[name]
    theta0, g = _point(dtype)
    theta0_, theta1 = _step(spec, theta0, [g])
    ident = first_step_identity(spec, theta0, theta1, g)
    assert isinstance(ident, FirstStepIdentity)
    assert ident.check is not None and ident.check.holds, ident.check
    assert ident.predicted.dtype == torch.float64 and ident.predicted.shape == theta0.shape
    if spec.weight_decay:
        assert not ident.exact
        assert "T1 does not hold with weight decay" in ident.statement
        assert torch.equal(ident.predicted, -spec.lr * (g.double() + spec.weight_decay * theta0.double()))
        # weight decay breaks T1 itself at once: the T1 model rejects the same step
        assert not check_t1(theta0, theta1, g, spec.lr).holds
    elif name == "adam":
        assert not ident.exact
        assert "T1 does not hold for Adam" in ident.statement and "direction changed" in ident.statement
        assert not check_t1(theta0, theta1, g, spec.lr).holds
    else:
        assert ident.exact and ident.statement.startswith("T1")
        assert torch.equal(ident.predicted, -spec.lr * g.double())
        assert check_t1(theta0, theta1, g, spec.lr).holds


@pytest.mark.parametrize("dtype", [
    torch.float64,
    torch.float32,
])
@pytest.mark.parametrize("name", list(SPECS))
def test_first_step_identity_with_an_exactly_zero_coordinate(name, dtype):
    """A parameter that is exactly 0 and gets an exactly 0 gradient does not move: it satisfies every
    first-step identity, and must not make the check fail."""
    spec = SPECS[name]
    theta0, g = _point(dtype, n=50)
    theta0[7], g[7] = 0.0, 0.0
    theta1 = _step(spec, theta0, [g])[1]
    assert theta1[7] == 0
    assert first_step_identity(spec, theta0, theta1, g).check.holds


WRONG_STEPS = {
    "sgd+wd": OptimizerSpec("sgd", 0.1),                                   # decay forgotten
    "sgd": OptimizerSpec("sgd", 0.05, weight_decay=1e-4),                   # decay added
    "momentum+wd": OptimizerSpec("momentum", 0.1, momentum=0.5, weight_decay=0.04),   # another decay
    "adam": OptimizerSpec("sgd", 1e-3),                                      # plain SGD step instead
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(WRONG_STEPS))
def test_first_step_identity_rejects_another_optimizers_step(name, dtype):
    """Each model is sharp enough to tell the optimizers apart: the step of a different one fails it."""
    theta0, g = _point(dtype, seed=1)
    theta1_wrong = _step(WRONG_STEPS[name], theta0, [g])[1]
    assert not first_step_identity(SPECS[name], theta0, theta1_wrong, g).check.holds


def test_adam_first_step_is_roughly_sign_descent():
    theta0, g = _point(torch.float64)
    spec = OptimizerSpec("adam", 1e-3)
    theta1 = _step(spec, theta0, [g])[1]
    ident = first_step_identity(spec, theta0, theta1, g)
    big = g.abs() > 1e-4                       # |g| >> eps = 1e-8: the step is ~ -lr sign(g)
    assert torch.allclose(ident.predicted[big], -1e-3 * torch.sign(g.double()[big]), rtol=1e-4, atol=0)


def test_adam_with_weight_decay_claims_nothing():
    spec = OptimizerSpec("adam", 1e-3, weight_decay=0.1)
    theta0, g = _point(torch.float64, n=10)
    theta1 = _step(spec, theta0, [g])[1]
    ident = first_step_identity(spec, theta0, theta1, g)
    assert ident.check is None and ident.predicted is None and not ident.exact
    assert "no exact first-step identity" in ident.statement


@pytest.mark.parametrize("mu", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_momentum_coefficient_first_step_is_one(mu):
    assert momentum_coefficient(mu, 1) == 1.0
    assert momentum_coefficient(mu, 0) == 0


def test_momentum_coefficient_without_momentum_is_k():
    assert [momentum_coefficient(0.0, k) for k in range(6)] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("mu", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_momentum_coefficient_matches_simulated_heavy_ball(mu, k):
    """torch.optim.SGD(momentum=mu) with a constant gradient g for k steps gives tau = -lr c_k g.

    Compared for exact equality: mu in {1/4, 1/2, 3/4}, lr = 1/16, g and theta_0 are dyadic rationals
    with few bits, so every buffer update mu * buf + g, every step theta - lr * buf, the task vector and
    c_k = sum_j (1 - mu^(j+1)) / (1 - mu) (1 - mu is a power of two) have at most ~40 significant bits
    and are computed without rounding in float64.
    """
    lr = 1 / 16
    g = torch.tensor([1.0, -3.0, 0.5, 8.0], dtype=torch.float64)
    theta0 = torch.tensor([2.0, 0.0, -1.0, 0.25], dtype=torch.float64)
    thetas = _step(OptimizerSpec("momentum", lr, momentum=mu), theta0, [g] * k)
    c_k = momentum_coefficient(mu, k)
    m = Fraction(mu)
    assert Fraction(c_k) == sum((1 - m ** (j + 1)) / (1 - m) for j in range(k))
    expected = -lr * c_k * g
    assert torch.equal(thetas[-1] - theta0, expected)
    spec = OptimizerSpec("momentum", lr, momentum=mu)
    assert torch.equal(first_order_prediction(spec, theta0, [g], [0] * k), expected)


def test_first_order_prediction_for_each_optimizer():
    theta0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g0 = torch.tensor([0.5, 1.0], dtype=torch.float64)
    g1 = torch.tensor([-1.0, 0.25], dtype=torch.float64)
    lr = 0.125
    schedule = [0, 1, 0, 1]
    sgd = first_order_prediction(OptimizerSpec("sgd", lr), theta0, [g0, g1], schedule)
    assert torch.equal(sgd, -lr * (2 * g0 + 2 * g1))
    wd = first_order_prediction(OptimizerSpec("sgd", lr, weight_decay=0.5), theta0, [g0, g1], schedule)
    assert torch.equal(wd, -lr * (2 * g0 + 2 * g1 + 4 * 0.5 * theta0))
    mu = 0.5
    mom = first_order_prediction(OptimizerSpec("momentum", lr, momentum=mu), theta0, [g0, g1], schedule)
    # buffers: d0 = g0, d1 = mu d0 + g1, d2 = mu d1 + g0, d3 = mu d2 + g1
    d0 = g0
    d1 = mu * d0 + g1
    d2 = mu * d1 + g0
    d3 = mu * d2 + g1
    assert torch.equal(mom, -lr * (d0 + d1 + d2 + d3))
    assert first_order_prediction(OptimizerSpec("adam", lr), theta0, [g0, g1], schedule) is None
    empty = first_order_prediction(OptimizerSpec("sgd", lr), theta0, [g0], [])
    assert torch.equal(empty, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="lbfgs", lr=0.1), "unknown optimizer 'lbfgs'; known optimizers: gd, sgd, momentum, adam"),
    (dict(name="sgd", lr=0.0), "learning rate must be positive and finite, got 0.0"),
    (dict(name="sgd", lr=-0.1), "learning rate must be positive and finite"),
    (dict(name="sgd", lr=float("nan")), "learning rate must be positive and finite, got nan"),
    (dict(name="sgd", lr=float("inf")), "learning rate must be positive and finite, got inf"),
    (dict(name="sgd", lr=0.1, weight_decay=-1e-3), "weight decay must be a finite number >= 0"),
    (dict(name="momentum", lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    (dict(name="momentum", lr=0.1, momentum=-0.1), r"momentum must be in \[0, 1\)"),
    (dict(name="momentum", lr=0.1, momentum=float("nan")), r"momentum must be in \[0, 1\)"),
])
def test_invalid_specs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerSpec(**kwargs)


@pytest.mark.parametrize("wd", [float("nan"), float("inf")])
def test_non_finite_weight_decay_is_rejected(wd):
    with pytest.raises(ValueError, match="weight decay"):
        OptimizerSpec("sgd", 0.1, weight_decay=wd)


def test_make_builds_the_single_tensor_torch_optimizers():
    p = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    assert set(OPTIMIZERS) == {"gd", "sgd", "momentum", "adam"}
    sgd = OptimizerSpec("sgd", 0.1, weight_decay=0.01).make(p)
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["lr"] == 0.1 and sgd.defaults["momentum"] == 0 and sgd.defaults["weight_decay"] == 0.01
    assert sgd.defaults["foreach"] is False
    mom = OptimizerSpec("momentum", 0.1, momentum=0.8).make(p)
    assert mom.defaults["momentum"] == 0.8 and mom.defaults["dampening"] == 0 and not mom.defaults["nesterov"]
    adam = OptimizerSpec("adam", 1e-3, betas=(0.8, 0.99), eps=1e-6).make(p)
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["betas"] == (0.8, 0.99) and adam.defaults["eps"] == 1e-6
    assert adam.defaults["foreach"] is False
    assert OptimizerSpec("gd", 0.1).to_dict() == {"name": "gd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
                                                  "betas": (0.9, 0.999), "eps": 1e-8}
