"""Tests of the compact ViT (tvtheory.models.vit) on tiny configurations."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from tvtheory.models.pretrained import load_pretrained, save_encoder
from tvtheory.models.vit import CONFIG_METADATA_KEY, ViT, ViTConfig, count_parameters, patchify

TINY = ViTConfig(image_size=8, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16, num_classes=3)


def _model(seed: int = 0, config: ViTConfig = TINY, dtype: torch.dtype = torch.float32) -> ViT:
    torch.manual_seed(seed)
    return ViT(config).to(dtype)


def _inputs(n: int = 5, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_shapes_and_head():
    m = _model()
    x = _inputs()
    assert m.encode(x).shape == (5, 8)
    assert m(x).shape == (5, 3)
    headless = ViT(dataclasses.replace(TINY, num_classes=0))
    assert headless.head is None and torch.equal(headless(x), headless.encode(x))
    assert ViTConfig().num_patches == 64
    with pytest.raises(ValueError, match="expected input of shape"):
        m(torch.zeros(2, 3, 16, 16))


def test_config_validation_and_dict_round_trip():
    assert ViTConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(image_size=32, patch_size=5)
    with pytest.raises(ValueError, match="divisible by heads"):
        ViTConfig(dim=10, heads=4)
    with pytest.raises(ValueError, match="unknown ViTConfig keys"):
        ViTConfig.from_dict({**TINY.to_dict(), "dropout": 0.1})


def test_patch_embedding_equals_strided_conv():
    m = _model()
    x = _inputs()
    conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(m.patch_embed.weight.view(8, 3, 4, 4))
        conv.bias.copy_(m.patch_embed.bias)
    ref = conv(x).flatten(2).transpose(1, 2)  # (N, patches, dim), row-major patches
    assert torch.allclose(m.patch_embed(patchify(x, 4)), ref, atol=1e-6)


def test_attention_matches_sdpa_reference():
    attn = _model().blocks[0].attn
    h = torch.randn(4, 5, 8)
    qkv = attn.qkv(h).reshape(4, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(4, 5, 8)
    assert torch.allclose(attn(h), attn.proj(ref), atol=1e-6)


def test_encode_is_final_norm_of_cls_token():
    m = _model()
    x = _inputs()
    h = torch.cat([m.cls_token.expand(5, -1, -1), m.patch_embed(patchify(x, 4))], dim=1) + m.pos_embed
    for block in m.blocks:
        h = block(h)
    assert torch.allclose(m.encode(x), m.norm(h)[:, 0], atol=1e-6)
    assert torch.allclose(m(x), m.head(m.norm(h)[:, 0]), atol=1e-6)


def test_block_is_pre_layernorm_residual():
    block = _model(dtype=torch.float64).blocks[1]
    h = torch.randn(4, 5, 8, dtype=torch.float64)
    mid = h + block.attn(block.norm1(h))
    assert torch.allclose(block(h), mid + block.mlp(block.norm2(mid)), rtol=0, atol=1e-13)


def test_mlp_uses_exact_erf_gelu():
    mlp = _model(dtype=torch.float64).blocks[0].mlp
    h = 3 * torch.randn(4, 5, 8, dtype=torch.float64)
    u = mlp.fc1(h)
    ref = mlp.fc2(0.5 * u * (1 + torch.erf(u / 2**0.5)))
    assert torch.allclose(mlp(h), ref, rtol=0, atol=1e-13)


def test_functional_call_equals_forward():
    m = _model()
    x = _inputs()
    params = {k: v.detach() * 1.1 + 0.01 for k, v in m.named_parameters()}
    out_fc = functional_call(m, params, (x,))
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(params[k])
    assert torch.allclose(out_fc, m(x), atol=1e-6)
    assert not torch.allclose(out_fc, _model()(x), atol=1e-3)  # the parameters did change the output


def _flat_loss(model: ViT, x: torch.Tensor, y: torch.Tensor):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [s.numel() for s in shapes]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return loss, theta


# torch's forward-AD decompositions call the deprecated torch.jit.script on first use (torch internals).
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_forward_over_reverse_hvp_equals_reverse_over_reverse(dtype, rtol):
    model = _model(dtype=dtype)
    x, y = _inputs(dtype=dtype), torch.tensor([0, 1, 2, 0, 1])
    loss, theta = _flat_loss(model, x, y)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    g, hv_fwd = jvp(grad(loss), (theta,), (v,))
    _, hv_rev = torch.autograd.functional.hvp(loss, theta, v)
    assert g.dtype == dtype and hv_fwd.abs().max() > 1e-3  # a non-trivial Hessian-vector product
    scale = hv_rev.abs().max()
    assert (hv_fwd - hv_rev).abs().max() <= rtol * scale
    # and the gradient agrees with plain autograd on the module
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(g, g_ref, rtol=rtol, atol=rtol * g_ref.abs().max())


def test_determinism_for_fixed_seed():
    a, b, c = _model(0), _model(0), _model(1)
    x = _inputs()
    for (ka, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), ka
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


def test_parameter_count_formula():
    c = TINY
    per_block = 2 * 2 * c.dim + (c.dim * 3 * c.dim + 3 * c.dim) + (c.dim * c.dim + c.dim) \
        + (c.dim * c.mlp_dim + c.mlp_dim) + (c.mlp_dim * c.dim + c.dim)
    expected = (3 * c.patch_size**2 * c.dim + c.dim) + c.dim + (c.num_patches + 1) * c.dim \
        + c.depth * per_block + 2 * c.dim + (c.dim * c.num_classes + c.num_classes)
    assert count_parameters(_model()) == expected


def test_load_pretrained_round_trip(tmp_path):
    model = _model(seed=3, dtype=torch.float64)
    path = save_encoder(model, tmp_path / "enc.safetensors")
    assert not list(tmp_path.glob("*.tmp"))
    encoder, config = load_pretrained(path)
    assert config == dataclasses.replace(TINY, num_classes=0)
    assert encoder.head is None and not encoder.training
    loaded = dict(encoder.named_parameters())
    assert set(loaded) == {k for k, _ in model.named_parameters() if not k.startswith("head.")}
    for k, p in loaded.items():
        assert p.dtype == torch.float32 and torch.equal(p, dict(model.named_parameters())[k].float())
    x = _inputs(dtype=torch.float64)
    assert torch.allclose(encoder(x.float()), model.encode(x).float(), atol=1e-5)
    # identical weights give a byte-identical file
    save_encoder(model, tmp_path / "again.safetensors")
    assert (tmp_path / "enc.safetensors").read_bytes() == (tmp_path / "again.safetensors").read_bytes()
    # the encoder plugs into a model with a new head
    finetune = ViT(dataclasses.replace(config, num_classes=7))
    missing, unexpected = finetune.load_state_dict(encoder.state_dict(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match=CONFIG_METADATA_KEY):
        load_pretrained(tmp_path / "plain.safetensors")
