"""Run-wide state the runner sets before tests start (parent process only).

Kept apart from the modules that import torch: configure() fills it before torch loads.
"""

import time

from dist_tests.harness.gpu_leases import Lease
from dist_tests.harness.known_failures import KnownFailures
from dist_tests.harness.settings import Settings


class Run:
    settings: Settings | None = None
    known: KnownFailures = KnownFailures.empty()
    skip_all_reason: str | None = None
    filter_text: str = ""  # the --test_filter (or -k) words as given
    selected_total: int = -1  # tests the filter selects across all shards; -1 = no filter
    started: float = time.monotonic()
    gpu_lease: Lease | None = None  # the GPUs this run holds (GPU targets)


RUN = Run()

# Message prefixes of tests that did not pass and did not plainly skip; the build event
# reader (tools/testlogs.py) counts them apart by the same words.
KNOWN_FAILURE_PREFIX = "known failure"
NOT_RUN_PREFIX = "did not run"

# The attempt (1, 2, ...) a test's ranks belong to under DIST_TESTS_RERUNS; DIST_TESTS_FAULT can name attempts.
ATTEMPT_VARIABLE = "DIST_TESTS_ATTEMPT"


def time_hint() -> str:
    """What to raise when a shard's Bazel timeout is too short for its tests."""
    target = RUN.settings.target if RUN.settings else "this target"
    return (f"raise shard_count or timeout for {target} in DIST_TEST_MATRIX (tools/dist_tests.bzl), "
            "or pass --test_timeout=SECONDS")
