"""Hypothesis profiles for the theorem checks.

- "ci" (the default): derandomized, no deadline, so every run checks the same examples.
- "dev": random examples, no deadline; use HYPOTHESIS_PROFILE=dev to explore new seeds.
Per-test example counts are set with @settings(max_examples=...) in each module.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The checks run many tiny networks: intra-op threads only add contention (and oversubscribe a shared
# 2-core machine badly), so each test process uses one.
import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

_TIGHTNESS = pytest.StashKey[dict]()


@pytest.fixture
def report_tightness(request):
    """report_tightness(name, ratio, terms): record a pinned case's ||hess L||_2 / bound for the summary."""
    table = request.config.stash.setdefault(_TIGHTNESS, {})

    def report(name: str, ratio: float, terms: str) -> None:
        table[name] = (ratio, terms)

    return report


def pytest_terminal_summary(terminalreporter, config):
    """Print the tightness ratios of the pinned T4 cases that ran (verification/tight_cases.py)."""
    table = config.stash.get(_TIGHTNESS, {})
    if table:
        terminalreporter.write_sep("-", "T4 pinned cases: ||hess L||_2 / bound (1 = attained)")
        for name, (ratio, terms) in sorted(table.items()):
            terminalreporter.write_line(f"{name:34s} {ratio:.10f}  tight: {terms}")
