"""Run-wide state the runner sets before tests start (parent process only).

Kept apart from the modules that import torch: configure() fills it before torch loads.
"""

import sys
import time

from dist_tests.harness.gpu_leases import Lease
from dist_tests.harness.known_failures import KnownFailures
from dist_tests.harness.settings import Settings
from dist_tests.harness.shared import FALLBACK_PREFIX


class Run:
    settings: Settings | None = None
    known: KnownFailures = KnownFailures.empty()
    excluded: KnownFailures = KnownFailures.empty()  # the line's exclusion list: tests that never start here
    skip_all_reason: str | None = None
    filter_text: str = ""  # the --test_filter (or -k) words as given
    selected_total: int = -1  # tests the filter selects across all shards; -1 = no filter
    started: float = time.monotonic()
    gpu_lease: Lease | None = None  # the devices this run holds (a class with devices: GPU targets)
    # The devices the lease could choose from, and who counted them (what a class without a torch module goes by).
    devices_counted: tuple[int, str] | None = None
    start_method: str = "spawn"  # how ranks start now: the settings' method until a fallback
    start_method_fallback: str | None = None  # why the run left the forkserver for spawn
    network_shared: bool = False  # a CPU target's action shares the Bazel server's network (network.py)

    def fall_back_to_spawn(self, reason: str) -> None:
        """Starts the rest of the run's ranks with spawn, saying why once (and in the closing line)."""
        if self.start_method_fallback is None:
            print(f"dist_tests: warning: the forkserver cannot be used: {reason}. The rest of this run starts its "
                  "ranks with spawn, upstream's way (slower). --test_env=DIST_TESTS_START_METHOD=forkserver makes "
                  "this an error.", file=sys.stderr, flush=True)
            self.start_method_fallback = reason
        self.start_method = "spawn"

    def start_method_note(self) -> str:
        """The start method in words, for the closing line and the XML."""
        if self.start_method_fallback:
            return f"{FALLBACK_PREFIX}: {self.start_method_fallback})"
        return self.start_method


RUN = Run()

def time_hint() -> str:
    """What to raise when a shard's Bazel timeout is too short for its tests."""
    target = RUN.settings.target if RUN.settings else "this target"
    return (f"raise shard_count or timeout for {target} in DIST_TEST_MATRIX (tools/dist_tests.bzl), "
            "or pass --test_timeout=SECONDS")
