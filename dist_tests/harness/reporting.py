"""absltest's XML runner, extended: skip reasons in the XML, repro lines, no silent passes.

absltest already speaks Bazel's test protocol (sharding, --test_filter, XML_OUTPUT_FILE).
This adds what the spawn suite needs on top:
- each skipped testcase carries `<skipped message="reason"/>` (absltest writes none);
- each failure prints the one command that reruns that test alone;
- a run in which no selected test ran, or every one was skipped, fails unless skipping
  was asked for (DIST_TESTS_ALLOW_SKIP=1);
- a run in which a test did not start for lack of time fails, saying how many and what to raise;
- the start method the ranks used, and a fallback from the forkserver, in the closing line
  and as the XML's `dist_tests_start_method` property;
- a CPU target's action that shared the Bazel server's network (network.py) as the XML's
  `dist_tests_network` property (the warning itself is at the start of the log);
- a closing line with the counts, known failures, tests that did not run apart from skips,
  and tests that passed only on a rerun (flaky, see reruns.py);
- a rerun test's failed attempts in its testcase, as `flakyFailure`/`flakyError` when it
  passed in the end and `rerunFailure`/`rerunError` for attempts 2..N when it never did.
"""

import collections
import io
import sys
import unittest
from typing import Any

from absl.testing import xml_reporter

from dist_tests.harness import gpu_leases, shared
from dist_tests.harness.shared import (
    CELL_PROPERTY,
    EXCLUDED_PREFIX,
    KNOWN_FAILURE_PREFIX,
    NETWORK_PROPERTY,
    NOT_RUN_PREFIX,
    SHARED_NETWORK,
    START_METHOD_PROPERTY,
    TORCH_FLAGS_PROPERTY,
)
from dist_tests.harness.state import RUN, time_hint


def _target() -> str:
    return RUN.settings.target if RUN.settings else "//dist_tests:unknown"


def repro_command(test_name: str) -> str:
    return shared.repro_command(_target(), test_name, RUN.settings.torch_flags if RUN.settings else "")


def _attempt_element(element: str, attempt: Any) -> str:
    message = xml_reporter._escape_xml_attr(f"attempt {attempt.number}: {attempt.cause}")
    kind = xml_reporter._escape_xml_attr(attempt.exception_type)
    return (f'  <{element} message="{message}" type="{kind}">'
            f"<stackTrace><![CDATA[{xml_reporter._escape_cdata(attempt.text)}]]></stackTrace></{element}>\n")


class _CaseResult(xml_reporter._TestCaseResult):
    def _print_testcase_details(self, stream: Any) -> None:
        super()._print_testcase_details(stream)
        if self.skip_reason is not None and not self.errors:
            reason = xml_reporter._escape_xml_attr(str(self.skip_reason))
            stream.write(f'  <skipped message="{reason}"></skipped>\n')
        attempts = getattr(self.test, "dist_failed_attempts", [])
        if getattr(self.test, "dist_flaky", False):
            for attempt in attempts:
                stream.write(_attempt_element("flakyFailure" if attempt.kind == "failure" else "flakyError", attempt))
        else:
            for attempt in attempts[1:]:  # the first attempt is the testcase's own failure
                stream.write(_attempt_element("rerunFailure" if attempt.kind == "failure" else "rerunError", attempt))


class _RunSummary(unittest.TestCase):
    """Stands in for 'the run as a whole' in the XML when it must fail without a failing test."""

    def __init__(self, name: str) -> None:
        super().__init__("runTest")
        self._name = name

    def id(self) -> str:
        return f"dist_tests.{self._name}"

    def runTest(self) -> None:  # pragma: no cover - never run, only reported
        pass


class _Result(xml_reporter._TextAndXMLTestResult):
    _TEST_CASE_RESULT_CLASS = _CaseResult

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed_names: list[str] = []
        self._not_run: list[str] = []  # did not start for lack of time
        self._summaries = 0  # errors that stand for the run as a whole
        self._known = 0
        self._excluded = 0  # skipped by the line's exclusion list: never started
        self._flaky: list[str] = []  # passed only on a rerun

    def _note_failure(self, test: Any, err: Any) -> None:
        name = getattr(test, "_testMethodName", None)
        if isinstance(test, _RunSummary):
            self._summaries += 1
        elif str(err[1]).startswith(NOT_RUN_PREFIX):
            self._not_run.append(name)
        elif name:
            self._failed_names.append(name)
            self.stream.writeln(f"\nReproduce alone: {repro_command(name)}")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        if reason.startswith(KNOWN_FAILURE_PREFIX):
            self._known += 1
        elif reason.startswith(EXCLUDED_PREFIX):
            self._excluded += 1

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        if getattr(test, "dist_flaky", False):
            self._flaky.append(test._testMethodName)

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._note_failure(test, err)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._note_failure(test, err)

    def _fail_run(self, name: str, message: str) -> None:
        summary = _RunSummary(name)
        self.startTest(summary)
        try:
            raise RuntimeError(message)
        except RuntimeError:
            self.addError(summary, sys.exc_info())
        self.stopTest(summary)
        self.stream.writeln(f"\ndist_tests: {message}")

    def stopTestRun(self) -> None:
        skipped = len(self.skipped)
        if self.testsRun == 0 and RUN.selected_total == 0:
            self._fail_run(
                "no_test_selected",
                f"no test of {_target()} matches --test_filter={RUN.filter_text!r}: nothing ran. "
                "Give a test name (test_all_reduce_sum), Class.name, or a pattern (*all_reduce*).",
            )
        elif self.testsRun > 0 and skipped == self.testsRun and not (RUN.settings and RUN.settings.allow_skip):
            known = f" ({self._known} of them known failures)" if self._known else ""
            self._fail_run(
                "every_test_skipped",
                f"every one of the {skipped} tests that ran was skipped{known}, so this run tested nothing. "
                "Pass --test_env=DIST_TESTS_ALLOW_SKIP=1 if that is expected.",
            )
        if self._not_run:
            self._fail_run(
                "tests_did_not_run",
                f"{len(self._not_run)} test(s) did not run: this shard's Bazel timeout ran out before they could "
                f"start (the first: {self._not_run[0]}). To run them, {time_hint()}.",
            )
        # The start method in the XML too (tools/results/report.py lists fallbacks): a testsuites property.
        self.suite._testsuites_properties[START_METHOD_PROPERTY] = RUN.start_method_note()
        if RUN.settings:  # the report lists the target by it wherever its line was declared
            cell = (RUN.settings.backend, RUN.settings.world_size, RUN.settings.device)
            self.suite._testsuites_properties[CELL_PROPERTY] = "%s:%d:%s" % cell
        if RUN.network_shared:  # said once at the start of the log; kept with the results too
            self.suite._testsuites_properties[NETWORK_PROPERTY] = SHARED_NETWORK
        if RUN.settings and RUN.settings.torch_flags:
            # The report's rerun commands carry them too.
            self.suite._testsuites_properties[TORCH_FLAGS_PROPERTY] = RUN.settings.torch_flags
        super().stopTestRun()
        apart = (KNOWN_FAILURE_PREFIX, EXCLUDED_PREFIX)  # counted apart from skips, each listed with its reason
        reasons = collections.Counter(reason for _, reason in self.skipped if not reason.startswith(apart))
        known = collections.Counter(reason for _, reason in self.skipped if reason.startswith(apart))
        failed = len(self.failures) + len(self.errors) - self._summaries - len(self._not_run)
        passed = self.testsRun - len(self.failures) - len(self.errors) - len(self.skipped)
        self.stream.writeln("")
        for reason, count in reasons.most_common():
            self.stream.writeln(f"  skipped {count:4d}: {reason}")
        for reason, count in known.most_common():
            self.stream.writeln(f"  {count:4d} {reason}")
        if self._failed_names:
            self.stream.writeln("To rerun a failed test alone:")
            for name in self._failed_names:
                self.stream.writeln(f"  {repro_command(name)}")
        if self._flaky:
            self.stream.writeln(f"Flaky, passed only on a rerun: {', '.join(self._flaky)}")
        self.stream.writeln(f"{_target()}: {passed} passed, {failed} failed, "
                            f"{len(self.skipped) - self._known - self._excluded} skipped, "
                            f"{self._known} known failures, "
                            + (f"{self._excluded} excluded, " if self._excluded else "")
                            + f"{len(self._not_run)} did not run, {len(self._flaky)} flaky"
                            + (f", on leased {_leased_unit()}s {RUN.gpu_lease.names()}" if RUN.gpu_lease else "")
                            + (", ranks by spawn after a forkserver fallback" if RUN.start_method_fallback else ""))
        if RUN.start_method_fallback:
            self.stream.writeln(f"  start method: {RUN.start_method_note()}")


def _leased_unit() -> str:
    """What the run leased one of: a GPU, or a device of its class."""
    return gpu_leases.unit(RUN.settings.device_class) if RUN.settings else "GPU"


class SpawnTestRunner(xml_reporter.TextAndXMLTestRunner):
    _TEST_RESULT_CLASS = _Result

    def _makeResult(self) -> Any:
        # By hand there is no XML file, but the summary and the no-silent-pass checks still apply.
        if self._xml_stream is None:
            self._xml_stream = io.StringIO()
        return super()._makeResult()
