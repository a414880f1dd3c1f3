"""DIST_TESTS_FAULT: a fault injected into a chosen rank's first collective, for debugging a backend.

The runner checks the setting before torch loads (parse_fault); each rank applies it
(ranks.py) before torch's test body runs.
"""

import dataclasses
import fnmatch
import os
import signal
import sys
import time
from typing import Any

# Collectives a fault is injected into: the first one a test calls in the chosen rank.
_FAULT_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "reduce", "gather", "scatter", "barrier", "all_to_all",
                      "reduce_scatter")
FAULT_KINDS = ("kill", "raise", "hang")


class FaultSpecError(ValueError):
    """DIST_TESTS_FAULT is malformed."""


@dataclasses.dataclass(frozen=True)
class Fault:
    """DIST_TESTS_FAULT: which rank fails how, in which tests, on which attempts (None: every attempt)."""

    kind: str
    rank: int
    test_glob: str = "*"
    attempts: frozenset[int] | None = None

    def applies(self, rank: int, test_name: str, attempt: int) -> bool:
        return (rank == self.rank and fnmatch.fnmatchcase(test_name, self.test_glob)
                and (self.attempts is None or attempt in self.attempts))


def parse_fault(spec: str) -> Fault:
    """Parses DIST_TESTS_FAULT=KIND:RANK[:TEST_GLOB[:ATTEMPTS]], for example 'kill:1:test_all_reduce_sum:1'.

    ATTEMPTS is a comma-separated list of attempt numbers (DIST_TESTS_RERUNS): a fault on
    attempt 1 only makes a test that passes on its rerun.
    """
    parts = spec.split(":")
    attempts = parts[3].split(",") if len(parts) == 4 else []
    if (len(parts) not in (2, 3, 4) or parts[0] not in FAULT_KINDS or not parts[1].isdigit()
            or not all(a.isdigit() and int(a) >= 1 for a in attempts)):
        raise FaultSpecError(
            f"DIST_TESTS_FAULT={spec!r} is malformed: use KIND:RANK[:TEST_GLOB[:ATTEMPTS]] with KIND one of "
            f"{', '.join(FAULT_KINDS)} and ATTEMPTS attempt numbers from 1, comma-separated, "
            "for example kill:1:test_all_reduce_sum or raise:0:test_broadcast:1."
        )
    glob = parts[2] if len(parts) >= 3 and parts[2] else "*"
    return Fault(parts[0], int(parts[1]), glob, frozenset(int(a) for a in attempts) if attempts else None)


def inject_fault(kind: str, rank: int) -> None:
    """Makes this rank's first collective call fail the chosen way."""
    import torch.distributed as dist

    def fault(*args: Any, **kwargs: Any) -> None:
        print(f"DIST_TESTS_FAULT: rank {rank} injects '{kind}' into a collective", file=sys.stderr, flush=True)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "raise":
            raise RuntimeError(f"DIST_TESTS_FAULT: injected error in rank {rank}")
        while True:  # "hang": block inside the collective, as a lost peer would
            time.sleep(3600)

    for name in _FAULT_COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, fault)


