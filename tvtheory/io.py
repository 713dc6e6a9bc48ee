"""Result files: written atomically, each recording its config, seed and library versions."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the numerical libraries the result depends on."""
    import numpy
    import scipy
    import torch

    import tvtheory

    return {"tvtheory": tvtheory.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (mode 0644), atomically.

    Whatever the block writes to the temporary path appears at ``path`` all at once or not at all: on an
    error the temporary file is removed and an existing file at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; result files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON atomically (NaN written as null, infinities as "inf" / "-inf")."""
    return write_text_atomic(path, json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
