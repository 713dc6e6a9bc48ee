"""tvtheory against curvlinops and PyHessian, side by side in one run: HVPs, the top Hessian eigenvalue.

    python benchmarks/bench_peers.py                                   # as make bench runs it (5-7 min on 2 cores)
    python benchmarks/bench_peers.py --problems mlp-1e3,vit --rounds 3 --out /tmp/peers.json   # a quick look

Problems: tanh MLPs [n_0, h, (h2,) 10] of about 1e3 .. 1e6 parameters and a ViT (1x8x8 images, dim 8, one
block; LayerNorms), cross-entropy, N random examples, float64 and float32. Each (problem, dtype) runs in its
own process; inside it the methods below are timed in interleaved rounds (round r runs every method once,
in an order rotated by r), so a change of machine load hits all of them alike; medians, min and max.

  grad           one gradient, ``tvtheory.curvature.gradient``: the unit of every ratio
  fresh HVP      one product at a new point: tvtheory ``hvp`` (double backward); curvlinops
                 ``HessianLinearOperator @ v`` (forward-over-reverse, jvp of jacrev; it recomputes at every
                 product); PyHessian ``hessian(model, criterion, data)`` (forward, backward with
                 create_graph) and one ``hessian_vector_product`` (double backward)
  retained HVP   one product at a point whose gradient graph is kept: tvtheory ``hessian_operator`` matvec
                 (numpy in and out, what ARPACK calls), PyHessian ``hessian_vector_product`` on one
                 ``hessian`` object; curvlinops keeps no graph (its product is the fresh one)
  top eigenvalue |lambda|_max of H to --tol: tvtheory ``hessian_norm(method="lanczos")`` (ARPACK on the
                 operator); curvlinops: ARPACK ``eigsh`` (k=1, "LM") on ``HessianLinearOperator.to_scipy()``,
                 same tol and start vector; PyHessian ``hessian.eigenvalues`` (power iteration, relative
                 change < tol, at most --power-maxiter products). Products counted for each; accuracy
                 against a float64 reference (tvtheory Lanczos at tol 1e-12 on the float64 problem).
                 On the --blas-check problems also tvtheory with 2 BLAS threads (numpy's default here)
                 instead of tvtheory.spectral.BLAS_THREADS, the evidence for that setting.
  correctness    each fresh HVP against central differences of the gradient, D(h) = (g(theta + h v) -
                 g(theta - h v)) / 2h, Richardson-extrapolated (4 D(h/2) - D(h)) / 3 (truncation O(h^4)),
                 h ||v|| = 1e-3, float64 only

Every library gets the same threads: --threads torch threads and tvtheory.spectral.BLAS_THREADS BLAS threads
around every ARPACK call. The peers are the optional ``bench`` extra (``make bench`` installs them with
--no-deps). Results: JSON with the machine, its load average before and after each process, the versions,
and a Markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import workers

REPO = Path(__file__).resolve().parent.parent

PROBLEMS: dict[str, tuple[int, ...] | str] = {
    "mlp-1e3": (64, 14, 10),             # P = 1,060
    "mlp-1e4": (64, 128, 10),            # P = 9,610
    "mlp-1e5": (784, 128, 10),           # P = 101,770
    "mlp-1e6": (784, 1024, 256, 10),     # P = 1,068,810
    "vit": "vit",                        # P = 827: 1x8x8 images, 4x4 patches, dim 8, 1 block, 2 heads
}
LIBS = ("tvtheory", "curvlinops", "pyhessian")


# --------------------------------------------------------------------------------------------------
# Worker: one (problem, dtype), every method, interleaved rounds.
# --------------------------------------------------------------------------------------------------

def build(problem: str, dtype, n: int, seed: int):
    """(model, objective, theta, x, y, v): made in float64 and rounded to ``dtype``, so the float32 problem is
    the float64 one rounded (and the float64 reference applies to it)."""
    import torch

    from tvtheory.losses import get_loss
    from tvtheory.models import make_mlp, make_vit
    from tvtheory.models.vit import ViTConfig
    from tvtheory.objective import Objective
    from tvtheory.params import flat_params

    gen = torch.Generator().manual_seed(seed + 1)
    if PROBLEMS[problem] == "vit":
        config = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=16, num_classes=3,
                           channels=1)
        model = make_vit(config, seed=seed, dtype=torch.float64)
        with torch.no_grad():                  # LayerNorm weights away from 1, biases away from 0: curvature
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        x = torch.randn(n, 64, generator=gen, dtype=torch.float64).to(dtype)
        classes = 3
    else:
        widths = PROBLEMS[problem]
        model = make_mlp(widths, "tanh", seed=seed, dtype=torch.float64)
        x = torch.randn(n, widths[0], generator=gen, dtype=torch.float64).to(dtype)
        classes = widths[-1]
    y = torch.randint(0, classes, (n,), generator=gen)
    model = model.to(dtype)
    f = Objective(model, get_loss("ce"), x, y)
    theta = flat_params(model)
    v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(dtype)
    return model, f, theta, x, y, v


def worker(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    dtype = {"float32": torch.float32, "float64": torch.float64}[spec["dtype"]]
    import importlib

    import curvlinops
    import pyhessian
    from pyhessian.utils import hessian_vector_product
    from scipy.sparse.linalg import LinearOperator, eigsh

    import tvtheory.curvature as curv
    from tvtheory.spectral import blas_threads

    ph = importlib.import_module("pyhessian.hessian")   # the module (pyhessian.hessian is also the class)
    model, f, theta, x, y, v = build(spec["problem"], dtype, spec["n"], spec["seed"])
    torch.set_default_dtype(dtype)         # PyHessian draws its vectors in the default dtype (after build)
    params = [p for p in model.parameters() if p.requires_grad]
    criterion = torch.nn.CrossEntropyLoss()
    cl_op = curvlinops.HessianLinearOperator(model, criterion, params, [(x, y)], check_deterministic=False)
    v_list = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in params]), params,
                                                 strict=True)]

    def pyhessian_object():
        model.zero_grad(set_to_none=True)
        return ph.hessian(model, criterion, data=(x, y), cuda=False)

    def flat(tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def pyhessian_fresh():
        # fresh = built, used and freed inside the call, as for the others: PyHessian otherwise keeps its graph
        # alive in p.grad until its next call, so its memory is reused while a freed graph's pages fault back in
        hv = flat(hessian_vector_product(pyhessian_object().gradsH, params, v_list))
        model.zero_grad(set_to_none=True)
        return hv

    fresh = {
        "tvtheory": lambda: curv.hvp(f, theta, v),
        "curvlinops": lambda: cl_op @ v,
        "pyhessian": pyhessian_fresh,
    }
    tv_op = curv.hessian_operator(f, theta)
    ph_obj = pyhessian_object()
    v_np = v.double().numpy()
    retained = {
        "tvtheory": lambda: tv_op.matvec(v_np),
        "pyhessian": lambda: flat(hessian_vector_product(ph_obj.gradsH, ph_obj.params, v_list)),
    }
    timed = {"grad": lambda: curv.gradient(f, theta)}
    timed.update({f"fresh/{k}": fn for k, fn in fresh.items()})
    timed.update({f"retained/{k}": fn for k, fn in retained.items()})

    out: dict = {"num_params": theta.numel(), "loadavg_start": os.getloadavg()}
    for fn in timed.values():                 # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in timed}
    names = list(timed)
    for r in range(spec["rounds"]):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            timed[name]()
            samples[name].append(time.perf_counter() - t0)
    out["time"] = {k: _stats(s) for k, s in samples.items()}
    # paired per round (the libraries alternate within a round, so load drifts cancel): tvtheory / peer
    pairs = [("fresh", "curvlinops"), ("fresh", "pyhessian"), ("retained", "pyhessian")]
    out["paired_ratio"] = {f"{kind}/{peer}": _stats([a / b for a, b in zip(samples[f"{kind}/tvtheory"],
                                                                            samples[f"{kind}/{peer}"], strict=True)])
                           for kind, peer in pairs}

    # correctness: every fresh product against central differences of the gradient (float64 only)
    ref_hv = curv.hvp(f, theta, v)
    out["rel_diff_to_tvtheory_hvp"] = {k: _rel(fn(), ref_hv) for k, fn in fresh.items()}
    if dtype == torch.float64:

        def central(h):
            return (curv.gradient(f, theta + h * v) - curv.gradient(f, theta - h * v)) / (2 * h)

        h = 1e-3 / float(torch.linalg.vector_norm(v))
        fd = (4 * central(h / 2) - central(h)) / 3       # Richardson: truncation O(h^4)
        out["rel_err_vs_central_differences"] = {k: _rel(fn(), fd) for k, fn in fresh.items()}

    # top eigenvalue to tol, products counted, interleaved rounds
    tol, v0 = spec["tol"], np.random.default_rng(0).standard_normal(theta.numel())
    counts: dict[str, int] = {}

    def eig_tvtheory():
        r = curv.hessian_norm(f, theta, method="lanczos", tol=tol)
        return r.value, r.products, True

    def eig_curvlinops():
        scipy_op = cl_op.to_scipy(np.float64)
        counts["curvlinops"] = 0

        def mv(u):
            counts["curvlinops"] += 1
            return scipy_op.matvec(u)

        with blas_threads():
            vals = eigsh(LinearOperator(scipy_op.shape, matvec=mv, rmatvec=mv, dtype=np.float64), k=1,
                         which="LM", v0=v0, tol=tol, return_eigenvectors=False)
        return float(np.abs(vals).max()), counts["curvlinops"], True

    def eig_pyhessian():
        counts["pyhessian"] = 0

        def counted(gradsH, params_, vec):
            counts["pyhessian"] += 1
            return hessian_vector_product(gradsH, params_, vec)

        ph.hessian_vector_product = counted
        try:
            torch.manual_seed(0)
            vals, _ = pyhessian_object().eigenvalues(maxIter=spec["power_maxiter"], tol=tol)
        finally:
            ph.hessian_vector_product = hessian_vector_product
        return abs(float(vals[0])), counts["pyhessian"], counts["pyhessian"] < spec["power_maxiter"]

    def eig_tvtheory_2_blas_threads():
        import tvtheory.spectral as spectral

        chosen, spectral.BLAS_THREADS = spectral.BLAS_THREADS, 2
        try:
            return eig_tvtheory()
        finally:
            spectral.BLAS_THREADS = chosen

    eig = {"tvtheory": eig_tvtheory, "curvlinops": eig_curvlinops, "pyhessian": eig_pyhessian}
    if spec["blas_check"]:
        eig["tvtheory, 2 BLAS threads"] = eig_tvtheory_2_blas_threads
    eig_samples: dict[str, list[float]] = {k: [] for k in eig}
    eig_result: dict[str, dict] = {}
    libs = list(eig)
    for r in range(spec["eig_rounds"]):
        for name in libs[r % len(libs):] + libs[:r % len(libs)]:
            t0 = time.perf_counter()
            value, products, converged = eig[name]()
            eig_samples[name].append(time.perf_counter() - t0)
            eig_result[name] = {"value": value, "products": products, "converged": converged}
    reference = spec.get("reference")
    if reference is None:                      # float64: the reference is computed here
        reference = curv.hessian_norm(f, theta, method="lanczos", tol=1e-12).value
    for name, res in eig_result.items():
        res["time"] = _stats(eig_samples[name])
        res["rel_err_vs_reference"] = abs(res["value"] - reference) / reference
    out["eig"] = eig_result
    out["reference_top_eigenvalue"] = reference
    out["loadavg_end"] = os.getloadavg()
    out["versions"] = {"curvlinops": getattr(curvlinops, "__version__", _dist_version("curvlinops-for-pytorch")),
                       "pyhessian": getattr(pyhessian, "__version__", _dist_version("PyHessian"))}
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _stats(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples_s": samples}


def _rel(a, b) -> float:
    import torch

    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

#: glibc malloc settings of every worker (the same for every library): freed tensors stay mapped, so no library
#: pays page faults for memory the previous call returned to the system (it made fresh products 1-7 % noisier)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def run_worker(spec: dict, timeout: float) -> dict:
    """This script's worker for ``spec`` in a fresh process (``workers.run_worker``), with ``MALLOC_ENV``."""
    return workers.run_worker(__file__, spec, timeout, REPO, limit_blas=False, env=MALLOC_ENV)


def _ms(t: dict | None) -> str:
    return "-" if not t else f"{t['median_s'] * 1e3:.3g}"


def _ratio(t: dict | None, g: dict) -> str:
    return "-" if not t else f"{t['median_s'] / g['median_s']:.2f}"


def _paired(r: dict, key: str) -> str:
    """Median [min, max] of the per-round ratio tvtheory / peer; "level" when the range contains 1."""
    q = r.get("paired_ratio", {}).get(key)
    if q is None:
        return "-"
    word = "ahead" if q["max_s"] < 1 else "behind" if q["min_s"] > 1 else "level"
    return f"{q['median_s']:.2f} [{q['min_s']:.2f}, {q['max_s']:.2f}] {word}"


def markdown_table(results: list[dict]) -> str:
    """One row per (problem, dtype): HVP times and ratios to a gradient, then the eigenvalue runs."""
    head = ("| problem | P | dtype | grad ms | fresh HVP: tvtheory / curvlinops / PyHessian, gradients | "
            "retained HVP: tvtheory / PyHessian, gradients | paired tvtheory/PyHessian fresh | "
            "paired tvtheory/PyHessian retained | paired tvtheory/curvlinops fresh | "
            "HVP rel. err vs central diff.: tvtheory / curvlinops / PyHessian |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            out.append(f"| {r['problem']} | - | {r['dtype']} | error: {r['error'][-80:].replace(chr(10), ' ')} |")
            continue
        t, g = r["time"], r["time"]["grad"]
        fresh = " / ".join(_ratio(t.get(f"fresh/{k}"), g) for k in LIBS)
        ret = " / ".join(_ratio(t.get(f"retained/{k}"), g) for k in ("tvtheory", "pyhessian"))
        fd = r.get("rel_err_vs_central_differences")
        fd_text = " / ".join(f"{fd[k]:.0e}" for k in LIBS) if fd else "(float32)"
        out.append(f"| {r['problem']} | {r['num_params']:,} | {r['dtype']} | {_ms(g)} | {fresh} | {ret} | "
                   f"{_paired(r, 'fresh/pyhessian')} | {_paired(r, 'retained/pyhessian')} | "
                   f"{_paired(r, 'fresh/curvlinops')} | {fd_text} |")
    out.append("")
    head = ("| problem | P | dtype | top eigenvalue to tol: s (products) tvtheory | curvlinops | PyHessian | "
            "rel. error vs float64 reference: tvtheory / curvlinops / PyHessian | tvtheory, 2 BLAS threads |")
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            continue
        e = r["eig"]

        def cell(k, e=e):
            mark = "" if e[k]["converged"] else ", not converged"
            return f"{e[k]['time']['median_s']:.3g} ({e[k]['products']}{mark})"

        blas2 = cell("tvtheory, 2 BLAS threads") if "tvtheory, 2 BLAS threads" in e else "-"
        out.append(f"| {r['problem']} | {r['num_params']:,} | {r['dtype']} | {cell('tvtheory')} | "
                   f"{cell('curvlinops')} | {cell('pyhessian')} | "
                   + " / ".join(f"{e[k]['rel_err_vs_reference']:.1e}" for k in LIBS) + f" | {blas2} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated subset of {', '.join(PROBLEMS)}")
    p.add_argument("--dtypes", default="float64,float32", help="float64 first: it computes the reference")
    p.add_argument("--n", type=int, default=1024, help="N, random examples")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds of the HVPs")
    p.add_argument("--rounds-1e6", type=int, default=15, help="the same for mlp-1e6")
    p.add_argument("--eig-rounds", type=int, default=3, help="interleaved rounds of the eigenvalue runs")
    p.add_argument("--eig-rounds-1e6", type=int, default=1, help="the same for mlp-1e6")
    p.add_argument("--tol", type=float, default=1e-6, help="tolerance of every top-eigenvalue method")
    p.add_argument("--power-maxiter", type=int, default=300, help="PyHessian's maxIter (power iteration products)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every worker")
    p.add_argument("--blas-check", default="mlp-1e5", help="problems on which tvtheory also runs with 2 BLAS threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1200, help="seconds allowed per worker process")
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "peers.json"), help="results JSON path")
    p.add_argument("--table", default=None, metavar="JSON", help="only print the table of an earlier results file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.table is not None:
        print(markdown_table(json.loads(Path(args.table).read_text())["results"]))
        return 0
    import torch
    from bench_curvature import cpu_model

    from tvtheory.io import versions, write_json_atomic
    from tvtheory.spectral import BLAS_THREADS

    problems = [s.strip() for s in args.problems.split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [s for s in problems if s not in PROBLEMS] + [d for d in dtypes if d not in ("float32", "float64")]
    if bad:
        raise SystemExit(f"unknown problems/dtypes {bad}; problems: {', '.join(PROBLEMS)}")
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": args.threads,
               "blas_threads": BLAS_THREADS, "malloc_env": MALLOC_ENV, "loadavg_start": os.getloadavg(),
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"# {machine['cpu']}, {os.cpu_count()} CPUs, load {machine['loadavg_start']}, torch {torch.__version__}",
          flush=True)
    config = {k: v for k, v in vars(args).items() if k != "worker"}
    config["out"] = workers.portable(args.out, REPO)
    payload = {"config": config, "versions": versions(),
               "machine": machine, "results": []}
    t_start = time.perf_counter()
    for problem in problems:
        reference = None
        for dtype in dtypes:
            big = problem == "mlp-1e6"
            spec = {"problem": problem, "dtype": dtype, "n": args.n, "seed": args.seed, "threads": args.threads,
                    "rounds": args.rounds_1e6 if big else args.rounds,
                    "eig_rounds": args.eig_rounds_1e6 if big else args.eig_rounds, "tol": args.tol,
                    "power_maxiter": args.power_maxiter, "reference": reference,
                    "blas_check": problem in args.blas_check.split(",")}
            t0 = time.perf_counter()
            res = run_worker(spec, args.timeout)
            res.update(problem=problem, dtype=dtype, process_wall_s=time.perf_counter() - t0)
            if dtype == "float64" and "reference_top_eigenvalue" in res:
                reference = res["reference_top_eigenvalue"]
            payload["results"].append(res)
            brief = res.get("error") or (f"P = {res['num_params']:,}, grad {_ms(res['time']['grad'])} ms, "
                                         f"load {res['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}")
            print(f"{problem} {dtype}: {brief} ({res['process_wall_s']:.0f} s)", flush=True)
            write_json_atomic(args.out, payload)           # partial results survive an interruption
    machine.update(loadavg_end=os.getloadavg(), total_wall_s=time.perf_counter() - t_start,
                   finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    payload["markdown_table"] = markdown_table(payload["results"])
    write_json_atomic(args.out, payload)
    print()
    print(payload["markdown_table"])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
