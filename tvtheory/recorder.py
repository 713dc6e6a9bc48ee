"""A recorder for any PyTorch training loop: what E1, E2 and T1 need, from a user's own finetuning run.

    with Recorder(model, optimizer, "runs/mine", select="encoder.", config={...}, seed=0) as recorder:
        for epoch in range(K):
            with recorder.epoch():
                for batch in loader: ...; optimizer.step()

What it records (theta = the selected parameters, ``user_model.select_parameters``; tau^(k) = theta_k - theta_0):
- ``theta0.safetensors`` and, after each epoch k, ``tau_epoch{k:03d}.safetensors`` (tau^(k), the selected named
  tensors, ``tvtheory.task_vectors.task_vector`` of the flat vectors);
- per epoch: the number of optimizer steps, the mean mini-batch gradient norm (the norm of the gradient the
  optimizer was given, read by a hook before each ``optimizer.step()``, or right after its closure when the
  step is given one, as Lightning does: after clipping, if any), ||tau^(k)||,
  ||update_k|| = ||tau^(k) - tau^(k-1)||;
- optionally (``full_batch`` = a data loader and a loss), the full-batch gradient grad L(theta_{k-1}) at each
  epoch start, L = sum over the loader's batches of (n_b / N) loss(model, batch), the model in eval mode, to
  ``grad_epoch{k:03d}.safetensors``, and its norm;
- T1 when the run is full-batch GD (one optimizer step in epoch 1): tau^(1) = -eta g to the floating-point model
  of ``fp.check_t1``, with g the gradient that step was given and eta the learning rate the caller states
  (default: the optimizer's); n/a (None) for any other run;
- at ``close()`` (the end of a ``with Recorder(...)`` block, or of training for the callbacks): E2, globally and
  per tensor, against the final tau^(K): ``experiments.analysis.direction_stats`` when the full-batch gradients
  are recorded, else the cosines of the task vectors alone (``tau_cosines``).
After every epoch it writes ``run.json`` (config, seed, versions, records, T1; paths relative to it; E2 at
close), atomically, so an interrupted run keeps what it finished; ``python -m tvtheory.report`` prints it and
``paper_figures.user_run`` draws F1 and F2 from it.

Overhead (full-batch extras off): per step one fused norm of the gradients (no synchronisation); per epoch
one copy of theta and one safetensors file; at close the cosines (docs/performance.md, "Recorder overhead").
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .experiments.analysis import direction_stats
from .experiments.storage import load_vector, save_vector
from .fp import check_t1
from .io import versions, write_json_atomic
from .params import ParamLayout
from .task_vectors import cosine, norm, per_layer_cosines, task_vector
from .user_model import Selection, select_parameters

#: The JSON the recorder writes in its folder.
RUN_JSON = "run.json"

#: loss(model, batch) -> the mean loss over the batch (a scalar tensor), for the full-batch gradient.
BatchLoss = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class FullBatch:
    """What the full-batch gradient at epoch starts needs: the training data and the mean loss of a batch."""

    loader: Iterable
    loss: BatchLoss


def batch_size(batch: Any) -> int:
    """The number of examples of a batch: a tensor, a tuple/list whose first entry is, or a dict of tensors."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch_size(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size(batch[0])
    raise ValueError(f"cannot tell the size of a batch of type {type(batch).__name__}: use tensors, tuples of "
                     "tensors or dicts of tensors")


def tau_cosines(taus: list[torch.Tensor], layout: ParamLayout) -> dict:
    """E2 from the task vectors alone: cos(tau^(k), tau^(K)) and cos(update_k, tau^(K)) for every epoch, and
    per tensor cos(tau^(1), tau^(K)) and cos(update_k, tau^(K)) (update_k = tau^(k) - tau^(k-1)).
    """
    tau_K = taus[-1]
    updates = [taus[0]] + [taus[i] - taus[i - 1] for i in range(1, len(taus))]
    return {"cos_tau1_tauK": cosine(taus[0], tau_K),
            "cos_tau_k_tauK": [cosine(t, tau_K) for t in taus],
            "cos_update_k_tauK": [cosine(u, tau_K) for u in updates],
            "per_layer": {"cos_tau1_tauK": dict(per_layer_cosines(taus[0], tau_K, layout)),
                          "cos_update_k_tauK": [dict(per_layer_cosines(u, tau_K, layout)) for u in updates]}}


class Recorder:
    """Records a finetuning run of ``model`` (see the module docstring); ``optimizer`` is hooked when given.

    ``select``: the parameters theta holds (name prefixes; default every trainable one). ``full_batch``: a
    ``FullBatch`` for the gradient at epoch starts (off by default: it costs one pass over the data per epoch).
    ``lr``: the learning rate T1 checks the first step against (default: the optimizer's first group's).
    ``config``: the user's settings, recorded as given (JSON types). ``seed``: the run's seed (default
    ``torch.initial_seed()``). ``extra_versions``: library versions to record beside ``io.versions()``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, out_dir: str | Path, *,
                 select: Selection = None, full_batch: FullBatch | None = None, lr: float | None = None,
                 config: Mapping[str, Any] | None = None, seed: int | None = None,
                 extra_versions: Mapping[str, str] | None = None):
        self.model, self.out_dir, self.full_batch, self.lr = model, Path(out_dir), full_batch, lr
        self.names = select_parameters(model, select)
        named = dict(model.named_parameters())
        self.params = [named[n] for n in self.names]
        self.layout = ParamLayout(tuple(self.names), tuple(tuple(p.shape) for p in self.params))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.theta0 = self._theta()
        self._previous = self.theta0                # theta_{k-1}, for ||update_k||
        save_vector(self.out_dir / "theta0.safetensors", self.theta0, self.layout)
        self.header = {"config": dict(config or {}), "seed": torch.initial_seed() if seed is None else seed,
                       "versions": {**versions(), **(extra_versions or {})},
                       "select": select if select is None or isinstance(select, str) else list(select),
                       "num_params": self.layout.size, "tensors": list(self.names), "optimizer": None}
        self.records: list[dict] = []
        self.t1: dict | None = None
        self._steps = 0
        self._step_norms: list[torch.Tensor] = []
        self._total_steps = 0
        self._first_step: list | None = None      # [theta_0, g_0, lr, theta_1] while the run may be full-batch GD
        self._epoch_open = False
        self._full_grads: list[Path] = []
        self._hooks = [] if optimizer is None else self.attach(optimizer)

    # -- hooks ------------------------------------------------------------------------------------------------

    def attach(self, optimizer: torch.optim.Optimizer) -> list:
        """Hook ``optimizer.step`` (before: the gradient norm; around the first step: T1); returns the handles."""
        group = optimizer.param_groups[0]
        self.header["optimizer"] = {"class": type(optimizer).__name__,
                                    **{k: v for k, v in group.items() if k != "params" and _is_json(v)}}
        return [optimizer.register_step_pre_hook(self._before_step),
                optimizer.register_step_post_hook(self._after_step)]

    def _before_step(self, optimizer: torch.optim.Optimizer, args, kwargs):
        """Read the step's gradient now, or, for ``step(closure)`` (Lightning), right after the closure computes it."""
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)     # args[0] is the optimizer
        if closure is None:
            self._read_gradient(optimizer)
            return None

        def reading_closure():
            loss = closure()
            self._read_gradient(optimizer)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": reading_closure}
        return (args[0], reading_closure, *args[2:]), kwargs

    def _read_gradient(self, optimizer: torch.optim.Optimizer) -> None:
        """Accumulate ||g|| of the gradient the step is given; before the first step, keep theta and g for T1."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:       # ||g|| in the gradients' precision, kept on their device: no synchronisation per step
            self._step_norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        if self._total_steps == 0:
            lr = self.lr if self.lr is not None else float(optimizer.param_groups[0]["lr"])
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                           for p in self.params])
            self._first_step = [self._theta(), g, lr]
        elif self._total_steps == 1:
            self._first_step = None                 # a second step in epoch 1: not full-batch GD, no T1

    def _after_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        self._steps += 1
        self._total_steps += 1
        if self._total_steps == 1 and self._first_step is not None:
            self._first_step.append(self._theta())

    def detach(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- epochs -----------------------------------------------------------------------------------------------

    def _theta(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def start_epoch(self) -> None:
        """Begin epoch k = len(records) + 1: the full-batch gradient at theta_{k-1} when ``full_batch`` is set."""
        self._epoch_open, self._steps, self._step_norms = True, 0, []
        self._t_epoch = time.perf_counter()
        self._full_grad_norm = None
        if self.full_batch is not None:
            k = len(self.records) + 1
            g = self.full_gradient()
            path = self.out_dir / f"grad_epoch{k:03d}.safetensors"
            save_vector(path, g, self.layout)
            self._full_grads.append(path)
            self._full_grad_norm = norm(g)

    def full_gradient(self) -> torch.Tensor:
        """grad L(theta) at the model's current parameters, L = sum_b (n_b / N) loss(model, batch_b), in eval
        mode; the parameters' ``.grad`` are left as they were.
        """
        assert self.full_batch is not None
        was_training = self.model.training
        self.model.eval()
        total, count = torch.zeros(self.layout.size, dtype=self.theta0.dtype, device=self.theta0.device), 0
        try:
            for batch in self.full_batch.loader:
                n = batch_size(batch)
                grads = torch.autograd.grad(self.full_batch.loss(self.model, batch), self.params, allow_unused=True)
                total += n * torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                        for g, p in zip(grads, self.params, strict=True)])
                count += n
        finally:
            self.model.train(was_training)
        if count == 0:
            raise ValueError("the full-batch loader yielded no examples")
        return total / count

    def end_epoch(self) -> dict:
        """Finish epoch k: save tau^(k), append its record (after epoch 1 of full-batch GD: T1), write run.json."""
        if not self._epoch_open:
            raise ValueError("Recorder.end_epoch() without start_epoch(): call start_epoch() at the start of "
                             "every epoch, or use `with recorder.epoch():`")
        self._epoch_open = False
        k = len(self.records) + 1
        theta = self._theta()
        tau = task_vector(theta, self.theta0)
        save_vector(self.out_dir / f"tau_epoch{k:03d}.safetensors", tau, self.layout)
        update, self._previous = theta - self._previous, theta
        mean_norm = float(torch.stack(self._step_norms).double().mean()) if self._step_norms else None
        if k == 1 and self._steps == 1 and self._first_step is not None:      # full-batch GD: check T1
            before, g, lr, after = self._first_step
            self.t1 = {"lr": lr, **check_t1(before, after, g, lr).to_dict()}
        self._first_step = None
        self.records.append({"epoch": k, "steps": self._steps, "minibatch_grad_norm_mean": mean_norm,
                             "full_grad_norm_start": self._full_grad_norm, "tau_norm": norm(tau),
                             "update_norm": norm(update), "wall_s": time.perf_counter() - self._t_epoch})
        self.write()
        return self.records[-1]

    @contextlib.contextmanager
    def epoch(self) -> Iterator[None]:
        """``start_epoch()`` on entry, ``end_epoch()`` on a normal exit."""
        self.start_epoch()
        yield
        self.end_epoch()

    def _tau(self, k: int) -> torch.Tensor:
        return load_vector(self.out_dir / f"tau_epoch{k:03d}.safetensors", self.layout).to(self.theta0)

    # -- the result -------------------------------------------------------------------------------------------

    def summary(self, with_e2: bool = True) -> dict:
        """The run as JSON: header, records, T1 and (``with_e2``) E2 over the epochs recorded so far."""
        K = len(self.records)
        e2 = None
        if with_e2 and K:
            taus = [self._tau(k) for k in range(1, K + 1)]
            if len(self._full_grads) >= K:
                e2 = direction_stats(taus, [load_vector(p, self.layout) for p in self._full_grads[:K]], self.layout)
            else:
                e2 = tau_cosines(taus, self.layout)
        t1 = None if self.t1 is None else {
            **self.t1, "statement": "T1: one full-batch GD step gives tau = -eta g (to the floating-point model)"}
        files = {"theta0": "theta0.safetensors",
                 "taus": [f"tau_epoch{k:03d}.safetensors" for k in range(1, K + 1)],
                 "grads": [p.name for p in self._full_grads[:K]]}
        return {**self.header, "full_batch_gradient": self.full_batch is not None, "epochs": self.records,
                "E2": e2, "T1": t1, "files": files}

    def write(self, with_e2: bool = False) -> Path:
        """Write ``run.json`` atomically (unchanged content is not rewritten); E2 only when asked (``close``)."""
        return write_json_atomic(self.out_dir / RUN_JSON, self.summary(with_e2))

    def close(self) -> Path:
        """The end of the run: remove the optimizer hooks and write run.json with E2 against the last tau^(K)."""
        self.detach()
        return self.write(with_e2=True)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_json(value: Any) -> bool:
    """Whether an optimizer setting is a JSON value (numbers, strings, None, lists of them)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_json(v) for v in value)
    return False
