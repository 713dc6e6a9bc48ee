"""Tests of the residual CNN encoder (tvtheory.models.cnn) and the encoder files (tvtheory.models.pretrained)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call, grad, jvp

from tvtheory.models.cnn import CNN, CONFIG_METADATA_KEY, CNNConfig
from tvtheory.models.pretrained import load_pretrained, save_encoder
from tvtheory.models.vit import ViT, ViTConfig

TINY = CNNConfig(image_size=8, widths=(4, 8), blocks=1, groups=2, num_classes=3)


def _model(seed: int = 0, config: CNNConfig = TINY, dtype: torch.dtype = torch.float64) -> CNN:
    torch.manual_seed(seed)
    return CNN(config).to(dtype)


def _inputs(n: int = 5, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_shapes_head_and_parameter_count():
    m = _model()
    x = _inputs()
    assert m.encode(x).shape == (5, 8) and m(x).shape == (5, 3)
    headless = CNN(dataclasses.replace(TINY, num_classes=0)).double()
    assert headless.head is None and torch.equal(headless(x), headless.encode(x))
    # stem 3*4*9 + GN 2*4; block at 4: 2 * (4*4*9 + 2*4); down 4*8*9 + 2*8; block at 8: 2 * (8*8*9 + 2*8); head 8*3+3
    expected = (108 + 8) + 2 * (144 + 8) + (288 + 16) + 2 * (576 + 16) + 27
    assert sum(p.numel() for p in m.parameters()) == expected


def test_encode_is_the_spatial_mean_of_the_last_stage():
    m = _model()
    x = _inputs()
    assert torch.allclose(m.encode(x), m.body(x).mean((2, 3)), rtol=0, atol=0)
    assert m.body(x).shape == (5, 8, 4, 4)          # one halving for the second stage


def test_examples_are_independent():
    """GroupNorm normalises each example on its own: an example's output does not depend on the batch."""
    m = _model()
    x = _inputs(6)
    assert torch.allclose(m(x)[:2], m(x[:2]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    ({"widths": ()}, "widths"), ({"widths": (4, 5)}, "groups"), ({"groups": 0}, "groups"),
    ({"image_size": 6, "widths": (4, 8, 8)}, "divisible"), ({"num_classes": -1}, "num_classes"),
    ({"blocks": 0}, "blocks"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **bad)


def test_config_round_trip_and_unknown_keys():
    assert CNNConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown CNNConfig keys"):
        CNNConfig.from_dict({**TINY.to_dict(), "depth": 3})


def test_wrong_input_shape_is_one_clear_error():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, 8, 8\)"):
        _model()(torch.zeros(2, 3, 16, 16, dtype=torch.float64))


def test_hvp_forward_over_reverse_equals_reverse_over_reverse_and_finite_differences():
    """Second derivatives exist through conv, GroupNorm and GELU: both HVP modes agree in float64, and match a
    central difference of the gradient along a unit v (truncation h^2/6 ||D^4 L[v, v, v]|| ~ 1e-8 relative at
    h = 1e-4, rounding ~ u / h ~ 1e-12; a wrong second derivative is an O(1) error)."""
    m = _model()
    x, y = _inputs(4), torch.tensor([0, 1, 2, 1])
    params = {k: v.detach() for k, v in m.named_parameters()}
    names = list(params)
    flat0 = torch.cat([params[k].reshape(-1) for k in names])

    def unflatten(flat):
        out, i = {}, 0
        for k in names:
            n = params[k].numel()
            out[k] = flat[i:i + n].view_as(params[k])
            i += n
        return out

    def loss(flat):
        logits = functional_call(m, unflatten(flat), (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    v = torch.randn(flat0.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = v / v.norm()
    fwd = jvp(grad(loss), (flat0,), (v,))[1]
    g = torch.autograd.functional.vhp(loss, flat0, v)[1]
    h = 1e-4
    fd = (grad(loss)(flat0 + h * v) - grad(loss)(flat0 - h * v)) / (2 * h)
    assert torch.allclose(fwd, g, rtol=1e-10, atol=1e-12)
    assert float((fwd - fd).norm()) <= 1e-6 * float(fwd.norm())
    assert fwd.norm() > 0


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_encoder_file_round_trip(tmp_path, arch):
    if arch == "cnn":
        model: torch.nn.Module = _model(seed=3)
        x = _inputs()
    else:
        torch.manual_seed(3)
        model = ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=16, num_classes=3))
        x = _inputs(dtype=torch.float32)
    path = save_encoder(model, tmp_path / "enc.safetensors")
    assert not list(tmp_path.glob("*.tmp"))
    encoder, config = load_pretrained(path)
    assert type(encoder) is type(model) and config == dataclasses.replace(model.config, num_classes=0)
    assert encoder.head is None and not encoder.training
    for k, p in encoder.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, dict(model.named_parameters())[k].float())
    assert torch.allclose(encoder(x.float()), model.encode(x).float(), atol=1e-5)
    save_encoder(model, tmp_path / "again.safetensors")         # identical weights, byte-identical file
    assert (tmp_path / "enc.safetensors").read_bytes() == (tmp_path / "again.safetensors").read_bytes()


def test_encoder_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match=CONFIG_METADATA_KEY):
        load_pretrained(tmp_path / "plain.safetensors")
    with pytest.raises(TypeError, match="CNN or a ViT"):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "linear.safetensors")  # type: ignore[arg-type]
