"""Flat parameter vectors: a model as a pure function of one vector theta in R^P.

Every statement of the theory is about vectors in R^P (theta_0, tau = theta_k - theta_0, g, H v).
:class:`ParamLayout` records the names and shapes of a module's parameters, so a flat vector can be
split back into named tensors (views, differentiable) and fed to ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a module's parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        """The layout of ``module.named_parameters()``."""
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def numels(self) -> tuple[int, ...]:
        """The number of entries of each parameter tensor."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """P, the number of parameters."""
        return sum(self.numels)

    def slices(self) -> dict[str, slice]:
        """The slice of the flat vector that holds each named parameter."""
        out, start = {}, 0
        for name, n in zip(self.names, self.numels, strict=True):
            out[name] = slice(start, start + n)
            start += n
        return out

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into named tensors (differentiable views)."""
        if theta.ndim != 1 or theta.numel() != self.size:
            raise ValueError(
                f"flat parameter vector has shape {tuple(theta.shape)}, expected ({self.size},) for this model"
            )
        parts = torch.split(theta, list(self.numels))
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate named tensors (e.g. a state dict or gradients) into one flat vector."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"missing parameters {missing}; expected names {list(self.names)}")
        for n, s in zip(self.names, self.shapes, strict=True):
            if tuple(tensors[n].shape) != s:
                raise ValueError(f"parameter {n!r} has shape {tuple(tensors[n].shape)}, expected {s}")
        return torch.cat([tensors[n].reshape(-1) for n in self.names])


def flat_params(module: nn.Module) -> torch.Tensor:
    """A detached copy of the module's parameters as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def flat_grads(module: nn.Module) -> torch.Tensor:
    """The module's ``.grad`` fields as one flat vector (zeros where a gradient is missing)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) for p in module.parameters()]
    ).clone()


@torch.no_grad()
def load_flat_(module: nn.Module, theta: torch.Tensor) -> None:
    """Copy a flat vector into the module's parameters, in place."""
    layout = ParamLayout.of(module)
    for p, value in zip(module.parameters(), layout.unflatten(theta).values(), strict=True):
        p.copy_(value)
