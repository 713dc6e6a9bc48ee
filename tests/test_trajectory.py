"""Unit tests of tvtheory.trajectory: the GD / SGD runners and their divergence checks.

What is true of run_optimizer(torch.optim.SGD) vs gradient_descent (found by these tests, float32 and
float64, CPU): at the same point the two gradients are bitwise equal (module backward vs torch.func.grad
run the same kernels), but the iterates are not bitwise equal: torch.optim.SGD's ``param.add_(grad,
alpha=-lr)`` may fuse the multiply and the add (one rounding, with lr first rounded to the parameter
dtype) where the functional step ``theta - lr * g`` rounds twice. So the precise statement tested is:
every SGD coordinate is either the fused or the unfused rounding of theta_s - lr' g(theta_s), and both
steps satisfy the T1 floating-point model.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from tvtheory.curvature import gradient
from tvtheory.data import contiguous_batches
from tvtheory.fp import check_t1
from tvtheory.optimizers import OptimizerSpec
from tvtheory.params import flat_params
from tvtheory.trajectory import (
    DIVERGENCE_FACTOR,
    DivergenceError,
    Trajectory,
    epoch_schedule,
    gradient_descent,
    run_optimizer,
)


def _batches(n, B):
    return contiguous_batches(n, B)


def _round(q: Fraction, dtype: torch.dtype) -> float:
    """The float of ``dtype`` nearest to the rational q (ties to even), computed exactly."""
    if dtype == torch.float64:
        return float(q)                      # int / int true division is correctly rounded
    c = np.float32(float(q))                 # within one float32 ulp; pick the nearest neighbour exactly
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    return float(min(cands, key=lambda x: (abs(Fraction(float(x)) - q),
                                           int(np.array(x, dtype=np.float32).view(np.int32)) & 1)))


def test_epoch_schedule():
    assert epoch_schedule(3, 2) == [0, 1, 2, 0, 1, 2]
    assert epoch_schedule(1, 4) == [0, 0, 0, 0]
    assert epoch_schedule(2, 0) == []


@pytest.mark.parametrize("B", [1, 3])
def test_gradient_descent_matches_a_hand_written_loop_bitwise(make_small_problem, B):
    p = make_small_problem(batches=B)
    f, theta0, lr, epochs = p.objective, p.theta0, 0.2, 3
    batches = None if B == 1 else _batches(len(f), B)
    traj = gradient_descent(f, theta0, lr, epochs, batches)
    theta, thetas, grads, losses = theta0.clone(), [theta0.clone()], [], []
    for _ in range(epochs):
        for b in range(B):
            fb = f if B == 1 else f.subset(batches[b])
            losses.append(float(fb(theta)))
            g = torch.func.grad(fb)(theta)
            theta = theta - lr * g
            grads.append(g)
            thetas.append(theta)
    assert len(traj.thetas) == len(thetas) == epochs * B + 1
    assert all(torch.equal(a, b) for a, b in zip(traj.thetas, thetas, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(traj.grads, grads, strict=True))
    assert traj.losses == losses
    assert traj.schedule == epoch_schedule(B, epochs)
    assert traj.steps_per_epoch == B and traj.num_steps == epochs * B and traj.epochs == epochs
    assert torch.equal(traj.theta0, theta0) and traj.theta0 is not theta0
    for k in range(epochs + 1):
        assert torch.equal(traj.at_epoch(k), thetas[k * B])
        assert torch.equal(traj.task_vector(k), thetas[k * B] - theta0)


def test_trajectory_dataclass_properties():
    t = Trajectory([torch.zeros(2), torch.ones(2), 2 * torch.ones(2), 3 * torch.ones(2), 4 * torch.ones(2)], 2)
    assert t.num_steps == 4 and t.epochs == 2
    assert torch.equal(t.task_vector(2), 4 * torch.ones(2))
    assert torch.equal(t.at_epoch(1), 2 * torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("activation, loss", [("tanh", "ce"), ("relu", "mse")])
def test_run_optimizer_sgd_is_the_gd_iteration_up_to_fused_rounding(make_small_problem, dtype, B, activation,
                                                                    loss):
    p = make_small_problem(activation=activation, loss=loss, batches=B, dtype=dtype)
    f, lr, epochs = p.objective, 0.3, 2
    batches = None if B == 1 else _batches(len(f), B)
    traj = run_optimizer(f, p.theta0, OptimizerSpec("sgd", lr).make, epochs, batches, lr_for_messages=lr)
    assert traj.thetas[0].dtype == dtype and torch.equal(traj.thetas[0], p.theta0)
    assert traj.schedule == epoch_schedule(B, epochs)
    lr_w = Fraction(float(torch.tensor(lr, dtype=dtype)))          # torch rounds lr to the parameter dtype
    for s, b in enumerate(traj.schedule):
        fb = f if B == 1 else f.subset(batches[b])
        theta, g, nxt = traj.thetas[s], traj.grads[s], traj.thetas[s + 1]
        assert torch.equal(g, gradient(fb, theta))                 # the same gradient, bitwise
        assert traj.losses[s] == float(fb(theta))
        for i in range(theta.numel()):
            t_i, g_i = Fraction(float(theta[i])), Fraction(float(g[i]))
            fused = _round(t_i - lr_w * g_i, dtype)
            unfused = _round(t_i - Fraction(_round(lr_w * g_i, dtype)), dtype)
            assert float(nxt[i]) in (fused, unfused), (s, i)
        assert check_t1(theta, nxt, g, lr).holds
    # and gradient_descent from the same theta_0 takes the same first gradient, with a T1-exact step too
    gd = gradient_descent(f, p.theta0, lr, epochs, batches)
    assert torch.equal(gd.grads[0], traj.grads[0])
    assert check_t1(p.theta0, gd.thetas[1], gd.grads[0], lr).holds


def test_run_optimizer_leaves_the_objective_model_untouched(small_problem):
    f = small_problem.objective
    before = flat_params(f.model)
    run_optimizer(f, small_problem.theta0 + 0.5, OptimizerSpec("sgd", 0.1).make, 2)
    assert torch.equal(flat_params(f.model), before)


def test_run_optimizer_converts_theta0_to_the_model_dtype(make_small_problem):
    p = make_small_problem(dtype=torch.float32)
    traj = run_optimizer(p.objective, p.theta0.double(), OptimizerSpec("sgd", 0.1).make, 1)
    assert traj.thetas[0].dtype == torch.float32 and torch.equal(traj.thetas[0], p.theta0)


def _replay_divergence(f, theta0, lr, epochs, batches, B):
    """(epoch, step) of the first step whose loss is non-finite or exceeds DIVERGENCE_FACTOR * (|L_0| + 1)."""
    first = None
    theta = theta0
    for s, b in enumerate(epoch_schedule(B, epochs)):
        fb = f if B == 1 else f.subset(batches[b])
        value = float(fb(theta))
        first = value if first is None else first
        if not math.isfinite(value) or (s > 0 and value > DIVERGENCE_FACTOR * (abs(first) + 1)):
            return s // B + 1, s % B + 1
        theta = theta - lr * gradient(fb, theta)
    return None


@pytest.mark.parametrize("runner", ["gd", "sgd"])
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("lr", [1e6, 50.0])
def test_divergence_names_the_epoch(make_small_problem, runner, B, lr):
    p = make_small_problem(loss="mse", batches=B)
    f, epochs = p.objective, 4
    batches = None if B == 1 else _batches(len(f), B)
    expected = _replay_divergence(f, p.theta0, lr, epochs, batches, B)
    assert expected is not None
    with pytest.raises(DivergenceError) as err:
        if runner == "gd":
            gradient_descent(f, p.theta0, lr, epochs, batches)
        else:
            run_optimizer(f, p.theta0, OptimizerSpec("sgd", lr).make, epochs, batches, lr_for_messages=lr)
    msg = str(err.value)
    assert f"learning rate {lr:g}" in msg and "lower the learning rate" in msg
    m = re.search(r"in epoch (\d+) \(step (\d+) of (\d+)\)", msg)
    assert m, msg
    assert (int(m.group(1)), int(m.group(2))) == expected and int(m.group(3)) == B
    # the first loss is evaluated at theta_0, so the earliest detectable divergence is the second step
    assert expected != (1, 1)


@pytest.mark.parametrize("runner", ["gd", "sgd"])
def test_nan_input_data_is_a_divergence_in_epoch_1(small_problem, runner):
    f = small_problem.objective
    x = f.x.clone()
    x[3, 1] = float("nan")
    bad = type(f)(f.model, f.loss, x, f.target)
    with pytest.raises(DivergenceError, match=r"the loss became nan in epoch 1 \(step 1 of 1\)"):
        if runner == "gd":
            gradient_descent(bad, small_problem.theta0, 0.1, 2)
        else:
            run_optimizer(bad, small_problem.theta0, OptimizerSpec("sgd", 0.1).make, 2, lr_for_messages=0.1)


def test_non_finite_parameters_are_a_divergence(small_problem):
    f = small_problem.objective
    theta0 = small_problem.theta0.clone()
    theta0[0] = float("inf")
    with pytest.raises(DivergenceError, match="epoch 1"):
        gradient_descent(f, theta0, 0.1, 1)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf"), -float("inf")])
def test_invalid_learning_rate(small_problem, lr):
    with pytest.raises(ValueError, match="the learning rate must be a positive finite number"):
        gradient_descent(small_problem.objective, small_problem.theta0, lr, 1)


@pytest.mark.parametrize("runner", ["gd", "torch"])
def test_one_step_is_never_called_divergent_but_two_are(make_small_problem, runner):
    """lr = 300 on the MSE problem: the loss goes from 0.59 to ~2.7e4 (> DIVERGENCE_FACTOR (0.59 + 1)) in one
    step. A one-step run (T1's setting: tau = -eta g holds for any eta) returns it; a two-step run refuses."""
    p = make_small_problem(loss="mse")
    lr = 300.0

    def run(epochs):
        if runner == "gd":
            return gradient_descent(p.objective, p.theta0, lr, epochs)
        return run_optimizer(p.objective, p.theta0, OptimizerSpec("gd", lr).make, epochs, lr_for_messages=lr)

    traj = run(1)
    assert float(p.objective(traj.thetas[1])) > DIVERGENCE_FACTOR * (float(p.objective(p.theta0)) + 1)
    assert check_t1(traj.theta0, traj.thetas[1], traj.grads[0], lr).holds
    with pytest.raises(DivergenceError, match=r"the loss exploded from 0\.594\d* to \S+ in epoch 2"):
        run(2)
