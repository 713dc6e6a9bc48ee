"""Unit tests of tvtheory.objective: L(theta) as a pure function of the flat parameter vector."""

from __future__ import annotations

import pytest
import torch

from tvtheory.losses import get_loss
from tvtheory.models import make_mlp
from tvtheory.objective import Objective
from tvtheory.params import flat_params, load_flat_

U64 = 2.0 ** -53


def test_objective_equals_the_module_loss(small_problem):
    f, theta = small_problem.objective, small_problem.theta0
    model = make_mlp((4, 6, 3), seed=99)          # different weights: the objective must not use them
    load_flat_(model, theta)
    assert torch.equal(f(theta), f.loss.fn(model(f.x), f.target))
    assert torch.equal(f.outputs(theta), model(f.x))
    assert f.outputs(theta).shape == (48, 3) and len(f) == 48


def test_objective_ignores_the_models_own_weights(small_problem):
    f, theta = small_problem.objective, small_problem.theta0
    before = f(theta)
    with torch.no_grad():
        for p in f.model.parameters():
            p.add_(1.0)
    assert torch.equal(f(theta), before)
    assert not torch.equal(f(theta + 1e-3), before)


def test_subset_is_the_batch_loss_and_the_mean_of_equal_batches(make_small_problem):
    p = make_small_problem(n=48, batches=3)
    f, theta = p.objective, p.theta0
    for b, fb in enumerate(p.batch_objectives):
        idx = torch.arange(16 * b, 16 * (b + 1))
        assert torch.equal(f.subset(idx)(theta), fb(theta))
    mean_of_batches = sum(fb(theta) for fb in p.batch_objectives) / 3
    # L = (1/N) sum_i l_i and L_b = (1/|b|) sum_{i in b} l_i with l_i >= 0: two summations of <= 48
    # nonnegative terms, each with relative error <= gamma_48
    gamma = 48 * U64 / (1 - 48 * U64)
    assert abs(float(mean_of_batches) - float(f(theta))) <= 2.5 * gamma * float(f(theta))


def test_objective_validation():
    model = make_mlp((4, 3))
    loss = get_loss("ce")
    with pytest.raises(ValueError, match="x has 5 examples but the targets have 4"):
        Objective(model, loss, torch.zeros(5, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="no examples"):
        Objective(model, loss, torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))
    f = Objective(model, loss, torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"expected \(15,\)"):
        f(torch.zeros(14, dtype=torch.float64))
    assert torch.isfinite(f(flat_params(model)))
