"""A finetuning problem: a network (MLP or ViT classifier) at its pretrained point theta_0, a loss, task data
and its batches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .activations import Activation
from .data import Dataset, partition
from .losses import Loss, get_loss
from .objective import Objective
from .params import flat_params


@dataclass(frozen=True)
class Problem:
    """L (mean loss over the examples used), the batch losses L_b (L = mean_b L_b) and theta_0.

    ``model`` gives the structure only (L is evaluated at a flat theta); its ``act`` says whether it is C^2.
    """

    model: nn.Module
    loss: Loss
    data: Dataset
    objective: Objective
    batch_objectives: tuple[Objective, ...]
    theta0: torch.Tensor

    @property
    def act(self) -> Activation:
        """The network's activation (``model.act``, which the MLP and the ViT classifier carry): whether L is C^2."""
        act = getattr(self.model, "act", None)
        if not isinstance(act, Activation):
            raise TypeError(f"{type(self.model).__name__} has no .act (an Activation); the checks of T2-T4 need "
                            "to know whether the network is C^2")
        return act

    @property
    def num_params(self) -> int:
        """P, the number of parameters."""
        return self.theta0.numel()

    @property
    def num_batches(self) -> int:
        """B, the number of batches."""
        return len(self.batch_objectives)

    def to(self, dtype: torch.dtype) -> Problem:
        """The same problem in another precision: theta_0, the data and this problem's own objectives converted
        (inputs and float targets; class indices stay int64), so L and every L_b are the same functions.
        """
        model = copy.deepcopy(self.model).to(dtype)

        def convert(f: Objective) -> Objective:
            target = f.target.to(dtype) if f.target.is_floating_point() else f.target
            return Objective(model, f.loss, f.x.to(dtype), target)

        return Problem(model, self.loss, self.data.to(dtype), convert(self.objective),
                       tuple(convert(f) for f in self.batch_objectives), self.theta0.to(dtype))

    def with_batches(self, num_batches: int, seed: int = 0) -> Problem:
        """The same task split into B equal batches (leftover examples dropped)."""
        return make_problem(self.model, self.loss.name, self.data, num_batches, seed, theta0=self.theta0)


def make_problem(model: nn.Module, loss: str, data: Dataset, num_batches: int = 1, seed: int = 0,
                 theta0: torch.Tensor | None = None) -> Problem:
    """Bind a model, a loss and data; the data is reordered so batch b is the b-th contiguous block."""
    check_fits(model, data)
    index = torch.cat(partition(len(data), num_batches, seed))
    dtype = next(model.parameters()).dtype
    theta = flat_params(model) if theta0 is None else theta0.to(dtype)
    return _bind(model, get_loss(loss), data.subset(index).to(dtype), num_batches, theta)


def check_fits(model: nn.Module, data: Dataset) -> None:
    """The model's own shape check (``check_data(features, classes)``, a message naming the fix) where it has
    one; any other module is checked only by its forward pass.
    """
    check = getattr(model, "check_data", None)
    if check is not None:
        check(data.x.shape[1], data.num_classes)


def _bind(model: nn.Module, loss: Loss, data: Dataset, num_batches: int, theta0: torch.Tensor) -> Problem:
    """Batch b is the b-th contiguous block of ``data`` (whose size is a multiple of num_batches)."""
    targets = data.targets(loss.name)
    size = len(data) // num_batches
    blocks = tuple(Objective(model, loss, data.x[i * size:(i + 1) * size], targets[i * size:(i + 1) * size])
                   for i in range(num_batches))
    return Problem(model, loss, data, Objective(model, loss, data.x, targets), blocks, theta0)
