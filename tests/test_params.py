"""Unit tests of tvtheory.params: flat parameter vectors and their named views."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from tvtheory.models import make_mlp
from tvtheory.params import ParamLayout, flat_grads, flat_params, load_flat_


class Mixed(nn.Module):
    """Parameters of many shapes: 4-D conv kernel, 1-D bias, a 0-D scalar, a 3-D table, a matrix."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(2, 3, kernel_size=3)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.table = nn.Parameter(torch.randn(2, 3, 4, generator=gen))
        self.lin = nn.Linear(4, 5, bias=False)
        self.register_buffer("running", torch.zeros(7))     # a buffer is not a parameter

    def forward(self, x):                                     # x: (N, 2, 5, 5) -> (N, 5)
        return self.lin(self.conv(x).mean((-1, -2)) @ self.table.sum(0)) * self.scale


def _modules():
    torch.manual_seed(0)
    return {"mlp": make_mlp((4, 6, 3), seed=1), "mixed": Mixed().double()}


@pytest.fixture(params=["mlp", "mixed"])
def module(request):
    return _modules()[request.param]


def test_layout_names_shapes_size(module):
    layout = ParamLayout.of(module)
    named = list(module.named_parameters())
    assert layout.names == tuple(n for n, _ in named)
    assert layout.shapes == tuple(tuple(p.shape) for _, p in named)
    assert layout.size == sum(p.numel() for p in module.parameters())
    # slices are contiguous, in order, and cover 0..P exactly
    start = 0
    for name, sl in layout.slices().items():
        assert sl.start == start and sl.stop - sl.start == dict(named)[name].numel()
        start = sl.stop
    assert start == layout.size


def test_mixed_layout_has_every_kind_of_shape():
    layout = ParamLayout.of(Mixed())
    assert set(layout.shapes) == {(3, 2, 3, 3), (3,), (), (2, 3, 4), (5, 4)}
    assert "running" not in layout.names


def test_flatten_unflatten_round_trip(module):
    layout = ParamLayout.of(module)
    theta = flat_params(module)
    assert theta.shape == (layout.size,)
    parts = layout.unflatten(theta)
    assert list(parts) == list(layout.names)
    for name, p in module.named_parameters():
        assert torch.equal(parts[name], p.detach())
    assert torch.equal(layout.flatten(parts), theta)
    assert torch.equal(layout.flatten(dict(module.named_parameters())).detach(), theta)
    other = torch.randn(layout.size, dtype=theta.dtype, generator=torch.Generator().manual_seed(5))
    assert torch.equal(layout.flatten(layout.unflatten(other)), other)


def test_unflatten_returns_views_of_theta(module):
    layout = ParamLayout.of(module)
    theta = flat_params(module)
    parts = layout.unflatten(theta)
    theta.mul_(2.0)                                   # writes through to every view
    for name, p in module.named_parameters():
        assert torch.equal(parts[name], 2.0 * p.detach())
        assert parts[name].untyped_storage().data_ptr() == theta.untyped_storage().data_ptr()


def test_unflatten_is_differentiable(module):
    layout = ParamLayout.of(module)
    theta = flat_params(module).requires_grad_(True)
    parts = layout.unflatten(theta)
    weights = {n: float(i + 1) for i, n in enumerate(layout.names)}
    loss = sum(weights[n] * (parts[n] ** 2).sum() for n in layout.names)
    loss.backward()
    expected = torch.cat([2 * weights[n] * theta.detach()[sl] for n, sl in layout.slices().items()])
    assert torch.equal(theta.grad, expected)


def test_functional_call_with_unflatten_equals_module(module):
    layout = ParamLayout.of(module)
    theta = flat_params(module)
    shape = (3, 2, 5, 5) if isinstance(module, Mixed) else (3, 4)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(functional_call(module, layout.unflatten(theta), (x,)), module(x))


@pytest.mark.parametrize("bad_shape", [(50,), (52,), (51, 1), (1, 51), ()])
def test_unflatten_shape_errors(bad_shape):
    module = make_mlp((4, 6, 3))       # P = 51
    layout = ParamLayout.of(module)
    assert layout.size == 51
    with pytest.raises(ValueError, match=r"flat parameter vector has shape .* expected \(51,\)"):
        layout.unflatten(torch.zeros(bad_shape, dtype=torch.float64))


def test_flatten_missing_names_error(module):
    layout = ParamLayout.of(module)
    tensors = dict(module.named_parameters())
    dropped = layout.names[-1]
    del tensors[dropped]
    with pytest.raises(ValueError, match="missing parameters") as err:
        layout.flatten(tensors)
    assert repr(dropped) in str(err.value) and "expected names" in str(err.value)


def test_flatten_wrong_shape_error(module):
    layout = ParamLayout.of(module)
    tensors = {n: p.detach() for n, p in module.named_parameters()}
    name = layout.names[0]
    tensors[name] = tensors[name].reshape(-1)
    with pytest.raises(ValueError, match=rf"parameter '{name}' has shape"):
        layout.flatten(tensors)


def test_load_flat_writes_into_the_module(module):
    params_before = list(module.parameters())
    theta = flat_params(module)
    new = theta + torch.arange(theta.numel(), dtype=theta.dtype)
    load_flat_(module, new)
    assert torch.equal(flat_params(module), new)
    assert all(a is b for a, b in zip(params_before, module.parameters(), strict=True))   # in place, same Parameters
    assert all(p.requires_grad for p in module.parameters())
    with pytest.raises(ValueError, match="flat parameter vector"):
        load_flat_(module, new[:-1])


def test_flat_params_is_a_detached_copy(module):
    theta = flat_params(module)
    assert not theta.requires_grad
    theta.add_(1.0)
    assert not torch.equal(flat_params(module), theta)


def test_flat_grads_fills_missing_gradients_with_zeros():
    module = Mixed().double()
    layout = ParamLayout.of(module)
    # a loss that touches only the conv and the scalar: table and lin get no .grad at all
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    (module.conv(x).sum() * module.scale).backward()
    assert module.table.grad is None and module.lin.weight.grad is None
    g = flat_grads(module)
    assert g.shape == (layout.size,)
    sl = layout.slices()
    assert torch.equal(g[sl["table"]], torch.zeros(24, dtype=torch.float64))
    assert torch.equal(g[sl["lin.weight"]], torch.zeros(20, dtype=torch.float64))
    assert torch.equal(g[sl["conv.weight"]], module.conv.weight.grad.reshape(-1))
    assert torch.equal(g[sl["scale"]], module.scale.grad.reshape(-1))
    g.zero_()      # a copy: the module's gradients are untouched
    assert module.scale.grad != 0
