"""Result files: written atomically, each recording its config, seed and library versions.

Provenance is recorded so that it is the same on every machine: ``versions()`` names library versions only
(no platform, host or time), and a write whose bytes equal the file already there is skipped, so re-making
an unchanged result leaves the file (and its mtime) untouched.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: a temporary file whose writer is not alive is removed once it is this old (seconds), see ``atomic_path``
STALE_TEMP_AGE_S = 600.0


#: The exit status of a run interrupted by Ctrl-C (128 + SIGINT), as the command lines document it.
INTERRUPTED_STATUS = 130


def exit_process(status: int) -> None:
    """End a command line with ``status``: ``sys.exit``, except for ``INTERRUPTED_STATUS``, where the streams are
    flushed and the process ends at once (``os._exit``).

    Why: when Ctrl-C lands inside ``exec`` of a string (``dataclasses`` and ``collections.namedtuple`` build their
    methods that way, e.g. during a lazy import), CPython 3.11 records an unhandled KeyboardInterrupt although the
    command line catches it, and after a normal shutdown kills the process with SIGINT: the status read -2, not
    130 (seen in CI, reproduced about one time in three by tests/test_cli.py's real Ctrl-C).
    """
    if status != INTERRUPTED_STATUS:
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def versions() -> dict[str, str]:
    """Versions of tvtheory, Python (major.minor.micro) and the numerical libraries a result depends on.

    Nothing about the machine (platform, host, time): a result made twice with the same libraries records
    the same provenance.
    """
    import numpy
    import scipy
    import torch

    import tvtheory

    return {"tvtheory": tvtheory.__version__, "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporary names of target ``name``: ``.<name>.<pid>.<random>.tmp``, or ``.<name>.<random>.tmp`` (the
    form before the writer's pid was recorded). ``<random>`` is mkstemp's: letters, digits, underscore.
    """
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.)?[a-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str | os.PathLike, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the temporary files of ``path`` that a dead writer left behind; return those deleted.

    A temporary file of ``path`` (see ``_temp_pattern``) is stale when both hold: (1) its writer is gone:
    the pid in its name is not a live process here, or the name has no pid; (2) it was last modified more
    than ``max_age_s`` seconds ago. (1) alone would delete the file of a live writer on another machine
    sharing the folder (its pid means nothing here); (2) alone would delete the file of a live but slow
    writer. A live writer is never removed by its own pid; a reused pid only delays the clean-up.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed = []
    now = time.time()
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = match.group(1)
        if pid is not None and _alive(int(pid)):
            continue
        try:
            if now - entry.stat().st_mtime <= max_age_s:
                continue
            entry.unlink()
        except FileNotFoundError:      # another writer cleaned it up first
            continue
        removed.append(entry)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (mode 0644), atomically.

    Whatever the block writes to the temporary path appears at ``path`` all at once or not at all: on an
    error the temporary file is removed and an existing file at ``path`` is left as it was. The temporary
    file is ``.<name>.<pid>.<random>.tmp``; a process killed mid-write cannot remove it, so on entry the
    stale temporary files of the same target are deleted (``remove_stale_temps``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; result files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; when ``path`` already holds exactly these bytes, do nothing.

    Skipping the identical write keeps the file's mtime, so re-making an unchanged result touches nothing.
    """
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    except OSError:                     # unreadable: write it anew
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) to ``path`` atomically, unless the file already holds exactly this text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON atomically (NaN written as null, infinities as "inf" / "-inf"); unchanged files are kept."""
    return write_text_atomic(path, json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
