"""The data of one task: train / validation / test images and labels, at the encoder's image size.

Train and validation come from the task's train split: 10 % (seed 0, ``tvtheory.vision.datasets.train_val_split``)
is the validation split that chooses the merge coefficient, the rest the training set. Each is then capped
(``max_train``, ``max_val``, ``max_test``; 0 = no cap) by a seeded random subset (``config.seed``), kept in
the original order. A task is a built-in one (the dataset zips), a ``task_folder`` one (an image folder), or,
with ``synthetic``, random images labelled by their brightest colour channel (smoke tests; folder tasks are
still read from their folders).

A training set with images of fewer than two classes is refused (VisionError): its probe head fits it exactly
and leaves nothing to finetune (zero gradient, flat curvature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import VisionConfig, flag
from .encoders import Encoder
from .errors import VisionError

#: The fraction of a task's train split held out as its validation split, and the seed of that split.
VAL_FRACTION, VAL_SEED = 0.1, 0

#: The number of classes of a --synthetic task (the colour channels).
SYNTHETIC_CLASSES = 3


@dataclass(frozen=True)
class TaskData:
    """(x uint8 (N, 3, S, S), y int64 (N,)) per split; ``available_train``: training images before the cap."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    available_train: int

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split called ``name`` ("train", "val" or "test")."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)


def _subset(index: torch.Tensor, cap: int, seed: int) -> torch.Tensor:
    """A seeded random subset of at most ``cap`` indices (0 = all), sorted."""
    if cap <= 0 or index.numel() <= cap:
        return index
    pick = np.sort(np.random.default_rng(seed).permutation(index.numel())[:cap])
    return index[torch.from_numpy(pick)]


def load_task_data(task: str, config: VisionConfig, encoder: Encoder) -> TaskData:
    """The capped splits of ``task`` (module docstring) at ``encoder.image_size``."""
    if config.synthetic and task not in config.folders:
        data = _synthetic_task(task, config, encoder.image_size)
    else:
        from ..vision.datasets import train_val_split

        (x, y), (xt, yt), classes = _task_splits(task, config, encoder.image_size)
        tr, va = train_val_split(x.shape[0], VAL_FRACTION, VAL_SEED)
        available = int(tr.numel())
        tr, va = _subset(tr, config.max_train, config.seed), _subset(va, config.max_val, config.seed)
        te = _subset(torch.arange(xt.shape[0]), config.max_test, config.seed)
        data = TaskData((x[tr], y[tr]), (x[va], y[va]), (xt[te], yt[te]), classes, available)
    _check_sizes(task, data, config)
    return data


def _check_sizes(task: str, data: TaskData, config: VisionConfig) -> None:
    """Refuse splits that cannot work (module docstring), naming the cap to change."""
    present = int(torch.unique(data.train[1]).numel())
    if present < 2:
        raise VisionError(f"task {task}: the training set has {data.train[0].shape[0]} images of {present} class"
                          f"{'es' if present != 1 else ''}; the probe head fits it exactly and leaves nothing to "
                          f"finetune: raise {flag('max_train')} (now {config.max_train}) or add training images")
    for name in ("val", "test"):
        if data.split(name)[0].shape[0] == 0:
            raise VisionError(f"task {task}: the {name} split is empty; it needs images (max_{name} "
                              f"{flag('max_' + name)} is {getattr(config, 'max_' + name)}, 0 = all)")


def _task_splits(task: str, config: VisionConfig, size: int) -> tuple[tuple, tuple, int]:
    """(x, y) of the train and test splits at ``size``, and the number of classes: read from the task's folder,
    or from the dataset zips for a built-in task.
    """
    from ..vision.datasets import dataset_info, get_task, load_folder_task, load_task

    if task in config.folders:
        train, test, names = load_folder_task(config.folders[task], size)
        return train, test, len(names)
    t = get_task(task)
    classes = len(t.classes) if t.classes is not None else len(dataset_info(t.dataset, config.data_root)["classes"])
    return (load_task(t, "train", root=config.data_root, image_size=size),
            load_task(t, "test", root=config.data_root, image_size=size), classes)


def _synthetic_task(task: str, config: VisionConfig, size: int) -> TaskData:
    """Random uint8 images whose label is the brightest colour channel, ``max_train + max_val + max_test`` of
    them, seeded by the task's position among the built-in tasks.
    """
    from ..vision.datasets import TASKS

    g = torch.Generator().manual_seed(1000 + sorted(TASKS).index(task) if task in TASKS else 999)
    n = config.max_train + config.max_val + config.max_test
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = x.double().mean((2, 3)).argmax(1)
    a, b = config.max_train, config.max_train + config.max_val
    return TaskData((x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]), SYNTHETIC_CLASSES, a)
