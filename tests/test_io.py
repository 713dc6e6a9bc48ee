"""Unit tests of tvtheory.io: atomic JSON result files and library versions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import tvtheory
from tvtheory.io import versions, write_json_atomic


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_json_atomic_writes_valid_json(tmp_path):
    payload = {"a": 1, "b": [1.5, "x", None, True], "nested": {"k": (1, 2)}, 3: "int key"}
    out = write_json_atomic(tmp_path / "sub" / "r.json", payload)
    assert out == tmp_path / "sub" / "r.json"
    text = out.read_text()
    assert text.endswith("\n")
    assert json.loads(text) == {"a": 1, "b": [1.5, "x", None, True], "nested": {"k": [1, 2]}, "3": "int key"}
    assert list(json.loads(text)) == ["a", "b", "nested", "3"]          # insertion order kept
    assert _listing(tmp_path / "sub") == ["r.json"]                      # no temporary file left


def test_non_finite_floats_become_strict_json(tmp_path):
    payload = {"nan": float("nan"), "inf": float("inf"), "ninf": -float("inf"),
               "deep": [{"x": float("nan")}, (float("inf"),)], "np": np.float64("nan"), "ok": 1e308}
    text = write_json_atomic(tmp_path / "r.json", payload).read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data == {"nan": None, "inf": "inf", "ninf": "-inf", "deep": [{"x": None}, ["inf"]], "np": None,
                    "ok": 1e308}


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old contents")
    write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert _listing(tmp_path) == ["r.json"]


def test_failed_serialisation_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"v": 1})
    before = path.read_bytes()
    # json.dump writes "v" ... before it reaches the unserialisable object: the failure is mid-write
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": 2, "big": list(range(5000)), "bad": object()})
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["r.json"]
    # and when there was no file before, none appears
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "new.json", {"bad": {1, 2}})
    assert _listing(tmp_path) == ["r.json"]


def test_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    """BaseException (e.g. KeyboardInterrupt) midway also cleans up."""
    path = tmp_path / "r.json"
    path.write_text('{"v": 0}')

    real_write_text = Path.write_text

    def half_then_interrupt(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"v": 1})
    assert path.read_text() == '{"v": 0}'
    assert _listing(tmp_path) == ["r.json"]


def test_result_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    path = write_json_atomic(tmp_path / "r.json", {"v": 1})
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_versions_keys():
    v = versions()
    assert set(v) == {"tvtheory", "python", "platform", "torch", "numpy", "scipy"}
    assert v["tvtheory"] == tvtheory.__version__
    assert all(isinstance(x, str) and x for x in v.values())
    json.dumps(v)
