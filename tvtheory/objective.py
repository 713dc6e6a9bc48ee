"""The mean loss of a model on a dataset as a pure function of the flat parameter vector.

L(theta) = (1/N) sum_i l(f(x_i; theta), y_i), evaluated with ``torch.func.functional_call`` so that
``torch.func.grad`` / ``jvp`` / ``vmap`` apply to it directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .losses import Loss
from .params import ParamLayout


class Objective:
    """L(theta) for a fixed model structure, loss and data (the model's own weights are not used)."""

    def __init__(self, model: nn.Module, loss: Loss, x: torch.Tensor, target: torch.Tensor):
        if x.shape[0] != target.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but the targets have {target.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("the objective has no examples")
        self.model, self.loss, self.x, self.target = model, loss, x, target
        self.layout = ParamLayout.of(model)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """L(theta) = (1/N) sum_i l(f(x_i; theta), y_i), the mean loss at a flat parameter vector."""
        return self.loss.fn(self.outputs(theta), self.target)

    def outputs(self, theta: torch.Tensor) -> torch.Tensor:
        """f(x_i; theta) for every example."""
        return functional_call(self.model, self.layout.unflatten(theta), (self.x,))

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: torch.Tensor) -> Objective:
        """The mean loss on a subset of the examples (a batch loss L_b)."""
        return Objective(self.model, self.loss, self.x[index], self.target[index])
