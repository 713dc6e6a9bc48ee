"""Mutation harness for the checks: weaken the library one named way at a time and see whether the suite notices.

For each mutation the repository is copied to a scratch folder under /tmp (without .venv, runs/, .git and
caches), ONE textual replacement is applied to the copy's file of that mutation (tvtheory/bounds.py for the T4
recursion, the loss constants, the T2(c)/T3 bound and T6's fourth-derivative bound K4; tvtheory/certificate.py
for T6's point test and segment rule; tvtheory/spectral.py for the certified s_l; tvtheory/fp.py for the T1
model; tvtheory/replay.py for the whole-trajectory optimizer check; tvtheory/atm.py for T5). The text to
replace must occur exactly as often as the mutation says, so a refactored file makes the harness stop rather
than test nothing. pytest runs in the copy with PYTHONPATH set to it, so the copy's tvtheory is imported
(checked once: the editable install points at the working tree). Two stages:

1. the fast pinned checks of that mutation's family (for the bounds: the nearly attained T4 cases, the
   recursion against its statement, the attained T2(c) case, the segment rule on the tight cases and the
   certified spectral norms; for fp and replay: their sharpness and wrong-claim tests; for T6: its theorem
   checks and the unit tests of its pieces), all of them, to name every test that kills the mutant;
2. only if stage 1 passed: ``pytest -x -q verification/`` (every theorem check, the random networks too).

A mutant is "killed" when a stage fails. A mutation marked ``rounding_only`` removes a floating-point
safeguard: the bound it leaves is violated only within rounding, so surviving it is expected, not a weakness
(it is listed, and reported, all the same).

    .venv/bin/python benchmarks/mutation/run_mutations.py                 # all mutations
    .venv/bin/python benchmarks/mutation/run_mutations.py --only c2       # names containing "c2"
    .venv/bin/python benchmarks/mutation/run_mutations.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOUNDS, SPECTRAL, FP, REPLAY, ATM, CERT = (Path(f"tvtheory/{name}.py")
                                           for name in ("bounds", "spectral", "fp", "replay", "atm", "certificate"))
IGNORED = (".venv", "runs", ".git", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache",
           "*.egg-info")
BOUND_TESTS = ("verification/test_t4_curvature.py", "verification/test_t2c_bound.py", "-k",
               "nearly_attained or spec_recursion or bound_attained or cover_the_segment or certified_upper_bounds")
T1_TESTS = ("verification/test_t1_one_step.py", "-k", "sharp or detectable or nearly_attained")
REPLAY_TESTS = ("verification/test_optimizer_replay.py", "tests/test_replay.py")
T5_TESTS = ("verification/test_t5a_atm_exact.py", "verification/test_t5b_atm_gronwall.py")
# T6: the theorem checks, and the unit tests of its pieces where that module exists
T6_TESTS = tuple(p for p in ("verification/test_t6_certificate.py", "tests/test_certificate.py") if (ROOT / p).exists())
STAGE2 = ["-x", "verification/"]

# T4's recursion in bounds._derivative_recursion: D_k(l) = s_l H_k(l-1) + k H_(k-1)(l-1) for k >= 2 (D_2 = Q_l, with
# H_1 = c1 D_1, H_2 = c2 D_1^2 + c1 D_2 from _faa_di_bruno), D_1 = J_l. The Q mutations change D_2 (k == 2) only,
# written out with the weakened constant, so T4 is weakened exactly as before the refactoring (Q_l = 2 c1 J_(l-1)
# + s_l c2 J_(l-1)^2 + s_l c1 Q_(l-1)); T6's D_3, D_4 (K4) change only through D_2, as any change of Q does.
_D = "s_l * h[k] + k * h[k - 1] if k >= 2 else D[1]"
_J = "D[1] = torch.sqrt(e ** 2 + (c1 * s_l) ** 2 * D[1] ** 2)"
_A = "a = act.sigma0 * math.sqrt(widths[l]) + c1 * (s_l * a + b_l)"


def _q(two: float = 2.0, c1: float = 1.0, c2: float = 1.0, s: float = 1.0) -> str:
    """D_2 = s s_l (c2 c2 D_1^2 + c1 c1 D_2) + two c1 c1 D_1 for k == 2 (the other k as they are)."""
    d2 = f"{s} * s_l * ({c2} * c[2] * D[1] ** 2 + {c1} * c[1] * D[2]) + {two} * {c1} * c[1] * D[1]"
    return f"({d2} if k == 2 else s_l * h[k] + k * h[k - 1]) if k >= 2 else D[1]"


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``path``; ``old`` must occur ``count`` times there. ``tests`` is stage 1."""

    name: str
    old: str
    new: str
    rounding_only: bool = False      # a floating-point safeguard: surviving it is expected
    count: int = 1
    path: Path = BOUNDS
    tests: tuple[str, ...] = BOUND_TESTS


def _t5(name: str, old: str, new: str, rounding_only: bool = False) -> Mutation:
    """A mutation of tvtheory/atm.py, judged by the T5 suite."""
    return Mutation(name, old, new, rounding_only, path=ATM, tests=T5_TESTS)


def _t6(name: str, old: str, new: str, path: Path = CERT) -> Mutation:
    """A mutation of T6 (tvtheory/certificate.py, or K4 in tvtheory/bounds.py), judged by the T6 checks."""
    return Mutation(name, old, new, path=path, tests=T6_TESTS)


MUTATIONS = (
    Mutation("Q: constant 2 -> 1.5", _D, _q(two=1.5)),
    Mutation("Q: constant 2 -> 1", _D, _q(two=1.0)),
    Mutation("Q: c1 -> 0.9 c1", _D, _q(c1=0.9)),
    Mutation("Q: c1 -> 0.5 c1", _D, _q(c1=0.5)),
    Mutation("J: c1 -> 0.9 c1", _J, _J.replace("(c1 * s_l)", "(0.9 * c1 * s_l)")),
    Mutation("J: c1 -> 0.5 c1", _J, _J.replace("(c1 * s_l)", "(0.5 * c1 * s_l)")),
    Mutation("a: c1 -> 0.9 c1", _A, _A.replace("+ c1 *", "+ 0.9 * c1 *")),
    Mutation("a: c1 -> 0.5 c1", _A, _A.replace("+ c1 *", "+ 0.5 * c1 *")),
    Mutation("Q: c2 -> 0", _D, _q(c2=0.0)),
    Mutation("Q: c2 -> 0.5 c2", _D, _q(c2=0.5)),
    Mutation("Q: s_l -> 0.9 s_l", _D, _q(s=0.9)),
    Mutation("e_l = sqrt(a^2 + 1) -> a (with biases)", "e = torch.sqrt(a ** 2 + 1.0) if config.bias else a",
             "e = a"),
    Mutation("a: sigma(0) sqrt(n_l) dropped", _A, "a = c1 * (s_l * a + b_l)"),
    Mutation("CE: r halved", "torch.full_like(a, CE_GRADIENT_BOUND)", "torch.full_like(a, CE_GRADIENT_BOUND / 2)"),
    Mutation("MSE: ||y|| dropped from r", "+ torch.linalg.vector_norm(t, dim=1)",
             "+ 0.0 * torch.linalg.vector_norm(t, dim=1)"),
    Mutation("loss curvature lambda halved", "loss.curvature * J ** 2", "0.5 * loss.curvature * J ** 2"),
    Mutation("T2(c)/T3: a-posteriori bound halved", "return lr * sum(m * float", "return 0.5 * lr * sum(m * float"),
    Mutation("T2(c)/T3: segment norms from theta_0 only",
             "norms = norms0.max(layer_norms(model.config, traj.thetas[s]))", "norms = norms0"),
    Mutation("fp: recursion slack 16 (L + 4) u removed", "slack = 1.0 + 16 * (config.depth + 4) * _U64",
             "slack = 1.0", rounding_only=True),
    Mutation("s_l: the eigenvalue estimate instead of its Cholesky certificate",
             "return result(lam + gram_err, \"cholesky\"", "return result(Fraction(theta), \"cholesky\"",
             path=SPECTRAL),
    Mutation("s_l: the 1 x 1 Gram matrix without its rounding error",
             "result(Fraction(float(lower[0, 0])) + gram_err,", "result(Fraction(float(lower[0, 0])),",
             path=SPECTRAL, rounding_only=True),
    Mutation("s_l: the Frobenius fallback without its rounding error",
             "fro = (Fraction(float(flat @ flat)) + m * n * ETA) / (1 - gamma(m * n))",
             "fro = Fraction(float(flat @ flat))", path=SPECTRAL, rounding_only=True),
    Mutation("T1 model: gamma_4 -> gamma_64 on the update path (a permissive model)",
             "return (u * (1 + u) * theta0.detach().double().abs() + gamma(n, u)",
             "return (u * (1 + u) * theta0.detach().double().abs() + gamma(16 * n, u)", path=FP, tests=T1_TESTS),
    Mutation("T1 model: the u |theta_0| term scaled by 64 (a permissive model)",
             "return (u * (1 + u) * theta0.detach().double().abs()",
             "return (64 * u * (1 + u) * theta0.detach().double().abs()", path=FP, tests=T1_TESTS),
    Mutation("replay: the gradient check dropped", "g_ratio = gap / g_model if gap > 0 else 0.0", "g_ratio = 0.0",
             path=REPLAY, tests=REPLAY_TESTS),
    Mutation("replay: weight decay of the claim ignored", "wd = self.spec.weight_decay\n", "wd = 0.0\n",
             path=REPLAY, tests=REPLAY_TESTS),
    Mutation("replay: heavy ball replayed as plain SGD", "new = mu * self.buf + d", "new = d",
             path=REPLAY, tests=REPLAY_TESTS),
    Mutation("replay: the update model 1e6 x permissive", "        ratio = torch.where(r == 0",
             "        model = 1e6 * model\n        ratio = torch.where(r == 0", path=REPLAY, tests=REPLAY_TESTS),
    _t5("(b) Gronwall: product factor (1 + lambda M) dropped",
             "bounds.append((1 + lr * m) * bounds[-1] + injection)", "bounds.append(bounds[-1] + injection)"),
    _t5("(b) alpha sum ||E|| halved (measured bound)",
             "measured.append(alpha * sum(round_.error_norms) + rounding)",
             "measured.append(0.5 * alpha * sum(round_.error_norms) + rounding)"),
    _t5("(b) alpha sum (T2(c) bound + allowance) halved (certified bound)",
             "certified_in.append(alpha * (sum(bounds) + sum(allowances)) + rounding)",
             "certified_in.append(0.5 * alpha * (sum(bounds) + sum(allowances)) + rounding)"),
    _t5("(b) M_r: layer norms of theta^(r) only (inside the segment bound)",
        "norms = layer_norms(config, a).max(layer_norms(config, b))", "norms = layer_norms(config, a)"),
    _t5("(b) M_r: the point theta^(r) only (call site)",
             "segment = multitask_segment_bound(config, objectives, theta, mt.thetas[r])",
             "segment = multitask_segment_bound(config, objectives, theta, theta)"),
    _t5("(b) the factor 1 + lambda M_1 of round 1 dropped (prod over s > r, s != 1)",
             "bounds.append((1 + lr * m) * bounds[-1] + injection)",
             "bounds.append((1 + lr * m if len(bounds) != 2 else 1.0) * bounds[-1] + injection)"),
    _t5("(a) T1 residual of the task steps dropped from the model",
             "return alpha * steps + merge_rounding(theta_next, task_vectors, alpha)",
             "return merge_rounding(theta_next, task_vectors, alpha)"),
    _t5("(a) merge: gamma_{T+1} -> gamma_{T-1} (alpha's cast and product not counted)",
             "alpha * gamma(len(task_vectors) + 1, u) * total",
             "alpha * gamma(max(len(task_vectors) - 1, 1), u) * total",
             rounding_only=True),
    _t5("(a) merge: final addition's u |theta'| dropped",
             "u / (1 - u) * theta_next.detach().double().abs()", "0.0 * theta_next.detach().double().abs()"),
    _t5("(a) subtraction giving v: u |v| dropped",
             "+ u / (1 - u) * update.double().abs()", "+ 0.0 * update.double().abs()", rounding_only=True),
    _t5("(a) whole elementwise model halved",
             "model = iterate_model(theta, theta_next, task_vectors, grads, lr, alpha)",
             "model = 0.5 * iterate_model(theta, theta_next, task_vectors, grads, lr, alpha)"),
    _t5("(a) amplification: multitask step rounding dropped",
        "common = gradient_error + _multitask_step_rounding(mt, r, mt_lr, mt_sum_length)",
             "common = gradient_error", rounding_only=True),
    _t5("(a) amplification: gradient evaluation errors dropped",
             "gradient_error += alpha * eta * gamma(sum_length, u) * sum(norm(g) for g in firsts)",
             "gradient_error += 0.0", rounding_only=True),
    _t6("T6: the (1 + eps) factor dropped from the accepted value",
        "value = level * (1.0 + config.epsilon) * (1.0 + 4 * u)", "value = level * (1.0 + 4 * u)"),
    _t6("T6: the remainder h^2 K4 / 8 dropped from the segment value",
        "value = min(t4, grid_max + remainder)", "value = min(t4, grid_max)"),
    # TAU raised where the test accepts only: the constant itself also sets the degree (chebyshev_failure uses it),
    # so raising the constant is a sound, slower test, not a weakening
    _t6("T6: acceptance threshold TAU raised 1e6x (the failure bound still assumes TAU)",
        "if np.linalg.norm(y) > TAU:", "if np.linalg.norm(y) > 1e6 * TAU:"),
    _t6("T6: sqrt(2 (n - 1) / pi) dropped from chebyshev_failure",
        "return min(1.0, s * math.sqrt(2.0 * (n - 1) / math.pi))", "return min(1.0, s)"),
    _t6("T6: the per-rung share failure_target / max_rungs not divided",
        "per_rung = failure_target / config.max_rungs", "per_rung = failure_target"),
    _t6("T6: K4 with c4 halved", "c[4] * d1 ** 4", "0.5 * c[4] * d1 ** 4", path=BOUNDS),
    _t6("T6: K4's lambda 4 D_1 D_3 term halved", "loss.curvature * (3 * d2 ** 2 + 4 * d1 * d3)",
        "loss.curvature * (3 * d2 ** 2 + 2 * d1 * d3)", path=BOUNDS),
)


@dataclass
class Outcome:
    """What one mutant did: which stage killed it (0: none) and the failing test ids."""

    name: str
    killed: bool
    stage: int
    killed_by: list[str]
    rounding_only: bool
    seconds: float


def copy_repository(dest: Path) -> None:
    """The working tree without the virtualenv, run outputs, git data and caches."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def _env(copy: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("HYPOTHESIS_PROFILE", None)           # the derandomized "ci" profile: the same examples each run
    return env


def check_imports_copy(copy: Path) -> str:
    """tvtheory.__file__ as the copy's interpreter sees it; it must lie in the copy."""
    out = subprocess.run([sys.executable, "-c", "import tvtheory; print(tvtheory.__file__)"], cwd=copy,
                         env=_env(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"error: the copy imports tvtheory from {out}, not from {copy}; the mutants would not be "
                         "tested. Check the editable install (it must not shadow PYTHONPATH).")
    return out


def run_pytest(copy: Path, args: list[str]) -> tuple[bool, list[str]]:
    """Run pytest in the copy; (passed, failing test ids)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *args], cwd=copy,
                          env=_env(copy), capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.MULTILINE)
    if proc.returncode not in (0, 1):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"error: pytest exited with status {proc.returncode} (not a test failure):\n{tail}")
    return proc.returncode == 0, failed


def apply(source: str, mutation: Mutation) -> str:
    """The mutated source; stops if the text to replace is not there exactly ``count`` times."""
    found = source.count(mutation.old)
    if found != mutation.count:
        raise SystemExit(f"error: mutation {mutation.name!r}: {mutation.old!r} occurs {found} times in "
                         f"{mutation.path} (expected {mutation.count}); update the mutation to the current code")
    return source.replace(mutation.old, mutation.new)


def run(mutations: list[Mutation]) -> list[Outcome]:
    """Baseline first (every stage-1 selection must pass unmutated), then each mutant in a fresh copy."""
    originals = {m.path: (ROOT / m.path).read_text() for m in mutations}
    for m in mutations:                    # refuse stale mutations before spending any time
        apply(originals[m.path], m)
    with tempfile.TemporaryDirectory(prefix="tvtheory-mutation-") as scratch:
        copy = Path(scratch) / "repo"
        copy_repository(copy)
        print(f"scratch copy: {copy}; tvtheory imported from {check_imports_copy(copy)}", flush=True)
        for tests in dict.fromkeys(m.tests for m in mutations):
            passed, failed = run_pytest(copy, list(tests))
            if not passed:
                raise SystemExit(f"error: the unmutated code fails stage 1 ({', '.join(failed)}); fix that first")
        outcomes = []
        for m in mutations:
            start = time.perf_counter()
            (copy / m.path).write_text(apply(originals[m.path], m))
            stage, (passed, failed) = 1, run_pytest(copy, list(m.tests))
            if passed:
                stage, (passed, failed) = 2, run_pytest(copy, STAGE2)
            (copy / m.path).write_text(originals[m.path])
            outcome = Outcome(m.name, not passed, stage if not passed else 0, failed, m.rounding_only,
                              round(time.perf_counter() - start, 1))
            verdict = f"killed (stage {outcome.stage}) by {summarise(failed)}" if outcome.killed else "SURVIVED"
            print(f"[{outcome.seconds:6.1f} s] {m.name}: {verdict}", flush=True)
            outcomes.append(outcome)
    return outcomes


def summarise(test_ids: list[str]) -> str:
    """Failing test ids grouped by test function, with the case families and their counts:
    ``test_x[fam[a]], test_x[fam[b]], test_y`` -> ``test_x (fam x2); test_y``."""
    groups: dict[str, dict[str, int]] = {}
    for test_id in test_ids:
        function, _, param = test_id.split("::", 1)[-1].partition("[")
        families = groups.setdefault(function, {})
        if param:
            family = param.rstrip("]").split("[", 1)[0]
            families[family] = families.get(family, 0) + 1
    parts = []
    for function, families in groups.items():
        cases = ", ".join(f"{family} x{count}" for family, count in families.items())
        parts.append(f"{function} ({cases})" if cases else function)
    return "; ".join(parts) or "-"


def table(outcomes: list[Outcome]) -> str:
    """A markdown table: mutation, result, killing tests (grouped)."""
    lines = ["| mutation | result | killed by |", "|---|---|---|"]
    for o in outcomes:
        if o.killed:
            result = f"killed (stage {o.stage})"
        else:
            result = "survived (rounding safeguard: expected)" if o.rounding_only else "**SURVIVED**"
        lines.append(f"| {o.name} | {result} | {summarise(o.killed_by)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the mutations; exit 1 if a mutant that weakens the theorem survived."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run only the mutations whose name contains this text")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this JSON file")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if args.only in m.name]
    if not mutations:
        parser.error(f"no mutation name contains {args.only!r}")
    start = time.perf_counter()
    outcomes = run(mutations)
    print(table(outcomes))
    weak = [o for o in outcomes if not o.killed and not o.rounding_only]
    killable = [o for o in outcomes if not o.rounding_only]
    print(f"mutation score: {len(killable) - len(weak)}/{len(killable)} (rounding safeguards excluded); "
          f"{time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n")
    return 1 if weak else 0


if __name__ == "__main__":
    sys.exit(main())
