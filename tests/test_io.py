"""Unit tests of tvtheory.io: atomic result files (unchanged ones kept, stale temporary files removed) and
library versions."""

from __future__ import annotations

import json
import os
import platform
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tvtheory
from tvtheory.io import (
    STALE_TEMP_AGE_S,
    remove_stale_temps,
    versions,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


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

    real_write_bytes = Path.write_bytes

    def half_then_interrupt(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_then_interrupt)
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


def test_versions_name_libraries_only():
    """Provenance the same on every machine: library versions, no platform, host or time."""
    v = versions()
    assert set(v) == {"tvtheory", "python", "torch", "numpy", "scipy"}
    assert v["tvtheory"] == tvtheory.__version__
    assert v["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert all(isinstance(x, str) and x for x in v.values())
    text = json.dumps(v)
    for machine in (platform.platform(), platform.node(), socket.gethostname(), platform.machine()):
        assert machine not in text


def test_identical_contents_are_not_rewritten(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"v": 1})
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))        # an mtime no write of this test can produce
    before = path.stat()
    write_json_atomic(path, {"v": 1})
    write_text_atomic(path, path.read_text())
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    write_json_atomic(path, {"v": 2})                           # changed contents are written
    assert json.loads(path.read_text()) == {"v": 2} and path.stat().st_mtime_ns != before.st_mtime_ns


def test_bytes_are_written_verbatim(tmp_path):
    data = bytes(range(256)) * 3
    assert write_bytes_atomic(tmp_path / "b.bin", data).read_bytes() == data
    assert write_text_atomic(tmp_path / "t.md", "‖∇L(θ₀)‖\n").read_bytes() == "‖∇L(θ₀)‖\n".encode()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_writer_killed_mid_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "ckpt.bin"
    script = ("import os, sys\n"
              "from tvtheory.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half a checkpoint')\n"
              "    os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True)
    assert proc.returncode == -9
    orphans = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and not target.exists()            # the orphan a kill leaves
    write_bytes_atomic(target, b"fresh")
    assert orphans[0].exists()                                  # too young: its writer might be on another host
    _age(orphans[0], STALE_TEMP_AGE_S + 60)
    write_bytes_atomic(target, b"fresher")
    assert _listing(tmp_path) == ["ckpt.bin"] and target.read_bytes() == b"fresher"


def test_only_stale_temps_of_the_same_target_are_removed(tmp_path):
    target = tmp_path / "r.json"
    dead, alive = _dead_pid(), os.getpid()
    files = {
        "dead_old": f".r.json.{dead}.abc_123x.tmp",
        "legacy_old": ".r.json.k3j4h5g6.tmp",               # before the pid was recorded
        "dead_young": f".r.json.{dead}.young123.tmp",
        "alive_old": f".r.json.{alive}.mine1234.tmp",       # a live writer (this process) is never removed
        "other_target": f".r.json.bak.{dead}.abcdefgh.tmp",  # the temp of r.json.bak, not of r.json
        "prefix_target": f".r.{dead}.abcdefgh.tmp",          # the temp of r
        "not_a_temp": f"r.json.{dead}.abcdefgh.tmp",
    }
    for key, name in files.items():
        (tmp_path / name).write_text(key)
        if key != "dead_young":
            _age(tmp_path / name, STALE_TEMP_AGE_S + 60)
    removed = remove_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted([files["dead_old"], files["legacy_old"]])
    assert _listing(tmp_path) == sorted(n for k, n in files.items() if k not in ("dead_old", "legacy_old"))
    assert remove_stale_temps(tmp_path / "missing" / "r.json") == []
