"""One benchmark measurement in a fresh process: the driver of each bench_*.py runs its own script with
``--worker SPEC`` (JSON) and reads the worker's JSON result from its last line of output.

A fresh process per measurement keeps one problem's allocations, caches and thread pools out of the next
one's timings, and lets the thread counts be set before torch starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_worker(script: str | Path, spec: dict, timeout: float, cwd: Path, limit_blas: bool = True,
               env: dict[str, str] | None = None) -> dict:
    """Run ``script --worker json(spec)`` with spec["threads"] OpenMP/MKL threads (and OpenBLAS threads when
    ``limit_blas``: without it threadpoolctl may raise them in the worker) and the extra environment ``env``;
    its result dict with ``process_wall_s``, or {"error": ...} on a timeout or a failure (the tail of its stderr).
    """
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    threads = str(spec["threads"])
    env = dict(os.environ, **(env or {}), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if limit_blas:
        env["OPENBLAS_NUM_THREADS"] = threads
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - start
    return result


def portable(value: str | Path, repo: Path) -> str:
    """A path or command as a result file records it: relative to the repository, the interpreter as
    ``python`` (no absolute path of the machine that ran it)."""
    text = str(value).replace(sys.executable, "python")
    return text.replace(f"{repo.resolve()}/", "")
