"""A Hugging Face ``TrainerCallback`` that records a finetuning run with :class:`tvtheory.recorder.Recorder`.

    trainer = Trainer(model, args, train_dataset=..., callbacks=[TaskVectorCallback("runs/mine")])

The recorder is created at ``on_train_begin`` on the Trainer's model and the torch optimizer inside its
(accelerate-wrapped) optimizer, and ``start_epoch`` / ``end_epoch`` follow ``on_epoch_begin`` /
``on_epoch_end``. For the theory's checks of the same model (``tvtheory.user_model``) load it with
``attn_implementation="eager"``: the fused attention kernels have no second derivatives. T1 compares the step
with the gradient the optimizer was given, after the Trainer's clipping (``max_grad_norm``; 0 turns it off).
Needs ``pip install tvtheory[hf]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..recorder import FullBatch, Recorder
from ..user_model import Selection
from . import require

transformers = require("transformers", "hf", "tvtheory.integrations.huggingface")


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside its wrappers (accelerate's AcceleratedOptimizer, itself an Optimizer subclass
    without hooks of its own, keeps it as ``.optimizer``).
    """
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"cannot find the torch optimizer inside {type(optimizer).__name__}")
    return optimizer


class TaskVectorCallback(transformers.TrainerCallback):  # type: ignore[name-defined]  # a module imported at run time
    """Records theta_0, tau^(k), the gradient norms, E2 and T1 of a Trainer run (``Recorder``'s arguments;
    ``seed`` defaults to the TrainingArguments' seed, and the config records the TrainingArguments that shape
    the trajectory).
    """

    def __init__(self, out_dir: str | Path, *, select: Selection = None, full_batch: FullBatch | None = None,
                 lr: float | None = None, config: Mapping[str, Any] | None = None, seed: int | None = None):
        self.out_dir, self.select, self.full_batch, self.lr = out_dir, select, full_batch, lr
        self.config, self.seed = config, seed
        self.recorder: Recorder | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Create the recorder on the model (theta_0 = its parameters now) and hook the optimizer."""
        settings = {key: getattr(args, key) for key in
                    ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "weight_decay", "max_grad_norm", "warmup_steps", "optim", "lr_scheduler_type", "seed")}
        settings = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                    for k, v in settings.items()}
        self.recorder = Recorder(model, None if optimizer is None else torch_optimizer(optimizer), self.out_dir,
                                 select=self.select, full_batch=self.full_batch, lr=self.lr,
                                 config={"training_arguments": settings, **(self.config or {})},
                                 seed=args.seed if self.seed is None else self.seed,
                                 extra_versions={"transformers": transformers.__version__})

    def on_epoch_begin(self, args, state, control, **kwargs):
        """The epoch's start (and the full-batch gradient, when set)."""
        assert self.recorder is not None
        self.recorder.start_epoch()

    def on_epoch_end(self, args, state, control, **kwargs):
        """tau^(k) and the epoch's record; run.json is rewritten."""
        assert self.recorder is not None
        self.recorder.end_epoch()

    def on_train_end(self, args, state, control, **kwargs):
        """Remove the optimizer hooks and write run.json with E2 (``Recorder.close``)."""
        assert self.recorder is not None
        self.recorder.close()
