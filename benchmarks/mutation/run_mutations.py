"""Mutation harness for the bound checks: weaken tvtheory/bounds.py one named way at a time and see whether
``pytest verification/`` notices.

For each mutation the repository is copied to a scratch folder under /tmp (without .venv, runs/, .git and
caches), ONE textual replacement is applied to the copy's tvtheory/bounds.py (the text to replace must occur
exactly as often as the mutation says, so a refactored bounds.py makes the harness stop rather than test
nothing), and pytest runs in the copy with PYTHONPATH set to it, so the copy's tvtheory is imported (checked
once: the editable install points at the working tree). Two stages:

1. the fast pinned checks (verification/test_t4_curvature.py: the nearly attained cases and the recursion
   against its statement; verification/test_t2c_bound.py: the attained T2(c) case), all of them, to name
   every test that kills the mutant;
2. only if stage 1 passed: ``pytest -x -q verification/`` (every theorem check, the random networks too).

A mutant is "killed" when a stage fails. The floating-point slacks are rounding safeguards: removing one
leaves a bound that is violated only within rounding, so surviving them is expected, not a weakness.

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
TARGET = Path("tvtheory/bounds.py")
IGNORED = (".venv", "runs", ".git", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache",
           "*.egg-info")
STAGE1 = ["verification/test_t4_curvature.py", "verification/test_t2c_bound.py", "-k",
          "nearly_attained or spec_recursion or bound_attained"]
STAGE2 = ["-x", "verification/"]

_Q = "Q = 2 * c1 * J_prev + s_l * c2 * J_prev ** 2 + s_l * c1 * Q"
_J = "J = torch.sqrt(e ** 2 + (c1 * s_l) ** 2 * J_prev ** 2)"
_A = "a = act.sigma0 * math.sqrt(widths[l]) + c1 * (s_l * a + b_l)"


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in tvtheory/bounds.py; ``old`` must occur ``count`` times there."""

    name: str
    old: str
    new: str
    rounding_only: bool = False      # a floating-point safeguard: surviving it is expected
    count: int = 1


MUTATIONS = (
    Mutation("Q: constant 2 -> 1.5", _Q, _Q.replace("2 * c1", "1.5 * c1")),
    Mutation("Q: constant 2 -> 1", _Q, _Q.replace("2 * c1", "1 * c1")),
    Mutation("Q: c1 -> 0.9 c1", _Q, _Q.replace("* c1 *", "* (0.9 * c1) *")),
    Mutation("Q: c1 -> 0.5 c1", _Q, _Q.replace("* c1 *", "* (0.5 * c1) *")),
    Mutation("J: c1 -> 0.9 c1", _J, _J.replace("(c1 * s_l)", "(0.9 * c1 * s_l)")),
    Mutation("J: c1 -> 0.5 c1", _J, _J.replace("(c1 * s_l)", "(0.5 * c1 * s_l)")),
    Mutation("a: c1 -> 0.9 c1", _A, _A.replace("+ c1 *", "+ 0.9 * c1 *")),
    Mutation("a: c1 -> 0.5 c1", _A, _A.replace("+ c1 *", "+ 0.5 * c1 *")),
    Mutation("Q: c2 -> 0", _Q, _Q.replace("c2 *", "0.0 * c2 *")),
    Mutation("Q: c2 -> 0.5 c2", _Q, _Q.replace("c2 *", "0.5 * c2 *")),
    Mutation("Q: s_l -> 0.9 s_l", _Q, _Q.replace("s_l *", "0.9 * s_l *")),
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
    Mutation("fp: recursion slack 16 (L + 4) u removed", "slack = 1.0 + 16 * (L + 4) * _U64", "slack = 1.0",
             rounding_only=True),
    Mutation("fp: SVD slack 64 n u of s_l removed", "slack = 1.0 + 64 * max(w.shape) * _U64", "slack = 1.0",
             rounding_only=True),
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
        raise SystemExit(f"error: mutation {mutation.name!r}: {mutation.old!r} occurs {found} times in {TARGET} "
                         f"(expected {mutation.count}); update the mutation to the current code")
    return source.replace(mutation.old, mutation.new)


def run(mutations: list[Mutation]) -> list[Outcome]:
    """Baseline first (it must pass stage 1), then each mutant in a fresh copy of bounds.py."""
    original = (ROOT / TARGET).read_text()
    for m in mutations:                    # refuse stale mutations before spending any time
        apply(original, m)
    with tempfile.TemporaryDirectory(prefix="tvtheory-mutation-") as scratch:
        copy = Path(scratch) / "repo"
        copy_repository(copy)
        print(f"scratch copy: {copy}; tvtheory imported from {check_imports_copy(copy)}", flush=True)
        passed, failed = run_pytest(copy, STAGE1)
        if not passed:
            raise SystemExit(f"error: the unmutated code fails stage 1 ({', '.join(failed)}); fix that first")
        outcomes = []
        for m in mutations:
            start = time.perf_counter()
            (copy / TARGET).write_text(apply(original, m))
            stage, (passed, failed) = 1, run_pytest(copy, STAGE1)
            if passed:
                stage, (passed, failed) = 2, run_pytest(copy, STAGE2)
            (copy / TARGET).write_text(original)
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
            family = param.split("[", 1)[0]
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
