"""Unit tests of the command line ``python -m tvtheory.bound`` (tvtheory.cli.main): the report, and every user
error refused before any computation as one line on stderr with exit status 2 (130 for an interrupt)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import tvtheory.cli as bound
from tvtheory.bounds import T4_NOTE
from tvtheory.certificate import T6_NOTE
from tvtheory.cli import main, parse_vit, parse_widths
from tvtheory.io import versions

SMALL = ["--data", "synthetic", "--samples", "64", "--widths", "5,8,3", "--epochs", "3", "--no-progress"]
HEADER = ["k", "||tau_k||", "||1st order||", "||E_k||", "||E_k - 2nd||", "bound", "bound/||E_k||",
          "bound (T4)", "cos(tau_k,-g)", "eta*M*k"]
VERDICTS = ["T1", "C1", "T2", "T3", "T4", "T5", "T6", "optimizer"]
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
    table = lines[lines.index(header) + 1:]
    table = table[:table.index("")]                                   # the per-epoch table ends at a blank line
    rows = [line.split() for line in table]
    assert [r[0] for r in rows] == ["1", "2", "3"] and all(len(r) == len(HEADER) for r in rows)
    t5 = lines[next(i for i, line in enumerate(lines) if line.startswith("T5, ATM")) + 2:]
    assert [line.split()[0] for line in t5[:t5.index("")]] == ["1", "2", "3"]   # --atm-rounds 3 (default)
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
    assert report["versions"] == versions() and {"tvtheory", "torch"} <= set(report["versions"])
    assert [e["k"] for e in report["epochs"]] == [1, 2, 3]
    for e in report["epochs"]:
        assert {"k", "tau_norm", "first_order_norm", "error_norm", "second_order_residual_norm", "bound"} <= set(e)
        assert all(isinstance(e[key], (int, float)) for key in ("tau_norm", "first_order_norm", "error_norm",
                                                                "second_order_residual_norm", "bound"))
    assert report["epochs"][0]["bound"] == 0.0
    assert all(e["error_norm"] <= e["bound"] + e["rounding_allowance"] for e in report["epochs"][1:])
    # T6's M_s is never above T4's (the certificate is min(T4, grid + remainder)), so neither are its bounds
    assert all(e["bound"] <= e["bound_t4"] and e["dominance"] <= e["dominance_t4"] for e in report["epochs"])
    cert = report["certificate"]
    assert cert["name"] == "T6" and cert["delta"] == 1e-9 and 0 < cert["table_failure"] <= cert["delta"] / 4
    t6 = report["verdicts"]["T6"]
    assert t6["holds"] and all(p["certificate"] >= p["hessian_norm"] for p in t6["points"])
    assert 0 < t6["failure"] <= cert["delta"] / 4 and t6["margin"] == min(p["tightness"] for p in t6["points"])
    assert set(report["verdicts"]) == set(VERDICTS)
    for name, v in report["verdicts"].items():
        assert {"holds", "margin"} <= set(v), name
        assert v["holds"] is True and isinstance(v["margin"], (int, float))


@pytest.fixture
def no_compute(monkeypatch):
    """Bad input must be refused before any computation: running the optimizer fails the test."""
    def computed(*args, **kwargs):
        raise AssertionError("the run started before the input was validated")

    monkeypatch.setattr(bound, "run_optimizer", computed)


def _error(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""                      # no table for bad input
    assert captured.err.startswith("error: ")
    assert captured.err.count("\n") == 1, captured.err      # one line, no traceback
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
    (["--weight-decay", "nan"], r"--weight-decay must be a finite number >= 0, got nan"),
    (["--weight-decay", "inf"], r"--weight-decay must be a finite number >= 0, got inf"),
    (["--weight-decay=-0.1"], r"--weight-decay must be a finite number >= 0, got -0.1"),
    (["--momentum", "0.5"], r"--momentum applies to --optimizer momentum only \(this run uses --optimizer gd\); "
                            r"drop --momentum or use --optimizer momentum"),
    (["--optimizer", "adam", "--momentum", "0.9"], r"--momentum applies to --optimizer momentum only \(this run "
                                                   r"uses --optimizer adam\)"),
    (["--optimizer", "momentum", "--momentum", "nan"], r"--momentum must be in \[0, 1\), got nan"),
    (["--optimizer", "momentum", "--momentum", "inf"], r"--momentum must be in \[0, 1\), got inf"),
    (["--optimizer", "momentum", "--momentum", "1"], r"--momentum must be in \[0, 1\), got 1.0"),
    (["--tasks", "0"], r"--tasks must be >= 1 \(T tasks for C1\), got 0"),
    (["--tasks", "4"], r"--tasks 4 exceeds the 3 classes of --data synthetic .*; use --tasks 1\.\.3"),
    (["--samples", "3"], r"--samples 3 is too few: --batches 1, T3's 4 batches and --tasks 2 need at least 4 "
                         r"examples; use --samples >= 4"),
    (["--samples", "16", "--optimizer", "sgd", "--batches", "32"], r"--samples 16 is too few: --batches 32, .* "
                                                                   r"use --samples >= 32"),
    (["--samples", "4", "--tasks", "3", "--seed", "4"], r"--tasks 3: task 2 \(labels congruent to 2 mod 3\) has no "
                                                        r"examples in 'synthetic'; use fewer tasks or more data$"),
    (["--seed", str(2 ** 64)], r"--seed must be in -9223372036854775808\.\.18446744073709551615"),
])
def test_bad_input_exits_2_with_a_clear_message(extra, message, capsys, no_compute):
    err = _error(SMALL + extra, capsys)
    assert re.search(message, err.strip()), err


@pytest.mark.parametrize("extra, message", [
    (["--samples", "100"], r"--samples sets the size of --data synthetic; --data digits has a fixed size: drop "
                           r"--samples or use --data synthetic"),
    (["--tasks", "11"], r"--tasks 11 exceeds the 10 classes of --data digits .*; use --tasks 1\.\.10"),
    (["--optimizer", "sgd", "--batches", "2000"], r"--batches 2000 \(T3: 2000 batches\) needs at least 2000 "
                                                  r"examples, but --data digits has 1797; use fewer --batches"),
])
def test_bad_input_for_digits_exits_2_before_computing(extra, message, capsys, no_compute):
    err = _error(["--data", "digits", "--epochs", "1", "--no-progress"] + extra, capsys)
    assert re.search(message, err), err


@pytest.mark.parametrize("widths, message", [
    ("5,8,10", r"the data has 64 input features but the MLP's first width is 5 \(widths \(5, 8, 10\)\): .*; "
               r"use --widths 64,8,10$"),
    ("64,8,3", r"the data has 10 classes but the MLP's last width is 3 \(widths \(64, 8, 3\)\): .*; "
               r"use --widths 64,8,10$"),
    ("5,3", r"the data has 64 input features .*; use --widths 64,10$"),
])
def test_widths_not_matching_the_data(widths, message, capsys, no_compute):
    """The MLP's own check decides (its message, in the model's terms), the CLI adds the flag to use."""
    err = _error(["--data", "digits", "--widths", widths, "--epochs", "1", "--no-progress"], capsys)
    assert re.search(message, err.strip()), err


def test_json_to_a_directory_is_refused_before_computing(tmp_path, capsys, no_compute):
    err = _error(SMALL + ["--json", str(tmp_path)], capsys)
    assert f"error: --json {tmp_path} is a directory; give a file path in it, like --json {tmp_path / 'report.json'}" \
        in err


@pytest.mark.parametrize("folder, what", [("missing", "does not exist"), ("a_file", "is not a folder")])
def test_json_in_a_missing_folder_or_under_a_file_is_refused_before_computing(tmp_path, capsys, no_compute, folder,
                                                                             what):
    (tmp_path / "a_file").write_text("")
    path = tmp_path / folder / "report.json"
    err = _error(SMALL + ["--json", str(path)], capsys)
    assert f"--json {path}: the folder {tmp_path / folder} {what}; create it first or choose a path in an existing " \
           "folder" in err
    assert not (tmp_path / "missing").exists()


def test_json_in_an_unwritable_folder_is_refused_before_computing(tmp_path, capsys, no_compute, monkeypatch):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):       # root writes anyway: make the write probe meet the refusal it would get
        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(bound.tempfile, "TemporaryFile", refused)
    try:
        err = _error(SMALL + ["--json", str(folder / "report.json")], capsys)
    finally:
        folder.chmod(0o700)
    assert f"--json {folder / 'report.json'}: cannot create a file in {folder} (Permission denied); choose a " \
           "writable folder" in err
    assert list(folder.iterdir()) == []


def test_a_failed_json_write_at_the_end_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """The folder was writable when checked but the write fails at the end (e.g. the disk filled up)."""
    def full(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bound, "run", lambda args: FAKE_REPORT)
    monkeypatch.setattr(bound, "write_json_atomic", full)
    path = tmp_path / "report.json"
    assert main(["--no-progress", "--json", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: could not write --json {path}: No space left on device\n"


def test_keyboard_interrupt_prints_interrupted_and_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bound, "run", interrupted)
    assert main(["--no-progress"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted\n" and captured.out == ""


def test_sigint_during_a_run_in_a_subprocess_exits_130_without_a_traceback():
    """A real Ctrl-C: SIGINT once the progress bar shows (the run has started), then "interrupted", status 130."""
    # the child starts with SIGINT at its default disposition: a parent that ignores SIGINT (a background job of a
    # non-interactive shell) would pass SIG_IGN on, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-m", "tvtheory.bound", "--epochs", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen, deadline = b"", time.monotonic() + 120
        while b"tvtheory.bound" not in seen and time.monotonic() < deadline:
            seen += os.read(proc.stderr.fileno(), 256)
        assert b"tvtheory.bound" in seen, seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = (seen + err).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("interrupted"), err
    assert out == b""


def test_a_library_value_error_is_one_line_exit_2(monkeypatch, capsys):
    def refused(args):
        raise ValueError("T2 check (5 epochs of full-batch GD): something the library refused; do this instead")

    monkeypatch.setattr(bound, "run", refused)
    err = _error(["--no-progress"], capsys)
    assert err == "error: T2 check (5 epochs of full-batch GD): something the library refused; do this instead\n"


def test_weight_decay_applies_to_every_optimizer():
    """--weight-decay is not refused for any optimizer: each of them takes coupled L2 decay (torch.optim)."""
    for name in ("gd", "sgd", "momentum", "adam"):
        args = bound.build_parser().parse_args(SMALL + ["--optimizer", name, "--weight-decay", "0.01"]
                                               + (["--batches", "2"] if name == "sgd" else []))
        spec = bound.validate(args)
        assert spec.weight_decay == 0.01 and spec.name == name


def test_defaults_that_depend_on_other_flags_are_recorded():
    args = bound.build_parser().parse_args(["--data", "synthetic", "--widths", "5,8,3"])
    bound.validate(args)
    assert args.momentum == bound.DEFAULT_MOMENTUM and args.samples == bound.DEFAULT_SAMPLES
    args = bound.build_parser().parse_args(["--optimizer", "momentum", "--momentum", "0.5"])
    assert bound.validate(args).momentum == 0.5


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
    for name in ("T2", "T3", "T4", "T6"):
        assert re.search(rf"^\s*{name}: n/a\s+not applicable: relu is not C\^2", out, re.M), name
    assert re.search(r"^\s*optimizer: holds\s", out, re.M)
    assert "||H(theta_0)||_2" not in out


FAKE_REPORT = {
    "config": {"arch": "mlp", "widths": [2, 2], "num_params": 6, "activation": "tanh", "loss": "ce",
               "data": "synthetic", "num_examples": 4, "optimizer": "gd", "lr": 0.1, "epochs": 1,
               "num_batches": 1, "dtype": "float64", "seed": 0},
    "hessian_norm_theta0": None, "epochs": [],
    "verdicts": {"T1": {"holds": True, "message": "ok"}, "T2": {"holds": None, "message": "n/a"},
                 "T4": {"holds": False, "message": "bound < ||H||"}},
    "wall_time_s": 0.0,
}


def test_a_failing_statement_exits_1(monkeypatch, capsys):
    """Exit status 1 when an applicable statement fails (a report with T4 failing, the rest n/a)."""
    monkeypatch.setattr(bound, "run", lambda args: FAKE_REPORT)
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
    table = lines[next(i for i, line in enumerate(lines) if "||tau_k||" in line) + 1:]
    rows = [line.split() for line in table[:table.index("")]]
    assert [r[0] for r in rows] == ["1", "2", "3"] and all(len(r) == len(HEADER) for r in rows)
    assert all(r[5] == r[6] == r[7] == r[9] == "n/a" for r in rows)    # bound, bound/||E_k||, T4's, eta*M*k
    assert all(r[4] != "n/a" for r in rows)                           # the second-order term is measured
    for name in ("T1", "C1", "T2", "T3", "T5", "optimizer"):
        assert re.search(rf"^\s*{name}: holds\s", out, re.M), name
    assert "(b) n/a: no T4 bound M for this network" in out                 # T5(a) alone is judged
    assert re.search(r"^\s*T2: holds\s+\(c\) n/a: no T4 bound M_j for this network; \(a\) slope", out, re.M)
    assert f"       T4: n/a    {T4_NOTE}" in lines
    assert f"       T6: n/a    {T6_NOTE}" in lines
    assert "(no rigorous M for this network: T4 and T6 are n/a)" in out


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
    assert all(e["bound"] is None and e["dominance"] is None and e["rounding_allowance"] > 0
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
def test_bad_vit_input_exits_2_with_a_clear_message(extra, message, capsys, no_compute):
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
