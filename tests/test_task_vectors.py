"""Unit tests of tvtheory.task_vectors: task vectors, task arithmetic, cosines, relative errors."""

from __future__ import annotations

import math

import pytest
import torch

from tvtheory.models import make_mlp
from tvtheory.params import ParamLayout
from tvtheory.task_vectors import cosine, merge, per_layer_cosines, relative_error, task_vector


def test_task_vector_is_the_difference():
    theta0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    theta = torch.tensor([1.5, 0.0, 3.0], dtype=torch.float64)
    assert torch.equal(task_vector(theta, theta0), torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"differ in shape: \(2,\) vs \(3,\)"):
        task_vector(theta[:2], theta0)


def test_merge_is_task_arithmetic():
    theta0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    taus = [torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([-0.25, 1.0], dtype=torch.float64),
            torch.tensor([2.0, 0.0], dtype=torch.float64)]
    # dyadic values: the merge is exact
    assert torch.equal(merge(theta0, taus, 0.5), torch.tensor([1 + 0.5 * 2.25, -1 + 0.5 * 1.25],
                                                              dtype=torch.float64))
    assert torch.equal(merge(theta0, taus[:1], 1.0), theta0 + taus[0])
    assert torch.equal(merge(theta0, taus, 0.0), theta0)
    with pytest.raises(ValueError, match="at least one task vector"):
        merge(theta0, [], 1.0)


def test_cosine_values():
    a = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    assert cosine(a, a) == pytest.approx(1.0, abs=4e-16)
    assert cosine(a, -3 * a) == pytest.approx(-1.0, abs=4e-16)
    assert cosine(a, torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)) == 0.0
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2), abs=1e-16)
    # computed in float64 even for float32 inputs, and for any shape
    x32 = torch.tensor([[1.0, 1e-4], [3.0, 0.5]], dtype=torch.float32)
    y32 = torch.tensor([[0.5, 2.0], [1.0, -1.0]], dtype=torch.float32)
    x64, y64 = x32.double().reshape(-1), y32.double().reshape(-1)
    assert cosine(x32, y32) == float(x64 @ y64 / (x64.norm() * y64.norm()))
    assert isinstance(cosine(x32, y32), float)


def test_cosine_with_a_zero_vector_is_nan():
    z, a = torch.zeros(4), torch.ones(4)
    assert math.isnan(cosine(z, a)) and math.isnan(cosine(a, z)) and math.isnan(cosine(z, z))


def test_relative_error():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_error(ref + torch.tensor([0.0, 0.5], dtype=torch.float64), ref) == 0.1
    assert relative_error(ref, ref) == 0.0


def test_per_layer_cosines_keys_and_values():
    model = make_mlp((3, 4, 2), seed=0)
    layout = ParamLayout.of(model)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(layout.size, generator=gen, dtype=torch.float64)
    b = torch.randn(layout.size, generator=gen, dtype=torch.float64)
    b[layout.slices()["layers.1.bias"]] = 0.0
    cos = per_layer_cosines(a, b, layout)
    assert list(cos) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    for name, sl in layout.slices().items():
        if name == "layers.1.bias":
            assert math.isnan(cos[name])
        else:
            assert cos[name] == cosine(a[sl], b[sl])
