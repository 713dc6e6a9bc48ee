"""The frozen classification head of a task, built once at the pretrained point: prototypes or a linear probe.

Only the encoder is finetuned and merged; every task keeps the head built on *pretrained* features, so
the loss of task t is a function of the encoder parameters alone and task vectors of different tasks
live in one space. Both heads are deterministic and closed-form, from all-reduced sums (so they do not depend
on the sharding), with mu the mean training feature:

- ``fit_prototypes`` (the default, ``--head prototype``): the analogue of CLIP's zero-shot head, one unit
  vector per class and nothing fitted but a scale. w_c = m_c / ||m_c|| with m_c the mean of z - mu over the
  training images of class c; logits = s <z - mu, w_c> / r with r the mean ||z - mu||, i.e. a nearest-
  prototype classifier by cosine-like similarity (a linear head: W = s w / r, b = -W mu).
- ``fit_probe`` (``--head probe``): ridge least squares on one-hot targets: [W b] = argmin ||Z W^T + b -
  Y||^2 + lam ||W||_F^2 (float64, features Z of the training images at theta_0, lam = ridge *
  trace(Z_c^T Z_c) / d), from the sums Z^T Z, Z^T Y, sum Z, sum Y. The best linear read-out of the pretrained
  features: it leaves finetuning less to gain.

Both end with one temperature s > 0 multiplying (W, b), the minimiser of the training cross-entropy over a
fixed log-spaced grid (``TEMPERATURE_GRID``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ..losses import cross_entropy_terms
from .dist import DistContext, shard

TEMPERATURE_GRID = tuple(10 ** (e / 8) for e in range(-8, 25))  # 0.1 .. 1000, 33 values


class FrozenHeadClassifier(nn.Module):
    """logits = encode(x) W^T + b with (W, b) buffers: the module's parameters are the encoder's only."""

    head_weight: torch.Tensor
    head_bias: torch.Tensor

    def __init__(self, encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        if getattr(encoder, "head", None) is not None:
            raise ValueError("the encoder must have no head (ViTConfig.num_classes = 0); the head is the frozen probe")
        self.encoder = encoder
        dtype = next(encoder.parameters()).dtype
        self.register_buffer("head_weight", weight.detach().to(dtype).clone())
        self.register_buffer("head_bias", bias.detach().to(dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """logits (N, C) of the model inputs x."""
        return encode(self.encoder, x) @ self.head_weight.T + self.head_bias


def encode(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoder.encode(x)``: the features (N, dim) of model inputs x (a ViT and a CLIP tower both define it)."""
    return cast(Callable[[torch.Tensor], torch.Tensor], encoder.encode)(x)


@torch.no_grad()
def features(encoder: nn.Module, x: torch.Tensor, chunk: int = 256, prepare=None) -> torch.Tensor:
    """CLS features of ``x`` (N, dim), computed in chunks; ``prepare`` maps a raw chunk to model input."""
    dtype = next(encoder.parameters()).dtype
    device = next(encoder.parameters()).device
    outs = []
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        xb = prepare(xb) if prepare is not None else xb
        outs.append(encode(encoder, xb.to(device=device, dtype=dtype)))
    dim = int(cast(Any, encoder).config.dim)       # an encoder's config (ViT's or CLIP's) has dim
    return torch.cat(outs) if outs else torch.zeros(0, dim, dtype=dtype, device=device)


def fit_probe(z: torch.Tensor, y: torch.Tensor, num_classes: int, ctx: DistContext | None = None,
              ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Ridge probe + CE temperature on features z (this rank's shard), labels y; returns (W, b, info)."""
    ctx = ctx or DistContext()
    z64 = z.detach().double()
    d = z64.shape[1]
    onehot = torch.nn.functional.one_hot(y.to(z.device), num_classes).double()
    stats = torch.cat([
        (z64.T @ z64).reshape(-1), (z64.T @ onehot).reshape(-1), z64.sum(0), onehot.sum(0),
        torch.tensor([float(z64.shape[0])], dtype=torch.float64, device=z.device)])
    ctx.all_reduce_sum_(stats)
    sizes = [d * d, d * num_classes, d, num_classes, 1]
    zz, zy, sz, sy, count = torch.split(stats, sizes)
    n = float(count)
    if n < 1:
        raise ValueError("the probe needs at least one training example")
    zz, zy = zz.view(d, d), zy.view(d, num_classes)
    mz, my = sz / n, sy / n
    czz = zz - n * torch.outer(mz, mz)                   # centred Gram matrix
    czy = zy - n * torch.outer(mz, my)
    lam = ridge * float(torch.trace(czz)) / d + 1e-12
    w = torch.linalg.solve(czz + lam * torch.eye(d, dtype=torch.float64, device=z.device), czy).T  # (C, d)
    b = my - w @ mz
    info = {"method": "ridge least squares on one-hot targets + CE temperature grid", "ridge": ridge,
            "ridge_lambda": lam}
    return _with_temperature(z64, y, w, b, n, info, ctx)


def fit_prototypes(z: torch.Tensor, y: torch.Tensor, num_classes: int,
                   ctx: DistContext | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Class-mean prototype head + CE temperature on features z (this rank's shard), labels y (module docstring);
    returns (W, b, info). A class without training images gets w_c = 0 (logit 0 before the bias).
    """
    ctx = ctx or DistContext()
    z64 = z.detach().double()
    d = z64.shape[1]
    first = torch.cat([z64.sum(0), torch.tensor([float(z64.shape[0])], dtype=torch.float64, device=z.device)])
    ctx.all_reduce_sum_(first)
    n = float(first[-1])
    if n < 1:
        raise ValueError("the prototype head needs at least one training example")
    mu = first[:d] / n
    zc = z64 - mu
    onehot = torch.nn.functional.one_hot(y.to(z.device), num_classes).double()
    radii = torch.linalg.vector_norm(zc, dim=1).sum().reshape(1)
    second = torch.cat([(onehot.T @ zc).reshape(-1), onehot.sum(0), radii])
    ctx.all_reduce_sum_(second)
    sums, counts, radius_sum = second[:num_classes * d].view(num_classes, d), second[num_classes * d:-1], second[-1]
    means = sums / counts.clamp(min=1.0)[:, None]
    norms = torch.linalg.vector_norm(means, dim=1, keepdim=True)
    protos = torch.where(norms > 0, means / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    radius = float(radius_sum) / n
    if not radius > 0:
        raise ValueError("all training features are equal: a prototype head cannot separate any class")
    w = protos / radius
    b = -(w @ mu)
    info = {"method": "class-mean prototypes (centred, unit norm, / mean feature radius) + CE temperature grid",
            "feature_radius": radius, "classes_without_examples": int((counts == 0).sum())}
    return _with_temperature(z64, y, w, b, n, info, ctx)


def _with_temperature(z64: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n: float, info: dict,
                      ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(s W, s b, info) with s the grid temperature of least training CE (all-reduced over ranks)."""
    losses = torch.stack([cross_entropy_terms(s * (z64 @ w.T + b), y.to(z64.device)).sum() for s in TEMPERATURE_GRID])
    ctx.all_reduce_sum_(losses)
    best = int(torch.argmin(losses))
    s = TEMPERATURE_GRID[best]
    info = {**info, "temperature": s, "train_ce": float(losses[best]) / n, "num_examples": int(n),
            "temperature_grid": [TEMPERATURE_GRID[0], TEMPERATURE_GRID[-1], len(TEMPERATURE_GRID)]}
    return (s * w).float(), (s * b).float(), info


@torch.no_grad()
def correct_count(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256, prepare=None) -> int:
    """Number of correctly classified examples of (x, y)."""
    p = next(model.parameters())
    correct = 0
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        xb = prepare(xb) if prepare is not None else xb
        correct += int((model(xb.to(device=p.device, dtype=p.dtype)).argmax(-1).cpu() == y[i:i + chunk].cpu()).sum())
    return correct


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: DistContext | None = None,
             chunk: int = 256, prepare=None) -> float:
    """Accuracy over all ranks' shards (x, y is this rank's shard)."""
    ctx = ctx or DistContext()
    t = torch.tensor([float(correct_count(model, x, y, chunk, prepare)), float(x.shape[0])], dtype=torch.float64,
                     device=ctx.device)
    ctx.all_reduce_sum_(t)
    return float(t[0] / t[1]) if t[1] > 0 else math.nan


def split_accuracy(model: nn.Module, split: tuple[torch.Tensor, torch.Tensor], ctx: DistContext | None = None,
                   chunk: int = 256, prepare=None) -> float:
    """Accuracy on a whole split (x, y) that every rank holds: each rank counts its shard, then all-reduce."""
    ctx = ctx or DistContext()
    x, y = split
    mine = shard(torch.arange(x.shape[0]), ctx)
    return accuracy(model, x[mine], y[mine], ctx, chunk, prepare)
