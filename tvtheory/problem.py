"""A finetuning problem: an MLP at its pretrained point theta_0, a loss, task data and its batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Dataset, partition
from .losses import Loss, get_loss
from .models import MLP, make_mlp
from .objective import Objective
from .params import flat_params

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class Problem:
    """L (mean loss over the examples used), the batch losses L_b (L = mean_b L_b) and theta_0."""

    model: MLP
    loss: Loss
    data: Dataset
    objective: Objective
    batch_objectives: tuple[Objective, ...]
    theta0: torch.Tensor

    @property
    def num_params(self) -> int:
        return self.theta0.numel()

    @property
    def num_batches(self) -> int:
        return len(self.batch_objectives)

    def to(self, dtype: torch.dtype) -> "Problem":
        """The same problem in another precision (theta_0 converted from this one)."""
        config = self.model.config
        model = make_mlp(config.widths, config.activation, config.bias, dtype=dtype)
        return _bind(model, self.loss, self.data.to(dtype), self.num_batches, self.theta0.to(dtype))

    def with_batches(self, num_batches: int, seed: int = 0) -> "Problem":
        """The same task split into B equal batches (leftover examples dropped)."""
        return make_problem(self.model, self.loss.name, self.data, num_batches, seed, theta0=self.theta0)


def make_problem(model: MLP, loss: str, data: Dataset, num_batches: int = 1, seed: int = 0,
                 theta0: torch.Tensor | None = None) -> Problem:
    """Bind a model, a loss and data; the data is reordered so batch b is the b-th contiguous block."""
    widths = model.config.widths
    if data.x.shape[1] != widths[0]:
        raise ValueError(f"the data has {data.x.shape[1]} input features but the first width is {widths[0]}: "
                         f"use --widths {data.x.shape[1]},...,{widths[-1]}")
    if widths[-1] != data.num_classes:
        raise ValueError(f"the data has {data.num_classes} classes but the last width is {widths[-1]}: "
                         f"use --widths {widths[0]},...,{data.num_classes}")
    index = torch.cat(partition(len(data), num_batches, seed))
    dtype = next(model.parameters()).dtype
    theta = flat_params(model) if theta0 is None else theta0.to(dtype)
    return _bind(model, get_loss(loss), data.subset(index).to(dtype), num_batches, theta)


def _bind(model: MLP, loss: Loss, data: Dataset, num_batches: int, theta0: torch.Tensor) -> Problem:
    """Batch b is the b-th contiguous block of ``data`` (whose size is a multiple of num_batches)."""
    targets = data.targets(loss.name)
    size = len(data) // num_batches
    blocks = tuple(Objective(model, loss, data.x[i * size:(i + 1) * size], targets[i * size:(i + 1) * size])
                   for i in range(num_batches))
    return Problem(model, loss, data, Objective(model, loss, data.x, targets), blocks, theta0)
