"""The vision experiments' result files, as the figures F1-F3, F7 and F8 read them.

``python -m tvtheory.experiments.vision`` writes, per seed s, ``<folder>/seed<s>/<task>/<optimizer>.json`` per
finetuning run and ``<folder>/seed<s>/merge_<optimizer>.json`` per merge, ``atm`` writes
``<folder>/seed<s>/atm_<optimizer>.json`` (ATM against multitask finetuning, F8), and ``summary`` writes
``<folder>/e3_summary.json`` (folder: results/vision by default). The figures aggregate those files into their own
result file in the same folder, every time ``make figures`` runs (it takes a second), so a figure never lags
behind the runs it is drawn from: ``load`` recomputes the summary over seeds from the merge files
(``tvtheory.experiments.summary.e3_summary``) with the margin recorded in ``e3_summary.json`` (the config's default
without one). F1 and F2 draw the lowest seed's runs (``"runs"``), F3, F7 and F8 all seeds.

When the folder holds no finished runs in seed folders, the quick configuration of the pipeline (``QUICK`` with
``QUICK_SEEDS``, the settings of ``make vision-quick``) is run first through the library (a few minutes per seed,
with progress bars) into ``<folder>/../vision-quick`` and the figures are drawn from that; this is printed, and
recorded as the result's configuration.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from tvtheory.experiments.config import VisionConfig
from tvtheory.experiments.finetune import FINETUNE_OPTIMIZERS as OPTIMIZERS
from tvtheory.experiments.summary import QUICK_SEEDS, SUMMARY_FILE, e3_summary, mean_interval, seed_folders

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


def _seeded(folder: Path) -> dict[int, Path]:
    """The seed folders of ``folder`` that hold a finished run."""
    return {s: f for s, f in seed_folders(folder).items() if _run_files(f)}


def run_pipeline(folder: Path, config: VisionConfig, seeds: Sequence[int] = QUICK_SEEDS) -> VisionConfig:
    """The vision pipeline's finetune, merge and atm (``atm.rounds_for(config)`` rounds) with ``config`` for each of
    ``seeds`` (``seed_config``: results in ``folder/seed<s>`` (folder = results/<name>), artifacts in
    runs/<name>/seed<s> beside results/), then the summary ``folder/e3_summary.json``; returns the config it ran
    (the folders before the seed's).
    """
    from tvtheory.experiments.atm import atm, rounds_for
    from tvtheory.experiments.dist import init_from_env
    from tvtheory.experiments.encoders import load_encoder
    from tvtheory.experiments.merging import merge
    from tvtheory.experiments.runs import finetune_tasks
    from tvtheory.experiments.summary import seed_config, summarise

    artifacts = folder.parent.parent / "runs" / folder.name        # results/vision-quick -> runs/vision-quick
    config = dataclasses.replace(config, results=str(folder), artifacts=str(artifacts))
    encoder, ctx = load_encoder(config), init_from_env()
    for seed in seeds:
        cfg = seed_config(config, seed)
        finetune_tasks(cfg, encoder, ctx)
        if not merge(cfg, encoder, ctx):
            raise RuntimeError(f"the vision pipeline merged nothing in {cfg.results}: it needs finished runs of >= 2 "
                               "tasks")
        atm(cfg, encoder, ctx, rounds_for(cfg))
    summarise(config)
    return config


def _runs_of(folder: Path) -> dict[tuple[str, str], dict]:
    runs = {}
    for path in _run_files(folder):
        r = json.loads(path.read_text())
        runs[(r["task"], r["optimizer"])] = r
    return runs


def _merges_of(folder: Path) -> dict[str, dict]:
    merges = {}
    for path in sorted(folder.glob("merge_*.json")):
        m = json.loads(path.read_text())
        merges[m["optimizer"]] = m
    return merges


def _atm_of(folder: Path) -> dict[str, dict]:
    return {p.stem.removeprefix("atm_"): json.loads(p.read_text()) for p in sorted(folder.glob("atm_*.json"))}


def load(folder: str | Path) -> dict:
    """{"runs": {(task, optimizer): run json}, "merges": {optimizer: merge json} (both of the lowest seed),
    "seeds": {seed: {"runs": ..., "merges": ..., "atm": {optimizer: atm json}}}, "summary": the summary over seeds
    (None without merges), "source": {...}}.

    Runs the quick pipeline first when ``folder`` has no finished run in a seed folder (module docstring).
    """
    folder = Path(folder)
    source_folder = folder
    if not _seeded(folder):
        source_folder = folder.parent / "vision-quick"
        old = " (its runs are in the layout before seed folders, <task>/<optimizer>.json)" if _run_files(folder) else ""
        if not _seeded(source_folder):
            print(f"{folder} has no vision results in seed folders{old}: computing them with the quick "
                  f"configuration (python -m tvtheory.experiments.vision finetune/merge --quick --results "
                  f"{source_folder}, then summary); this takes a few minutes per seed", flush=True)
            run_pipeline(source_folder, QUICK)
        else:
            print(f"{folder} has no vision results in seed folders{old}: using the quick ones in {source_folder}",
                  flush=True)
    seeds = {s: {"runs": _runs_of(f), "merges": _merges_of(f), "atm": _atm_of(f)}
             for s, f in _seeded(source_folder).items()}
    first = seeds[min(seeds)]
    merges = {s: v["merges"] for s, v in seeds.items() if v["merges"]}
    stored = source_folder / SUMMARY_FILE
    margin = (json.loads(stored.read_text())["equivalence_margin"] if stored.exists()
              else VisionConfig.__dataclass_fields__["equivalence_margin"].default)
    summary = e3_summary(merges, margin) if merges else None
    any_run = next(iter(first["runs"].values()))
    config = any_run["config"]
    configuration = "synthetic" if config.get("synthetic") else "quick" if config.get("quick") else "default"
    files = [str(p) for f in _seeded(source_folder).values() for p in _run_files(f)]
    source = {"folder": str(source_folder), "configuration": configuration,
              "max_train": config.get("max_train"),
              "epochs": max(len(r["records"]) for v in seeds.values() for r in v["runs"].values()),
              "seed": any_run["seed"], "seeds": sorted(seeds), "files": files}
    return {"runs": first["runs"], "merges": first["merges"], "seeds": seeds, "summary": summary, "source": source}


def mean(values) -> float:
    """sum / count of an iterable of numbers (the plain mean the figures' per-task and per-seed averages use)."""
    values = list(values)
    return sum(values) / len(values)


def interval_ends(r: dict) -> tuple[float | None, float | None]:
    """(low, high) of a ``summary.mean_interval`` result; (None, None) without an interval (one seed)."""
    ci = r["ci95"]
    return (None, None) if isinstance(ci, str) else (ci[0], ci[1])


def mean_and_ends(values: Sequence[float | None]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) over seeds: ``summary.mean_interval`` of ``values`` and its ``interval_ends``."""
    r = mean_interval(values)
    return (r["mean"], *interval_ends(r))


def seed_spread(source: dict) -> str:
    """How a figure over seeds aggregates, for its title: "quick runs, mean and 95% t-interval over 2 seeds"."""
    n = len(source["seeds"])
    spread = f"mean and 95% t-interval over {n} seeds" if n > 1 else "one seed, no interval"
    return f"{source['configuration']} runs, {spread}"


def tasks_of(runs: dict, optimizer: str | None = None) -> list[str]:
    """The tasks with a run (of ``optimizer``, if given), ordered."""
    return ordered_tasks({t for t, o in runs if optimizer is None or o == optimizer})


def optimizers_of(runs: dict) -> list[str]:
    """The optimizers with a run, in OPTIMIZERS order."""
    return [o for o in OPTIMIZERS if any(opt == o for _, opt in runs)]
