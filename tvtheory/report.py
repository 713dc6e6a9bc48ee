"""The report on a user's recorded run: ``python -m tvtheory.report RUN.json``.

Reads the ``run.json`` of a :class:`tvtheory.recorder.Recorder` (or of one of its callbacks) and prints, per
epoch k: the optimizer steps, ||tau^(k)||, ||update_k||, the mean mini-batch gradient norm and, where recorded,
the full-batch gradient norm ||grad L(theta_{k-1})|| at the epoch start; their shares over the epochs (E1); the
cosines with the final task vector tau^(K) (E2); and T1 when the run is full-batch GD. Exit status 0, or 2 with one
line naming the problem when the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def shares(values: list[float | None]) -> list[float] | None:
    """Each value divided by their sum (E1); None when a value is missing or the sum is not positive."""
    if not values or any(v is None for v in values):
        return None
    total = sum(v for v in values if v is not None)
    return [v / total for v in values if v is not None] if total > 0 else None


def load_run(path: str | Path) -> dict:
    """The recorded run at ``path``; a ValueError naming the problem when it is not a recorder's run.json."""
    try:
        run = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(run, dict) or "epochs" not in run or "tensors" not in run:
        raise ValueError(f"{path} is not a run recorded by tvtheory.recorder (no 'epochs' / 'tensors'); pass the "
                         "run.json in the recorder's folder")
    if not run["epochs"]:
        raise ValueError(f"{path} records no finished epoch yet")
    return run


def _fmt(value, spec: str = ".4g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_run(run: dict) -> str:
    """The text report of a recorded run (module docstring)."""
    records, e2, t1 = run["epochs"], run.get("E2") or {}, run.get("T1")
    opt = run.get("optimizer") or {}
    K = len(records)
    head = (f"tvtheory.report: {run['num_params']} parameters in {len(run['tensors'])} tensors"
            f" (select {run['select']!r}), {K} epochs, optimizer {opt.get('class', 'not hooked')}"
            + (f" lr {opt['lr']:g}" if isinstance(opt.get("lr"), (int, float)) else "") + f", seed {run['seed']}")
    mini = shares([r["minibatch_grad_norm_mean"] for r in records])
    full = shares([r["full_grad_norm_start"] for r in records])
    cols = ["k", "steps", "||tau_k||", "||update_k||", "mean ||g_b||", "share", "||grad L_k-1||", "share",
            "cos(tau_k,tau_K)", "cos(upd_k,tau_K)", "cos(-g_k,tau_K)"]
    lines = [head, "", "  ".join(f"{c:>13}" for c in cols)]
    for i, r in enumerate(records):
        row = [str(r["epoch"]), str(r["steps"]), _fmt(r["tau_norm"]), _fmt(r["update_norm"]),
               _fmt(r["minibatch_grad_norm_mean"]), _fmt(mini[i] if mini else None, ".3f"),
               _fmt(r["full_grad_norm_start"]), _fmt(full[i] if full else None, ".3f"),
               _fmt(e2.get("cos_tau_k_tauK", [None] * K)[i], ".4f"),
               _fmt(e2.get("cos_update_k_tauK", [None] * K)[i], ".4f"),
               _fmt((e2.get("cos_neg_g_k_tauK") or [None] * K)[i], ".4f")]
        lines.append("  ".join(f"{v:>13}" for v in row))
    lines.append("")
    for name, values in (("full-batch gradient norm", full), ("mean mini-batch gradient norm", mini)):
        if values:
            largest = values[0] == max(values)
            lines.append(f"E1 ({name}): epoch 1 has share {values[0]:.3f} (equal shares: {1 / K:.3f}); "
                         f"{'the largest' if largest else 'not the largest'}")
    if e2:
        text = f"E2: cos(tau^(1), tau^(K)) = {_fmt(e2.get('cos_tau1_tauK'), '.4f')}"
        if "cos_neg_g_tauK" in e2:
            text += f", cos(-g, tau^(K)) = {_fmt(e2['cos_neg_g_tauK'], '.4f')}"
        per_tensor = e2.get("per_layer", {}).get("cos_tau1_tauK", {})
        finite = {k: v for k, v in per_tensor.items() if v is not None and not math.isnan(v)}
        if finite:
            low = min(finite, key=lambda k: finite[k])
            text += f"; per tensor cos(tau^(1), tau^(K)) from {finite[low]:.4f} ({low}) to {max(finite.values()):.4f}"
        lines.append(text)
    if not e2:
        lines.append("E2: n/a (written when the recorder is closed: the end of its `with` block or of training)")
    if t1 is not None:
        lines.append(f"T1: {'holds' if t1['holds'] else 'FAILS'}: {t1['statement']}: max |r|/model = "
                     f"{t1['max_ratio']:.3f} (<= 1 required), eta = {t1['lr']:g}")
    elif records[0]["steps"] == 0:
        lines.append("T1: n/a: no optimizer step was hooked")
    else:
        lines.append(f"T1: n/a: the run is not full-batch GD (epoch 1 took {records[0]['steps']} steps)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report of RUN.json; 0, or 2 for a file that cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m tvtheory.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN.json", help="the run.json a tvtheory Recorder wrote")
    args = parser.parse_args(argv)
    try:
        print(format_run(load_run(args.run)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
