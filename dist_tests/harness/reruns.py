"""Reruns of a failing test in fresh ranks (DIST_TESTS_RERUNS), reported honestly.

Each attempt runs against a private result; only the settled outcome reaches the run's
result, once. A test that fails and then passes is reported passed and flaky: its XML
testcase keeps every failed attempt as a `flakyFailure`/`flakyError` element (the JUnit
convention CI viewers read). A test that fails every attempt fails with a message that
lists each attempt's cause, and its XML keeps attempts 2..N as `rerunFailure`/`rerunError`.

Never rerun: skips, tests listed as known failures (their verdict is the list's), and tests
that did not start for lack of time; no rerun starts when too little time is left for it.
"""

import dataclasses
import sys
import unittest
from collections.abc import Callable
from typing import Any

from dist_tests.harness import environment
from dist_tests.harness.budget import time_too_short_message
from dist_tests.harness.shared import FLIGHT_RECORDER_PREFIX, NOT_RUN_PREFIX
from dist_tests.harness.state import RUN


@dataclasses.dataclass(frozen=True)
class FailedAttempt:
    """One attempt that failed: what the XML and the final message say of it."""

    number: int
    kind: str  # "failure" or "error", as unittest classed it
    exception_type: str
    message: str
    text: str  # the formatted traceback with every rank's log tail

    @property
    def cause(self) -> str:
        """The first line of the message: the join loop's cause or torch's (not the flight recorder's line above
        it, which says where the ranks were, not what went wrong)."""
        for line in self.message.splitlines():
            if line.strip() and not line.startswith(FLIGHT_RECORDER_PREFIX):
                return line.strip()[:300]
        return self.exception_type


class AttemptResult(unittest.TestResult):
    """Records one attempt's calls so that the settled one can be replayed onto the run's result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def _record(self, name: str, *args: Any) -> None:
        getattr(super(), name)(*args)
        self.calls.append((name, args))

    def addSuccess(self, test: Any) -> None:
        self._record("addSuccess", test)

    def addFailure(self, test: Any, err: Any) -> None:
        self._record("addFailure", test, err)

    def addError(self, test: Any, err: Any) -> None:
        self._record("addError", test, err)

    def addSkip(self, test: Any, reason: str) -> None:
        self._record("addSkip", test, reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        self._record("addExpectedFailure", test, err)

    def addUnexpectedSuccess(self, test: Any) -> None:
        self._record("addUnexpectedSuccess", test)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        self._record("addSubTest", test, subtest, err)

    def failed(self) -> bool:
        return bool(self.failures or self.errors or self.unexpectedSuccesses)

    def rerunnable(self) -> bool:
        """A failure that another attempt may change: not a test that did not start for lack of time."""
        for name, args in self.calls:
            if name in ("addFailure", "addError") and str(args[-1][1]).startswith(NOT_RUN_PREFIX):
                return False
        return self.failed()

    def failed_attempt(self, number: int, as_text: Callable[[Any, Any], str]) -> FailedAttempt:
        for name, args in self.calls:
            if name in ("addFailure", "addError", "addSubTest") and args[-1] is not None:
                err = args[-1]
                kind = "failure" if name == "addFailure" or issubclass(err[0], AssertionError) else "error"
                return FailedAttempt(number, kind, err[0].__name__, str(err[1]), as_text(err, args[0]))
        return FailedAttempt(number, "error", "UnexpectedSuccess", "passed, but is expected to fail", "")

    def replay(self, result: unittest.TestResult, settled_err: Any = None) -> None:
        """Replays this attempt onto `result`; `settled_err` replaces the first failure's exc_info."""
        for name, args in self.calls:
            if settled_err is not None and name in ("addFailure", "addError"):
                args, settled_err = (args[0], settled_err), None
            getattr(result, name)(*args)
        if self.shouldStop:
            result.stop()


def settled_error(attempts: list[FailedAttempt], err: Any, not_rerun_why: str) -> Any:
    """The exc_info a test that failed every attempt fails with: each attempt's cause, then the first's message."""
    lines = [f"failed all {len(attempts)} attempts{not_rerun_why}:"]
    lines += [f"  attempt {a.number}: {a.cause}" for a in attempts]
    error_type, error, traceback = err
    try:
        settled = error_type("\n".join(lines) + f"\n--- attempt 1:\n{error}")
    except Exception:  # an exception type that takes other arguments: keep its class's meaning in words
        settled = RuntimeError("\n".join(lines) + f"\n--- attempt 1 ({error_type.__name__}):\n{error}")
    return type(settled), settled, traceback


def first_error(calls: list[tuple[str, tuple]]) -> Any:
    for name, args in calls:
        if name in ("addFailure", "addError"):
            return args[-1]
    return None


def run_attempts(test: Any, result: unittest.TestResult, run_once: Callable[[unittest.TestResult], None],
                 reruns: int) -> None:
    """Runs `test` up to 1 + `reruns` times until it does not fail, and reports the settled outcome to `result`.

    `run_once(recorder)` runs one attempt (unittest's TestCase.run). The failed attempts are
    left on the test as `dist_failed_attempts`, and `dist_flaky` says it passed after them.
    """
    test.dist_failed_attempts, test.dist_flaky = [], False
    name = getattr(test, "_testMethodName", str(test))
    listed = RUN.known.reason(name) is not None
    result.startTest(test)  # the XML's time for the test spans every attempt
    try:
        first: AttemptResult | None = None
        not_rerun_why = ""
        for number in range(1, reruns + 2):
            environment.set_attempt(number)
            attempt = AttemptResult()
            run_once(attempt)
            first = first or attempt
            if not attempt.rerunnable() or listed:
                break
            test.dist_failed_attempts.append(attempt.failed_attempt(number, result._exc_info_to_string))  # type: ignore[attr-defined]
            if number == reruns + 1:
                break
            too_short = time_too_short_message()
            if too_short:
                not_rerun_why = f" that time allowed (not rerun again: {too_short})"
                break
            print(f"\ndist_tests: {name} failed on attempt {number} of {reruns + 1}; rerunning it in fresh ranks. "
                  f"That attempt:\n{test.dist_failed_attempts[-1].text}", file=sys.stderr, flush=True)
        failed = test.dist_failed_attempts
        if failed and not attempt.failed():
            test.dist_flaky = True
            attempt.replay(result)
        elif failed and first is not None:
            err = first_error(first.calls)
            first.replay(result, settled_error(failed, err, not_rerun_why) if err else None)
        else:
            attempt.replay(result)
    finally:
        environment.set_attempt(None)
        result.stopTest(test)
