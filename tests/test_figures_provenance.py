"""make_all is reproducible: nothing it writes records a machine, a time or an absolute path, and a second
run on the same inputs gives the same bytes and rewrites nothing.

The figure build runs on a copy of the committed vision run files (F1-F3 are derived from them) and on the
theory figures (F4-F6) shrunk to tiny configurations, twice in one temporary folder; PNGs at a low dpi
(the same code path, faster).
"""

from __future__ import annotations

import contextlib
import io
import platform
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # paper_figures is not an installed package

from paper_figures import f4_second_order, f5_curvature_bound, f6_floating_point, make_all, style  # noqa: E402

TINY = {
    f4_second_order: {**f4_second_order.CONFIGS["quick"], "samples": 64, "widths": [64, 3, 10], "epochs": 2,
                      "halvings": 2, "t3_batches": 2},
    f5_curvature_bound: {**f5_curvature_bound.CONFIGS["quick"], "samples": 32, "depths": [1], "widths": [3],
                         "activations": ["tanh"], "base_widths": [64, 3, 10]},
    f6_floating_point: {**f6_floating_point.CONFIGS["quick"], "samples": 32, "widths": [64, 3, 10],
                        "runs": [{"seed": 0, "lr": 0.1}]},
}
TEXT = (".json", ".md")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _build(root: Path) -> dict[str, bytes]:
    """make_all --quick into root/results and root/out, from a copy of the committed vision runs."""
    vision = root / "results" / "vision"
    if not vision.exists():
        shutil.copytree(REPO / "results" / "vision", vision,
                        ignore=shutil.ignore_patterns("f[0-9]_*.json"))      # inputs only, not F1-F3's results
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        for module, config in TINY.items():
            mp.setitem(module.CONFIGS, "quick", config)
        mp.setitem(style.RC, "savefig.dpi", 40)
        assert make_all.main(["--quick", "--results", str(root / "results"), "--out", str(root / "out"),
                              "--no-progress"]) == 0
    return _written(root)


def _written(root: Path) -> dict[str, bytes]:
    """Every file make_all writes (F1-F6 results, figures, numbers.md), by path relative to root."""
    paths = [p for p in (root / "out").rglob("*") if p.is_file()]
    paths += [p for p in (root / "results").glob("*/f[0-9]_*.json")]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(paths)}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    first = tmp_path_factory.mktemp("build")
    a = _build(first)
    stats = {name: (first / name).stat() for name in a}
    again = _build(first)
    return {"a": a, "again": again, "first": first, "stats": stats}


def test_every_figure_and_result_is_written(builds):
    names = set(builds["a"])
    for stem in ("f1_norm_dominance", "f2_direction_dominance", "f3_merging", "f4_second_order",
                 "f5_curvature_bound", "f6_floating_point"):
        assert {f"out/{stem}.pdf", f"out/{stem}.png"} <= names
    assert "out/numbers.md" in names
    assert len([n for n in names if n.startswith("results/")]) == 6


def test_a_second_run_gives_the_same_bytes_and_rewrites_nothing(builds):
    """F1-F3 are re-derived and every figure redrawn on the second run: same bytes, files left untouched."""
    assert builds["again"].keys() == builds["a"].keys()
    assert [name for name in builds["a"] if builds["again"][name] != builds["a"][name]] == []
    for name, before in builds["stats"].items():
        after = (builds["first"] / name).stat()
        assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino), name


def test_no_machine_time_or_absolute_path_in_what_is_written(builds):
    machine = {platform.platform(), platform.node(), socket.gethostname(), platform.version()} - {""}
    folders = {str(builds["first"]), str(REPO), str(Path.home())}
    for name, data in builds["a"].items():
        if name.endswith(TEXT):
            text = data.decode("utf-8")
            assert not TIMESTAMP.search(text), name
            assert not re.search(r"(?<![\w.])/(tmp|home|root|work|usr|Users|var|private)/", text), name
            assert [m for m in machine if re.search(rf"\b{re.escape(m)}\b", text)] == [], name
        elif name.endswith(".png"):
            assert _png_text_chunks(data) == [], name
        else:                     # PDF: the Info dictionary is plain text
            text = data.decode("latin-1")
            assert "/CreationDate" not in text and "/ModDate" not in text, name
        for folder in folders:
            assert folder.encode() not in data, (name, folder)


def _png_text_chunks(data: bytes) -> list[bytes]:
    """The types of the text chunks (tEXt, zTXt, iTXt) of a PNG: where metadata such as Software would go."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, i = [], 8
    while i < len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            found.append(kind)
        i += 12 + length
    return found


def test_result_files_keep_the_provenance_that_is_stable(builds):
    import json

    for name, data in builds["a"].items():
        if name.startswith("results/"):
            result = json.loads(data)
            assert {"config", "seed", "versions", "configuration"} <= set(result), name
            assert set(result["versions"]) == {"tvtheory", "python", "torch", "numpy", "scipy"}, name
            assert "created_utc" not in result and "wall_time_s" not in result, name
