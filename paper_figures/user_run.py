"""F1 and F2 of a user's own run, from the run.json of a ``tvtheory.recorder.Recorder`` (or of its callbacks).

    python -m paper_figures.user_run RUN.json [--out DIR]      # DIR/user_f1_f2.pdf and .png (default: beside RUN.json)

Left (F1, E1): each epoch's share of the gradient norm over the run, for the mean mini-batch gradient norm and,
where recorded, the full-batch ||grad L(theta_{k-1})|| (equal shares: the dotted line). Right (F2, E2): the
cosines with the final task vector tau^(K): cos(tau^(k), tau^(K)), cos(update_k, tau^(K)) and, where recorded,
cos(-grad L(theta_{k-1}), tau^(K)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvtheory.report import load_run, shares

from . import style

NAME = "user_f1_f2"


def draw(run: dict):
    records, e2 = run["epochs"], run.get("E2") or {}
    K = len(records)
    ks = list(range(1, K + 1))
    fig, axes = style.figure(2, height=4.4)
    left, right = axes[0]
    for key, label, colour, marker in (("full_grad_norm_start", "full batch $\\|\\nabla L(\\theta_{k-1})\\|$",
                                        style.BLUE, "o"),
                                       ("minibatch_grad_norm_mean", "mean mini-batch $\\|g_b\\|$", style.VERMILLION,
                                        "s")):
        values = shares([r[key] for r in records])
        if values:
            left.plot(ks, values, "-", color=colour, marker=marker, label=label)
    left.axhline(1 / K, color=style.GREY, linestyle=":", linewidth=1.5, label="equal shares")
    left.set_xlabel("epoch $k$")
    left.set_ylabel("share of the sum over epochs")
    left.set_title("F1: norm dominance (E1)")
    for key, label, colour, marker in (("cos_tau_k_tauK", "cos($\\tau^{(k)}$, $\\tau^{(K)}$)", style.BLUE, "o"),
                                       ("cos_update_k_tauK", "cos(update$_k$, $\\tau^{(K)}$)", style.GREEN, "^"),
                                       ("cos_neg_g_k_tauK", "cos($-\\nabla L(\\theta_{k-1})$, $\\tau^{(K)}$)",
                                        style.ORANGE, "D")):
        if e2.get(key):
            right.plot(ks, e2[key], "-", color=colour, marker=marker, label=label)
    right.axhline(0, color=style.GREY, linewidth=0.8)
    right.set_xlabel("epoch $k$")
    right.set_title("F2: direction dominance (E2)")
    for ax in (left, right):
        ax.set_xticks(ks)
        ax.legend(loc="best")
    fig.suptitle(f"Your run: {run['num_params']} parameters, {K} epochs, "
                 f"{(run.get('optimizer') or {}).get('class', 'optimizer not hooked')}")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paper_figures.user_run", description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN.json")
    p.add_argument("--out", default=None, metavar="DIR", help="where the figure goes (default: beside RUN.json)")
    args = p.parse_args(argv)
    try:
        run = load_run(args.run)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = style.save(draw(run), NAME, args.out if args.out is not None else Path(args.run).parent)
    print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
