"""A PyTorch Lightning ``Callback`` that records a finetuning run with :class:`tvtheory.recorder.Recorder`.

    trainer = L.Trainer(max_epochs=5, callbacks=[TaskVectorCallback("runs/mine", select="encoder.")])

The recorder is created at ``on_train_start`` on the LightningModule and the trainer's first optimizer (its
step is hooked), and ``start_epoch`` / ``end_epoch`` follow ``on_train_epoch_start`` / ``on_train_epoch_end``.
Needs ``pip install tvtheory[lightning]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..recorder import FullBatch, Recorder
from ..user_model import Selection
from . import require

pl = require("lightning.pytorch", "lightning", "tvtheory.integrations.lightning")


class TaskVectorCallback(pl.Callback):  # type: ignore[name-defined]  # a module imported at run time
    """Records theta_0, tau^(k), the gradient norms, E2 and T1 of a Lightning run (``Recorder``'s arguments)."""

    def __init__(self, out_dir: str | Path, *, select: Selection = None, full_batch: FullBatch | None = None,
                 lr: float | None = None, config: Mapping[str, Any] | None = None, seed: int | None = None):
        super().__init__()
        self.out_dir, self.select, self.full_batch, self.lr = out_dir, select, full_batch, lr
        self.config, self.seed = config, seed
        self.recorder: Recorder | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        """Create the recorder on the module (theta_0 = its parameters now) and hook the first optimizer."""
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.recorder = Recorder(pl_module, optimizer, self.out_dir, select=self.select, full_batch=self.full_batch,
                                 lr=self.lr, config=self.config, seed=self.seed,
                                 extra_versions={"lightning": pl.__version__})

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """The epoch's start (and the full-batch gradient, when set)."""
        assert self.recorder is not None
        self.recorder.start_epoch()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """tau^(k) and the epoch's record; run.json is rewritten."""
        assert self.recorder is not None
        self.recorder.end_epoch()

    def on_train_end(self, trainer, pl_module) -> None:
        """Remove the optimizer hooks and write run.json with E2 (``Recorder.close``)."""
        assert self.recorder is not None
        self.recorder.close()
