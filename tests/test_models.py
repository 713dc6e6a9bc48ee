"""Unit tests of tvtheory.models: the feed-forward network of T4 and the ViT classifier on flat inputs
(activations: test_activations.py; the ViT itself: test_vit.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from cases import TINY_VIT

from tvtheory.activations import ACTIVATIONS
from tvtheory.models import MLP, MLPConfig, ViTClassifier, make_mlp, make_vit
from tvtheory.params import ParamLayout, flat_params

VIT = TINY_VIT

@pytest.mark.parametrize("widths", [(4, 3), (4, 6, 3), (7, 5, 5, 2), (1, 1)])
@pytest.mark.parametrize("lead", [(9,), (2, 5), ()])
def test_mlp_output_shape(widths, lead):
    model = make_mlp(widths)
    x = torch.randn(*lead, widths[0], dtype=torch.float64)
    assert model(x).shape == (*lead, widths[-1])
    assert MLPConfig(widths).depth == len(widths) - 1


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_computes_the_t4_network(activation):
    """f = z_L with z_l = W_l h_{l-1} + b_l, h_l = sigma(z_l) for l < L (no activation after the last)."""
    model = make_mlp((3, 5, 4, 2), activation, seed=4)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = ACTIVATIONS[activation].fn
    h = x
    for i, layer in enumerate(model.layers):
        h = F.linear(h, layer.weight, layer.bias)
        if i < 2:
            h = sigma(h)
    assert torch.equal(model(x), h)


def test_mlp_without_bias_has_only_weights():
    model = make_mlp((3, 5, 2), bias=False)
    assert ParamLayout.of(model).names == ("layers.0.weight", "layers.1.weight")
    assert ParamLayout.of(model).size == 3 * 5 + 5 * 2


def test_mlp_layout_is_weight_then_bias_per_layer():
    model = make_mlp((3, 5, 2))
    assert ParamLayout.of(model).names == ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")
    assert ParamLayout.of(model).shapes == ((5, 3), (5,), (2, 5), (2,))


@pytest.mark.parametrize("widths, match", [
    ((5,), "at least an input and an output"),
    ((), "at least an input and an output"),
    ((4, 0, 3), "every width must be >= 1"),
    ((4, 3, -2), "every width must be >= 1"),
])
def test_widths_validation(widths, match):
    with pytest.raises(ValueError, match=match):
        MLPConfig(widths)
    with pytest.raises(ValueError, match=match):
        make_mlp(widths)


def test_input_size_mismatch_error():
    model = make_mlp((4, 6, 3))
    with pytest.raises(ValueError, match=r"input has 5 features but the MLP expects 4 .*set the first width"):
        model(torch.zeros(2, 5, dtype=torch.float64))


def test_make_mlp_is_deterministic_per_seed_and_restores_the_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = flat_params(make_mlp((4, 6, 3), seed=7))
    assert torch.equal(torch.rand(3), expected_next)        # the global generator was not consumed
    b = flat_params(make_mlp((4, 6, 3), seed=7))
    c = flat_params(make_mlp((4, 6, 3), seed=8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the same seed gives the same weights in both precisions (drawn in float32, then converted)
    assert torch.equal(flat_params(make_mlp((4, 6, 3), seed=7, dtype=torch.float32)).double(), a)


def test_make_mlp_dtype_and_config():
    model = make_mlp([4, "6", 3.0], activation="gelu", dtype=torch.float32)
    assert isinstance(model, MLP)
    assert model.config == MLPConfig((4, 6, 3), "gelu", True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.to_dict() == {"widths": (4, 6, 3), "activation": "gelu", "bias": True}


def test_vit_classifier_reads_flat_inputs_as_images():
    model = make_vit(VIT, seed=1)
    x = torch.randn(5, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert model.in_features == 64 and model.act.name == "gelu" and model.act.is_c2
    assert torch.equal(model(x), model.vit(x.reshape(5, 1, 8, 8)))
    assert model(x).shape == (5, 3)
    with pytest.raises(ValueError, match=r"input has shape \(5, 63\) but the ViT expects N x 64 \(flat 1x8x8 images\)"):
        model(x[:, :63])


def test_make_vit_is_deterministic_per_seed_and_restores_the_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = flat_params(make_vit(VIT, seed=7))
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(flat_params(make_vit(VIT, seed=7)), a)
    assert not torch.equal(flat_params(make_vit(VIT, seed=8)), a)
    f32 = make_vit(VIT, seed=7, dtype=torch.float32)
    assert isinstance(f32, ViTClassifier) and f32.config == VIT
    assert torch.equal(flat_params(f32).double(), a)          # drawn in float32, then converted
    assert a.dtype == torch.float64 and a.numel() == 827


def test_vit_classifier_needs_a_head():
    with pytest.raises(ValueError, match="a ViT classifier needs num_classes >= 1, got 0"):
        ViTClassifier(dataclasses.replace(TINY_VIT, num_classes=0))
