"""Benchmark of the curvature checks: gradient, HVP, the T4 bound, the dense Hessian and Lanczos.

    python benchmarks/bench_curvature.py                       # full run (see docs/performance.md)
    python benchmarks/bench_curvature.py --sizes 1e3,1e4 --dtypes float64 --repeats 3 --no-cli --no-tests

For MLPs (tanh, cross-entropy, 10 classes) of about 1e3 .. 1e6 parameters and N random examples, it
measures, after warm-up, the median wall time over several repeats of
  grad      one gradient, ``torch.func.grad`` of the Objective (tvtheory.curvature.gradient)
  hvp       one Hessian-vector product at a fresh point (tvtheory.curvature.hvp, double backward)
  hvp_fr    the same product by forward-over-reverse, jvp(grad(f)) (the library's hvp before; slower)
  hvp_rr    the same product by torch.func reverse-over-reverse, vjp(grad(f), theta)[1](v) (H symmetric)
  t4        the T4 bound: layer_norms (certified SVD-free spectral norms, tvtheory.spectral) +
            mlp_hessian_bound (plus each part alone), and how far its s_l lie above the SVD values
  t4_svd    the same bound with an SVD per weight matrix raised by 64 n u (the layer_norms that t4's
            replaced), for comparison
  dense     dense_hessian (only where P <= 5,000, the library's guard; skipped above)
  lanczos   hessian_norm(method='lanczos'), with the number of Hessian-vector products it reports having
            used (HessianNorm.products) and the time of one such product
  t6        the T6 certificate at one point, ``certified_norms(problem, [theta])`` (tvtheory.certificate, default
            CertificateConfig: epsilon 0.1, failure <= 1e-9; float64 only), with its Hessian-vector products
            (Lanczos estimate and Chebyshev tests), levels tried, degree m and draws r
  t6_segment  one ``certify_segment`` on the short GD step [theta, theta - eta grad L(theta)] (eta =
            ``--t6-step``, float64 only): the point certificates on its grid plus the fourth-derivative remainder;
            skipped above ``--t6-segment-max-params`` (the grid grows with the step length x sqrt(K4 / ||H||))
and the peak resident memory (ru_maxrss) of each measurement. Times of t6 and t6_segment are also given in
gradients (their median over the median of grad of the same size and dtype). Every (size, dtype, check) runs in its own
subprocess, so each peak belongs to one check; "extra" is the peak minus the RSS after the setup.
It also times the CLI default (``python -m tvtheory.bound --no-progress``) and ``pytest verification/``,
``pytest tests/``. Results go to a JSON file (written atomically, with the config and library versions)
and a Markdown table is printed. This is a script, not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import workers

REPO = Path(__file__).resolve().parent.parent

# Widths (n_0, ..., n_L) whose parameter counts are about the named size (tanh MLPs, 10 classes).
PRESETS: dict[str, tuple[int, ...]] = {
    "1e3": (64, 14, 10),            # P = 1,060
    "5e3": (64, 64, 10),            # P = 4,810   (largest preset under the dense-Hessian guard)
    "1e4": (64, 128, 10),           # P = 9,610
    "1e5": (784, 128, 10),          # P = 101,770
    "1e6": (784, 1024, 256, 10),    # P = 1,068,810
}
CHECKS = ("grad", "hvp", "hvp_fr", "hvp_rr", "t4", "t4_svd", "dense", "lanczos", "t6", "t6_segment")


def num_params(widths) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def layer_norms_svd(config, theta):
    """The layer_norms that tvtheory.bounds had before the certified bound: s_l = the float64 SVD value raised
    by the relative amount 64 n u (n = larger side), said to cover the SVD's backward error."""
    import torch

    from tvtheory.bounds import LayerNorms, mlp_layers
    from tvtheory.fp import unit_roundoff

    u = unit_roundoff(torch.float64)
    weight, bias = [], []
    for w, b in mlp_layers(config, theta.detach().double()):
        weight.append(torch.linalg.matrix_norm(w, ord=2) * (1.0 + 64 * max(w.shape) * u))
        bias.append(torch.linalg.vector_norm(b) * (1.0 + 64 * b.numel() * u) if b is not None
                    else torch.zeros((), dtype=torch.float64))
    return LayerNorms(torch.stack(weight), torch.stack(bias))


# --------------------------------------------------------------------------------------------------
# Worker: one check on one (size, dtype), in its own process.
# --------------------------------------------------------------------------------------------------

def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _time(fn, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = fn()
        samples.append(time.perf_counter() - t0)
    _time.last = last
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples_s": samples, "repeats": repeats, "warmup": warmup}


def hvp_revrev(f, theta, v):
    """H v by reverse-over-reverse: the vjp of grad f along v (= H^T v = H v, H being symmetric)."""
    from torch.func import grad, vjp

    return vjp(grad(f), theta)[1](v.to(theta.dtype))[0]


def hvp_fwdrev(f, theta, v):
    """H v by forward-over-reverse: the jvp of grad f along v."""
    from torch.func import grad, jvp

    return jvp(grad(f), (theta,), (v.to(theta.dtype),))[1]


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import tvtheory.curvature as curv
    from tvtheory.bounds import layer_norms, mlp_hessian_bound
    from tvtheory.losses import get_loss
    from tvtheory.models import make_mlp
    from tvtheory.objective import Objective
    from tvtheory.params import flat_params

    dtype = {"float32": torch.float32, "float64": torch.float64}[spec["dtype"]]
    widths, n, check = tuple(spec["widths"]), spec["n"], spec["check"]
    model = make_mlp(widths, "tanh", seed=spec["seed"], dtype=dtype)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    x = torch.randn(n, widths[0], generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, widths[-1], (n,), generator=gen)
    loss = get_loss("ce")
    f = Objective(model, loss, x, y)
    theta = flat_params(model)
    v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(dtype)
    warmup, repeats = spec["warmup"], spec["repeats"]
    out: dict = {"num_params": theta.numel()}
    base = _rss_peak_mib()

    if check == "grad":
        out["time"] = _time(lambda: curv.gradient(f, theta), warmup, repeats)
    elif check == "hvp":
        out["time"] = _time(lambda: curv.hvp(f, theta, v), warmup, repeats)
    elif check in ("hvp_fr", "hvp_rr"):
        fn = hvp_fwdrev if check == "hvp_fr" else hvp_revrev
        out["time"] = _time(lambda: fn(f, theta, v), warmup, repeats)
        ref = curv.hvp(f, theta, v)
        out["rel_diff_vs_library_hvp"] = float(torch.linalg.vector_norm(_time.last - ref)
                                               / torch.linalg.vector_norm(ref))
    elif check in ("t4", "t4_svd"):
        config = model.config
        norms_of = layer_norms if check == "t4" else layer_norms_svd
        norms_fn = lambda: norms_of(config, theta)                      # noqa: E731
        out["time"] = _time(lambda: mlp_hessian_bound(config, loss, x, y, norms_fn()), warmup, repeats)
        out["time_norms"] = _time(norms_fn, warmup, repeats)
        norms = norms_fn()
        out["time_recursion"] = _time(lambda: mlp_hessian_bound(config, loss, x, y, norms), warmup, repeats)
        out["bound_M"] = mlp_hessian_bound(config, loss, x, y, norms).mean
        out["weight_norm_bounds"] = [float(s) for s in norms.weight]
        if check == "t4":
            svd = [float(torch.linalg.matrix_norm(w, ord=2)) for w, _ in _layers(config, theta)]
            out["svd_values"] = svd
            # the bound must be an upper bound: >= the (float64) SVD value, and close to it
            pairs = list(zip(out["weight_norm_bounds"], svd, strict=True))
            out["upper_bound_holds"] = all(g >= s for g, s in pairs)
            out["max_rel_excess_over_svd"] = max((g - s) / s for g, s in pairs)
    elif check == "dense":
        if theta.numel() > curv.DENSE_HESSIAN_MAX_PARAMS:
            out["skipped"] = f"P = {theta.numel()} > {curv.DENSE_HESSIAN_MAX_PARAMS} (the dense_hessian guard)"
        else:
            curv.hvp(f, theta, v)                                        # warm the kernels
            out["time"] = _time(lambda: curv.dense_hessian(f, theta), 0, spec["heavy_repeats"])
            h = _time.last
            out["hessian_norm_dense"] = float(torch.linalg.eigvalsh(h.double()).abs().max())
    elif check == "lanczos":
        curv.hvp(f, theta, v)            # warm the kernels
        norms: list = []

        def run():
            norms.append(curv.hessian_norm(f, theta, method="lanczos", tol=spec["lanczos_tol"],
                                           maxiter=spec["lanczos_maxiter"]))

        out["time"] = _time(run, 0, spec["heavy_repeats"])
        out["hvps"] = [r.products for r in norms]          # Hessian-vector products, as hessian_norm counts them
        out["hessian_norm_lanczos"] = norms[-1].value
        # time of one product of the operator (graph built once, one backward per product)
        op = curv.hessian_operator(f, theta)
        x0 = v.double().numpy()
        out["time_operator_matvec"] = _time(lambda: op.matvec(x0), 1, spec["repeats"])
    elif check in ("t6", "t6_segment"):
        if dtype != torch.float64:
            out["skipped"] = "float64 only (T6's floating-point model is float64's)"
        elif check == "t6_segment" and theta.numel() > spec["t6_segment_max_params"]:
            out["skipped"] = (f"P = {theta.numel()} > --t6-segment-max-params {spec['t6_segment_max_params']} "
                              "(its grid has tens of points there, each a point certificate)")
        else:
            out.update(_certificate(check, model, f, theta, v, spec))
    else:
        raise ValueError(f"unknown check {check!r}")
    out["rss_base_mib"] = base
    out["rss_peak_mib"] = _rss_peak_mib()
    out["rss_extra_mib"] = out["rss_peak_mib"] - base
    return out


def _certificate(check: str, model, f, theta, v, spec: dict) -> dict:
    """The t6 / t6_segment measurement (float64): time, products and the certificate's own numbers."""
    import numpy as np

    import tvtheory.curvature as curv
    from tvtheory.certificate import CertificateConfig, certified_norms, certify_segment
    from tvtheory.data import Dataset
    from tvtheory.problem import make_problem

    config = CertificateConfig()
    out: dict = {"certificate_config": {"epsilon": config.epsilon, "slack": config.slack, "delta": config.delta}}
    curv.hvp(f, theta, v)                                             # warm the kernels
    if check == "t6":
        problem = make_problem(model, "ce", Dataset("random", f.x, f.target, spec["widths"][-1]))
        certs: list = []
        out["time"] = _time(lambda: certs.append(certified_norms(problem, [theta], config)[0]), 0,
                            spec["heavy_repeats"])
        c = certs[-1]
        out.update(value=c.value, estimate=c.estimate, products=[p.products for p in certs], rungs=c.rungs,
                   degree=c.degree, draws=c.draws, failure=c.failure, fallback=c.fallback)
    else:
        step = spec["t6_step"]
        end = theta - step * curv.gradient(f, theta)
        segs: list = []
        out["time"] = _time(lambda: segs.append(certify_segment(f, theta, end, config, config.delta,
                                                                np.random.default_rng(config.seed))), 0,
                            spec["heavy_repeats"])
        g = segs[-1]
        out.update(value=g.value, t4=g.t4, grid_max=g.grid_max, remainder=g.remainder, fourth=g.fourth,
                   pieces=g.pieces, products=[s.products for s in segs], failure=g.failure, step=step,
                   step_length=float((end - theta).norm()))
    return out


def _layers(config, theta):
    from tvtheory.bounds import mlp_layers

    return mlp_layers(config, theta.detach().double())


def profile_hvp(widths, n: int, dtype_name: str, threads: int | None, repeats: int) -> dict:
    """torch.profiler view of grad, hvp (library), hvp_fr and hvp_rr: GEMM calls, GEMM self time, profiler FLOPs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if threads:
        torch.set_num_threads(threads)
    import tvtheory.curvature as curv
    from tvtheory.losses import get_loss
    from tvtheory.models import make_mlp
    from tvtheory.objective import Objective
    from tvtheory.params import flat_params

    dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
    model = make_mlp(widths, "tanh", dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, widths[0], generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, widths[-1], (n,), generator=gen)
    f = Objective(model, get_loss("ce"), x, y)
    theta = flat_params(model)
    v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(dtype)
    fns = {"grad": lambda: curv.gradient(f, theta), "hvp (library, double backward)": lambda: curv.hvp(f, theta, v),
           "hvp_fr (fwd-over-rev)": lambda: hvp_fwdrev(f, theta, v),
           "hvp_rr (torch.func rev-over-rev)": lambda: hvp_revrev(f, theta, v)}
    out = {}
    for name, fn in fns.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for _ in range(repeats):
                fn()
        ev = [e for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm")]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        out[name] = {"gemm_calls": sum(e.count for e in ev) / repeats,
                     "gemm_self_ms": sum(e.self_cpu_time_total for e in ev) / repeats / 1e3,
                     "all_ops_self_ms": total / repeats / 1e3,
                     "profiler_gflop": sum(e.flops or 0 for e in ev) / repeats / 1e9}
    return out


def run_worker(spec: dict, timeout: float) -> dict:
    """This script's worker for ``spec`` in a fresh process (``workers.run_worker``)."""
    return workers.run_worker(__file__, spec, timeout, REPO)


# --------------------------------------------------------------------------------------------------
# Commands: the CLI default and the test suites, wall time.
# --------------------------------------------------------------------------------------------------

def time_command(cmd: list[str], runs: int, timeout: float, threads: int | None = None) -> dict:
    walls, codes = [], []
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
            codes.append(proc.returncode)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            codes.append(None)
            tail = [f"timed out after {timeout:.0f} s"]
        walls.append(time.perf_counter() - t0)
    return {"command": workers.portable(" ".join(cmd), REPO), "wall_s": walls,
            "median_wall_s": statistics.median(walls),
            "exit_codes": codes, "last_line": tail[0]}


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_sizes(text: str) -> dict[str, tuple[int, ...]]:
    """'1e3,1e6' (preset names) or explicit widths '64,14,10;784,128,10'."""
    if ";" in text or text.count(",") >= 2 and all(p.strip().isdigit() for p in text.split(",")):
        out = {}
        for part in text.split(";"):
            widths = tuple(int(w) for w in part.split(","))
            out[f"{num_params(widths):.0e}".replace("+0", "")] = widths
        return out
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; presets: {', '.join(PRESETS)} (or widths like 64,14,10;64,64,10)")
    return {s: PRESETS[s] for s in names}


def fmt_ms(t: dict | None) -> str:
    return "n/a" if not t else f"{t['median_s'] * 1e3:.3g}"


def summary_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        c = r["checks"]

        def med(name, key="time", c=c):
            x = c.get(name, {}).get(key)
            return x.get("median_s") if isinstance(x, dict) else None

        def ms(x):
            return None if x is None else x * 1e3

        def ratio(a, b):
            return a / b if a is not None and b else None

        g, h, hrr, t4, t4s = med("grad"), med("hvp"), med("hvp_rr"), med("t4"), med("t4_svd")
        hfr = med("hvp_fr")
        rows.append({
            "size": r["size"], "widths": r["widths"], "P": r["num_params"], "N": r["n"], "dtype": r["dtype"],
            "grad_ms": ms(g), "hvp_ms": ms(h), "hvp_over_grad": ratio(h, g),
            "hvp_fr_ms": ms(hfr), "hvp_fr_over_grad": ratio(hfr, g),
            "hvp_rr_ms": ms(hrr), "hvp_rr_over_grad": ratio(hrr, g),
            "hvp_rr_rel_diff": c.get("hvp_rr", {}).get("rel_diff_vs_library_hvp"),
            "t4_ms": ms(t4), "t4_over_grad": ratio(t4, g),
            "t4_norms_ms": ms(med("t4", "time_norms")), "t4_recursion_ms": ms(med("t4", "time_recursion")),
            "t4_svd_ms": ms(t4s), "t4_svd_over_grad": ratio(t4s, g),
            "t4_svd_norms_ms": ms(med("t4_svd", "time_norms")),
            "t4_upper_bound_holds": c.get("t4", {}).get("upper_bound_holds"),
            "t4_max_rel_excess": c.get("t4", {}).get("max_rel_excess_over_svd"),
            "dense_s": med("dense"), "dense_skipped": c.get("dense", {}).get("skipped"),
            "lanczos_ms": ms(med("lanczos")), "lanczos_hvps": c.get("lanczos", {}).get("hvps"),
            "lanczos_matvec_ms": ms(med("lanczos", "time_operator_matvec")),
            "hessian_norm_lanczos": c.get("lanczos", {}).get("hessian_norm_lanczos"),
            "hessian_norm_dense": c.get("dense", {}).get("hessian_norm_dense"),
            "t4_bound_M": c.get("t4", {}).get("bound_M"),
            "t6_s": med("t6"), "t6_over_grad": ratio(med("t6"), g),
            "t6_products": _median(c.get("t6", {}).get("products")), "t6_rungs": c.get("t6", {}).get("rungs"),
            "t6_degree": c.get("t6", {}).get("degree"), "t6_draws": c.get("t6", {}).get("draws"),
            "t6_value": c.get("t6", {}).get("value"), "t6_estimate": c.get("t6", {}).get("estimate"),
            "t6_failure": c.get("t6", {}).get("failure"), "t6_fallback": c.get("t6", {}).get("fallback"),
            "t6_segment_s": med("t6_segment"), "t6_segment_over_grad": ratio(med("t6_segment"), g),
            "t6_segment_products": _median(c.get("t6_segment", {}).get("products")),
            "t6_segment_pieces": c.get("t6_segment", {}).get("pieces"),
            "t6_segment_value": c.get("t6_segment", {}).get("value"),
            "t6_segment_t4": c.get("t6_segment", {}).get("t4"),
            "t6_segment_remainder": c.get("t6_segment", {}).get("remainder"),
            "peak_extra_mib": {k: v.get("rss_extra_mib") for k, v in c.items() if "time" in v},
            "errors": {k: v["error"] for k, v in c.items() if "error" in v},
        })
    return rows


def _median(xs):
    return statistics.median(xs) if xs else None


def _f(x, spec=".3g"):
    return "n/a" if x is None else format(x, spec)


def markdown_table(rows: list[dict]) -> str:
    """Table 1: the library as it is. Table 2: the prototypes. Table 3 (when measured): T6. Table 4: peak memory."""
    out = []
    head = ("| P | widths | N | dtype | grad ms | HVP ms | HVP/grad | T4 ms | T4/grad | T4: norms ms | "
            "dense Hessian s | Lanczos ms / #HVP | Lanczos: ms per product |")
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        dense = "skipped (P > 5,000)" if r["dense_skipped"] else _f(r["dense_s"])
        hv = r["lanczos_hvps"]
        lan = "n/a" if r["lanczos_ms"] is None else f"{r['lanczos_ms']:.4g} / {statistics.median(hv):.0f}"
        out.append(f"| {r['P']:,} | {','.join(map(str, r['widths']))} | {r['N']} | {r['dtype']} | "
                   f"{_f(r['grad_ms'])} | {_f(r['hvp_ms'])} | {_f(r['hvp_over_grad'], '.2f')} | {_f(r['t4_ms'])} | "
                   f"{_f(r['t4_over_grad'], '.2f')} | {_f(r['t4_norms_ms'])} | {dense} | {lan} | "
                   f"{_f(r['lanczos_matvec_ms'])} |")
    out.append("")
    head = ("| P | dtype | HVP fwd-over-rev ms | its /grad | HVP torch.func rev-over-rev ms | its /grad | "
            "T4 with SVD norms ms | its /grad | T4 norm excess over SVD (max rel.) | upper bound holds |")
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        out.append(f"| {r['P']:,} | {r['dtype']} | {_f(r['hvp_fr_ms'])} | {_f(r['hvp_fr_over_grad'], '.2f')} | "
                   f"{_f(r['hvp_rr_ms'])} | {_f(r['hvp_rr_over_grad'], '.2f')} | "
                   f"{_f(r['t4_svd_ms'])} | {_f(r['t4_svd_over_grad'], '.2f')} | "
                   f"{_f(r['t4_max_rel_excess'], '.1e')} | {r['t4_upper_bound_holds']} |")
    out.append("")
    if any(r["t6_s"] is not None or r["t6_segment_s"] is not None for r in rows):
        head = ("| P | dtype | T6 point s | its /grad | #HVP | levels / m / r | T6 value / Lanczos estimate | "
                "T6 segment s | its /grad | #HVP | grid pieces | segment value / T4 |")
        out += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            if r["t6_s"] is None and r["t6_segment_s"] is None:
                continue
            plan = "n/a" if r["t6_rungs"] is None else f"{r['t6_rungs']} / {r['t6_degree']} / {r['t6_draws']}"
            tight = (r["t6_value"] / r["t6_estimate"] if r["t6_value"] is not None and r["t6_estimate"]
                     else None)
            seg = (r["t6_segment_value"] / r["t6_segment_t4"] if r["t6_segment_value"] is not None
                   and r["t6_segment_t4"] else None)
            out.append(f"| {r['P']:,} | {r['dtype']} | {_f(r['t6_s'])} | {_f(r['t6_over_grad'], '.0f')} | "
                       f"{_f(r['t6_products'], '.0f')} | {plan} | {_f(tight, '.4f')} | {_f(r['t6_segment_s'])} | "
                       f"{_f(r['t6_segment_over_grad'], '.0f')} | {_f(r['t6_segment_products'], '.0f')} | "
                       f"{_f(r['t6_segment_pieces'], 'd')} | {_f(seg, '.2e')} |")
        out.append("")
    keys = CHECKS
    head = "| P | dtype | " + " | ".join(keys) + " |"
    out += ["Peak RSS above the worker's post-setup RSS, MiB:", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mem = r["peak_extra_mib"]
        out.append(f"| {r['P']:,} | {r['dtype']} | " + " | ".join(_f(mem[k], ".0f") if k in mem else "-" for k in keys)
                   + " |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default=",".join(PRESETS),
                   help=f"preset sizes ({', '.join(f'{k}={v}' for k, v in PRESETS.items())}) "
                        "or explicit widths separated by ';'")
    p.add_argument("--n", type=int, default=1024, help="N, random examples")
    p.add_argument("--dtypes", default="float32,float64", help="comma-separated: float32, float64")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats of grad, HVP and T4 (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls before the repeats")
    p.add_argument("--heavy-repeats", type=int, default=3,
                   help="timed repeats of dense_hessian and Lanczos (after one warm-up HVP)")
    p.add_argument("--lanczos-tol", type=float, default=1e-8, help="tol of hessian_norm (its default)")
    p.add_argument("--lanczos-maxiter", type=int, default=None, help="maxiter of hessian_norm")
    p.add_argument("--t6-step", type=float, default=0.01,
                   help="eta of the GD step [theta, theta - eta grad] that t6_segment certifies")
    p.add_argument("--t6-segment-max-params", type=int, default=200_000,
                   help="skip t6_segment above this P (at 1e6 the step's grid has 57 pieces)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of every worker, the CLI and pytest (unset: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker process")
    p.add_argument("--cli-runs", type=int, default=3, help="wall-time runs of the CLI default (0: skip)")
    p.add_argument("--no-cli", action="store_true", help="do not time the CLI")
    p.add_argument("--no-tests", action="store_true", help="do not time pytest verification/ and tests/")
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "curvature.json"), help="results JSON path")
    p.add_argument("--profile-hvp", action="store_true",
                   help="only profile grad / hvp / hvp_fr / hvp_rr (torch.profiler): largest --sizes, first --dtypes")
    p.add_argument("--table", default=None, metavar="JSON", help="only print the tables of an earlier results file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.profile_hvp:
        widths = list(parse_sizes(args.sizes).values())[-1]
        dtype = args.dtypes.split(",")[0].strip()
        res = profile_hvp(widths, args.n, dtype, args.threads, args.repeats)
        print(f"widths {widths}, N = {args.n}, {dtype}, per call (mean of {args.repeats}):")
        for name, r in res.items():
            print(f"  {name:28s} GEMM calls {r['gemm_calls']:4.0f}  GEMM self {r['gemm_self_ms']:8.1f} ms  "
                  f"all ops self {r['all_ops_self_ms']:8.1f} ms  profiler GFLOP {r['profiler_gflop']:6.2f}")
        return 0
    if args.table is not None:
        print(markdown_table(summary_rows(json.loads(Path(args.table).read_text())["results"])))
        return 0

    import torch

    from tvtheory.io import versions, write_json_atomic

    threads = args.threads or torch.get_num_threads()
    sizes = parse_sizes(args.sizes)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    bad = [c for c in checks if c not in CHECKS] + [d for d in dtypes if d not in ("float32", "float64")]
    if bad:
        raise SystemExit(f"unknown checks/dtypes {bad}")
    busy = subprocess.run(["pgrep", "-f", "small_models/pretrain"], capture_output=True, text=True).stdout.split()
    busy = [p for p in busy if p != str(os.getpid())]
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": threads,
               "other_benchmark_load": f"small_models/pretrain.py running (pids {busy})" if busy else None,
               "loadavg_start": os.getloadavg(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"# {machine['cpu']}, {threads} torch threads, torch {torch.__version__}"
          + (f"  WARNING: {machine['other_benchmark_load']}" if busy else ""), flush=True)

    config = {k: v for k, v in vars(args).items() if k != "worker"}
    config["out"] = workers.portable(args.out, REPO)
    config.update({"threads": threads, "sizes": {k: list(v) for k, v in sizes.items()}, "activation": "tanh",
                   "loss": "ce", "data": "x ~ N(0, 1), labels uniform over the classes"})
    payload = {"config": config, "versions": versions(), "machine": machine, "results": [], "commands": {}}
    for size, widths in sizes.items():
        for dtype in dtypes:
            entry = {"size": size, "widths": list(widths), "num_params": num_params(widths), "n": args.n,
                     "dtype": dtype, "checks": {}}
            for check in checks:
                spec = {"check": check, "widths": list(widths), "n": args.n, "dtype": dtype, "seed": args.seed,
                        "threads": threads, "warmup": args.warmup, "repeats": args.repeats,
                        "heavy_repeats": args.heavy_repeats, "lanczos_tol": args.lanczos_tol,
                        "lanczos_maxiter": args.lanczos_maxiter, "t6_step": args.t6_step,
                        "t6_segment_max_params": args.t6_segment_max_params}
                res = run_worker(spec, args.timeout)
                entry["checks"][check] = res
                brief = res.get("error") or res.get("skipped") or f"{fmt_ms(res.get('time'))} ms"
                if check == "lanczos" and "hvps" in res:
                    brief += f", {res['hvps']} HVPs"
                print(f"P={entry['num_params']:>9,} {dtype} {check:>8}: {brief}", flush=True)
            payload["results"].append(entry)
            payload["summary"] = summary_rows(payload["results"])
            write_json_atomic(args.out, payload)          # partial results survive an interruption

    py = sys.executable
    if not args.no_cli and args.cli_runs > 0:
        payload["commands"]["cli_default"] = time_command([py, "-m", "tvtheory.bound", "--no-progress"],
                                                          args.cli_runs, args.timeout, args.threads)
    if not args.no_tests:
        for name in ("verification", "tests"):
            if (REPO / name).is_dir():
                payload["commands"][f"pytest_{name}"] = time_command([py, "-m", "pytest", "-q", f"{name}/"], 1,
                                                                     args.timeout * 4, args.threads)
    for name, c in payload["commands"].items():
        print(f"{name}: wall {', '.join(f'{w:.2f}' for w in c['wall_s'])} s (exit {c['exit_codes']}) "
              f"-- {c['last_line']}", flush=True)
    payload["summary"] = summary_rows(payload["results"])
    payload["markdown_table"] = markdown_table(payload["summary"])
    payload["machine"].update(loadavg_end=os.getloadavg(),
                              finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json_atomic(args.out, payload)
    print()
    print(payload["markdown_table"])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
