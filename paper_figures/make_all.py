"""Regenerate every paper figure from recorded results, and the table of numbers behind them.

    python -m paper_figures.make_all [--quick] [--results DIR] [--out DIR] [--recompute] [--no-progress]

For each figure module (paper_figures/f<N>_*.py): load its result from DIR/<source>/<name>.json (DIR
defaults to results/), computing it first when missing or made with a smaller configuration; draw it to
OUT/<name>.pdf and .png (OUT defaults to paper_figures/out/); then write OUT/numbers.md from the same
result files. Figures whose results come from another pipeline and are not on disk are skipped, with the
command that makes them. Files whose contents would not change are not rewritten, and none records a time,
a host or an absolute path, so re-running on unchanged results changes nothing. --quick uses the quick
configuration (fewer points, under ~2 minutes in all).

Figures are the modules f<N>_*.py of the package, found by ``paper_figures.figures()``: theory F4-F6; the vision
pipeline's F1 (E1), F2 (E2), F3 (E3, all tasks, over seeds), F7 (E3, merges of T tasks, over seeds) and F8 (ATM
against task arithmetic and multitask finetuning, T5, over seeds), which read ``results/vision/seed<s>/``
(``paper_figures.vision_runs``); a vision figure whose files are missing there is skipped with the command that
makes them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tvtheory.io import write_text_atomic

from . import figures, style
from .results import load_or_compute, render_numbers, result_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m paper_figures.make_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="quick configuration for results that must be computed")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="root of the result files, DIR/<source>/<name>.json (default: results/)")
    p.add_argument("--out", default=None, metavar="DIR", help="where figures and numbers.md go (default: "
                                                              "paper_figures/out/)")
    p.add_argument("--recompute", action="store_true", help="recompute results even when they are on disk")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    configuration = "quick" if args.quick else "default"
    out = Path(args.out) if args.out is not None else style.OUT_DIR
    started = time.perf_counter()
    drawn, skipped = [], []
    for figure in figures():
        t0 = time.perf_counter()
        path = result_path(figure, args.results)
        try:
            result = load_or_compute(figure, configuration, args.results, recompute=args.recompute,
                                     progress=not args.no_progress)
        except FileNotFoundError as err:
            if not getattr(figure, "READS_RUNS", False):
                raise
            skipped.append(figure.NAME)
            print(f"skipping {figure.NAME}: {err}")     # e.g. vision runs without the atm step (F8)
            continue
        if result is None:
            skipped.append(figure.NAME)
            print(f"skipping {figure.NAME}: {path} not found; it is made by {getattr(figure, 'PRODUCER', '?')}")
            continue
        written = style.save(figure.draw(result), figure.NAME, out)
        drawn.append((figure, result, path))
        print(f"wrote {', '.join(str(p) for p in written)} ({time.perf_counter() - t0:.1f} s)")
    numbers = write_text_atomic(out / "numbers.md", render_numbers(drawn, args.results))
    print(f"wrote {numbers}: numbers behind {len(drawn)} figure(s)"
          + (f"; skipped {', '.join(skipped)}" if skipped else "")
          + f" ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
