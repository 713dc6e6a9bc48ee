"""T5(a): with one full-batch GD step per task per round, every ATM round is one multitask GD step.

theta^(r+1) = theta^(r) - alpha eta T grad L_MT(theta^(r)) (T grad L_MT = sum_t g_t, the task gradients the steps
used), checked coordinate by coordinate against the floating-point model of ``tvtheory.atm.check_round`` (the T1
residual of each task step, the sum of T task vectors, the alpha scaling, the final addition and the subtraction
that gives the round's update; docs/theory.md, T5), in float64 and float32, on Hypothesis networks with T = 2..5
tasks split by label or by data, any alpha. Over R rounds the iterates differ from multitask GD run in the same
arithmetic (``trajectory.gradient_descent`` on L_MT) by at most the roundings of both runs amplified by
prod_s (1 + alpha eta T M_s): ``ATMRun.amplification``, never exceeded.
The model is not vacuous: a merge with alpha off by 64 units of roundoff is rejected (``test_t5a_model_is_sharp``).
"""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import learning_rates, task_problems

from tvtheory.atm import ATMSchedule, check_round, iterate_model, run_atm
from tvtheory.curvature import gradient
from tvtheory.fp import unit_roundoff
from tvtheory.task_vectors import merge, task_vector
from tvtheory.trajectory import DivergenceError


def _run(tasks, lr, rounds, alpha):
    try:
        return run_atm(tasks, ATMSchedule(lr, rounds, 1, alpha))
    except DivergenceError:
        assume(False)


@settings(max_examples=120)
@given(tasks=task_problems(dtypes=(torch.float64, torch.float32), max_width=24), lr=learning_rates(-4, 0),
       rounds=st.integers(1, 4), alpha=st.sampled_from((None, 0.3, 1.0)))
def test_t5a_every_round_is_one_multitask_step(tasks, lr, rounds, alpha):
    run = _run(tasks, lr, rounds, alpha)
    for r, atm_round in enumerate(run.rounds):
        check = atm_round.exact_check
        assert check is not None and check.holds, f"round {r}: max |r|/model = {check.max_ratio}"
    assert run.gaps[0] == 0
    for r, (gap, bound) in enumerate(zip(run.gaps, run.amplification, strict=True)):
        assert gap <= bound, f"round {r}: ||theta^(r) - theta_MT^(r)|| = {gap} > amplified rounding {bound}"


@settings(max_examples=60)
@given(tasks=task_problems(dtypes=(torch.float64, torch.float32), max_width=24), lr=learning_rates(-2, 0),
       dominance=st.floats(16.0, 1e3))
def test_t5a_model_is_sharp(tasks, lr, dominance):
    """A merge with alpha (1 + 64 u) in place of alpha is rejected wherever the model allows less than 32 u
    |alpha eta sum_t g_t| (there the 64 u error exceeds the model plus the true rounding): the check detects a wrong
    update. eta is raised where needed so that the largest |eta sum_t g_t,i| / |theta_i| is ``dominance`` (so that
    the u |theta| terms of the model do not hide the error on every coordinate)."""
    theta = tasks[0].theta0
    alpha = 1.0 / len(tasks)
    grads = [gradient(task.objective, theta) for task in tasks]
    total = torch.stack([g.double() for g in grads]).sum(0)
    moving = total != 0
    assume(bool(moving.any()))       # no update: nothing to get wrong
    lr = max(lr, dominance * float((theta[moving].double().abs() / total[moving].abs()).min()))
    taus = [task_vector(theta - lr * g, theta) for g in grads]      # one functional GD step per task, as computed
    u = unit_roundoff(theta.dtype)
    wrong = merge(theta, taus, alpha * (1 + 64 * u))
    big = iterate_model(theta, wrong, taus, grads, lr, alpha) < 32 * u * alpha * lr * total.abs()
    assume(bool(big.any()))          # every coordinate has cancelling task gradients: the model is wider there
    check = check_round(theta[big], wrong[big], [t[big] for t in taus], [g[big] for g in grads], lr, alpha)
    assert not check.holds, f"alpha off by 64 u passed T5(a): max |r|/model = {check.max_ratio}"
