"""T1: one epoch of full-batch GD gives tau = -eta g exactly, up to the floating-point model.

The residual r = fl(theta_1 - theta_0) + eta g is computed exactly (double-double) and compared,
coordinate by coordinate, with u (1 + u) |theta_0| + gamma_4 |eta g| (tvtheory.fp, docs/theory.md T1),
for the optimizer implementations users run: torch.optim.SGD, heavy-ball momentum (its first step is a
plain SGD step), and the functional step theta - eta * g; in float64 and float32.
"""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import learning_rates, problems

from tvtheory.curvature import gradient
from tvtheory.data import digits
from tvtheory.fp import check_t1, detectable_lr_error, unit_roundoff
from tvtheory.models import make_mlp
from tvtheory.optimizers import OptimizerSpec
from tvtheory.problem import make_problem
from tvtheory.trajectory import run_optimizer


@settings(max_examples=250)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-4, 1),
       optimizer=st.sampled_from(("gd", "momentum")))
def test_t1_torch_optimizer_step(problem, lr, optimizer):
    spec = OptimizerSpec(optimizer, lr)
    traj = run_optimizer(problem.objective, problem.theta0, spec.make, epochs=1)
    check = check_t1(traj.theta0, traj.thetas[1], traj.grads[0], lr)
    assert check.holds, f"T1 residual exceeds the model: max |r|/bound = {check.max_ratio}"


@settings(max_examples=200)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-4, 1))
def test_t1_functional_step(problem, lr):
    theta0 = problem.theta0
    g = gradient(problem.objective, theta0)
    check = check_t1(theta0, theta0 - lr * g, g, lr)
    assert check.holds, f"T1 residual exceeds the model: max |r|/bound = {check.max_ratio}"


@settings(max_examples=50)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-2, 0),
       dominance=st.floats(16.0, 1e3))
def test_t1_model_is_sharp(problem, lr, dominance):
    """The model is not vacuous: a step with the learning rate off by 64 units of roundoff breaks it
    wherever the update is large against theta_0 (so T1 checks really detect a wrong update).

    That needs a coordinate with |eta g_i| > 8 |theta_0,i| (elsewhere the u |theta_0| term of the model hides
    64 u |eta g|), so eta is raised where needed to make the largest |eta g_i| / |theta_0,i| equal
    ``dominance`` (>= 16): every example performs the check.
    """
    theta0 = problem.theta0
    g = gradient(problem.objective, theta0)
    moving = g != 0
    assume(bool(moving.any()))           # a zero gradient makes no step: there is no update to get wrong
    lr = max(lr, dominance * float((theta0[moving].double().abs() / g[moving].double().abs()).min()))
    wrong = lr * (1 + 64 * unit_roundoff(theta0.dtype))
    step = theta0 - wrong * g
    big = (lr * g).abs() > 8 * theta0.abs()          # coordinates where the update path dominates
    assert big.any(), "the learning rate was raised so that some |eta g_i| >= 16 |theta_0,i|"
    check = check_t1(theta0[big], step[big], g[big], lr)
    assert not check.holds, f"a learning rate off by 64 u passed T1: max |r|/bound = {check.max_ratio}"


@settings(max_examples=100)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-6, 1),
       sign=st.sampled_from((1.0, -1.0)), optimizer=st.sampled_from(("gd", "functional")))
def test_t1_rejects_every_lr_error_above_its_detectable_threshold(problem, lr, sign, optimizer):
    """fp.detectable_lr_error is a guarantee, per run: a step taken with lr (1 +- 1.2 delta_min) fails the T1
    check against lr (whatever the run: small or large steps against theta_0, float32 or float64)."""
    theta0 = problem.theta0
    g = gradient(problem.objective, theta0)
    delta = detectable_lr_error(theta0, g, lr)
    assume(delta < 0.5)                   # a zero gradient (delta = inf) makes no step to get wrong
    wrong = lr * (1 + sign * 1.2 * delta)
    if optimizer == "gd":
        traj = run_optimizer(problem.objective, theta0, OptimizerSpec("gd", wrong).make, epochs=1)
        theta1, used = traj.thetas[1], traj.grads[0]
    else:
        theta1, used = theta0 - wrong * g, g
    check = check_t1(theta0, theta1, used, lr)
    assert not check.holds, f"lr off by 1.2 x {delta:.3g} passed T1: max |r|/bound = {check.max_ratio}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lr", [1e-4, 1e-1])
def test_t1_model_is_nearly_attained(dtype, lr):
    """The model is not permissive: on the default digits network (P = 2410) one torch.optim.SGD step uses more
    than half of it in some coordinate (max |r|/model is 0.95-0.99: the rounding of theta_1 = fl(theta_0 - eta g)
    reaches nearly u |theta_0| where |theta_0| lies just above a power of two). A model twice as loose in its
    u |theta_0| or its gamma_4 |eta g| term fails here."""
    problem = make_problem(make_mlp((64, 32, 10), "tanh", seed=0, dtype=dtype), "ce", digits(dtype=dtype))
    traj = run_optimizer(problem.objective, problem.theta0, OptimizerSpec("gd", lr).make, epochs=1)
    check = check_t1(traj.theta0, traj.thetas[1], traj.grads[0], lr)
    assert check.holds and check.max_ratio > 0.5, check.max_ratio
