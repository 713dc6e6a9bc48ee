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
