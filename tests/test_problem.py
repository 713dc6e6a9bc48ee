"""Unit tests of tvtheory.problem: binding a model, a loss and data into a finetuning problem."""

from __future__ import annotations

import pytest
import torch
from cases import TINY_VIT

from tvtheory.data import partition, synthetic
from tvtheory.fp import DTYPES
from tvtheory.models import ViTClassifier, make_mlp, make_vit
from tvtheory.params import flat_params
from tvtheory.problem import make_problem


def test_input_width_mismatch_names_the_model_fix():
    data = synthetic(20, 5, 3)
    with pytest.raises(ValueError, match=r"the data has 5 input features but the MLP's first width is 4 "
                                         r"\(widths \(4, 6, 3\)\): build it with widths \(5, \.\.\., 3\)"):
        make_problem(make_mlp((4, 6, 3)), "ce", data)


def test_output_width_mismatch_names_the_model_fix():
    data = synthetic(20, 4, 3)
    with pytest.raises(ValueError, match=r"the data has 3 classes but the MLP's last width is 2 "
                                         r"\(widths \(4, 6, 2\)\): build it with widths \(4, \.\.\., 3\)"):
        make_problem(make_mlp((4, 6, 2)), "ce", data)


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        make_problem(make_mlp((4, 3)), "hinge", synthetic(10, 4, 3))


@pytest.mark.parametrize("n, B", [(48, 1), (48, 3), (50, 4), (7, 7)])
def test_batches_are_contiguous_equal_blocks_of_the_seeded_partition(n, B):
    data = synthetic(n, 4, 3, seed=1)
    p = make_problem(make_mlp((4, 5, 3)), "mse", data, num_batches=B, seed=2)
    size = n // B
    assert p.num_batches == B and len(p.objective) == B * size == len(p.data)
    order = torch.cat(partition(n, B, seed=2))
    assert torch.equal(p.data.x, data.x[order]) and torch.equal(p.data.y, data.y[order])
    assert torch.equal(p.objective.x, p.data.x)
    assert torch.equal(p.objective.target, p.data.targets("mse"))
    for b, fb in enumerate(p.batch_objectives):
        assert len(fb) == size
        assert torch.equal(fb.x, p.data.x[b * size:(b + 1) * size])
        assert torch.equal(fb.target, p.objective.target[b * size:(b + 1) * size])
    # the batches partition the objective's examples
    assert torch.equal(torch.cat([fb.x for fb in p.batch_objectives]), p.objective.x)


def test_theta0_defaults_to_the_model_and_can_be_given():
    model = make_mlp((4, 5, 3), seed=3)
    data = synthetic(12, 4, 3)
    p = make_problem(model, "ce", data)
    assert torch.equal(p.theta0, flat_params(model)) and p.num_params == 4 * 5 + 5 + 5 * 3 + 3
    other = torch.arange(p.num_params, dtype=torch.float32)
    q = make_problem(model, "ce", data, theta0=other)
    assert q.theta0.dtype == torch.float64 and torch.equal(q.theta0, other.double())
    # the data is converted to the model's dtype
    assert make_problem(model, "ce", synthetic(12, 4, 3, dtype=torch.float32)).data.x.dtype == torch.float64


def test_to_float32_keeps_theta0_values(make_small_problem):
    p = make_small_problem(batches=2)
    p32 = p.to(torch.float32)
    assert p32.theta0.dtype == torch.float32 and torch.equal(p32.theta0, p.theta0.to(torch.float32))
    # make_mlp draws in float32, so theta_0 survives the round trip exactly
    assert torch.equal(p32.theta0.double(), p.theta0)
    assert p32.num_batches == 2 and p32.data.x.dtype == torch.float32
    assert torch.equal(p32.data.x, p.data.x.float()) and torch.equal(p32.data.y, p.data.y)
    assert next(p32.model.parameters()).dtype == torch.float32
    assert p32.model.config == p.model.config and p32.loss == p.loss
    back = p32.to(torch.float64)
    assert torch.equal(back.theta0, p.theta0)
    # the same loss, evaluated in float32: sums of <= 48 terms through layers of width <= 6, so a relative
    # error within gamma_64 in float32 (64 * 2^-24 ~ 4e-6)
    L64 = float(p.objective(p.theta0))
    assert abs(float(p32.objective(p32.theta0)) - L64) <= 64 * 2.0 ** -24 * L64


def test_to_keeps_a_theta0_that_differs_from_the_seeded_init(make_small_problem):
    p = make_small_problem()
    moved = make_problem(p.model, "ce", p.data, theta0=p.theta0 + 0.25)
    assert torch.equal(moved.to(torch.float32).theta0, (p.theta0 + 0.25).float())


def test_with_batches(make_small_problem):
    p = make_small_problem(n=50)
    q = p.with_batches(4, seed=1)
    assert q.num_batches == 4 and len(q.objective) == 48
    assert torch.equal(q.theta0, p.theta0)
    assert all(len(fb) == 12 for fb in q.batch_objectives)
    assert set(DTYPES) == {"float64", "float32"}


def test_vit_problem_to_float32_and_back(make_vit_problem):
    p = make_vit_problem(batches=2)
    p32 = p.to(torch.float32)
    assert isinstance(p32.model, ViTClassifier) and p32.model.config == p.model.config
    assert p32.model is not p.model and next(p.model.parameters()).dtype == torch.float64   # a converted copy
    assert all(t.dtype == torch.float32 for t in p32.model.parameters()) and p32.data.x.dtype == torch.float32
    assert p32.num_batches == 2 and torch.equal(p32.theta0, p.theta0.float())
    assert torch.equal(p32.to(torch.float64).theta0, p.theta0)     # make_vit draws in float32: exact round trip
    L64 = float(p.objective(p.theta0))
    assert abs(float(p32.objective(p32.theta0)) - L64) <= 1e-5 * L64
    moved = make_problem(p.model, "ce", p.data, theta0=p.theta0 + 0.25)
    assert torch.equal(moved.to(torch.float32).theta0, (p.theta0 + 0.25).float())


@pytest.mark.parametrize("features, classes, message", [
    (60, 3, r"the data has 60 input features but the ViT reads 1x8x8 images \(64 features\): give it flat 1x8x8 "
            r"images, or a ViTConfig with channels \* image_size\^2 = 60"),
    (64, 4, r"the data has 4 classes but the ViT has 3 outputs: build it with ViTConfig\(num_classes=4\)"),
])
def test_vit_data_mismatch_suggests_the_fix(features, classes, message):
    with pytest.raises(ValueError, match=message):
        make_problem(make_vit(TINY_VIT), "ce", synthetic(12, features, classes))
