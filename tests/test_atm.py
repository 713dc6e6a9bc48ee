"""Unit tests of tvtheory.atm: ATM rounds, multitask GD from the same start, the T5 bounds, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from cases import build_problem, build_vit_problem

from tvtheory.atm import (
    ATMSchedule,
    MultitaskObjective,
    check_round,
    gronwall_bounds,
    multitask_segment_bound,
    run_atm,
)
from tvtheory.curvature import gradient
from tvtheory.data import split_by_label
from tvtheory.expansion import batch_gradients, batch_hvps, second_order_terms
from tvtheory.problem import make_problem
from tvtheory.task_vectors import norm
from tvtheory.trajectory import DivergenceError, epoch_schedule, gradient_descent


def _tasks(problem, num_tasks=3, batches=1):
    return [make_problem(problem.model, problem.loss.name, d, batches, theta0=problem.theta0)
            for d in split_by_label(problem.data, num_tasks)]


def test_run_shapes_and_learning_rate(small_problem):
    tasks = _tasks(small_problem)
    run = run_atm(tasks, ATMSchedule(0.2, 3, 2))
    P = small_problem.num_params
    assert (run.num_tasks, run.num_batches, run.alpha) == (3, 1, 1 / 3)
    assert run.multitask_lr == pytest.approx(run.alpha * 0.2 * 2 * 3, rel=1e-15)
    assert len(run.thetas) == len(run.multitask.thetas) == len(run.gaps) == len(run.gronwall) == 4
    assert len(run.certified) == 4 and run.amplification is None and not run.exact
    assert torch.equal(run.thetas[0], small_problem.theta0) and run.gaps[0] == 0
    for r in run.rounds:
        assert len(r.task_vectors) == len(r.errors) == len(r.error_bounds) == len(r.error_allowances) == 3
        assert all(v.shape == (P,) for v in (*r.task_vectors, *r.errors))
        assert r.exact_check is None and r.segment_bound > 0 and r.rounding > 0
    rows = run.table()
    assert [row["round"] for row in rows] == [1, 2, 3]
    assert all(row["bound"] == run.gronwall[row["round"]] and row["tightness"] >= 1 for row in rows)


def test_errors_are_the_t2_errors_from_each_round_start(small_problem):
    """E_t^(r) = tau_t^(r) + k eta g_t(theta^(r)), with tau_t^(r) = k GD steps from theta^(r) (recomputed here)."""
    tasks, eta, k = _tasks(small_problem), 0.2, 3
    run = run_atm(tasks, ATMSchedule(eta, 2, k))
    for r, atm_round in enumerate(run.rounds):
        for t, task in enumerate(tasks):
            traj = gradient_descent(task.objective, run.thetas[r], eta, k)
            expected = traj.task_vector(k) + k * eta * gradient(task.objective, run.thetas[r])
            assert torch.equal(atm_round.task_vectors[t], traj.task_vector(k))
            assert norm(atm_round.errors[t] - expected) <= 1e-14 * norm(traj.task_vector(k))


def test_k1_alpha_1_over_T_is_multitask_gd(small_problem):
    """T5(a): every round is one multitask step within its model, and the gap stays below the amplified rounding."""
    for dtype in (torch.float64, torch.float32):
        run = run_atm(_tasks(small_problem.to(dtype)), ATMSchedule(0.5, 4, 1))
        assert run.exact and run.amplification is not None
        assert all(r.exact_check.holds for r in run.rounds)
        assert all(g <= b for g, b in zip(run.gaps, run.amplification, strict=True))
        assert run.amplification_factor == pytest.approx(math.prod(1 + run.multitask_lr * r.segment_bound
                                                                   for r in run.rounds[1:]), rel=1e-15)
        assert run.table()[-1]["bound"] == run.amplification[-1]


def test_one_task_alpha_1_is_plain_gd(small_problem):
    """T = 1, alpha = 1: each round merges theta^(r) + (theta_k - theta^(r)), so ATM is k R steps of GD."""
    run = run_atm([small_problem], ATMSchedule(0.1, 3, 2, alpha=1.0))
    gd = gradient_descent(small_problem.objective, small_problem.theta0, 0.1, 6)
    assert norm(run.thetas[-1] - gd.thetas[-1]) <= 1e-13 * norm(gd.thetas[-1])


def test_minibatch_round_is_the_t3_expansion(make_small_problem):
    """T5(c): with B = 2 batches and k = 1, round 0 moves by -alpha eta B sum_t g_t + alpha sum_t E_t, and each E_t is
    eta^2 H_1 g_0 (the T3 term) up to O(eta^3)."""
    problem = make_small_problem(n=48)
    tasks = _tasks(problem, 2, batches=2)
    eta = 1e-3
    run = run_atm(tasks, ATMSchedule(eta, 1, 1))
    assert not run.exact and run.multitask_lr == pytest.approx(run.alpha * eta * 2 * 2, rel=1e-15)
    for task, error in zip(tasks, run.rounds[0].errors, strict=True):
        gb = batch_gradients(task.batch_objectives, task.theta0)
        second = second_order_terms(batch_hvps(task.batch_objectives, task.theta0), eta, gb, epoch_schedule(2, 1), 2)
        assert norm(error - second[0]) <= 0.05 * norm(second[0])


def test_multitask_objective_is_the_mean_over_tasks(small_problem):
    tasks = _tasks(small_problem, 3)
    assert len({len(t.objective) for t in tasks}) > 1          # unequal sizes: not the mean over the union
    f = MultitaskObjective([t.objective for t in tasks])
    theta = small_problem.theta0
    expected = sum(float(t.objective(theta)) for t in tasks) / 3
    assert float(f(theta)) == pytest.approx(expected, rel=1e-14)
    assert len(f) == sum(len(t.objective) for t in tasks)
    with pytest.raises(ValueError, match="no batches"):
        f.subset(torch.arange(2))
    with pytest.raises(ValueError, match="at least one task"):
        MultitaskObjective([])


def test_gronwall_bounds_is_the_unrolled_sum():
    """G_R = sum_r prod_{s>r} (1 + lr M_s) injection_r, against the recursion, for every R."""
    g = torch.Generator().manual_seed(0)
    M = torch.rand(5, generator=g, dtype=torch.float64).tolist()
    inj = torch.rand(5, generator=g, dtype=torch.float64).tolist()
    bounds = gronwall_bounds(0.3, M, inj)
    assert bounds[0] == 0
    for R in range(1, 6):
        unrolled = sum(math.prod(1 + 0.3 * M[s] for s in range(r + 1, R)) * inj[r] for r in range(R))
        assert bounds[R] == pytest.approx(unrolled, rel=1e-14)
    with pytest.raises(ValueError, match="Hessian bounds for"):
        gronwall_bounds(0.3, M[:2], inj)


def test_segment_bound_is_at_least_each_end(small_problem):
    tasks = _tasks(small_problem)
    config, objectives = small_problem.model.config, [t.objective for t in tasks]
    a, b = small_problem.theta0, 1.5 * small_problem.theta0
    both = multitask_segment_bound(config, objectives, a, b)
    assert both == multitask_segment_bound(config, objectives, b, a)
    assert both >= multitask_segment_bound(config, objectives, b, b) > multitask_segment_bound(config, objectives, a, a)


def test_check_round_refuses_mismatched_inputs(small_problem):
    theta = small_problem.theta0
    with pytest.raises(ValueError, match="task vectors for"):
        check_round(theta, theta, [theta], [], 0.1, 1.0)


def test_no_curvature_bound_for_vit_or_relu(make_small_problem):
    """The ViT (no T4) and ReLU (not C^2) get no M, so no Gronwall bound; T5(a)'s elementwise check still runs."""
    for problem in (build_vit_problem(n=16), make_small_problem(activation="relu")):
        run = run_atm(_tasks(problem, 2), ATMSchedule(0.1, 2, 1))
        assert run.gronwall is None and run.certified is None and run.amplification is None
        assert run.amplification_factor is None and run.rounds[0].error_bounds is None
        assert all(r.exact_check.holds for r in run.rounds)
        assert run.table()[0]["bound"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0, "rounds": 1, "steps": 1}, "learning rate"),
    ({"lr": float("nan"), "rounds": 1, "steps": 1}, "learning rate"),
    ({"lr": 0.1, "rounds": 0, "steps": 1}, "at least one round"),
    ({"lr": 0.1, "rounds": 1, "steps": 0}, "at least one epoch"),
    ({"lr": 0.1, "rounds": 1, "steps": 1, "alpha": -1.0}, "alpha"),
])
def test_schedule_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ATMSchedule(**kwargs)


def test_run_refuses_tasks_that_do_not_fit(small_problem):
    tasks = _tasks(small_problem, 2)
    schedule = ATMSchedule(0.1, 1, 1)
    with pytest.raises(ValueError, match="at least one task"):
        run_atm([], schedule)
    other = make_problem(small_problem.model, "ce", tasks[1].data, theta0=2 * small_problem.theta0)
    with pytest.raises(ValueError, match="different theta_0"):
        run_atm([tasks[0], other], schedule)
    with pytest.raises(ValueError, match="batches"):
        run_atm([tasks[0], tasks[1].with_batches(2)], schedule)
    mse = make_problem(small_problem.model, "mse", tasks[1].data, theta0=small_problem.theta0)
    with pytest.raises(ValueError, match="loss"):
        run_atm([tasks[0], mse], schedule)
    vit = build_vit_problem(n=8)
    with pytest.raises(ValueError, match="different theta_0|ViT"):
        run_atm([tasks[0], vit], schedule)


def test_divergence_is_reported(small_problem):
    with pytest.raises(DivergenceError):
        run_atm(_tasks(build_problem(widths=(4, 6, 3), loss="mse")), ATMSchedule(50.0, 3, 3))
