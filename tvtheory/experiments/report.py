"""What the vision command line prints: ``report`` (the tables of a results folder) and ``pretrain_info`` (the
encoder and the built-in tasks' data sizes).
"""

from __future__ import annotations

import json
from pathlib import Path

from .analysis import T4_NOTE
from .config import VisionConfig
from .merging import merge_table
from .summary import SUMMARY_FILE, seed_folders, summary_table


def _run_rows(folder: Path) -> list[str]:
    """One line per finished run ``<folder>/<task>/<optimizer>.json``."""
    rows = []
    for path in sorted(folder.glob("*/*.json")):
        if path.name == "head.json":
            continue
        r = json.loads(path.read_text())
        e1, e2, acc = r["analysis"]["E1"], r["analysis"]["E2"], r["accuracy"]
        ex = r["analysis"]["expansion"]["epochs"]
        full, mini = e1["full_grad_norm_start"]["epoch0_largest"], e1["minibatch_grad_norm_mean"]["epoch0_largest"]
        rows.append(f"{r['task']:>13} {r['optimizer']:>5}  E1 full/minibatch epoch0 largest: {full!s:>5}/{mini!s:>5}"
                    f"  cos(tau1,tauK)={e2['cos_tau1_tauK']:.3f} cos(-g,tauK)={e2['cos_neg_g_tauK']:.3f}"
                    f"  ||E_K||/||1st||={ex[-1]['relative_error']:.3g}"
                    f"  acc pre/1ep/ft={acc['pretrained']['test']:.3f}/{acc['one_epoch']['test']:.3f}/"
                    f"{acc['finetuned']['test']:.3f}")
    return rows


def report(results: str | Path) -> str:
    """The tables of ``results``: per seed folder ``seed<s>/`` (or, without seed folders, of ``results`` itself,
    e.g. one seed's folder) one line per finished run (E1, E2, the expansion error, accuracies) and the merges;
    then the summary over seeds (``<results>/e3_summary.json``) when it exists.
    """
    results = Path(results)
    folders: dict[int | None, Path] = dict(seed_folders(results).items()) or {None: results}
    lines = []
    for seed, folder in folders.items():
        if seed is not None:
            lines.append(f"seed {seed} ({folder}):")
        rows = _run_rows(folder)
        lines += rows or [f"no finished runs under {folder}"]
        lines += [merge_table(json.loads(p.read_text())) for p in sorted(folder.glob("merge_*.json"))]
    summary = results / SUMMARY_FILE
    if summary.exists():
        lines.append(summary_table(json.loads(summary.read_text())))
    return "\n".join([*lines, T4_NOTE])


def pretrain_info(config: VisionConfig) -> dict:
    """{"encoder": config, size (and provenance) or {"error": ...}, "tasks": {name: dataset, splits, classes,
    what it stands in for} or {"error": ...}}: a missing encoder or dataset is reported, not raised.
    """
    from ..models.pretrained import DEFAULT_PRETRAINED
    from ..models.vit import count_parameters
    from ..vision.datasets import PAPER_BENCHMARK_STANDINS, TASKS, dataset_info
    from .encoders import load_encoder

    info: dict = {"tasks": {}}
    try:
        encoder = load_encoder(config)
        info["encoder"] = {"config": encoder.config.to_dict(), "num_params": count_parameters(encoder.model)}
        meta = Path(config.pretrained or DEFAULT_PRETRAINED).with_suffix(".json")
        if not config.synthetic and meta.exists():
            info["provenance"] = json.loads(meta.read_text())
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        info["encoder"] = {"error": str(e)}
    for t in TASKS.values():
        try:
            d = dataset_info(t.dataset, config.data_root)
            info["tasks"][t.name] = {"dataset": t.dataset, "splits": d.get("splits"),
                                     "classes": len(t.classes) if t.classes else len(d["classes"]),
                                     "stands_in_for": PAPER_BENCHMARK_STANDINS[t.name]}
        except Exception as e:  # noqa: BLE001 - report, do not fail, when data is absent
            info["tasks"][t.name] = {"error": str(e)}
    return info
