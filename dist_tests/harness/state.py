"""Run-wide state the runner sets before tests start (parent process only).

Kept apart from the modules that import torch: configure() fills it before torch loads.
"""

import time

from dist_tests.harness.known_failures import KnownFailures
from dist_tests.harness.settings import Settings


class Run:
    settings: Settings | None = None
    known: KnownFailures = KnownFailures.empty()
    skip_all_reason: str | None = None
    filter_text: str = ""  # the --test_filter (or -k) words as given
    selected_total: int = -1  # tests the filter selects across all shards; -1 = no filter
    started: float = time.monotonic()


RUN = Run()
