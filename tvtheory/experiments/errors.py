"""The user errors of the vision pipeline: one class, so that the command line can tell them from bugs."""

from __future__ import annotations


class VisionError(ValueError):
    """A setting, a folder or a measurement the pipeline cannot work with; the message names it and the fix.

    ``python -m tvtheory.experiments.vision`` prints the message as one line and exits with status 2.
    """
