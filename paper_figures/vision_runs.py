"""The vision experiments' result files, as the figures F1-F3 read them.

``python -m tvtheory.experiments.vision`` writes ``<folder>/<task>/<optimizer>.json`` per finetuning run and
``<folder>/merge_<optimizer>.json`` per merge (folder: results/vision by default). F1-F3 aggregate those
files into their own result file in the same folder, every time ``make figures`` runs (it takes a second),
so a figure never lags behind the runs it is drawn from.

When the folder holds no finished runs, the quick configuration of the pipeline (``QUICK``, the settings of
``make vision-quick``) is run first through the library (a few minutes, with progress bars) into
``<folder>/../vision-quick`` and the figures are drawn from that; this is printed, and recorded as the
result's configuration.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tvtheory.experiments.config import VisionConfig
from tvtheory.experiments.finetune import FINETUNE_OPTIMIZERS as OPTIMIZERS

from . import style

OPTIMIZER_LABELS = {"gd": "full-batch GD", "sgd": "mini-batch SGD", "adamw": "AdamW"}

# The seven tasks in the order of the paper's benchmarks they stand in for; one colour and marker each,
# the same in every figure (yellow left out: too faint on white).
TASK_ORDER = ("cars", "dtd10", "gtsrb", "mnist", "cifar10", "fashion_mnist", "animal_mnist")
_COLOURS = (style.BLUE, style.VERMILLION, style.GREEN, style.ORANGE, style.PURPLE, style.SKY, style.BLACK)

#: the quick pipeline run made when no results exist (tests substitute a smaller one); its folders are set by
#: ``run_pipeline``
QUICK = VisionConfig.quick_preset()


def task_style(task: str, index: int | None = None) -> tuple[str, str]:
    """(colour, marker) of a task: fixed for the seven known tasks, by position for any other."""
    i = TASK_ORDER.index(task) if task in TASK_ORDER else (index or 0) + len(TASK_ORDER)
    return _COLOURS[i % len(_COLOURS)], style.MARKERS[i % len(style.MARKERS)]


def ordered_tasks(tasks) -> list[str]:
    """The known tasks in TASK_ORDER, then any others sorted by name."""
    known = [t for t in TASK_ORDER if t in tasks]
    return known + sorted(t for t in tasks if t not in TASK_ORDER)


def _run_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*/*.json") if p.stem in OPTIMIZERS)


def run_pipeline(folder: Path, config: VisionConfig) -> VisionConfig:
    """The vision pipeline's finetune then merge with ``config``, results in ``folder`` (results/<name>) and
    artifacts in runs/<name> beside results/; returns the config it ran.
    """
    from tvtheory.experiments.dist import init_from_env
    from tvtheory.experiments.encoders import load_encoder
    from tvtheory.experiments.merging import merge
    from tvtheory.experiments.runs import finetune_tasks

    artifacts = folder.parent.parent / "runs" / folder.name        # results/vision-quick -> runs/vision-quick
    config = dataclasses.replace(config, results=str(folder), artifacts=str(artifacts))
    encoder, ctx = load_encoder(config), init_from_env()
    finetune_tasks(config, encoder, ctx)
    if not merge(config, encoder, ctx):
        raise RuntimeError(f"the vision pipeline merged nothing in {folder}: it needs finished runs of >= 2 tasks")
    return config


def load(folder: str | Path) -> dict:
    """{"runs": {(task, optimizer): run json}, "merges": {optimizer: merge json}, "source": {...}}.

    Runs the quick pipeline first when ``folder`` has no finished run (module docstring).
    """
    folder = Path(folder)
    source_folder = folder
    if not _run_files(folder):
        source_folder = folder.parent / "vision-quick"
        if not _run_files(source_folder):
            print(f"{folder} has no vision results: computing them with the quick configuration "
                  f"(python -m tvtheory.experiments.vision finetune/merge --quick --results {source_folder}); "
                  "this takes a few minutes", flush=True)
            run_pipeline(source_folder, QUICK)
        else:
            print(f"{folder} has no vision results: using the quick ones in {source_folder}", flush=True)
    runs = {}
    for path in _run_files(source_folder):
        r = json.loads(path.read_text())
        runs[(r["task"], r["optimizer"])] = r
    merges = {}
    for path in sorted(source_folder.glob("merge_*.json")):
        m = json.loads(path.read_text())
        merges[m["optimizer"]] = m
    any_run = next(iter(runs.values()))
    config = any_run["config"]
    configuration = "synthetic" if config.get("synthetic") else "quick" if config.get("quick") else "default"
    source = {"folder": str(source_folder), "configuration": configuration,
              "max_train": config.get("max_train"), "epochs": config["finetune"]["epochs"],
              "seed": any_run["seed"], "files": [str(p) for p in _run_files(source_folder)]}
    return {"runs": runs, "merges": merges, "source": source}


def tasks_of(runs: dict, optimizer: str | None = None) -> list[str]:
    """The tasks with a run (of ``optimizer``, if given), ordered."""
    return ordered_tasks({t for t, o in runs if optimizer is None or o == optimizer})


def optimizers_of(runs: dict) -> list[str]:
    """The optimizers with a run, in OPTIMIZERS order."""
    return [o for o in OPTIMIZERS if any(opt == o for _, opt in runs)]
