"""paper_figures: results computed when missing (tiny configurations), every figure drawn to PNG and PDF,
numbers.md equal to the result files it is rendered from, and a second build byte-identical, rewriting nothing
and recording no machine, time or absolute path."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import platform
import re
import shutil
import socket
import statistics
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # paper_figures is not an installed package

from paper_figures import (  # noqa: E402
    f1_norm_dominance,
    f2_direction_dominance,
    f4_second_order,
    f5_curvature_bound,
    f6_floating_point,
    f8_atm,
    figures,
    make_all,
    style,
    vision_runs,
)
from paper_figures.results import format_cell, load, load_or_compute, resolve, result_path  # noqa: E402
from tvtheory.experiments.config import VisionConfig  # noqa: E402
from tvtheory.experiments.summary import verdict  # noqa: E402

TINY = {
    f4_second_order: {**f4_second_order.CONFIGS["quick"], "samples": 96, "widths": [64, 4, 10], "epochs": 3,
                      "halvings": 3, "t3_batches": 2},
    f5_curvature_bound: {**f5_curvature_bound.CONFIGS["quick"], "samples": 48, "depths": [1, 2], "widths": [4],
                         "activations": ["tanh", "silu"], "base_widths": [64, 4, 10]},
    f6_floating_point: {**f6_floating_point.CONFIGS["quick"], "samples": 48, "widths": [64, 4, 10],
                        "runs": [{"seed": 0, "lr": 0.1}]},
}
THEORY = ["f4_second_order", "f5_curvature_bound", "f6_floating_point"]
VISION = ["f1_norm_dominance", "f2_direction_dominance", "f3_merging", "f7_merge_sweep", "f8_atm"]
# the vision pipeline on a random tiny ViT and random images: seconds, no data needed; three tasks, so that the
# sweep across T has two sizes (T = 2: one of the 3 subsets, the quick preset's one per size; T = 3: all tasks)
VISION_TASKS = ("mnist", "cars", "gtsrb")
SYNTHETIC = VisionConfig.quick_preset(synthetic=True, tasks=VISION_TASKS, progress=False, merge_sizes=(2, 3))
SEEDS = (0, 1)


def _make_all(root: Path, out: io.StringIO) -> None:
    """make_all --quick into root/results and root/out with the quick configurations shrunk to tiny ones (PNGs
    at a low dpi: the same code path, faster)."""
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        for module, config in TINY.items():
            mp.setitem(module.CONFIGS, "quick", config)
        mp.setitem(style.RC, "savefig.dpi", 40)
        code = make_all.main(["--quick", "--results", str(root / "results"), "--out", str(root / "out"),
                              "--no-progress"])
    assert code == 0


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """make_all with tiny vision runs recorded first and the theory results computed on the way; then make_all
    again on the same folders, before any test touches them (``builds``: both builds' files and the stats)."""
    root = tmp_path_factory.mktemp("figures")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        vision_runs.run_pipeline(root / "results" / "vision", SYNTHETIC, SEEDS)
    _make_all(root, out)
    first = _written(root)
    stats = {name: (root / name).stat() for name in first}
    _make_all(root, io.StringIO())
    again = _written(root)
    stats_again = {name: (root / name).stat() for name in again}
    return {"results": root / "results", "out": root / "out", "stdout": out.getvalue(),
            "builds": {"a": first, "again": again, "root": root, "stats": stats, "stats_again": stats_again}}


def test_every_figure_is_discovered_in_order():
    assert [f.NAME for f in figures()] == VISION[:3] + THEORY + VISION[3:]


@pytest.mark.parametrize("name", THEORY)
def test_missing_results_are_computed_with_a_message(made, name):
    assert f"computing {name} with the quick configuration" in made["stdout"]
    result = load(made["results"] / "theory" / f"{name}.json")
    assert result["configuration"] == "quick" and result["data"]
    assert {"config", "seed", "versions"} <= set(result)
    assert {"tvtheory", "torch", "numpy"} <= set(result["versions"])


@pytest.mark.parametrize("name", VISION)
def test_vision_figures_are_collected_from_the_runs(made, name):
    assert f"collecting {name} from the vision runs" in made["stdout"]
    result = load(made["results"] / "vision" / f"{name}.json")
    source = result["data"]["source"]
    runs = [_run(made["results"], t, o, s) for s in SEEDS for t in VISION_TASKS for o in ("gd", "sgd", "adamw")]
    assert result["configuration"] == "synthetic" and source["epochs"] == max(len(r["records"]) for r in runs)
    assert source["seeds"] == list(SEEDS) and source["seed"] == 0
    assert {"config", "seed", "versions"} <= set(result)


@pytest.mark.parametrize("name", VISION + THEORY)
def test_each_figure_is_written_as_png_and_pdf(made, name):
    png, pdf = made["out"] / f"{name}.png", made["out"] / f"{name}.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    assert not list(made["out"].glob("*.tmp")) and not list(made["out"].glob(".*"))   # atomic: no leftovers


def _parse_numbers(text: str, results: Path) -> list[tuple[Path, str, list[str], list[list[str]]]]:
    """(result file, rows path, column keys, cells) for every table of numbers.md; a file named relative to the
    results folder is resolved against ``results``."""
    tables, current_file = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("file: `"):
            current_file = results / re.match(r"file: `([^`]+)`", line).group(1)   # an absolute one stays
        if line.startswith("rows: `"):
            path = re.match(r"rows: `([^`]+)`", line).group(1)
            header = lines[i + 2]
            keys = re.findall(r"\(`([^`]+)`\)", header)
            rows, j = [], i + 4
            while j < len(lines) and lines[j].startswith("| "):
                rows.append([c.strip() for c in lines[j].strip().strip("|").split(" | ")])
                j += 1
            tables.append((current_file, path, keys, rows))
    return tables


def test_numbers_md_equals_the_result_files(made):
    tables = _parse_numbers((made["out"] / "numbers.md").read_text(), made["results"])
    assert {f.stem for f, *_ in tables} == set(THEORY + VISION)
    compared = 0
    for file, path, keys, rows in tables:
        expected = resolve(json.loads(file.read_text()), path)
        assert len(rows) == len(expected) > 0, (file, path)
        for cells, row in zip(rows, expected, strict=True):
            assert len(cells) == len(keys)
            for key, cell in zip(keys, cells, strict=True):
                value = row.get(key)          # a key a row lacks is n/a, as render_table writes it
                assert cell == format_cell(value), (file.stem, path, key)
                if isinstance(value, float):                      # parse the number back
                    assert float(cell) == pytest.approx(value, rel=1e-5, abs=0)
                    compared += 1
    assert compared > 50


def test_headline_numbers_are_in_numbers_md(made):
    text = (made["out"] / "numbers.md").read_text()
    f4 = load(made["results"] / "theory" / "f4_second_order.json")
    f6 = load(made["results"] / "theory" / "f6_floating_point.json")
    assert format_cell(f4["data"]["fits"][0]["slope"]) in text
    for row in f6["data"]["summary"]:
        assert row["max_ratio"] == max(r["max_ratio"] for r in f6["data"]["runs"] if r["dtype"] == row["dtype"])
        assert format_cell(row["max_ratio"]) in text
    for run in f6["data"]["runs"]:     # the per-coordinate ratios agree with tvtheory's own T1 check
        assert run["max_ratio"] == pytest.approx(run["check_t1_max_ratio"], rel=1e-12)
    for row in f4["data"]["epochs"]:   # the T2(c) bound with T6's M_j and with T4's, side by side
        for key in ("bound", "bound_t4", "bound_ratio", "bound_ratio_t4", "dominance", "dominance_t4"):
            assert format_cell(row[key]) in text, key
    f5 = load(made["results"] / "theory" / "f5_curvature_bound.json")
    for key in ("min_certificate_tightness", "median_certificate_tightness", "max_certificate_tightness",
                "min_tightness", "max_tightness"):
        assert format_cell(f5["data"]["overall"][key]) in text, key


# ---- F4 and F5: T6's certificate beside T4's bound, checked against the result files (the tiny ones made here and
# the committed ones in results/theory/)

COMMITTED = REPO / "results" / "theory"


def _theory_result(made, source: str, name: str) -> dict:
    if source == "made":
        return load(made["results"] / "theory" / f"{name}.json")
    path = COMMITTED / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} is not committed")
    return load(path)


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


@pytest.mark.parametrize("source", ["made", "committed"])
def test_f4_bounds_with_t6_and_t4_follow_from_their_step_bounds(made, source):
    """Each epoch's dominance numbers eta k max_{j<k} M_j and ratios bound / ||E_k|| from the recorded M_j (full-batch
    GD: one step per epoch); T6's M_j is min(T4, grid maximum + remainder) (T4's where the grid was not tested), at
    least ||H(theta_0)|| (theta_0 is on every segment) and at most T4's; T2(c) holds with either: ||E_k|| <= bound
    (T6) <= bound (T4)."""
    result = _theory_result(made, source, "f4_second_order")
    data, config = result["data"], result["config"]
    lr, steps, summary = config["lr"], data["steps"], data["summary"]
    assert [s["j"] for s in steps] == list(range(config["epochs"]))
    for s in steps:
        if s["grid_max"] is None:                            # grid not tested: it could not beat T4
            assert s["M_t6"] == s["M_t4"] and s["points"] == 1
        else:
            assert s["M_t6"] == min(s["M_t4"], s["grid_max"] + s["remainder"])
            assert s["points"] == s["pieces"] + 1            # theta_0 and the grid points
        assert summary["hessian_norm_theta0"] <= s["M_t6"] <= s["M_t4"]
    resolved = 0
    for row in data["epochs"]:
        k = row["k"]
        assert row["dominance"] == pytest.approx(lr * k * max(s["M_t6"] for s in steps[:k]), rel=1e-14)
        assert row["dominance_t4"] == pytest.approx(lr * k * max(s["M_t4"] for s in steps[:k]), rel=1e-14)
        assert row["bound"] <= row["bound_t4"]
        if row["bound_ratio"] is not None:
            resolved += 1
            assert row["bound_ratio"] == pytest.approx(row["bound"] / row["error_norm"], rel=1e-15)
            assert row["bound_ratio_t4"] == pytest.approx(row["bound_t4"] / row["error_norm"], rel=1e-15)
            assert row["error_norm"] <= row["bound"]          # T2(c) with T6's M_j
        else:
            assert row["bound_ratio_t4"] is None
    assert resolved == config["epochs"] - 1                  # k = 1: E_1 = 0, rounding only
    assert 0 < summary["certificate_failure"] <= config["certificate"]["delta"]
    assert summary["certificate_grid_points"] == sum(s["points"] for s in steps)
    assert summary["certificate_products"] > sum(s["products"] for s in steps)    # + the certificate at theta_0
    assert {k: summary["certificate_config"][k] for k in config["certificate"]} == config["certificate"]


def test_f4_step_bounds_are_the_librarys(made):
    """The recorded M_j (T6 and T4), their failure probability and product count: step_curvature_certificates on
    the same trajectory, with the recorded CertificateConfig."""
    from tvtheory.certificate import CertificateConfig, step_curvature_certificates
    from tvtheory.trajectory import gradient_descent

    result = load(made["results"] / "theory" / "f4_second_order.json")
    data, config = result["data"], result["config"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # as the result was computed (paper_figures.results.compute)
    try:
        problem = f4_second_order._problem(config)
        traj = gradient_descent(problem.objective, problem.theta0, config["lr"], config["epochs"])
        certs = step_curvature_certificates(problem, traj, CertificateConfig(**data["summary"]["certificate_config"]))
    finally:
        torch.set_num_threads(threads)
    assert [s["M_t6"] for s in data["steps"]] == pytest.approx(certs.values, rel=1e-12)
    assert [s["M_t4"] for s in data["steps"]] == pytest.approx(certs.t4, rel=1e-12)
    assert [s["pieces"] for s in data["steps"]] == [seg.pieces for seg in certs.segments]
    assert data["summary"]["certificate_failure"] == pytest.approx(certs.failure, rel=1e-12)
    assert data["summary"]["certificate_products"] == certs.products


@pytest.mark.parametrize("source", ["made", "committed"])
def test_f5_certificate_holds_within_the_target_and_its_tables_are_its_rows(made, source):
    """Every network: ||H|| <= T6 certificate <= T4 bound (T4 is T6's fallback), tightness = certificate / ||H||,
    failure <= delta; the summaries (per setting, per sweep, overall) are those of the rows; and the issue's target,
    T6 <= TARGET x ||H|| on every network."""
    result = _theory_result(made, source, "f5_curvature_bound")
    data, config = result["data"], result["config"]
    rows, overall = data["rows"], data["overall"]
    delta = config["certificate"]["delta"]
    for r in rows:
        assert r["hessian_norm"] <= r["certificate"] <= r["bound"], r
        assert r["certificate_holds"] and r["bound_holds"]
        assert r["certificate_tightness"] == pytest.approx(r["certificate"] / r["hessian_norm"], rel=1e-15)
        assert 0 <= r["certificate_failure"] <= delta
        assert not r["certificate_fallback"] or r["certificate"] == r["bound"]     # a fallback is T4 itself
    networks = {(r["widths"], r["activation"], r["loss"], r["seed"]): r for r in rows}.values()
    t6 = [r["certificate_tightness"] for r in networks]
    assert overall["networks"] == len(networks)
    assert (overall["median_certificate_tightness"], overall["min_certificate_tightness"],
            overall["max_certificate_tightness"]) == _spread(t6)
    assert overall["certificate_holds_everywhere"] == all(r["certificate_holds"] for r in networks)
    assert overall["certificate_within_target"] == (max(t6) <= overall["certificate_target"])
    assert overall["certificate_target"] == f5_curvature_bound.TARGET
    assert overall["certificate_fallbacks"] == sum(r["certificate_fallback"] for r in networks)
    assert overall["certificate_failure_total"] == pytest.approx(sum(r["certificate_failure"] for r in networks))
    assert overall["certificate_products_max"] == max(r["certificate_products"] for r in networks)
    assert overall["certificate_rungs_max"] == max(r["certificate_rungs"] for r in networks)
    for s in data["summary"]:
        mine = [r for r in rows if (r["sweep"], r["setting"], r["loss"]) == (s["sweep"], s["setting"], s["loss"])]
        assert len(mine) == s["seeds"] == len(config["seeds"])
        assert (s["median"], s["min"], s["max"]) == _spread([r["tightness"] for r in mine])
        assert (s["t6_median"], s["t6_min"], s["t6_max"]) == _spread([r["certificate_tightness"] for r in mine])
    assert [s["sweep"] for s in data["sweeps"]] == list(f5_curvature_bound.SWEEPS)
    for s in data["sweeps"]:
        mine = [r for r in rows if r["sweep"] == s["sweep"]]
        assert s["networks"] == len(mine)
        assert (s["t4_median"], s["t4_min"], s["t4_max"]) == _spread([r["tightness"] for r in mine])
        assert (s["t6_median"], s["t6_min"], s["t6_max"]) == _spread([r["certificate_tightness"] for r in mine])
    assert overall["certificate_holds_everywhere"] and overall["certificate_within_target"], overall


def test_f5_certificates_are_the_librarys(made):
    """Two recorded networks' T6 certificates: certified_norms at theta_0 with the recorded CertificateConfig."""
    from tvtheory.certificate import CertificateConfig, certified_norms
    from tvtheory.models import make_mlp
    from tvtheory.problem import make_problem

    result = load(made["results"] / "theory" / "f5_curvature_bound.json")
    data, config = result["data"], result["config"]
    digits = f5_curvature_bound.digits_data(config["samples"], config["subset_seed"])
    certificate = CertificateConfig(**data["overall"]["certificate_config"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in (data["rows"][0], data["rows"][-1]):
            widths = [int(w) for w in r["widths"].split("-")]
            problem = make_problem(make_mlp(widths, r["activation"], seed=r["seed"]), r["loss"], digits)
            cert = certified_norms(problem, [problem.theta0], certificate)[0]
            assert (r["certificate"], r["certificate_products"], r["certificate_rungs"]) == (
                pytest.approx(cert.value, rel=1e-12), cert.products, cert.rungs)
    finally:
        torch.set_num_threads(threads)


def test_stored_results_are_reused_and_stale_ones_recomputed(made, capsys):
    config, path = TINY[f6_floating_point], result_path(f6_floating_point, made["results"])
    assert load_or_compute(f6_floating_point, "quick", made["results"], config=config, progress=False)
    assert "using" in capsys.readouterr().out
    # made with another config: recomputed
    changed = {**config, "runs": [{"seed": 1, "lr": 0.5}]}
    result = load_or_compute(f6_floating_point, "quick", made["results"], config=changed, progress=False)
    assert "computing f6_floating_point with the quick configuration" in capsys.readouterr().out
    assert result["config"]["runs"] == [{"seed": 1, "lr": 0.5}] and load(path)["config"] == result["config"]
    # a default request does not accept a quick result; a quick request accepts a default one
    load_or_compute(f6_floating_point, "default", made["results"], config=config, progress=False)
    assert "computing f6_floating_point with the default configuration" in capsys.readouterr().out
    assert load_or_compute(f6_floating_point, "quick", made["results"], progress=False)["configuration"] == "default"
    assert "using" in capsys.readouterr().out


def test_figures_from_another_pipeline_are_skipped_until_their_results_exist(tmp_path, monkeypatch, capsys):
    """A vision figure (F1-F3) is one module with compute = None; make_all skips it while its file is missing."""
    fake = types.SimpleNamespace(NAME="f1_fake", TITLE="F1: fake", SOURCE="vision", compute=None,
                                 PRODUCER="the vision pipeline", tables=lambda result: [])
    assert load_or_compute(fake, "default", tmp_path) is None
    monkeypatch.setattr(make_all, "figures", lambda: [fake])
    assert make_all.main(["--results", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipping f1_fake" in out and "the vision pipeline" in out and "computing" not in out
    stored = {"name": "f1_fake", "configuration": "default", "data": {"x": 1}}
    (tmp_path / "vision").mkdir()
    (tmp_path / "vision" / "f1_fake.json").write_text(json.dumps(stored))
    assert load_or_compute(fake, "default", tmp_path) == stored


def _run(results: Path, task: str, opt: str, seed: int = 0) -> dict:
    return json.loads((results / "vision" / f"seed{seed}" / task / f"{opt}.json").read_text())


def _merge_file(results: Path, opt: str, seed: int) -> dict:
    return json.loads((results / "vision" / f"seed{seed}" / f"merge_{opt}.json").read_text())


def test_vision_figure_numbers_are_the_recorded_ones(made):
    """F1-F2's tables (seed 0), recomputed here from the pipeline's own run files."""
    results = made["results"]
    f1 = load(results / "vision" / "f1_norm_dominance.json")["data"]["rows"]
    f2 = load(results / "vision" / "f2_direction_dominance.json")["data"]
    assert {(r["task"], r["optimizer"]) for r in f1} == {(t, o) for t in VISION_TASKS for o in ("gd", "sgd", "adamw")}
    for row in f1:
        norms = [r["full_grad_norm_start"] for r in _run(results, row["task"], row["optimizer"])["records"]]
        shares = [row[f"share_{k}"] for k in range(1, len(norms) + 1)]
        assert shares == pytest.approx([v / sum(norms) for v in norms], rel=1e-12)
        assert row["epoch1_largest"] == (norms[0] == max(norms))
    for row in f2["rows"]:
        e2 = _run(results, row["task"], row["optimizer"])["analysis"]["E2"]
        assert row["cos_update_k_tauK"] == e2["cos_update_k_tauK"][row["k"] - 1]
        assert row["cos_neg_g_k_tauK"] == e2["cos_neg_g_k_tauK"][row["k"] - 1]
    for row in f2["summary"]:
        assert row["cos_tau1_tauK"] == _run(results, row["task"], row["optimizer"])["analysis"]["E2"]["cos_tau1_tauK"]
        if row["optimizer"] == "gd":
            # T1: tau^(1) = -eta g up to rounding, and |cos(a, c) - cos(b, c)| <= 2 ||a - b|| / ||a||
            from safetensors.torch import load_file

            from tvtheory.experiments.storage import grad_path, tau_path

            run = _run(results, row["task"], "gd")
            folder = results.parent / "runs" / "vision" / "seed0" / row["task"] / "gd"
            def flat(path):     # same tensor order for both files: enough for norms of their combination
                return torch.cat([t.double().flatten() for _, t in sorted(load_file(str(path)).items())])

            tau1, g = flat(tau_path(folder, 1)), flat(grad_path(folder, 1))
            slack = 2 * float((tau1 + run["config"]["finetune"]["lr"] * g).norm() / tau1.norm())
            assert abs(row["cos_tau1_tauK"] - row["cos_neg_g_tauK"]) <= slack


def _interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of two values by hand: sd = |a - b| / sqrt(2), t_{0.975, 1} = tan(0.475 pi)."""
    a, b = values
    half = math.tan(0.475 * math.pi) * abs(a - b) / math.sqrt(2) / math.sqrt(2)
    return (a + b) / 2, (a + b) / 2 - half, (a + b) / 2 + half


def test_f3_numbers_are_the_means_and_intervals_over_seeds(made):
    """F3's rows: per task the mean over the seeds' merge and run files with the 95% t-interval by hand; the average
    row's difference is the summary's (e3_summary.json, written by the pipeline), and so is the verdict."""
    results = made["results"]
    data = load(results / "vision" / "f3_merging.json")["data"]
    summary = json.loads((results / "vision" / "e3_summary.json").read_text())
    assert data["equivalence_margin"] == summary["equivalence_margin"] == SYNTHETIC.equivalence_margin
    for opt in ("gd", "sgd", "adamw"):
        merges = [_merge_file(results, opt, s) for s in SEEDS]
        mine = {r["task"]: r for r in data["rows"] if r["optimizer"] == opt}
        assert set(mine) == {*VISION_TASKS, "average"} and all(r["seeds"] == 2 for r in mine.values())
        for t in VISION_TASKS:
            one = [m["one_epoch"]["alpha_val"]["test_accuracy"][t] for m in merges]
            mean, low, high = _interval(one)
            assert (mine[t]["merged_one_epoch"], mine[t]["merged_one_epoch_ci_low"],
                    mine[t]["merged_one_epoch_ci_high"]) == (pytest.approx(mean), pytest.approx(low, abs=1e-12),
                                                             pytest.approx(high, abs=1e-12))
            ft = [_run(results, t, opt, s)["accuracy"]["finetuned"]["test"] for s in SEEDS]
            assert mine[t]["finetuned"] == pytest.approx(sum(ft) / 2)
            conv = [m["converged"]["alpha_val"]["test_accuracy"][t] for m in merges]
            normalised = [c / f for c, f in zip(conv, ft, strict=True)]
            assert mine[t]["merged_converged_normalised"] == pytest.approx(sum(normalised) / 2)
            d = _interval([100 * (a - b) for a, b in zip(one, conv, strict=True)])
            assert (mine[t]["difference_points"], mine[t]["difference_points_ci_low"],
                    mine[t]["difference_points_ci_high"]) == pytest.approx(d, abs=1e-9)
        avg = mine["average"]
        all_tasks = summary["optimizers"][opt]["all_tasks"]
        assert avg["merged_converged"] == pytest.approx(all_tasks["converged"]["mean"], rel=1e-12)
        assert avg["merged_converged_normalised"] == pytest.approx(
            sum(m["converged"]["alpha_val"]["mean_normalised_accuracy"] for m in merges) / 2, rel=1e-12)
        assert [avg["difference_points_ci_low"], avg["difference_points_ci_high"]] == pytest.approx(
            all_tasks["difference_points"]["ci95"], rel=1e-12, abs=1e-12)
        row = next(c for c in data["comparison"] if c["optimizer"] == opt)
        assert row["verdict"] == all_tasks["verdict"] and row["seeds"] == 2
        assert [row["ci_low"], row["ci_high"]] == pytest.approx(all_tasks["difference_points"]["ci95"])


def test_f7_numbers_are_the_sweep_over_seeds(made):
    """F7's rows: per optimizer, T and kind, the mean over seeds of each seed's mean over its subsets (from the merge
    files), with the 95% t-interval by hand; T = 3 of 3 tasks is the all-task merge."""
    results = made["results"]
    data = load(results / "vision" / "f7_merge_sweep.json")["data"]
    assert {(r["optimizer"], r["T"], r["task_vectors"]) for r in data["rows"]} == {
        (o, t, k) for o in ("gd", "sgd", "adamw") for t in (2, 3) for k in ("one_epoch", "converged")}
    for r in data["rows"]:
        merges = [_merge_file(results, r["optimizer"], s) for s in SEEDS]
        subsets = [m["sweep"]["by_size"][str(r["T"])][r["task_vectors"]] for m in merges]
        assert r["subsets"] == 1
        for key in ("mean_normalised_accuracy", "mean_accuracy"):
            per_seed = [sum(x["alpha_val"][key] for x in sub) / len(sub) for sub in subsets]
            assert (r[key], r[f"{key}_ci_low"], r[f"{key}_ci_high"]) == pytest.approx(_interval(per_seed), abs=1e-12)
        if r["T"] == 3:
            assert r["mean_accuracy"] == pytest.approx(
                sum(m[r["task_vectors"]]["alpha_val"]["mean_accuracy"] for m in merges) / 2, rel=1e-12)
    for d in data["differences"]:
        assert d["verdict"] == verdict([d["ci_low"], d["ci_high"]], d["margin"])


def test_f8_numbers_are_the_atm_files_over_seeds(made):
    """F8's rows: per optimizer and r, the mean over seeds of the atm files' ATM and multitask mean accuracies and of
    the relative distance, with the 95% t-interval by hand; its references are the merge files' all-task merges."""
    results = made["results"]
    data = load(results / "vision" / "f8_atm.json")["data"]
    files = {(o, s): json.loads((results / "vision" / f"seed{s}" / f"atm_{o}.json").read_text())
             for o in ("gd", "sgd", "adamw") for s in SEEDS}
    rounds = files[("gd", 0)]["rounds"]
    assert rounds == 2 and {(r["optimizer"], r["r"]) for r in data["rows"]} == {
        (o, r) for o in ("gd", "sgd", "adamw") for r in range(rounds + 1)}
    for row in data["rows"]:
        per_seed = [files[(row["optimizer"], s)] for s in SEEDS]
        for curve in ("atm", "multitask"):
            values = [p[curve][row["r"]]["mean_accuracy"] for p in per_seed]
            key = f"{curve}_mean_accuracy"
            assert (row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"]) == pytest.approx(_interval(values),
                                                                                          abs=1e-12)
        if row["r"] > 0:
            assert row["relative_distance"] == pytest.approx(
                sum(p["atm"][row["r"]]["relative_distance"] for p in per_seed) / len(SEEDS), rel=1e-12)
    for ref in data["references"]:
        merges = [_merge_file(results, ref["optimizer"], s) for s in SEEDS]
        assert ref["ta_converged"] == pytest.approx(
            sum(m["converged"]["alpha_val"]["mean_accuracy"] for m in merges) / len(SEEDS), rel=1e-12)


def test_vision_runs_without_atm_skip_f8_with_its_command(made, tmp_path, capsys):
    shutil.copytree(made["results"] / "vision", tmp_path / "results" / "vision")
    for path in (tmp_path / "results" / "vision").glob("seed*/atm_*.json"):
        path.unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(make_all, "figures", lambda: [f8_atm])
        assert make_all.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                              "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipping f8_atm: no seed<s>/atm_<optimizer>.json" in out and "vision atm" in out


def test_missing_vision_runs_are_made_with_the_quick_configuration(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vision_runs, "QUICK", dataclasses.replace(SYNTHETIC, optimizers=("gd",)))
    result = load_or_compute(f1_norm_dominance, "default", tmp_path / "results", progress=False)
    out = capsys.readouterr().out
    assert "has no vision results in seed folders: computing them with the quick configuration" in out
    assert result["configuration"] == "synthetic"
    assert tmp_path / "results" / result["data"]["source"]["folder"] == tmp_path / "results" / "vision-quick"
    for seed in vision_runs.QUICK_SEEDS:                 # the seed layout, and the summary over seeds
        assert (tmp_path / "runs" / "vision-quick" / f"seed{seed}" / "mnist" / "gd").is_dir()
        assert (tmp_path / "results" / "vision-quick" / f"seed{seed}" / "merge_gd.json").exists()
    assert (tmp_path / "results" / "vision-quick" / "e3_summary.json").exists()
    assert (tmp_path / "results" / "vision" / "f1_norm_dominance.json").exists()
    # a second figure reuses those runs instead of running the pipeline again
    load_or_compute(f2_direction_dominance, "default", tmp_path / "results", progress=False)
    assert "using the quick ones" in capsys.readouterr().out


# ---- reproducibility: a second make_all on the same inputs gives the same bytes and rewrites nothing; nothing
# written records a machine, a time or an absolute path

TEXT = (".json", ".md")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _written(root: Path) -> dict[str, bytes]:
    """Every file make_all writes (F1-F6 results, figures, numbers.md), by path relative to root."""
    paths = [p for p in (root / "out").rglob("*") if p.is_file()]
    paths += [p for p in (root / "results").glob("*/f[0-9]_*.json")]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(paths)}


@pytest.fixture(scope="module")
def builds(made):
    return made["builds"]


def test_every_figure_and_result_is_written(builds):
    names = set(builds["a"])
    for stem in VISION + THEORY:
        assert {f"out/{stem}.pdf", f"out/{stem}.png"} <= names
    assert "out/numbers.md" in names
    assert len([n for n in names if n.startswith("results/")]) == len(VISION + THEORY)


def test_a_second_run_gives_the_same_bytes_and_rewrites_nothing(builds):
    """F1-F3 and F7 are re-derived and every figure redrawn on the second run: same bytes, files left untouched."""
    assert builds["again"].keys() == builds["a"].keys()
    assert [name for name in builds["a"] if builds["again"][name] != builds["a"][name]] == []
    for name, before in builds["stats"].items():
        after = builds["stats_again"][name]
        assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino), name


def test_no_machine_time_or_absolute_path_in_what_is_written(builds):
    machine = {platform.platform(), platform.node(), socket.gethostname(), platform.version()} - {""}
    folders = {str(builds["root"]), str(REPO), str(Path.home())}
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
    for name, data in builds["a"].items():
        if name.startswith("results/"):
            result = json.loads(data)
            assert {"config", "seed", "versions", "configuration"} <= set(result), name
            assert set(result["versions"]) == {"tvtheory", "python", "torch", "numpy", "scipy"}, name
            assert "created_utc" not in result and "wall_time_s" not in result, name
