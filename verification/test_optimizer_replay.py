"""Whole-trajectory optimizer checks (tvtheory.replay): every recorded step of a run, replayed from theta_0
against the claimed optimizer, is within its floating-point model (zero false failures over Hypothesis runs of
gd, sgd, heavy ball and Adam, with and without weight decay, float64 and float32), and a run that departs from
its claim at some step (the learning rate doubled from then on, a repeated batch) is rejected at that very step.
"""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import learning_rates, problems

from tvtheory.curvature import gradient
from tvtheory.data import contiguous_batches
from tvtheory.optimizers import OptimizerSpec
from tvtheory.replay import replay_check
from tvtheory.trajectory import DivergenceError, Trajectory, run_optimizer


def _run(problem, spec, epochs, batches=None, start=None):
    if batches is None and problem.num_batches > 1:
        batches = contiguous_batches(len(problem.objective), problem.num_batches)
    start = problem.theta0 if start is None else start
    try:
        return run_optimizer(problem.objective, start, spec.make, epochs, batches)
    except DivergenceError:
        assume(False)


specs = st.builds(
    lambda name, lr, wd, mu: OptimizerSpec(name, lr, momentum=mu, weight_decay=wd),
    st.sampled_from(("sgd", "momentum", "adam")), learning_rates(-5, 0), st.sampled_from((0.0, 1e-3, 0.1)),
    st.floats(0.0, 0.99))


@settings(max_examples=120, deadline=None)
@given(problem=problems(max_depth=3, max_width=16, max_batches=3, dtypes=(torch.float64, torch.float32)),
       spec=specs, epochs=st.integers(1, 3))
def test_valid_runs_pass_every_step(problem, spec, epochs):
    traj = _run(problem, spec, epochs)
    check = replay_check(spec, traj, problem.batch_objectives, problem.objective.layout)
    assert check.holds, check.failure
    assert len(check.steps) == epochs * problem.num_batches


@settings(max_examples=40, deadline=None)
@given(problem=problems(max_depth=3, max_width=16, dtypes=(torch.float64, torch.float32)),
       lr=learning_rates(-3, -1), steps=st.integers(2, 5), data=st.data())
def test_a_learning_rate_changed_mid_run_is_caught_at_that_step(problem, lr, steps, data):
    """Full-batch GD whose learning rate doubles from step j on (a schedule the claim does not have)."""
    j = data.draw(st.integers(1, steps - 1))
    thetas, grads = [problem.theta0], []
    for s in range(steps):
        traj = _run(problem, OptimizerSpec("gd", lr * (2.0 if s >= j else 1.0)), 1, start=thetas[-1])
        thetas.append(traj.thetas[1])
        grads.append(traj.grads[0])
    assume(bool(grads[j].abs().max() > 0))
    run = Trajectory(thetas, 1, [0] * steps, grads)
    check = replay_check(OptimizerSpec("gd", lr), run, problem.batch_objectives, problem.objective.layout)
    assert not check.holds and check.failure.startswith(f"step {j} "), check.failure
    assert all(s.holds for s in check.steps[:j])


@settings(max_examples=30, deadline=None)
@given(problem=problems(max_depth=3, max_width=16, max_examples=12, max_batches=3,
                        dtypes=(torch.float64, torch.float32)), lr=learning_rates(-3, -1))
def test_a_repeated_batch_is_caught_at_that_step(problem, lr):
    B = problem.num_batches
    assume(B >= 2)
    batches = contiguous_batches(len(problem.objective), B)
    order = list(batches)
    order[1] = batches[0]                             # batch 0 again where batch 1 belongs
    traj = _run(problem, OptimizerSpec("sgd", lr), 1, order)
    f0, f1 = problem.batch_objectives[:2]
    assume(float((gradient(f0, traj.thetas[1]) - gradient(f1, traj.thetas[1])).norm())
           > 1e-3 * float(gradient(f1, traj.thetas[1]).norm()))       # batches 0 and 1 pull differently there
    check = replay_check(OptimizerSpec("sgd", lr), traj, problem.batch_objectives, problem.objective.layout)
    assert not check.holds and check.failure.startswith("step 1 ") and "gradient" in check.failure, check.failure
