"""Callbacks that put a :class:`tvtheory.recorder.Recorder` into a framework's training loop.

- ``tvtheory.integrations.lightning``: ``TaskVectorCallback``, a PyTorch Lightning ``Callback``
  (``pip install tvtheory[lightning]``);
- ``tvtheory.integrations.huggingface``: ``TaskVectorCallback``, a Hugging Face ``TrainerCallback``
  (``pip install tvtheory[hf]``).
Each is thin: it creates the recorder when training starts (on the framework's model and optimizer) and calls
``start_epoch`` / ``end_epoch`` at the framework's epoch boundaries. Importing one without its extra raises one
ImportError that names the install command.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str, what: str):
    """Import ``module``, or raise an ImportError naming ``pip install tvtheory[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                          f"pip install tvtheory[{extra}]") from err
