"""Shared test set-up: offline hub, one torch thread per process, hypothesis profiles.

Profiles (choose with HYPOTHESIS_PROFILE): ``ci`` (default; >= 100 examples per property), ``dev`` (quick
iteration), ``long`` (thorough local runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py, tests/backbones.py

torch.set_num_threads(1)

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=100, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=20, **_common)
settings.register_profile("long", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Every relay call in the suite checks its adapter's CallPlan.span against the positions tensor (a host sync per
# call that users do not pay; tests/test_compile.py turns it off to check that relay forwards make no sync).
from relaykit.model import RelayCore  # noqa: E402

RelayCore.debug_checks = True
