"""E3 over seeds: the seed folders, the per-seed config, and ``<results>/e3_summary.json``.

Layout: the runs and merges of seed s live in ``<results>/seed<s>/`` and their artifacts in
``<artifacts>/seed<s>/``; ``seed_config(config, s)`` is that seed's single-seed ``VisionConfig`` (the library's
finetune and merge take one), whose ``seed`` also draws the data subsets, the batch partition, the curvature
estimate's images, the probe head's training set and the sweep's subsets. The command line runs ``--seeds``
(``DEFAULT_SEEDS``; ``QUICK_SEEDS`` under ``--quick``) one after the other.

The comparison (``e3_summary``), per optimizer and seed s: m1_s and mK_s, the mean test accuracy over the tasks of
the all-task merge (alpha chosen on validation) of the one-epoch and of the converged task vectors, and their
difference d_s = 100 (m1_s - mK_s) in accuracy points. Over the n seeds: the mean d, the standard deviation
s (n - 1 in the denominator) and the 95 % Student-t interval of the mean, d +- t_{0.975, n-1} s / sqrt(n)
(``mean_interval``, scipy.stats.t). The same for every merge size T of the sweep, with m1_s(T), mK_s(T) the means
over seed s's subsets of size T.

The verdict (``verdict``) with the equivalence margin Delta (``config.equivalence_margin``, accuracy points):

- "comparable": the interval lies inside (-Delta, Delta), i.e. the two one-sided t-tests of H0: d <= -Delta and
  of H0: d >= Delta both reject at 2.5 % (TOST: the 95 % interval's ends are the two one-sided 97.5 % bounds);
- "one-epoch worse": the interval lies below 0 (its upper end < 0) and is not inside the margin;
- "one-epoch better": the interval lies above 0 (its lower end > 0) and is not inside the margin;
- "inconclusive (interval too wide)": otherwise, it holds 0 and reaches past -Delta or Delta.

One seed gives no interval: its sd, interval and verdict read "needs >= 2 seeds". Also per optimizer, the
reference points averaged over seeds with the same intervals: pretrained, one epoch alone, converged alone and the
two merges, each as mean accuracy, mean normalised accuracy (acc / converged finetuned acc, per task) and gain
recovery ((mean acc - mean pretrained) / (mean finetuned - mean pretrained), ``merging.merge_scores``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..io import versions, write_json_atomic
from .config import VisionConfig
from .errors import VisionError
from .finetune import FINETUNE_OPTIMIZERS
from .merging import VECTORS, merge_scores

#: The seeds of ``finetune`` / ``merge`` without ``--seeds``, and under ``--quick``.
DEFAULT_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0, 1)

#: What an interval (and a verdict) reads with fewer than 2 seeds.
NEEDS_SEEDS = "needs >= 2 seeds"

#: The confidence level of the intervals.
LEVEL = 0.95

#: The name of the summary file in the results folder.
SUMMARY_FILE = "e3_summary.json"

_SEED_FOLDER = re.compile(r"seed(\d+)")

VERDICTS = ("comparable", "one-epoch worse", "one-epoch better", "inconclusive (interval too wide)")

DEFINITION = {
    "difference": "d_s = 100 (m1_s - mK_s) accuracy points, m1_s / mK_s the mean test accuracy over the tasks of the "
                  "merge (alpha chosen on validation) of the one-epoch / converged task vectors of seed s; for a "
                  "merge size T, the means over seed s's subsets of size T",
    "interval": "95 % Student-t interval of the mean over the n seeds: mean +- t_{0.975, n-1} sd / sqrt(n), sd with "
                "n - 1 in the denominator; 'needs >= 2 seeds' with one seed",
    "verdict": {
        "comparable": "the interval lies inside (-margin, margin): both one-sided t-tests of the equivalence test "
                      "(TOST, H0: d <= -margin and H0: d >= margin) reject at 2.5 %",
        "one-epoch worse": "the interval lies below 0 and is not inside the margin",
        "one-epoch better": "the interval lies above 0 and is not inside the margin",
        "inconclusive (interval too wide)": "otherwise: the interval holds 0 and reaches past a margin",
    },
    "normalised_accuracy": "mean over the tasks of accuracy / accuracy of the converged model finetuned on the task",
    "gain_recovery": "(mean accuracy - mean pretrained accuracy) / (mean finetuned - mean pretrained) over the tasks",
}


def seed_config(config: VisionConfig, seed: int) -> VisionConfig:
    """The single-seed config of seed ``seed``: ``seed``, results ``<results>/seed<s>``, artifacts
    ``<artifacts>/seed<s>``, every other field as in ``config``.
    """
    return dataclasses.replace(config, seed=seed, results=str(Path(config.results) / f"seed{seed}"),
                               artifacts=str(Path(config.artifacts) / f"seed{seed}"))


def seed_folders(results: str | Path) -> dict[int, Path]:
    """{s: <results>/seed<s>} of the seed folders under ``results``, by seed."""
    results = Path(results)
    found = {int(m.group(1)): p for p in results.iterdir() if p.is_dir() and (m := _SEED_FOLDER.fullmatch(p.name))} \
        if results.is_dir() else {}
    return dict(sorted(found.items()))


def mean_interval(values: Sequence[float | None]) -> dict:
    """{"values", "n", "mean", "sd", "t_quantile", "half_width", "ci95"}: the mean of ``values`` (None counts as NaN)
    and its 95 % Student-t interval mean +- t_{0.975, n-1} sd / sqrt(n), sd the sample standard deviation (n - 1);
    with one value sd, the quantile, the half width and the interval are ``NEEDS_SEEDS``.
    """
    from scipy import stats

    xs = [float("nan") if v is None else float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(xs) / n
    out: dict = {"values": xs, "n": n, "mean": mean}
    if n < 2:
        return {**out, "sd": NEEDS_SEEDS, "t_quantile": NEEDS_SEEDS, "half_width": NEEDS_SEEDS, "ci95": NEEDS_SEEDS}
    sd = statistics.stdev(xs) if all(math.isfinite(x) for x in xs) else float("nan")
    q = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1))
    half = q * sd / math.sqrt(n)
    return {**out, "sd": sd, "t_quantile": q, "half_width": half, "ci95": [mean - half, mean + half]}


def verdict(interval: Sequence[float] | str, margin: float) -> str:
    """The verdict of a 95 % interval of the difference one-epoch - converged (module docstring); ``NEEDS_SEEDS``
    for a missing interval, "undefined (a value is missing)" for one with a NaN end.
    """
    if isinstance(interval, str):
        return NEEDS_SEEDS
    lo, hi = interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undefined (a value is missing)"
    if -margin < lo and hi < margin:
        return "comparable"
    if hi < 0:
        return "one-epoch worse"
    if lo > 0:
        return "one-epoch better"
    return "inconclusive (interval too wide)"


def _comparison(one_epoch: Sequence[float], converged: Sequence[float], margin: float) -> dict:
    diff = mean_interval([100.0 * (a - b) for a, b in zip(one_epoch, converged, strict=True)])
    return {"difference_points": diff, "verdict": verdict(diff["ci95"], margin)}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _references(m: dict) -> dict[str, dict]:
    """Seed-level scores (mean accuracy, mean normalised accuracy, gain recovery) of the reference points of one
    merge payload: pretrained, one epoch alone, converged alone, the two all-task merges.
    """
    tasks = m["one_epoch"]["tasks"]
    pre, ft = m["pretrained_test_accuracy"], m["finetuned_test_accuracy"]
    points = {"pretrained": pre, "one_epoch_alone": m["one_epoch_test_accuracy"], "converged_alone": ft,
              **{f"merged_{kind}": m[kind]["alpha_val"]["test_accuracy"] for kind in VECTORS}}
    out = {}
    for name, acc in points.items():
        s = merge_scores({t: _nan(acc[t]) for t in tasks}, {t: _nan(pre[t]) for t in tasks},
                         {t: _nan(ft[t]) for t in tasks})
        out[name] = {k: s[k] for k in ("mean_accuracy", "mean_normalised_accuracy", "gain_recovery")}
    return out


def _optimizer_summary(by_seed: Mapping[int, dict], margin: float) -> dict:
    seeds = sorted(by_seed)
    per = {s: by_seed[s] for s in seeds}
    means = {kind: [per[s][kind]["alpha_val"]["mean_accuracy"] for s in seeds] for kind in VECTORS}
    all_tasks = {"seeds": seeds, **{kind: mean_interval(means[kind]) for kind in VECTORS},
                 **_comparison(means["one_epoch"], means["converged"], margin)}
    refs = {s: _references(per[s]) for s in seeds}
    references = {name: {k: mean_interval([refs[s][name][k] for s in seeds]) for k in refs[seeds[0]][name]}
                  for name in refs[seeds[0]]}
    sizes = sorted({int(t) for s in seeds for t in per[s].get("sweep", {}).get("by_size", {})})
    sweep = {}
    for size in sizes:
        have = [s for s in seeds if str(size) in per[s].get("sweep", {}).get("by_size", {})]
        entry: dict = {"seeds": have, "subsets": {str(s): len(per[s]["sweep"]["by_size"][str(size)]["subsets"])
                                                  for s in have}}
        for kind in VECTORS:
            mean = [per[s]["sweep"]["by_size"][str(size)]["mean_over_subsets"][kind]["alpha_val"] for s in have]
            entry[kind] = {k: mean_interval([m[k] for m in mean])
                           for k in ("mean_accuracy", "mean_normalised_accuracy", "gain_recovery")}
        entry.update(_comparison(entry["one_epoch"]["mean_accuracy"]["values"],
                                 entry["converged"]["mean_accuracy"]["values"], margin))
        sweep[str(size)] = entry
    return {"seeds": seeds, "tasks": {str(s): per[s]["one_epoch"]["tasks"] for s in seeds}, "all_tasks": all_tasks,
            "references": references, "sweep": sweep}


def e3_summary(merges: Mapping[int, Mapping[str, dict]], margin: float) -> dict:
    """The summary (module docstring) of {seed: {optimizer: merge payload}}, optimizers in FINETUNE_OPTIMIZERS
    order, each over the seeds that merged it.
    """
    optimizers = [o for o in FINETUNE_OPTIMIZERS if any(o in m for m in merges.values())]
    return {"definition": DEFINITION, "equivalence_margin": margin, "level": LEVEL,
            "units": {"difference_points": "accuracy points (100 x the difference of accuracies in [0, 1])",
                      "mean_accuracy": "accuracy in [0, 1]"},
            "seeds": sorted(merges),
            "optimizers": {o: _optimizer_summary({s: m[o] for s, m in merges.items() if o in m}, margin)
                           for o in optimizers}}


def load_merges(results: str | Path) -> dict[int, dict[str, dict]]:
    """{seed: {optimizer: merge payload}} of ``<results>/seed*/merge_<optimizer>.json``; VisionError without seed
    folders or without a merge file in them.
    """
    folders = seed_folders(results)
    if not folders:
        raise VisionError(f"{results} has no seed folders (seed0/, seed1/, ...): run finetune and merge with --seeds "
                          "and the same --results first")
    merges = {s: {m["optimizer"]: m for m in (json.loads(p.read_text()) for p in sorted(f.glob("merge_*.json")))}
              for s, f in folders.items()}
    merges = {s: m for s, m in merges.items() if m}
    if not merges:
        raise VisionError(f"the seed folders of {results} ({', '.join(f.name for f in folders.values())}) hold no "
                          "merge_<optimizer>.json: run merge with the same --results and --seeds first")
    return merges


def summarise(config: VisionConfig) -> dict:
    """The summary of the seed folders under ``config.results`` with ``config.equivalence_margin``, written to
    ``<results>/e3_summary.json``.
    """
    merges = load_merges(config.results)
    out = {**e3_summary(merges, config.equivalence_margin), "versions": versions(),
           "files": {str(s): [str(Path(config.results) / f"seed{s}" / f"merge_{o}.json") for o in m]
                     for s, m in merges.items()}}
    write_json_atomic(Path(config.results) / SUMMARY_FILE, out)
    return out


def _interval_text(r: dict, fmt: str = ".2f") -> str:
    ci = r["ci95"]
    spread = NEEDS_SEEDS if isinstance(ci, str) else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return f"{r['mean']:{fmt}} {spread} (n={r['n']})"


def summary_table(summary: dict) -> str:
    """The lines the command line prints: per optimizer the difference one-epoch - converged (points, mean and 95 %
    interval over seeds) and its verdict, for the all-task merge and each merge size T.
    """
    lines = [f"E3 over seeds {summary['seeds']}: one-epoch - converged merged mean test accuracy, accuracy points, "
             f"mean [95% t-interval]; margin +-{summary['equivalence_margin']:g} points"]
    for opt, o in summary["optimizers"].items():
        a = o["all_tasks"]
        lines.append(f"  {opt:>5} all tasks: {_interval_text(a['difference_points'])}: {a['verdict']}")
        for size, e in o["sweep"].items():
            lines.append(f"  {opt:>5} T={size:<3}     {_interval_text(e['difference_points'])}: {e['verdict']}")
    return "\n".join(lines)
