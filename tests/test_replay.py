"""Unit tests of tvtheory.replay: each step of a run judged against the claimed optimizer."""

from __future__ import annotations

import pytest
import torch

from tvtheory.data import contiguous_batches
from tvtheory.optimizers import OptimizerSpec
from tvtheory.replay import replay_check
from tvtheory.theorems import verify_optimizer
from tvtheory.trajectory import Trajectory, run_optimizer


def _run(problem, spec, epochs=3, batches=None):
    if batches is None and problem.num_batches > 1:
        batches = contiguous_batches(len(problem.objective), problem.num_batches)
    return run_optimizer(problem.objective, problem.theta0, spec.make, epochs, batches)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec", [OptimizerSpec("gd", 0.1), OptimizerSpec("gd", 0.1, weight_decay=0.01),
                                  OptimizerSpec("momentum", 0.05, momentum=0.9), OptimizerSpec("adam", 0.01)])
def test_the_run_of_the_claimed_optimizer_passes_every_step(make_small_problem, spec, dtype):
    p = make_small_problem(dtype=dtype)
    check = replay_check(spec, _run(p, spec), p.batch_objectives, p.objective.layout)
    assert check.holds and len(check.steps) == 3
    # the model is sharp: some coordinate uses over a tenth of it (gd, momentum ~0.97, Adam ~0.27), so a model
    # ten times as permissive fails here
    assert 0.1 < check.max_update_ratio <= 1, check.max_update_ratio
    assert check.to_dict()["update_ratios"] == [s.update_ratio for s in check.steps]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("ran", "claimed", "step"), [
    (OptimizerSpec("momentum", 0.1, momentum=0.3), OptimizerSpec("momentum", 0.1, momentum=0.9), 1),
    (OptimizerSpec("gd", 0.1, weight_decay=1e-3), OptimizerSpec("gd", 0.1), 0),
    (OptimizerSpec("gd", 0.1), OptimizerSpec("gd", 0.1, weight_decay=1e-3), 0),
    (OptimizerSpec("adam", 0.01, eps=1e-6), OptimizerSpec("adam", 0.01), 0),
    (OptimizerSpec("adam", 0.01, betas=(0.8, 0.999)), OptimizerSpec("adam", 0.01), 1),
    (OptimizerSpec("adam", 0.01), OptimizerSpec("adam", 0.01, betas=(0.9, 0.99)), 1),
    (OptimizerSpec("gd", 0.1), OptimizerSpec("momentum", 0.1, momentum=0.9), 1),
])
def test_a_run_of_another_optimizer_is_rejected_at_the_first_step_that_differs(make_small_problem, ran, claimed,
                                                                              step, dtype):
    p = make_small_problem(dtype=dtype)
    check = replay_check(claimed, _run(p, ran), p.batch_objectives, p.objective.layout)
    assert not check.holds and check.failure.startswith(f"step {step} "), check.failure
    assert "the update is not one" in check.failure and "layers." in check.failure   # names the parameter


def test_a_learning_rate_that_doubles_every_step_fails_the_optimizer_verdict(small_problem):
    thetas, grads, lr = [small_problem.theta0], [], 0.01
    for s in range(4):
        traj = run_optimizer(small_problem.objective, thetas[-1], OptimizerSpec("gd", lr * 2 ** s).make, 1)
        thetas.append(traj.thetas[1])
        grads.append(traj.grads[0])
    run = Trajectory(thetas, 1, [0] * 4, grads)
    v = verify_optimizer(small_problem, OptimizerSpec("gd", lr), run)
    assert v.holds is False and "FAILS at step 1 " in v.message
    assert v.details["replay"]["failure"].startswith("step 1 ")


def test_a_skipped_batch_is_named(make_small_problem):
    p = make_small_problem(batches=4)
    b = contiguous_batches(len(p.objective), 4)
    traj = _run(p, OptimizerSpec("sgd", 0.1), 1, [b[0], b[1], b[3], b[3]])     # batch 2 skipped
    check = replay_check(OptimizerSpec("sgd", 0.1), traj, p.batch_objectives)
    assert check.failure.startswith("step 2 (epoch 1, batch 2): the gradient"), check.failure


def test_an_empty_trajectory_is_refused(small_problem):
    with pytest.raises(ValueError, match="no steps"):
        replay_check(OptimizerSpec("gd", 0.1), Trajectory([small_problem.theta0], 1), small_problem.batch_objectives)
