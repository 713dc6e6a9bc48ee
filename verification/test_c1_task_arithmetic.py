"""C1: task arithmetic with one-step task vectors is one multitask GD step.

sum_t tau_t^(1) = -eta T grad L_MT(theta_0) with L_MT = (1/T) sum_t L_t, checked coordinate by coordinate
against the floating-point model (T1 residual of each task plus gamma_{T-1} sum_t |tau_t| for the sum).
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import learning_rates, problems

from tvtheory.data import Dataset
from tvtheory.theorems import verify_c1


@settings(max_examples=100)
@given(problem=problems(dtypes=(torch.float64, torch.float32)), lr=learning_rates(-4, 0),
       num_tasks=st.integers(1, 5), seed=st.integers(0, 1000))
def test_c1_sum_of_one_step_task_vectors(problem, lr, num_tasks, seed):
    g = torch.Generator().manual_seed(seed)
    n_in, n_out = problem.model.config.widths[0], problem.model.config.widths[-1]
    dtype = problem.theta0.dtype
    tasks = []
    for t in range(num_tasks):
        n = int(torch.randint(1, 9, (1,), generator=g))
        x = (torch.randn(n, n_in, generator=g, dtype=torch.float64) * (t + 1)).to(dtype)
        tasks.append(Dataset(f"task{t}", x, torch.randint(0, n_out, (n,), generator=g), n_out))
    verdict = verify_c1(problem, lr, tasks)
    assert verdict.holds, verdict.message
    assert verdict.details["alpha_1_over_T_relative_gap"] < 1e-3 or verdict.details["check"]["tau_norm"] == 0
