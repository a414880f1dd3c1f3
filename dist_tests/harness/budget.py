"""The run's time budget: what is left of the shard's Bazel timeout, and what fits in it.

A hung test must fail on its own, with its ranks' stacks, before Bazel kills the shard; a test
that finds too little time left does not start, and the shard fails saying what to raise.
"""

import time

from dist_tests.harness.shared import NOT_RUN_PREFIX
from dist_tests.harness.state import RUN, time_hint


def remaining_budget_s() -> float | None:
    """Seconds left before Bazel kills this test process, or None without a deadline."""
    settings = RUN.settings
    if settings is None or settings.deadline_s is None:
        return None
    return settings.deadline_s - (time.monotonic() - RUN.started)


def _end_margin_s(deadline_s: float) -> float:
    """Room kept before Bazel's deadline for collecting stacks, stopping ranks and writing the XML."""
    return max(10.0, 0.05 * deadline_s)


def _least_test_time_s(deadline_s: float) -> float:
    """The least time a test needs to start and end; with less left it does not start."""
    return max(5.0, 0.05 * deadline_s)


def give_up_waiting_at(deadline_s: float) -> float:
    """When waiting (for GPU leases) is no longer worth it: no test could run after it."""
    return RUN.started + deadline_s - _end_margin_s(deadline_s) - _least_test_time_s(deadline_s)


# torch's own timeout of the tests whose timeout test_timeout_s cut, by test id.
_TORCH_TIMEOUT_WHEN_CUT: dict[str, float] = {}


def test_timeout_s(test_id: str, torch_timeout: int) -> float:
    """The seconds one test may take before its ranks are stopped and it fails.

    DIST_TESTS_PER_TEST_TIMEOUT, when set, is used as given. Otherwise torch's own timeout,
    cut so that a hung test fails on its own, with its ranks' stacks, before Bazel's
    TEST_TIMEOUT kills the whole shard. A cut is remembered: the test's failure says so.
    """
    _TORCH_TIMEOUT_WHEN_CUT.pop(test_id, None)
    settings = RUN.settings
    if settings and settings.per_test_timeout_s:
        return float(settings.per_test_timeout_s)
    timeout = float(torch_timeout)
    left = remaining_budget_s()
    if left is not None and settings and settings.deadline_s:
        fits = left - _end_margin_s(settings.deadline_s)
        if fits < timeout:
            _TORCH_TIMEOUT_WHEN_CUT[test_id] = timeout
            timeout = fits
    return max(timeout, 1.0)


def timeout_cut_note(test_id: str) -> str:
    torch_s = _TORCH_TIMEOUT_WHEN_CUT.get(test_id)
    if torch_s is None:
        return ""
    return (f" [torch allows this test {torch_s:.0f} s; its timeout was cut to what was left of this shard's "
            f"Bazel timeout: {time_hint()}]")


def time_too_short_message() -> str | None:
    """Why the next test cannot start: too little of the shard's Bazel timeout is left; None if it can."""
    settings = RUN.settings
    left = remaining_budget_s()
    if left is None or settings is None or settings.deadline_s is None:
        return None
    if left - _end_margin_s(settings.deadline_s) >= _least_test_time_s(settings.deadline_s):
        return None
    return (f"{NOT_RUN_PREFIX}: only {max(left, 0):.0f} s of this shard's Bazel timeout "
            f"({settings.deadline_s:.0f} s) were left; {time_hint()}")


class NotRunForTime(RuntimeError):
    """A test that did not start for lack of time: an error, so the shard fails."""
