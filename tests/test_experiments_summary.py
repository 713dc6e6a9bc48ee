"""E3 over seeds (``tvtheory.experiments.summary``): the Student-t interval and the equivalence verdict on given
numbers, the summary of hand-made merge payloads, the per-seed folders, and the command line end to end on
--synthetic with 2 seeds (finetune, merge with the sweep across T, summary, report)."""

from __future__ import annotations

import json
import math

import pytest

from tvtheory.experiments import vision
from tvtheory.experiments.config import VisionConfig
from tvtheory.experiments.errors import VisionError
from tvtheory.experiments.merging import draw_subsets
from tvtheory.experiments.summary import (
    NEEDS_SEEDS,
    e3_summary,
    load_merges,
    mean_interval,
    seed_config,
    verdict,
)

# t quantiles in closed form (not scipy): df = 1 is the Cauchy, t_p = tan(pi (p - 1/2)); df = 2 has
# t_p = (2p - 1) / sqrt(2 p (1 - p)). A z quantile (1.96) or a one-sided one (p = 0.95) gives other numbers.
T975_DF1 = math.tan(math.pi * 0.475)
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def test_the_interval_is_the_student_t_one_by_hand():
    r = mean_interval([1.0, 2.0, 4.0])
    mean = 7 / 3
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)      # n - 1 = 2
    half = T975_DF2 * sd / math.sqrt(3)
    assert r["n"] == 3 and r["mean"] == pytest.approx(mean, rel=1e-15)
    assert r["sd"] == pytest.approx(sd, rel=1e-14)
    assert r["t_quantile"] == pytest.approx(T975_DF2, rel=1e-12)
    assert r["ci95"] == [pytest.approx(mean - half, rel=1e-12), pytest.approx(mean + half, rel=1e-12)]
    two = mean_interval([3.0, 5.0])                  # mean 4, sd sqrt(2): half width t sqrt(2) / sqrt(2) = t
    assert two["ci95"] == [pytest.approx(4 - T975_DF1, rel=1e-12), pytest.approx(4 + T975_DF1, rel=1e-12)]


def test_one_seed_gives_no_interval():
    r = mean_interval([0.4])
    assert r["mean"] == 0.4 and r["n"] == 1
    assert r["sd"] == r["ci95"] == r["half_width"] == NEEDS_SEEDS == "needs >= 2 seeds"
    assert verdict(r["ci95"], 2.0) == NEEDS_SEEDS


@pytest.mark.parametrize(("interval", "margin", "expected"), [
    ([-1.5, -0.5], 2.0, "comparable"),            # excludes 0 but inside the margin: equivalent
    ([-0.4, 0.4], 0.5, "comparable"),
    ([-3.0, -0.5], 2.0, "one-epoch worse"),       # below 0, leaves the margin
    ([-5.0, -3.0], 2.0, "one-epoch worse"),
    ([0.5, 3.0], 2.0, "one-epoch better"),
    ([-3.0, 1.0], 2.0, "inconclusive (interval too wide)"),
    ([-1.0, 1.0], 0.5, "inconclusive (interval too wide)"),     # the margin decides, not 0
    ([-2.0, 1.0], 2.0, "inconclusive (interval too wide)"),     # inside means strictly inside
])
def test_the_verdicts(interval, margin, expected):
    assert verdict(interval, margin) == expected


def _merge(tasks, pre, ft, alone, one_epoch, converged, sweep=None):
    """A merge payload with the fields the summary reads (accuracies per task, in task order)."""
    def entry(accs):
        acc = dict(zip(tasks, accs, strict=True))
        return {"tasks": list(tasks), "alpha_val": {"test_accuracy": acc, "mean_accuracy": sum(accs) / len(accs)}}

    return {"optimizer": "gd", "pretrained_test_accuracy": dict(zip(tasks, pre, strict=True)),
            "finetuned_test_accuracy": dict(zip(tasks, ft, strict=True)),
            "one_epoch_test_accuracy": dict(zip(tasks, alone, strict=True)),
            "one_epoch": entry(one_epoch), "converged": entry(converged), "sweep": sweep or {"by_size": {}}}


def _sweep(size, one_epoch_means, converged_means):
    """A sweep with one size: per kind the means over the subsets (two subsets)."""
    def means(m):
        return {"alpha_val": {"mean_accuracy": m, "mean_normalised_accuracy": m / 0.5, "gain_recovery": None}}

    return {"by_size": {str(size): {"subsets": [["a", "b"], ["a", "c"]],
                                    "mean_over_subsets": {"one_epoch": means(one_epoch_means),
                                                          "converged": means(converged_means)}}}}


def test_summary_of_given_merges():
    """Three seeds; the all-task merges differ by d = -1, +1, -1 points: mean -1/3, sd sqrt(4/3), half width
    t_{0.975,2} sd / sqrt(3) = 2.87: inconclusive at margin 2, comparable at margin 5. The sweep's T = 2 entries
    differ by +2 points on every seed: sd 0, an interval of width 0 at 2, outside a margin of 1: one-epoch better."""
    tasks = ("a", "b")
    merges = {}
    for s, (m1, mk) in enumerate(((0.50, 0.51), (0.52, 0.51), (0.51, 0.52))):
        merges[s] = {"gd": _merge(tasks, pre=(0.4, 0.4), ft=(0.6, 0.7), alone=(0.5, 0.6), one_epoch=(m1, m1),
                                  converged=(mk, mk), sweep=_sweep(2, 0.55, 0.53))}
    out = e3_summary(merges, margin=2.0)
    gd = out["optimizers"]["gd"]
    d = gd["all_tasks"]["difference_points"]
    assert d["values"] == [pytest.approx(-1.0), pytest.approx(1.0), pytest.approx(-1.0)]
    half = T975_DF2 * math.sqrt(4 / 3) / math.sqrt(3)
    assert d["ci95"] == [pytest.approx(-1 / 3 - half), pytest.approx(-1 / 3 + half)]
    assert gd["all_tasks"]["verdict"] == "inconclusive (interval too wide)"
    assert e3_summary(merges, margin=5.0)["optimizers"]["gd"]["all_tasks"]["verdict"] == "comparable"
    assert out["equivalence_margin"] == 2.0 and "TOST" in out["definition"]["verdict"]["comparable"]
    assert gd["all_tasks"]["one_epoch"]["values"] == [0.50, 0.52, 0.51]
    t2 = gd["sweep"]["2"]
    assert t2["difference_points"]["values"] == [pytest.approx(2.0)] * 3
    assert t2["verdict"] == "one-epoch better" and t2["seeds"] == [0, 1, 2]
    assert e3_summary(merges, margin=1.0)["optimizers"]["gd"]["sweep"]["2"]["verdict"] == "one-epoch better"
    assert e3_summary(merges, margin=3.0)["optimizers"]["gd"]["sweep"]["2"]["verdict"] == "comparable"
    assert t2["one_epoch"]["mean_normalised_accuracy"]["mean"] == pytest.approx(1.1)
    # references of seed 0: pretrained mean 0.4, finetuned 0.65, merged one-epoch 0.5: gain (0.5 - 0.4) / 0.25
    refs = gd["references"]
    assert refs["merged_one_epoch"]["gain_recovery"]["values"][0] == pytest.approx(0.4)
    assert refs["one_epoch_alone"]["mean_normalised_accuracy"]["values"][0] == pytest.approx(
        (0.5 / 0.6 + 0.6 / 0.7) / 2)
    assert refs["pretrained"]["gain_recovery"]["mean"] == 0 and refs["converged_alone"]["gain_recovery"]["mean"] == 1
    one = e3_summary({0: merges[0]}, margin=2.0)["optimizers"]["gd"]["all_tasks"]
    assert one["difference_points"]["ci95"] == NEEDS_SEEDS and one["verdict"] == NEEDS_SEEDS


def test_seed_config_puts_each_seed_in_its_own_folders(tmp_path):
    base = VisionConfig.quick_preset(synthetic=True, tasks=("mnist",), results=str(tmp_path / "r"),
                                     artifacts=str(tmp_path / "a"))
    cfg = seed_config(base, 2)
    assert (cfg.seed, cfg.results, cfg.artifacts) == (2, str(tmp_path / "r" / "seed2"), str(tmp_path / "a" / "seed2"))
    assert {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "results", "artifacts")} == {
        k: v for k, v in base.to_dict().items() if k not in ("seed", "results", "artifacts")}


def test_a_results_folder_without_seed_folders_is_refused(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()                       # a run folder of the layout before seeds
    (tmp_path / "merge_gd.json").write_text("{}")
    with pytest.raises(VisionError, match="no seed folders"):
        load_merges(tmp_path)
    assert vision.main(["summary", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no seed folders" in err[0] and "--seeds" in err[0]
    (tmp_path / "seed0").mkdir()
    assert vision.main(["summary", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold no merge_<optimizer>.json" in err[0]
    assert not (tmp_path / "e3_summary.json").exists()


def test_merge_settings_are_validated():
    for fields, flag in (({"merge_sizes": (1, 3)}, "--merge-sizes"), ({"merge_sizes": (2, 2)}, "--merge-sizes"),
                         ({"merge_sizes": ()}, "--merge-sizes"), ({"merge_subsets": 0}, "--merge-subsets"),
                         ({"equivalence_margin": 0.0}, "--equivalence-margin"),
                         ({"equivalence_margin": float("nan")}, "--equivalence-margin")):
        with pytest.raises(VisionError, match=flag):
            VisionConfig(**fields)


def test_seeds_flag(capsys):
    for bad in ("0,0", "-1", "a"):
        with pytest.raises(SystemExit) as e:
            vision.main(["merge", "--seeds", bad])
        assert e.value.code == 2
        assert "--seeds" in capsys.readouterr().err
    parse = vision.build_parser().parse_args
    assert not hasattr(parse(["finetune"]), "seed")             # --seeds replaced --seed
    ns = parse(["finetune", "--quick"])
    assert vision.seeds_of(ns, vision.config_from_args(ns)) == (0, 1)
    ns = parse(["merge"])
    assert vision.seeds_of(ns, vision.config_from_args(ns)) == (0, 1, 2)
    ns = parse(["merge", "--quick", "--seeds", "4,2"])
    assert vision.seeds_of(ns, vision.config_from_args(ns)) == (4, 2)


TASKS = ("mnist", "cars", "gtsrb")


def test_two_seeds_end_to_end(tmp_path, capsys):
    """finetune, merge (sweep: T = 2 with 2 of the 3 subsets, T = 3 = all tasks, T = 5 skipped), summary and report
    on --synthetic with seeds 0 and 1; the summary's numbers recomputed here from the merge files."""
    res, art = tmp_path / "r", tmp_path / "a"
    common = ["--synthetic", "--tasks", ",".join(TASKS), "--optimizers", "gd,sgd", "--seeds", "0,1",
              "--max-train", "128", "--max-val", "64", "--max-test", "128", "--results", str(res),
              "--artifacts", str(art)]
    assert vision.main(["finetune", *common, "--max-epochs", "3", "--patience", "1", "--gd-steps", "3",
                        "--batch-size", "32", "--sharpness-subset", "32", "--no-progress", "--no-second-order"]) == 0
    assert vision.main(["merge", *common, "--merge-sizes", "2,3,5", "--merge-subsets", "2"]) == 0
    assert vision.main(["summary", "--results", str(res), "--equivalence-margin", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "E3 over seeds [0, 1]" in out and "margin +-1.5 points" in out
    summary = json.loads((res / "e3_summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["equivalence_margin"] == 1.5
    for s in (0, 1):
        for t in TASKS:
            run = json.loads((res / f"seed{s}" / t / "gd.json").read_text())
            assert run["seed"] == s and run["config"]["seed"] == s
            assert (art / f"seed{s}" / t / "gd" / "tau_epoch001.safetensors").exists()
            assert (art / f"seed{s}" / t / "head.safetensors").exists()
    assert not (res / "mnist").exists() and not (art / "mnist").exists()
    for opt in ("gd", "sgd"):
        m = {s: json.loads((res / f"seed{s}" / f"merge_{opt}.json").read_text()) for s in (0, 1)}
        for s in (0, 1):
            sw = m[s]["sweep"]
            assert m[s]["seed"] == s and sw["sizes_skipped"] == [5] and set(sw["by_size"]) == {"2", "3"}
            assert sw["by_size"]["2"]["subsets"] == [list(x) for x in draw_subsets(TASKS, 2, 2, s)]
            assert sw["by_size"]["3"]["one_epoch"] == [m[s]["one_epoch"]]          # T = 3: all tasks
            for t in TASKS:
                run = json.loads((res / f"seed{s}" / t / f"{opt}.json").read_text())
                assert m[s]["task_vector_epochs"]["converged"][t] == run["stopping"]["converged_epoch"]
            # every merge's calls: T (|grid| + 2) per subset and kind; the T = 3 subset all reused
            grid = len(m[s]["one_epoch"]["alpha_grid"])
            calls = 2 * (3 * (grid + 2) * 2 + 2 * 2 * (grid + 2))
            ev = m[s]["evaluations"]
            assert ev["passes"] + ev["reused"] == calls and ev["reused"] >= 2 * 3 * (grid + 2)
        entry = summary["optimizers"][opt]
        d = [100 * (m[s]["one_epoch"]["alpha_val"]["mean_accuracy"] - m[s]["converged"]["alpha_val"]["mean_accuracy"])
             for s in (0, 1)]
        diff = entry["all_tasks"]["difference_points"]
        assert diff["values"] == pytest.approx(d, rel=1e-12, abs=1e-12)
        half = T975_DF1 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)        # sd of two values |a - b| / sqrt(2)
        mean = (d[0] + d[1]) / 2
        assert diff["ci95"] == [pytest.approx(mean - half, abs=1e-9), pytest.approx(mean + half, abs=1e-9)]
        assert entry["all_tasks"]["verdict"] == verdict(diff["ci95"], 1.5)
        assert set(entry["sweep"]) == {"2", "3"}
        assert entry["sweep"]["3"]["difference_points"]["values"] == pytest.approx(d, rel=1e-12, abs=1e-12)
        t2 = [sum(r["alpha_val"]["mean_accuracy"] for r in m[s]["sweep"]["by_size"]["2"]["one_epoch"]) / 2
              for s in (0, 1)]
        assert entry["sweep"]["2"]["one_epoch"]["mean_accuracy"]["values"] == pytest.approx(t2, rel=1e-12)
    assert vision.main(["report", "--results", str(res)]) == 0
    out = capsys.readouterr().out
    assert "seed 0 (" in out and "seed 1 (" in out and "E3 merge (gd, seed 1)" in out and "T=2 (2 subsets)" in out
    assert "E3 over seeds [0, 1]" in out
