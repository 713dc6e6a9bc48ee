"""Task vectors, task arithmetic and the geometry used to compare them.

tau_t = theta_t - theta_0;  task arithmetic: theta_0 + alpha * sum_t tau_t;  with one-step task vectors
sum_t tau_t^(1) = -eta T grad L_MT(theta_0), L_MT = (1/T) sum_t L_t (corollary C1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .params import ParamLayout


def task_vector(theta: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
    """tau = theta - theta_0."""
    if theta.shape != theta0.shape:
        raise ValueError(f"finetuned and pretrained parameters differ in shape: {tuple(theta.shape)} vs "
                         f"{tuple(theta0.shape)}")
    return theta - theta0


def merge(theta0: torch.Tensor, task_vectors: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """Task arithmetic: theta_0 + alpha * sum_t tau_t."""
    if len(task_vectors) == 0:
        raise ValueError("merge needs at least one task vector")
    return theta0 + alpha * torch.stack(list(task_vectors)).sum(0)


def norm(v: torch.Tensor) -> float:
    """||v||_2, computed in float64."""
    return float(torch.linalg.vector_norm(v.detach().double()))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) = <a, b> / (||a|| ||b||), in float64; NaN when either vector is zero."""
    a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    denom = torch.linalg.vector_norm(a64) * torch.linalg.vector_norm(b64)
    return float(a64 @ b64 / denom) if denom > 0 else float("nan")


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """||estimate - reference|| / ||reference||, in float64."""
    ref = torch.linalg.vector_norm(reference.detach().double())
    return float(torch.linalg.vector_norm((estimate - reference).detach().double()) / ref)


def per_layer_cosines(a: torch.Tensor, b: torch.Tensor, layout: ParamLayout) -> Mapping[str, float]:
    """cos(a, b) restricted to each named parameter tensor."""
    return {name: cosine(a[sl], b[sl]) for name, sl in layout.slices().items()}
