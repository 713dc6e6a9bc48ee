"""Finetuning runs that record the exact trajectory theta_0, theta_1, ..., theta_S.

One step s uses batch b_s of a partition of the task's data into B equal batches (B = 1 is full-batch
gradient descent: one epoch = one step). Two runners:
- ``gradient_descent``: the plain functional update theta_{s+1} = theta_s - eta * grad L_{b_s}(theta_s)
  (the iteration of T1-T3);
- ``run_optimizer``: any ``torch.optim`` optimizer on an ``nn.Module``, recording theta_s and the
  gradient the optimizer was given at each step (what practitioners actually run).
Both refuse to continue once the loss or parameters stop being finite or the loss explodes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .objective import Objective
from .params import flat_grads, flat_params, load_flat_

# A loss larger than this multiple of the first loss (plus one) is treated as divergence.
DIVERGENCE_FACTOR = 1e4


class DivergenceError(RuntimeError):
    """The run diverged (non-finite or exploding loss); the message names the epoch and the fix."""


@dataclass
class Trajectory:
    """theta_s for s = 0..S, with the batch index, batch loss and gradient used at each step."""

    thetas: list[torch.Tensor]
    steps_per_epoch: int
    schedule: list[int] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        """S, the number of steps taken."""
        return len(self.thetas) - 1

    @property
    def epochs(self) -> int:
        """K = S // B, the number of complete epochs."""
        return self.num_steps // self.steps_per_epoch

    @property
    def theta0(self) -> torch.Tensor:
        """theta_0, the starting (pretrained) point."""
        return self.thetas[0]

    def at_epoch(self, k: int) -> torch.Tensor:
        """theta after k epochs (k * B steps)."""
        return self.thetas[k * self.steps_per_epoch]

    def task_vector(self, k: int) -> torch.Tensor:
        """tau^(k) = theta_k - theta_0 after k epochs."""
        return self.at_epoch(k) - self.theta0


def epoch_schedule(num_batches: int, epochs: int) -> list[int]:
    """Batch order b_s: every epoch visits batches 0..B-1 in the same order."""
    return [b for _ in range(epochs) for b in range(num_batches)]


def check_loss(value: float, first_loss: float, where: str, lr: float) -> float:
    """``value`` if the loss is finite and below DIVERGENCE_FACTOR (|first loss| + 1), else a DivergenceError
    naming ``where`` (e.g. "epoch 3") and the learning rate.
    """
    if not math.isfinite(value):
        raise DivergenceError(f"the loss became {value} in {where} with learning rate {lr:g}: "
                              "lower the learning rate (GD is stable below 2 / ||H||)")
    if value > DIVERGENCE_FACTOR * (abs(first_loss) + 1.0):
        raise DivergenceError(f"the loss exploded from {first_loss:.4g} to {value:.4g} in {where} with learning "
                              f"rate {lr:g}: the run diverges; lower the learning rate")
    return value


def _check_step(loss: torch.Tensor, first_loss: float, step: int, steps_per_epoch: int, lr: float) -> float:
    """``check_loss`` for the loss checked at step s, named by epoch and step. At s = 0 (the first loss, and the
    final loss of a one-step run) the loss must only be finite: one step is T1's setting, which holds for any
    learning rate, so it is not called divergent; a longer run is compared with its first loss from s = 1 on.
    """
    epoch, within = divmod(step, steps_per_epoch)
    reference = first_loss if step > 0 else math.inf      # inf: nothing to compare with
    return check_loss(float(loss), reference, f"epoch {epoch + 1} (step {within + 1} of {steps_per_epoch})", lr)


def gradient_descent(
    objective: Objective,
    theta0: torch.Tensor,
    lr: float,
    epochs: int,
    batches: Sequence[torch.Tensor] | None = None,
    progress: bool = False,
) -> Trajectory:
    """theta_{s+1} = theta_s - lr * grad L_{b_s}(theta_s) over ``epochs`` passes of the batches (T1-T3).

    ``batches`` (index tensors partitioning the data, equal sizes) defaults to one full batch.
    """
    _check_lr(lr)
    losses_of = [objective] if batches is None else [objective.subset(b) for b in batches]
    traj = Trajectory([theta0.detach().clone()], len(losses_of))
    value_and_grad = [torch.func.grad_and_value(f) for f in losses_of]
    schedule = epoch_schedule(len(losses_of), epochs)
    theta = traj.thetas[0]
    for s, b in enumerate(tqdm(schedule, desc="gradient descent", disable=not progress, leave=False)):
        g, loss = value_and_grad[b](theta)
        traj.losses.append(_check_step(loss, traj.losses[0] if traj.losses else float(loss), s,
                                       traj.steps_per_epoch, lr))
        theta = theta - lr * g
        _check_params(theta, s, traj.steps_per_epoch, lr)
        traj.schedule.append(b)
        traj.grads.append(g.detach())
        traj.thetas.append(theta.detach())
    _check_final(objective, traj, lr)
    return traj


def run_optimizer(
    objective: Objective,
    theta0: torch.Tensor,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    epochs: int,
    batches: Sequence[torch.Tensor] | None = None,
    lr_for_messages: float = float("nan"),
    progress: bool = False,
) -> Trajectory:
    """Run a ``torch.optim`` optimizer on a copy of the objective's module, starting at theta0.

    Records theta_s after every step and the flat gradient the optimizer received at step s (from
    ``loss.backward()``), so T1 can be checked against the very arithmetic the optimizer performed.
    """
    model = copy.deepcopy(objective.model)
    load_flat_(model, theta0.to(next(model.parameters()).dtype))
    optimizer = make_optimizer(list(model.parameters()))
    index = [None] if batches is None else list(batches)
    traj = Trajectory([flat_params(model)], len(index))
    for s, b in enumerate(tqdm(epoch_schedule(len(index), epochs), desc="optimizer", disable=not progress,
                               leave=False)):
        rows = index[b]
        x, t = (objective.x, objective.target) if rows is None else (objective.x[rows], objective.target[rows])
        optimizer.zero_grad(set_to_none=True)
        loss = objective.loss.fn(model(x), t)
        traj.losses.append(_check_step(loss.detach(), traj.losses[0] if traj.losses else float(loss.detach()), s,
                                       traj.steps_per_epoch, lr_for_messages))
        loss.backward()
        traj.grads.append(flat_grads(model))
        optimizer.step()
        theta = flat_params(model)
        _check_params(theta, s, traj.steps_per_epoch, lr_for_messages)
        traj.schedule.append(b)
        traj.thetas.append(theta)
    _check_final(objective, traj, lr_for_messages)
    return traj


def _check_final(objective: Objective, traj: Trajectory, lr: float) -> None:
    """The loss after the last step (never seen by the loop) must not have exploded either."""
    with torch.no_grad():
        final = objective(traj.thetas[-1])
    _check_step(final, traj.losses[0], traj.num_steps - 1, traj.steps_per_epoch, lr)


def _check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a positive finite number, got {lr}")


def _check_params(theta: torch.Tensor, step: int, steps_per_epoch: int, lr: float) -> None:
    if not torch.isfinite(theta).all():
        epoch = step // steps_per_epoch + 1
        raise DivergenceError(f"the parameters became non-finite in epoch {epoch} with learning rate {lr:g}: "
                              "lower the learning rate")
