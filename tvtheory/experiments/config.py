"""The settings of the vision pipeline: one frozen ``VisionConfig``, validated once, written into every result.

Every field is a flag of ``python -m tvtheory.experiments.vision`` (``lr_gd`` is ``--lr-gd``); the library
functions (``tvtheory.experiments.runs``, ``.merging``, ``.report``) take a ``VisionConfig`` and nothing else
of the command line. Construction validates everything that can be checked without computing (sizes,
names, learning rates, the ``--task-folder`` folders, the quick preset) and raises ``VisionError`` with a
message naming the field, its flag and the fix, so a bad setting is refused before any data is read.

``VisionConfig.quick_preset(**fields)`` is the ``--quick`` configuration (``QUICK``: at most 3 epochs,
patience 1, 3 GD steps, on 128 training images, one subset per merge size; ``make vision-quick``, under 5
minutes on 2 cores); a config with ``quick=True`` must keep
the preset's values, so that a result labelled "quick" (the figures' ``configuration``) is the preset.
``unused_settings()`` lists the settings that differ from their default yet do nothing with the chosen
optimizers (e.g. a weight decay without AdamW); the command line prints them as warnings.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..fp import DTYPES
from .errors import VisionError
from .finetune import FINETUNE_OPTIMIZERS
from .step_size import LR_SCALE

#: The E3 merge coefficients tried on validation; finer near 0, where the best alpha of 7 tasks lies (0.05-0.15
#: in the pilots of issue 14); 7 values, since every value costs one validation pass per task of every merge.
DEFAULT_ALPHA_GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

#: The merge sizes T of E3's sweep across T (subsets of T tasks; a size above the number of tasks is skipped).
DEFAULT_MERGE_SIZES = (2, 3, 5, 7)

#: The frozen heads a task can get at theta_0 (``tvtheory.experiments.probe``): class-mean prototypes or a ridge probe.
HEADS = ("prototype", "probe")

#: The ``--quick`` preset: the fields it sets and their values.
QUICK: Mapping[str, int] = MappingProxyType(
    {"max_epochs": 3, "patience": 1, "gd_steps": 3, "max_train": 128, "max_val": 64, "max_test": 128,
     "batch_size": 32, "sharpness_subset": 32, "merge_subsets": 1})

_TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")


def flag(name: str) -> str:
    """The command-line flag of a field: ``max_train`` -> ``--max-train``."""
    return "--" + name.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_lr(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _builtin_tasks() -> tuple[str, ...]:
    from ..vision.datasets import TASKS

    return tuple(TASKS)


@dataclass(frozen=True)
class VisionConfig:
    """Every setting of a vision run (module docstring); ``to_dict()`` is the ``config`` of each result file.

    Sequences are stored as tuples and ``task_folder`` as ((name, path), ...) pairs (a mapping is accepted);
    ``tasks = ()`` means the ``task_folder`` tasks if any, else the seven built-in ones.
    """

    # where the files go: result JSONs, and the large artifacts (task vectors, gradients, heads, checkpoints)
    results: str = "results/vision"
    artifacts: str = "runs/vision"
    # what runs: the tasks (built-in names and NAME=PATH image folders) and the optimizers
    tasks: tuple[str, ...] = ()
    task_folder: tuple[tuple[str, str], ...] = ()
    optimizers: tuple[str, ...] = FINETUNE_OPTIMIZERS
    # the finetuning: sgd / adamw early-stop on the validation accuracy (``patience`` epochs without a strictly
    # better one, at most ``max_epochs``; tau^(conv) is the best-validation epoch); gd takes ``gd_steps``
    # full-batch steps (tau^(conv) the last); gd / sgd learning rates a number or "auto" (LR_SCALE / lambda_hat);
    # AdamW's learning rate and weight decay; images per sgd / adamw step; images of the curvature estimate
    max_epochs: int = 15
    patience: int = 3
    gd_steps: int = 15
    lr_gd: float | str = "auto"
    lr_sgd: float | str = "auto"
    lr_adamw: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    sharpness_subset: int = 256
    # the data: the folder of the zips (None: TVTHEORY_DATA or ../shared/data), caps on each split (0 = all),
    # the seed of the subsets, the batches and the curvature estimate
    data_root: str | None = None
    max_train: int = 1000
    max_val: int = 250
    max_test: int = 500
    seed: int = 0
    # the merge's coefficients; the analysis; numerics (examples per forward pass, floating-point type, threads)
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    # E3 across T: the merge sizes T and the subsets per size (merging.sweep); the margin (accuracy points) of the
    # equivalence verdict over seeds (summary)
    merge_sizes: tuple[int, ...] = DEFAULT_MERGE_SIZES
    merge_subsets: int = 2
    equivalence_margin: float = 2.0
    second_order: bool = True
    chunk_size: int = 256
    dtype: str = "float32"
    threads: int = 0
    # the encoder (None: the shipped CNN) and the frozen heads (``HEADS``: "prototype" class means, the analogue of
    # CLIP's zero-shot head, or "probe", a ridge linear probe); the random smoke-test setup, the quick preset's
    # label, progress output
    pretrained: str | None = None
    head: str = "prototype"
    synthetic: bool = False
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self._normalise()
        self.validate()

    # ------------------------------------------------------------------------------------- construction

    @classmethod
    def quick_preset(cls, **fields: Any) -> VisionConfig:
        """The ``--quick`` configuration (``QUICK``) with ``fields`` for everything the preset does not set."""
        clash = sorted(set(fields) & set(QUICK))
        if clash:
            raise VisionError(f"the quick preset sets {', '.join(clash)} itself ({dict(QUICK)}); build "
                              f"VisionConfig({', '.join(f'{k}=...' for k in clash)}) without quick=True instead")
        return cls(quick=True, **{**QUICK, **fields})

    def _normalise(self) -> None:
        """Store sequences as tuples, paths as strings, and resolve the default task list."""
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        folders = self.task_folder
        if isinstance(folders, Mapping):
            folders = tuple(folders.items())
        put("task_folder", tuple((str(n), str(p)) for n, p in folders))
        for name in ("tasks", "optimizers"):
            value = getattr(self, name)
            put(name, (value,) if isinstance(value, str) else tuple(value))
        if not isinstance(self.alpha_grid, Iterable):
            raise VisionError(f"alpha_grid ({flag('alpha_grid')}) must be a list of numbers, got {self.alpha_grid!r}")
        put("alpha_grid", tuple(self.alpha_grid))
        if not isinstance(self.merge_sizes, Iterable):
            raise VisionError(f"merge_sizes ({flag('merge_sizes')}) must be a list of integers, "
                              f"got {self.merge_sizes!r}")
        put("merge_sizes", tuple(self.merge_sizes))
        for name in ("results", "artifacts", "data_root", "pretrained"):
            value = getattr(self, name)
            if isinstance(value, Path):
                put(name, str(value))
        if not self.tasks:
            put("tasks", tuple(n for n, _ in self.task_folder) or _builtin_tasks())

    # ------------------------------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise VisionError naming the first setting that cannot work, its flag and the fix."""
        self._validate_tasks()
        bad = [o for o in self.optimizers if o not in FINETUNE_OPTIMIZERS]
        if bad or not self.optimizers or len(set(self.optimizers)) != len(self.optimizers):
            raise VisionError(f"optimizers ({flag('optimizers')}) {list(self.optimizers)}: give each of "
                              f"{', '.join(FINETUNE_OPTIMIZERS)} at most once (unknown: {bad})")
        self._validate_sizes()
        for name in ("lr_gd", "lr_sgd"):
            value = getattr(self, name)
            if value != "auto" and not _positive_lr(value):
                raise VisionError(f"{name} ({flag(name)}) is {value!r}: a learning rate is a positive finite number "
                                  f"or 'auto' ({LR_SCALE[name[3:]]} / lambda_hat)")
        if not _positive_lr(self.lr_adamw):
            raise VisionError(f"lr_adamw ({flag('lr_adamw')}) is {self.lr_adamw!r}: must be positive and finite")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise VisionError(f"weight_decay ({flag('weight_decay')}) is {self.weight_decay!r}: must be finite "
                              "and >= 0")
        if self.dtype not in DTYPES:
            raise VisionError(f"dtype ({flag('dtype')}) is {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if not self.alpha_grid or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in self.alpha_grid):
            raise VisionError(f"alpha_grid ({flag('alpha_grid')}) is {list(self.alpha_grid)}: give at least one "
                              "finite merge coefficient, e.g. 0.1,0.3,1")
        for name in ("second_order", "quick", "synthetic", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise VisionError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self._validate_model()
        if self.head not in HEADS:
            raise VisionError(f"head ({flag('head')}) is {self.head!r}: use one of {', '.join(HEADS)}")
        self._validate_merge()
        if self.quick:
            changed = {k: getattr(self, k) for k, v in QUICK.items() if getattr(self, k) != v}
            if changed:
                raise VisionError(f"quick=True (--quick) is the preset {dict(QUICK)}, but this config has "
                                  f"{changed}: drop --quick to choose those yourself, or drop "
                                  f"{', '.join(flag(k) for k in changed)} to run the preset")

    def _validate_tasks(self) -> None:
        from ..vision.datasets import DatasetError, check_folder_task

        builtin = _builtin_tasks()
        names = [n for n, _ in self.task_folder]
        for name, path in self.task_folder:
            if not _TASK_NAME.fullmatch(name):
                raise VisionError(f"--task-folder {name}={path}: a task name is letters, digits, _ and -")
            if name in builtin or name == "all" or names.count(name) > 1:
                raise VisionError(f"--task-folder {name}={path}: {name!r} is a built-in task, 'all' or given "
                                  f"twice; rename it (built-in tasks: {', '.join(builtin)})")
            try:
                check_folder_task(path)
            except DatasetError as e:
                raise VisionError(f"--task-folder {name}={path}: {e}") from e
        known = (*builtin, *names)
        bad = [t for t in self.tasks if t not in known]
        if bad:
            raise VisionError(f"tasks ({flag('tasks')}): unknown {bad}; choose from {', '.join(known)} or 'all'")
        if len(set(self.tasks)) != len(self.tasks):
            raise VisionError(f"tasks ({flag('tasks')}) {list(self.tasks)}: each task at most once")

    def _validate_sizes(self) -> None:
        def need(name: str, low: int, why: str) -> None:
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise VisionError(f"{name} ({flag(name)}) is {value!r}: must be an integer >= {low} ({why})")

        need("max_epochs", 1, "the cap on the epochs of sgd and adamw")
        need("patience", 1, "epochs without a better validation accuracy before sgd and adamw stop")
        need("gd_steps", 1, "the full-batch steps of gd")
        need("batch_size", 1, "images per sgd / adamw step")
        need("chunk_size", 1, "images per forward pass")
        need("sharpness_subset", 1, "training images of the curvature estimate")
        need("threads", 0, "0 = torch's default")
        need("seed", 0, "numpy and torch seeds are non-negative")
        random_images = self.synthetic and any(t not in self.folders for t in self.tasks)
        low = 1 if random_images else 0
        why = "the number of random images of a --synthetic task" if random_images else "0 = no cap"
        for name in ("max_train", "max_val", "max_test"):
            need(name, low, why)
        if self.max_train == 1:
            raise VisionError(f"max_train ({flag('max_train')}) is 1: one training image is fitted exactly by the "
                              "probe head, which leaves nothing to finetune (zero gradient, flat curvature); use "
                              "at least 2 (images of 2 classes) or 0 for all")

    def _validate_merge(self) -> None:
        sizes = self.merge_sizes
        if not sizes or not all(_is_int(t) and t >= 2 for t in sizes) or len(set(sizes)) != len(sizes):
            raise VisionError(f"merge_sizes ({flag('merge_sizes')}) is {list(sizes)}: give distinct merge sizes, each "
                              "an integer >= 2 (tasks merged together), e.g. 2,3,5,7")
        if not _is_int(self.merge_subsets) or self.merge_subsets < 1:
            raise VisionError(f"merge_subsets ({flag('merge_subsets')}) is {self.merge_subsets!r}: must be an integer "
                              ">= 1 (subsets of each merge size)")
        m = self.equivalence_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (math.isfinite(m) and m > 0):
            raise VisionError(f"equivalence_margin ({flag('equivalence_margin')}) is {m!r}: must be a positive "
                              "finite number of accuracy points")

    def _validate_model(self) -> None:
        from ..vision.clip import OPEN_CLIP_PREFIX, parse_open_clip_spec

        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise VisionError(f"pretrained ({flag('pretrained')}) must be a path or an open_clip spec, "
                              f"got {self.pretrained!r}")
        if self.synthetic and self.pretrained:
            raise VisionError("--synthetic runs a random tiny ViT, so --pretrained would do nothing: drop one")
        if self.pretrained and self.pretrained.startswith(OPEN_CLIP_PREFIX):
            try:
                parse_open_clip_spec(self.pretrained)
            except ValueError as e:
                raise VisionError(f"pretrained ({flag('pretrained')}): {e}") from e

    # ------------------------------------------------------------------------------------- reading

    @property
    def folders(self) -> dict[str, str]:
        """The ``--task-folder`` tasks, {name: path}."""
        return dict(self.task_folder)

    def auto_lr(self, optimizer: str) -> bool:
        """Is the learning rate of ``optimizer`` set from the curvature (``lr_<opt> == "auto"``)?"""
        return optimizer in LR_SCALE and getattr(self, f"lr_{optimizer}") == "auto"

    def unused_settings(self) -> list[str]:
        """Settings that differ from their default (the preset's under quick) yet do nothing here, one line each."""
        base = VisionConfig.quick_preset() if self.quick else VisionConfig()
        changed = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(base, f.name)}
        opts = set(self.optimizers)
        listed = f"{flag('optimizers')} {','.join(self.optimizers)}"
        out = []
        for name, needs in (("weight_decay", "adamw"), ("lr_adamw", "adamw"), ("lr_gd", "gd"), ("lr_sgd", "sgd")):
            if name in changed and needs not in opts:
                out.append(f"{flag(name)} {getattr(self, name)} applies to {needs} only and {listed} has no "
                           f"{needs}: it does nothing")
        if "gd_steps" in changed and "gd" not in opts:
            out.append(f"{flag('gd_steps')} {self.gd_steps} applies to gd only and {listed} has no gd: it does "
                       "nothing")
        for name in ("patience", "max_epochs"):
            if name in changed and opts == {"gd"}:
                out.append(f"{flag(name)} {getattr(self, name)} applies to sgd and adamw (gd takes "
                           f"{flag('gd_steps')} steps): it does nothing")
        if self.patience + 1 >= self.max_epochs and opts - {"gd"} and {"patience", "max_epochs"} & changed:
            out.append(f"{flag('patience')} {self.patience} with {flag('max_epochs')} {self.max_epochs}: the "
                       f"patience rule stops a run after epoch {self.patience + 1} at the earliest, so sgd and adamw "
                       "always run to the cap: it does nothing")
        if "batch_size" in changed and opts == {"gd"}:
            out.append(f"{flag('batch_size')} {self.batch_size} applies to sgd and adamw; gd takes the full batch: "
                       "it does nothing")
        if "sharpness_subset" in changed and not any(self.auto_lr(o) for o in opts):
            out.append(f"{flag('sharpness_subset')} {self.sharpness_subset} sizes the curvature estimate of "
                       "--lr-gd/--lr-sgd auto, and no optimizer here has an auto learning rate: it does nothing")
        if not self.second_order and not opts & {"gd", "sgd"}:
            out.append("--no-second-order: the second-order term is computed for gd and sgd only, and "
                       f"{listed} has neither: it does nothing")
        if self.data_root is not None and self.synthetic:
            out.append(f"{flag('data_root')} {self.data_root}: --synthetic reads no dataset (task folders are read "
                       "from their own paths): it does nothing")
        return out

    def to_dict(self) -> dict:
        """JSON form: every field (tuples as lists, ``task_folder`` as {name: path})."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("tasks", "optimizers", "alpha_grid", "merge_sizes"):
            out[name] = list(out[name])
        out["task_folder"] = self.folders
        return out
