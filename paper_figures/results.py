"""Result files behind the figures: load one from ``results/<source>/<name>.json``, or compute it.

A result file is written atomically (``tvtheory.io.write_json_atomic``) and holds
    {"name", "title", "configuration" ("tiny" | "quick" | "default" | ...), "config" (every parameter),
     "seed", "versions" (tvtheory.io.versions), "data" (what the figure draws)}.
Figures are drawn from ``data`` only, and ``numbers.md`` is rendered from the same files (``Table``), so
every plotted number can be traced to a file.

Provenance is recorded so that the same computation gives the same bytes on any machine: library versions,
the config and the seed, but no time, host or platform, and every path inside the results folder relative
to it (``portable``). A result or figure whose bytes would not change is not rewritten (tvtheory.io), so
``make figures`` on unchanged inputs changes no committed file.

When is a stored result reused? Configurations are ranked tiny < quick < default. A stored result is used
when it was made with the requested configuration (and the same config) or a higher-ranked one; otherwise
(missing, lower-ranked, or made with a different config) it is recomputed, with the message
"computing <name> with the <configuration> configuration" and a tqdm bar.

Figures with ``READS_RUNS = True`` (F1-F3) aggregate the vision pipeline's run files in their own results
folder: they are re-derived every time (it is cheap), ``compute(config, bar, folder)`` receives that folder,
and the configuration recorded is the one the runs were made with (``data["source"]["configuration"]``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from tqdm.auto import tqdm

from tvtheory.io import versions, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results"
LEVELS = ("tiny", "quick", "default")


def _rank(configuration: str) -> int:
    return LEVELS.index(configuration) if configuration in LEVELS else -1


def result_path(figure: ModuleType, results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/<figure.SOURCE>/<figure.NAME>.json`` (results_dir defaults to results/)."""
    root = Path(results_dir) if results_dir is not None else RESULTS_DIR
    return root / figure.SOURCE / f"{figure.NAME}.json"


def load(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def _normalised(config: dict) -> Any:
    return json.loads(json.dumps(config))


def compute(figure: ModuleType, configuration: str, config: dict, path: Path, progress: bool = True) -> dict:
    """Run ``figure.compute(config, bar)`` in one thread and write the result file atomically."""
    reads_runs = getattr(figure, "READS_RUNS", False)
    if reads_runs:
        print(f"collecting {figure.NAME} from the vision runs in {_display(path.parent)}", flush=True)
    else:
        print(f"computing {figure.NAME} with the {configuration} configuration", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        with tqdm(total=figure.steps(config), desc=figure.NAME, disable=not progress, leave=False) as bar:
            data = figure.compute(config, bar, path.parent) if reads_runs else figure.compute(config, bar)
    finally:
        torch.set_num_threads(threads)
    if reads_runs:
        configuration = data["source"]["configuration"]
    result = {
        "name": figure.NAME,
        "title": figure.TITLE,
        "configuration": configuration,
        "config": config,
        "seed": figure.seeds(config),
        "versions": versions(),
        "data": data,
    }
    write_json_atomic(path, portable(result, path.parent.parent))
    if not reads_runs:
        print(f"computed {figure.NAME} in {time.perf_counter() - started:.1f} s", flush=True)
    return load(path)       # exactly what is on disk (JSON-normalised), so figures and numbers.md agree


def portable(value: Any, root: Path) -> Any:
    """``value`` with every string that is an absolute path inside ``root`` (the results folder) written
    relative to it, in POSIX form, so that a result file names no machine's folders.
    """
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return _relative(Path(value), root)
    return value


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (POSIX form), else unchanged."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def load_or_compute(figure: ModuleType, configuration: str = "default", results_dir=None,
                    config: dict | None = None, recompute: bool = False, progress: bool = True) -> dict | None:
    """The result of ``figure`` from disk, computed first when missing or stale (see the module docstring).

    ``config`` overrides ``figure.CONFIGS[configuration]`` (tests pass a tiny one). Returns None for a
    figure whose results come from another pipeline (``figure.compute`` is None) and are not on disk.
    """
    path = result_path(figure, results_dir)
    can_compute = getattr(figure, "compute", None) is not None
    if config is None and can_compute:
        config = figure.CONFIGS[configuration]
    if getattr(figure, "READS_RUNS", False):
        return compute(figure, configuration, config, path, progress)
    if path.exists() and not recompute:
        stored = load(path)
        if not can_compute:
            return stored
        same = stored.get("configuration") == configuration and stored.get("config") == _normalised(config)
        finer = _rank(stored.get("configuration", "")) > _rank(configuration)
        if same or finer:
            print(f"using {_display(path)} ({stored['configuration']} configuration)")
            return stored
    if not can_compute:
        return None
    return compute(figure, configuration, config, path, progress)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------- data


def digits_data(samples: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float64):
    """scikit-learn's digits (1,797 images), or a seeded random subset of ``samples`` of them."""
    from tvtheory.data import digits

    data = digits(dtype)
    if samples is None or samples >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:samples]
    return data.subset(index.sort().values)


# ------------------------------------------------------------------------------------- numbers tables


@dataclass(frozen=True)
class Table:
    """A table of numbers.md: the rows at ``path`` in a result (dot-separated keys into the JSON; a list of
    dicts, or one dict for a one-row table), one column per (label, key).
    """

    title: str
    path: str
    columns: Sequence[tuple[str, str]]


def resolve(result: dict, path: str) -> list[dict]:
    node: Any = result
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return [node] if isinstance(node, dict) else list(node)


def format_cell(value: Any) -> str:
    """How numbers.md writes a value: 6 significant digits for floats, n/a for null."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def render_table(result: dict, table: Table) -> str:
    header = "| " + " | ".join(f"{label} (`{key}`)" for label, key in table.columns) + " |"
    lines = [f"### {table.title}", "", f"rows: `{table.path}`", "", header,
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for row in resolve(result, table.path):
        lines.append("| " + " | ".join(format_cell(row.get(key)) for _, key in table.columns) + " |")
    return "\n".join(lines)


def render_numbers(entries: Sequence[tuple[ModuleType, dict, Path]], results_dir: str | os.PathLike | None = None
                   ) -> str:
    """numbers.md: for each figure, the result file it was drawn from (relative to the results folder,
    ``results_dir``, default results/) and its tables.
    """
    root = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out = ["# Numbers behind the figures", "",
           "Written by `python -m paper_figures.make_all` from the result files named below (the same files the "
           "figures are drawn from); do not edit by hand. Column headers give the JSON key of each value. "
           "File paths are relative to the results folder (`results/` unless `--results` names another).", ""]
    for figure, result, path in entries:
        out += [f"## {result['title']}", "",
                f"file: `{_relative(path, root)}` ({result['configuration']} configuration, seed {result['seed']}, "
                f"tvtheory {result['versions']['tvtheory']}, torch {result['versions']['torch']})", ""]
        for table in figure.tables(result):
            out += [render_table(result, table), ""]
    return "\n".join(out)


