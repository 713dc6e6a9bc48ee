"""Hypothesis strategies: random finetuning problems (an MLP at theta_0, a loss, data, batches).

Networks: depth 1-5, widths 1-64, activations tanh/sigmoid/softplus/GELU/SiLU, MSE or cross-entropy,
float64 or float32, N examples with inputs drawn at several scales, all from one seed.
``task_problems``: T tasks for one such network (ATM, T5), split from one dataset by label or by data.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from tvtheory.data import Dataset, split_by_label
from tvtheory.models import make_mlp
from tvtheory.problem import Problem, make_problem

SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu")


@st.composite
def problems(draw, max_depth: int = 5, max_width: int = 64, max_examples: int = 16, max_batches: int = 1,
             dtypes=(torch.float64,), max_params: int | None = None) -> Problem:
    """A random problem; with max_batches > 1 the data is split into B equal batches, B drawn in 1..max."""
    depth = draw(st.integers(1, max_depth))
    widths = tuple(draw(st.integers(1, max_width)) for _ in range(depth + 1))
    if max_params is not None:
        from hypothesis import assume
        assume(sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True)) <= max_params)
    activation = draw(st.sampled_from(SMOOTH_ACTIVATIONS))
    loss = draw(st.sampled_from(("mse", "ce")))
    batches = draw(st.integers(1, max_batches))
    n = batches * draw(st.integers(1, max(1, max_examples // batches)))
    seed = draw(st.integers(0, 2 ** 16))
    scale = draw(st.sampled_from((0.1, 1.0, 3.0)))
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, widths[-1], (n,), generator=g)
    model = make_mlp(widths, activation, seed=seed, dtype=dtype)
    return make_problem(model, loss, Dataset("random", x.to(dtype), y, widths[-1]), batches, seed)


def learning_rates(low_exp: int = -4, high_exp: int = 0):
    """Learning rates spread over several decades, 10^low .. 10^high."""
    return st.floats(float(low_exp), float(high_exp)).map(lambda e: 10.0 ** e)


@st.composite
def task_problems(draw, min_tasks: int = 2, max_tasks: int = 5, max_batches: int = 1, max_per_batch: int = 4,
                  **network) -> list[Problem]:
    """T tasks (T in min..max) for the network of one ``problems(**network)`` draw, all at its theta_0, each split
    into B equal batches (B in 1..max_batches, the same for all; task sizes B * (1..max_per_batch), drawn per task,
    so they differ). The tasks come from one dataset of inputs at a drawn scale: by label (task t holds the labels
    = t mod T) when the network has at least T classes and a coin says so, else by data (T blocks, block t's inputs
    scaled by 1 + t).
    """
    base = draw(problems(**network))
    widths = base.model.config.widths
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    batches = draw(st.integers(1, max_batches))
    sizes = [batches * draw(st.integers(1, max_per_batch)) for _ in range(num_tasks)]
    seed = draw(st.integers(0, 2 ** 16))
    scale = draw(st.sampled_from((0.1, 1.0, 3.0)))
    by_label = widths[-1] >= num_tasks and draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    task_of = torch.cat([torch.full((size,), t) for t, size in enumerate(sizes)])
    n, dtype = len(task_of), base.theta0.dtype
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64) * scale
    if by_label:           # label = t + T * (a random multiple that keeps it below the number of classes)
        multiple = (torch.rand(n, generator=g) * ((widths[-1] - 1 - task_of) // num_tasks + 1)).long()
        datasets = split_by_label(Dataset("random", x.to(dtype), task_of + num_tasks * multiple, widths[-1]),
                                  num_tasks)
    else:
        y = torch.randint(0, widths[-1], (n,), generator=g)
        datasets = [Dataset(f"block{t}", (x[task_of == t] * (1 + t)).to(dtype), y[task_of == t], widths[-1])
                    for t in range(num_tasks)]
    return [make_problem(base.model, base.loss.name, d, batches, seed, theta0=base.theta0) for d in datasets]
