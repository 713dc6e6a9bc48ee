"""Unit tests of the command line ``python -m tvtheory.bound`` (tvtheory.bound.main)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest

import tvtheory.cli as bound
from tvtheory.bounds import T4_NOTE
from tvtheory.cli import main, parse_vit, parse_widths

SMALL = ["--data", "synthetic", "--samples", "64", "--widths", "5,8,3", "--epochs", "3", "--no-progress"]
HEADER = ["k", "||tau_k||", "||1st order||", "||E_k||", "||E_k - 2nd||", "bound", "bound/||E_k||",
          "cos(tau_k,-g)", "eta*M*k"]
VERDICTS = ["T1", "C1", "T2", "T3", "T4", "optimizer"]
VIT_SMALL = ["--arch", "vit", "--data", "synthetic", "--samples", "64", "--epochs", "3", "--no-progress"]


def _run(argv):
    """main(argv) with stdout and stderr captured (usable from a module-scoped fixture)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "report.json"
    code, out, err = _run(SMALL + ["--json", str(path)])
    return code, out, err, path


def test_small_run_exits_0_and_prints_the_table_and_verdicts(small_run):
    code, out, err, path = small_run
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("tvtheory.bound: mlp widths 5,8,3 (75 parameters), tanh, ce loss, synthetic (N = 64), "
                               "gd lr 0.1, 3 epochs x 1 batches, float64, seed 0")
    header = next(line for line in lines if "||tau_k||" in line)
    assert header.split() == " ".join(HEADER).split()
    rows = [line.split() for line in lines if re.match(r"^\s+[123]\s", line)]
    assert [r[0] for r in rows] == ["1", "2", "3"] and all(len(r) == len(HEADER) for r in rows)
    for name in VERDICTS:
        assert re.search(rf"^\s*{name}: holds\s", out, re.M), name
    assert f"wrote {path}" in out


def test_json_schema(small_run):
    code, out, err, path = small_run
    report = json.loads(path.read_text())
    assert {"config", "versions", "epochs", "verdicts"} <= set(report)
    config = report["config"]
    assert config["widths"] == [5, 8, 3] and config["epochs"] == 3 and config["data"] == "synthetic"
    assert config["num_params"] == 75 and config["num_examples"] == 64 and config["num_batches"] == 1
    assert "json" not in config and "no_progress" not in config
    assert {"tvtheory", "python", "torch", "numpy", "scipy", "platform"} <= set(report["versions"])
    assert [e["k"] for e in report["epochs"]] == [1, 2, 3]
    for e in report["epochs"]:
        assert {"k", "tau_norm", "first_order_norm", "error_norm", "second_order_residual_norm", "bound"} <= set(e)
        assert all(isinstance(e[key], (int, float)) for key in ("tau_norm", "first_order_norm", "error_norm",
                                                                "second_order_residual_norm", "bound"))
    assert report["epochs"][0]["bound"] == 0.0
    assert all(e["error_norm"] <= e["bound"] + e["rounding_allowance"] for e in report["epochs"][1:])
    assert set(report["verdicts"]) == set(VERDICTS)
    for name, v in report["verdicts"].items():
        assert {"holds", "margin"} <= set(v), name
        assert v["holds"] is True and isinstance(v["margin"], (int, float))


def _error(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""                      # no table for bad input
    assert captured.err.startswith("error: ")
    return captured.err


@pytest.mark.parametrize("extra, message", [
    (["--arch", "cnn"], r"unknown architecture 'cnn'; known architectures: mlp, vit"),
    (["--vit", "16,1,2,32"], r"--vit sets the size of a ViT; with --arch mlp use --widths \(or use --arch vit\)"),
    (["--activation", "swish"], r"unknown activation 'swish'; known activations: gelu, relu, sigmoid, silu, "
                                r"softplus, tanh"),
    (["--optimizer", "gd", "--batches", "4"], r"--optimizer gd is full-batch gradient descent; use --optimizer sgd "
                                              r"with --batches > 1"),
    (["--optimizer", "rmsprop"], r"unknown optimizer 'rmsprop'; known optimizers: gd, sgd, momentum, adam"),
    (["--loss", "hinge"], r"unknown loss 'hinge'"),
    (["--lr", "0"], r"--lr must be a positive finite number, got 0.0"),
    (["--lr=-0.1"], r"--lr must be a positive finite number, got -0.1"),
    (["--lr", "nan"], r"--lr must be a positive finite number, got nan"),
    (["--lr", "inf"], r"--lr must be a positive finite number, got inf"),
    (["--epochs", "0"], r"--epochs must be >= 1"),
    (["--widths", "5,x,3"], r"--widths must be comma-separated integers like 64,32,10, got '5,x,3'"),
    (["--widths", "5"], r"--widths needs an input and an output size, all >= 1, got '5'"),
    (["--widths", "5,0,3"], r"--widths needs an input and an output size, all >= 1, got '5,0,3'"),
    (["--dtype", "float16"], r"unknown dtype 'float16'"),
    (["--data", "mnist"], r"unknown data 'mnist'"),
])
def test_bad_input_exits_2_with_a_clear_message(extra, message, capsys):
    err = _error(SMALL + extra, capsys)
    assert re.search(message, err), err


@pytest.mark.parametrize("widths, message", [
    ("5,8,10", r"the data has 64 input features but the first width is 5: use --widths 64,\.\.\.,10"),
    ("64,8,3", r"the data has 10 classes but the last width is 3: use --widths 64,\.\.\.,10"),
])
def test_widths_not_matching_the_data(widths, message, capsys):
    err = _error(["--data", "digits", "--widths", widths, "--epochs", "1", "--no-progress"], capsys)
    assert re.search(message, err), err


def test_diverging_learning_rate_names_the_epoch(capsys):
    err = _error(SMALL + ["--lr", "1e6"], capsys)
    assert re.search(r"the loss exploded from \S+ to \S+ in epoch 2 \(step 1 of 1\) with learning rate 1e\+06: "
                     r"the run diverges; lower the learning rate", err), err


def test_argparse_type_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(SMALL + ["--lr", "fast"])
    assert exc.value.code == 2
    assert "invalid float value: 'fast'" in capsys.readouterr().err


def test_relu_run_exits_0_with_curvature_statements_not_applicable():
    code, out, err = _run(SMALL[:-3] + ["--epochs", "2", "--activation", "relu", "--no-progress"])
    assert code == 0, err
    assert re.search(r"^\s*T1: holds\s", out, re.M)
    assert re.search(r"^\s*C1: holds\s", out, re.M)
    for name in ("T2", "T3", "T4"):
        assert re.search(rf"^\s*{name}: n/a\s+not applicable: relu is not C\^2", out, re.M), name
    assert re.search(r"^\s*optimizer: holds\s", out, re.M)
    assert "||H(theta_0)||_2" not in out


def test_a_failing_statement_exits_1(monkeypatch, capsys):
    """Exit status 1 when an applicable statement fails (a report with T4 failing, the rest n/a)."""
    report = {
        "config": {"arch": "mlp", "widths": [2, 2], "num_params": 6, "activation": "tanh", "loss": "ce",
                   "data": "synthetic", "num_examples": 4, "optimizer": "gd", "lr": 0.1, "epochs": 1,
                   "num_batches": 1, "dtype": "float64", "seed": 0},
        "hessian_norm_theta0": None, "epochs": [],
        "verdicts": {"T1": {"holds": True, "message": "ok"}, "T2": {"holds": None, "message": "n/a"},
                     "T4": {"holds": False, "message": "bound < ||H||"}},
        "wall_time_s": 0.0,
    }
    monkeypatch.setattr(bound, "run", lambda args: report)
    assert main(["--no-progress"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^\s*T4: FAILS\s+bound < \|\|H\|\|", out, re.M)
    assert re.search(r"^\s*T2: n/a", out, re.M)


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """The default ViT (16,1,2,32, P = 2794) on 64 synthetic 1x8x8 images, 3 epochs."""
    path = tmp_path_factory.mktemp("cli") / "vit.json"
    code, out, err = _run(VIT_SMALL + ["--json", str(path)])
    return code, out, err, path


def test_vit_run_exits_0_with_every_applicable_verdict_holding_and_t4_not_applicable(vit_run):
    code, out, err, path = vit_run
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("tvtheory.bound: vit dim,depth,heads,mlp_dim 16,1,2,32 on 1x8x8 images in 4x4 patches "
                        "(2794 parameters), gelu, ce loss, synthetic (N = 64), gd lr 0.1, 3 epochs x 1 batches, "
                        "float64, seed 0")
    rows = [line.split() for line in lines if re.match(r"^\s+[123]\s", line)]
    assert [r[0] for r in rows] == ["1", "2", "3"] and all(len(r) == len(HEADER) for r in rows)
    assert all(r[5] == r[6] == r[8] == "n/a" for r in rows)            # bound, bound/||E_k||, eta*M*k
    assert all(r[4] != "n/a" for r in rows)                           # the second-order term is measured
    for name in ("T1", "C1", "T2", "T3", "optimizer"):
        assert re.search(rf"^\s*{name}: holds\s", out, re.M), name
    assert re.search(r"^\s*T2: holds\s+\(c\) n/a: no T4 bound M_j for this network; \(a\) slope", out, re.M)
    assert f"       T4: n/a    {T4_NOTE}" in lines
    assert "(no rigorous M for this network: T4 is n/a)" in out


def test_vit_json_has_the_schema_of_the_mlp_report(small_run, vit_run):
    mlp, vit = (json.loads(run[3].read_text()) for run in (small_run, vit_run))
    assert set(vit) == set(mlp) and set(vit["config"]) == set(mlp["config"])
    assert [set(e) for e in vit["epochs"]] == [set(e) for e in mlp["epochs"]]
    assert set(vit["verdicts"]) == set(mlp["verdicts"]) == set(VERDICTS)
    for name in ("T1", "C1", "T2", "T3", "optimizer"):
        assert set(vit["verdicts"][name]) == set(mlp["verdicts"][name]), name
        assert vit["verdicts"][name]["holds"] is True and isinstance(vit["verdicts"][name]["margin"], float), name
    c = vit["config"]
    assert c["arch"] == "vit" and c["vit"] == [16, 1, 2, 32] and c["widths"] is None and c["activation"] == "gelu"
    assert c["num_params"] == 2794 and c["num_examples"] == 64
    assert mlp["config"]["vit"] is None
    assert vit["verdicts"]["T4"] == {"holds": None, "applicable": False, "margin": None, "message": T4_NOTE}
    for name in ("T2", "T3"):   # without a bound, the margin is the remainder slope
        v = vit["verdicts"][name]
        assert v["bound_holds"] is None and v["margin"] == v["slope"]["slope"] > 2.7
    assert all(e["bound"] is None and e["dominance"] is None and e["rounding_allowance"] is None
               for e in vit["epochs"])
    assert vit["hessian_norm_theta0"] > 0 and vit["measured_dominance"] == 0.1 * vit["hessian_norm_theta0"] * 3


@pytest.mark.parametrize("extra, message", [
    (["--widths", "64,32,10"], r"--widths sets the layer sizes of an MLP; with --arch vit use --vit "
                               r"dim,depth,heads,mlp_dim"),
    (["--activation", "relu"], r"--activation relu applies to --arch mlp only: the ViT uses exact \(erf\) GELU, "
                               r"which is C\^2; drop --activation"),
    (["--vit", "16,1,3,32"], r"--vit: dim 16 must be a multiple of heads 3"),
    (["--vit", "16,1,2"], r"--vit needs 4 comma-separated integers dim,depth,heads,mlp_dim, all >= 1, like "
                          r"16,1,2,32, got '16,1,2'"),
    (["--vit", "16,x,2,32"], r"--vit needs 4 comma-separated integers .* got '16,x,2,32'"),
    (["--vit", "16,0,2,32"], r"--vit needs 4 comma-separated integers .* got '16,0,2,32'"),
])
def test_bad_vit_input_exits_2_with_a_clear_message(extra, message, capsys):
    err = _error(VIT_SMALL + extra, capsys)
    assert re.search(message, err), err


def test_parse_vit():
    assert parse_vit("16,1,2,32") == {"dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}


def test_parse_widths():
    assert parse_widths("64,32,10") == (64, 32, 10)
    assert parse_widths(" 4 , 3") == (4, 3)


def test_help_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "tvtheory.bound", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m tvtheory.bound")
    for option in ("--arch", "--widths", "--vit", "--activation", "--loss", "--lr", "--epochs", "--batches",
                   "--optimizer", "--json"):
        assert option in proc.stdout
