"""Every paper figure, regenerated from recorded results: ``python -m paper_figures.make_all``.

A figure is one module ``paper_figures/f<N>_<name>.py``; ``figures()`` finds them all, so adding a figure is
adding its module. The module defines:

    NAME     file stem of its result (results/<SOURCE>/<NAME>.json) and of its figure (out/<NAME>.pdf/.png)
    TITLE    heading used in numbers.md
    SOURCE   sub-folder of results/: "theory" (computed here by tvtheory) or e.g. "vision"
    CONFIGS  {"quick": {...}, "default": {...}}: every parameter of the computation
    compute(config, bar) -> dict      the figure's data (JSON-able); calls bar.update() steps(config) times.
                                      None for results made by another pipeline (then PRODUCER, a string
                                      naming the command that makes them, is printed when they are missing)
    steps(config) -> int              length of the progress bar
    seeds(config) -> int | list       the seed(s), recorded in the result file
    draw(result) -> matplotlib Figure drawn from result["data"] only
    tables(result) -> [results.Table] the numbers behind the figure, for numbers.md

Theory figures: F4 second-order error (T2/T3), F5 curvature bound tightness (T4), F6 floating point (T1).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

_FIGURE_MODULE = re.compile(r"^f(\d+)_\w+$")


def figures() -> list[ModuleType]:
    """The figure modules f<N>_*.py of this package, in order of N."""
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if _FIGURE_MODULE.match(m.name)]
    names.sort(key=lambda n: int(_FIGURE_MODULE.match(n).group(1)))
    return [importlib.import_module(f"{__name__}.{n}") for n in names]
