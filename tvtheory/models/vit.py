"""A compact Vision Transformer (ViT) in plain torch, safe for second derivatives on CPU.

Architecture (pre-LN, as in Dosovitskiy et al. 2021 / timm's ``VisionTransformer``):

    patches  : the image is cut into non-overlapping ``patch_size`` squares; each flattened patch
               (C * p * p values, channel-major like a stride-p Conv2d kernel) goes through one Linear
    tokens   : [CLS] + patches, plus a learned position embedding
    block x depth:
        x = x + Attention(LayerNorm(x))      multi-head self-attention written with matmul + softmax
        x = x + MLP(LayerNorm(x))            Linear -> exact (erf) GELU -> Linear
    final LayerNorm; ``encode(x)`` returns the CLS token (N x dim); ``forward`` adds the optional head.

Attention is written by hand on purpose: ``F.scaled_dot_product_attention`` has no double-backward
on CPU, and the theory checks need Hessian-vector products, both reverse-over-reverse and
forward-over-reverse (``torch.func.jvp(torch.func.grad(f), ...)``). The model has no dropout, no
stochastic depth and no buffers, so it is a pure function of its parameters and works with
``torch.func.functional_call`` in float32 and float64.

Default size (``ViTConfig()``): patch 4 (64 patches + CLS), dim 96, depth 4, heads 4, MLP 192.
It was chosen by measured CPU throughput; see ``small_models/README.md`` for the numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import Activation, get_activation
from .seeding import seeded

__all__ = [
    "ViTConfig",
    "ViT",
    "ViTClassifier",
    "make_vit",
    "count_parameters",
    "CONFIG_METADATA_KEY",
]

#: Key of the JSON-encoded :class:`ViTConfig` in the safetensors metadata.
CONFIG_METADATA_KEY = "vit_config"


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`ViT`.

    ``num_classes = 0`` means no classification head: ``forward`` then returns the CLS feature.
    """

    image_size: int = 32
    patch_size: int = 4
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 192
    num_classes: int = 0
    channels: int = 3
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                "choose a patch size that divides the image size"
            )
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        for name in ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ViTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"ViTConfig.num_classes must be >= 0, got {self.num_classes}")

    @property
    def num_patches(self) -> int:
        """Number of patch tokens (the CLS token excluded)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they signal a version mismatch)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ViTConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)


class Attention(nn.Module):
    """Multi-head self-attention with an explicit softmax(Q K^T / sqrt(d)) V (no fused kernels)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (n, heads, t, head_dim)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class FeedForward(nn.Module):
    """The block's feed-forward part: Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p * W/p, C*p*p), patches in row-major order, channel-major inside a patch.

    Followed by a Linear this equals a Conv2d with kernel = stride = p (same weight layout after
    ``weight.reshape(dim, -1)``), but uses only reshapes and a matmul.
    """
    n, c, h, w = x.shape
    p = patch_size
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


class ViT(nn.Module):
    """Vision Transformer encoder with an optional linear head (see the module docstring)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Linear(c.channels * c.patch_size**2, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_dim, c.layer_norm_eps) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm-style init: truncated normal (std 0.02) for embeddings and Linear weights, zero biases.

        Uses the global torch RNG: call ``torch.manual_seed`` first (or build the model under
        ``torch.random.fork_rng``) for a reproducible init.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W), already normalised, -> CLS features (N, dim)."""
        c = self.config
        if x.shape[1:] != (c.channels, c.image_size, c.image_size):
            raise ValueError(
                f"expected input of shape (N, {c.channels}, {c.image_size}, {c.image_size}), got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(patchify(x, c.patch_size))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) when the model has a head, else the CLS features (N, dim)."""
        z = self.encode(x)
        return z if self.head is None else self.head(z)


class ViTClassifier(nn.Module):
    """A ViT with a head on flat inputs: x (N x C*S*S) is reshaped to (N, C, S, S) images, f = ViT(x).

    Every operation (affine maps, softmax attention, LayerNorm with eps > 0, exact erf GELU) is C^infinity,
    so T1-T3 apply; T4's curvature bound covers only the MLP (``tvtheory.bounds.T4_NOTE``).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.num_classes < 1:
            raise ValueError(f"a ViT classifier needs num_classes >= 1, got {config.num_classes}")
        self.config = config
        self.act: Activation = get_activation("gelu")
        self.vit = ViT(config)

    @property
    def in_features(self) -> int:
        """C * S * S, the size of one flat input."""
        return self.config.channels * self.config.image_size ** 2

    def check_data(self, features: int, classes: int) -> None:
        """The data must hold flat C x S x S images and as many classes as the head has outputs."""
        c = self.config
        if features != self.in_features:
            raise ValueError(f"the data has {features} input features but the ViT reads {c.channels}x{c.image_size}x"
                             f"{c.image_size} images ({self.in_features} features): give it flat {c.channels}x"
                             f"{c.image_size}x{c.image_size} images, or a ViTConfig with channels * image_size^2 = "
                             f"{features}")
        if c.num_classes != classes:
            raise ValueError(f"the data has {classes} classes but the ViT has {c.num_classes} outputs: "
                             f"build it with ViTConfig(num_classes={classes})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of flat images x (N, C*S*S)."""
        c = self.config
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"input has shape {tuple(x.shape)} but the ViT expects N x {self.in_features} "
                             f"(flat {c.channels}x{c.image_size}x{c.image_size} images)")
        return self.vit(x.reshape(x.shape[0], c.channels, c.image_size, c.image_size))


def make_vit(config: ViTConfig, seed: int = 0, dtype=torch.float64) -> ViTClassifier:
    """A ViT classifier with the ViT's timm-style initialisation drawn from ``seed`` (same seed, same weights)."""
    return seeded(lambda: ViTClassifier(config), seed).to(dtype)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())

