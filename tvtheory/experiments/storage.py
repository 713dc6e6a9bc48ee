"""The files of the vision pipeline's artifacts, all written atomically through :func:`tvtheory.io.atomic_path`.

- ``save_tensors`` / ``load_tensors``: named tensors as safetensors, the one writer of the package (probe
  heads, task vectors, gradients);
- ``save_vector`` / ``load_vector``: a flat parameter vector as the named tensors of a ``ParamLayout``;
- ``save_checkpoint``: ``torch.save`` of a finetuning run's state after each epoch;
- ``tau_path`` / ``grad_path``: where a run keeps tau^(k) and grad L(theta_{k-1}).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path
from ..params import ParamLayout


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write named tensors (copied to contiguous CPU memory) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    flat = {k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp))
    return Path(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors of a safetensors file (on the CPU)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def save_vector(path: str | Path, v: torch.Tensor, layout: ParamLayout) -> Path:
    """Write a flat parameter vector as the named tensors of ``layout`` (safetensors), atomically."""
    return save_tensors(path, layout.unflatten(v))


def load_vector(path: str | Path, layout: ParamLayout) -> torch.Tensor:
    """The flat vector of a file written by :func:`save_vector` (tensors in ``layout`` order)."""
    return layout.flatten(load_tensors(path))


def save_checkpoint(path: str | Path, state: Any) -> Path:
    """``torch.save(state)`` to ``path``, atomically: an interrupted write leaves the previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def tau_path(run_dir: str | Path, k: int) -> Path:
    """tau^(k) = theta_k - theta_0, after epoch k."""
    return Path(run_dir) / f"tau_epoch{k:03d}.safetensors"


def grad_path(run_dir: str | Path, k: int) -> Path:
    """grad L(theta_{k-1}), the full-batch gradient at the start of epoch k (k = 1: at theta_0)."""
    return Path(run_dir) / f"grad_epoch{k:03d}.safetensors"
