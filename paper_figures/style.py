"""One matplotlib style for every paper figure, and ``save`` (PDF + PNG, written atomically, reproducibly).

- Agg backend (no display needed), set before pyplot is imported.
- Colours: the Okabe-Ito palette (Okabe & Ito 2008), distinguishable with the common colour-vision
  deficiencies; every series also gets its own marker or line style, so the figures read in grey too.
- Reproducible files: no creation date or software string in the metadata, and an unchanged figure is not
  rewritten, so ``make figures`` on unchanged results leaves paper_figures/out/ untouched.
- Sizes: figures are about 10 inches wide and saved at 150 dpi, so a PNG shown ~700 px wide in a README
  renders 12-13 pt text at about 12 px.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib
import numpy as np

from tvtheory.io import write_bytes_atomic

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

OUT_DIR = Path(__file__).resolve().parent / "out"

# Okabe-Ito, in the order series use them (yellow last: it is faint on white).
BLUE = "#0072B2"
VERMILLION = "#D55E00"
GREEN = "#009E73"
ORANGE = "#E69F00"
PURPLE = "#CC79A7"
SKY = "#56B4E9"
YELLOW = "#F0E442"
BLACK = "#000000"
GREY = "#7F7F7F"    # reference lines only
PALETTE = (BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY, YELLOW, BLACK)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

WIDTH = 10.0        # inches: full-width figure
DPI = 150

RC = {
    "font.size": 13,
    "axes.titlesize": 13,
    "axes.labelsize": 13,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 11,
    "legend.framealpha": 0.9,
    "figure.titlesize": 14,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 6,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,
    "pdf.fonttype": 42,     # TrueType in the PDF: editable, searchable text
    "mathtext.fontset": "dejavusans",
}


def apply() -> None:
    """Install the style (idempotent); every figure module calls it before drawing."""
    matplotlib.rcParams.update(RC)


apply()


def figure(ncols: int = 1, height: float = 4.2, width: float = WIDTH, **kwargs):
    """A new figure with ``ncols`` panels side by side, in this style."""
    apply()
    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False, **kwargs)


def note(ax, text: str, loc: str = "upper left", **kwargs) -> None:
    """A small boxed text in a corner of the axes (corners: 'upper left', 'lower right', ...)."""
    v, h = loc.split()
    x = 0.03 if h == "left" else 0.97
    y = 0.97 if v == "upper" else 0.03
    ax.text(x, y, text, transform=ax.transAxes, ha=h, va="top" if v == "upper" else "bottom",
            fontsize=kwargs.pop("fontsize", 11),
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="0.7", alpha=0.9), **kwargs)


#: metadata that would differ between runs or machines, left out: the same figure gives the same bytes
METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "png": {"Software": None}}


def render(fig, fmt: str) -> bytes:
    """The figure as PDF or PNG bytes, with no date, time or software string in them (``METADATA``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, metadata=METADATA[fmt])
    return buffer.getvalue()


def save(fig, name: str, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.pdf`` and ``.png`` (default out_dir: paper_figures/out/), each atomically
    (temporary file in the same folder, then os.replace) and only when its bytes changed, close the
    figure, and return the two paths.
    """
    out = Path(out_dir) if out_dir is not None else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("pdf", "png"):
        path = out / f"{name}.{fmt}"
        write_bytes_atomic(path, render(fig, fmt))     # an unchanged figure is not rewritten
        paths.append(path)
        fig.set_layout_engine("none")   # the layout is in inches: the PNG reuses the PDF's (saves one pass)
    plt.close(fig)
    return paths


def value(x: float | None) -> float:
    """A plotted number: NaN (not drawn) for a missing one (null in a result file)."""
    return float("nan") if x is None else x


def interval_errors(rows: list[dict], key: str):
    """Asymmetric error bars (2, n) from each row's ``<key>_ci_low`` / ``<key>_ci_high``, or None when no row has
    an interval (fewer than 2 seeds).
    """
    if all(r[f"{key}_ci_low"] is None for r in rows):
        return None
    return np.array([[value(r[key]) - value(r[f"{key}_ci_low"]) for r in rows],
                     [value(r[f"{key}_ci_high"]) - value(r[key]) for r in rows]])
