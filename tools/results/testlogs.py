"""The results of the latest `bazel test`, read from its build event file.

`.bazelrc` makes every `bazel test` in this workspace write Bazel's build event protocol (BEP)
as JSON to `bazel-test-events.json` in the workspace root, replacing the previous one. That
file says which targets the invocation tested, each target's overall status (FLAKY
included), and which test.xml and test.log each run, shard and attempt wrote. Results are
read only from the files it names, so folders that earlier invocations left under
bazel-testlogs are never counted.

Used by tools/results/report.py, tools/upstream/benchmark and the project's tests; standard library
only, and the words the harness writes (dist_tests/harness/shared.py).
"""

import dataclasses
import json
import pathlib
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

# The message prefixes and the property the harness writes into test.xml (FALLBACK_PREFIX: for the report).
from dist_tests.harness.shared import (  # noqa: F401
    CELL_PROPERTY,
    EXCLUDED_PREFIX,
    FALLBACK_PREFIX,
    KNOWN_FAILURE_PREFIX,
    NOT_RUN_PREFIX,
    START_METHOD_PROPERTY,
    TORCH_FLAGS_PROPERTY,
)

# Relative to the workspace root (Bazel resolves the relative path in .bazelrc against it).
EVENTS_FILE = "bazel-test-events.json"

NOT_IN_INVOCATION = "not in the last invocation"


class EventsError(Exception):
    """The build event file is missing or unreadable; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    # passed, flaky (passed on a rerun, DIST_TESTS_RERUNS), failed, skipped, known failure, excluded (by its
    # line's exclusion list: it never started), not run
    outcome: str
    message: str


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One test action: a run, shard and attempt of a target, with the files it wrote."""

    run: int
    shard: int
    attempt: int
    status: str  # PASSED, FAILED, TIMEOUT, ...
    seconds: float
    files: dict  # name in the event (test.xml, test.log, ...) -> local path

    @property
    def xml(self) -> pathlib.Path | None:
        return self.files.get("test.xml")

    @property
    def log(self) -> pathlib.Path | None:
        return self.files.get("test.log")

    @property
    def outputs_zip(self) -> pathlib.Path | None:
        """The undeclared outputs, in the folder the event names for this attempt."""
        anchor = self.log or self.xml
        return anchor.parent / "test.outputs" / "outputs.zip" if anchor else None

    def cases(self) -> list[Case]:
        if self.xml is None:
            raise EventsError(f"run {self.run}, shard {self.shard}: the build events name no test.xml")
        return read_cases(self.xml)


@dataclasses.dataclass
class TargetResults:
    label: str
    status: str  # Bazel's overall status (PASSED, FLAKY, FAILED, TIMEOUT, ...), or NOT_IN_INVOCATION
    shards: int = 0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)

    def final_attempts(self) -> list[Attempt]:
        """The last attempt of each run and shard, ordered by run then shard."""
        last: dict[tuple[int, int], Attempt] = {}
        for attempt in self.attempts:
            key = (attempt.run, attempt.shard)
            if key not in last or attempt.attempt > last[key].attempt:
                last[key] = attempt
        return [last[key] for key in sorted(last)]

    def run_outcomes(self) -> list[str]:
        """One word per run: passed, flaky (passed on a retry), timed out or failed."""
        outcomes = []
        final_attempts = self.final_attempts()
        for run in sorted({a.run for a in self.attempts}):
            mine = [a for a in self.attempts if a.run == run]
            final = [a for a in final_attempts if a.run == run]
            if all(a.status == "PASSED" for a in final):
                outcomes.append("flaky" if len(mine) > len(final) else "passed")
            elif any(a.status == "TIMEOUT" for a in final):
                outcomes.append("timed out")
            else:
                outcomes.append("failed")
        return outcomes

    def runs_text(self) -> str:
        """For example '1 run: passed' or '3 runs: 2 passed, 1 failed'."""
        outcomes = self.run_outcomes()
        if not outcomes:
            return "no runs"
        if len(outcomes) == 1:
            return f"1 run: {outcomes[0]}"
        counts = {o: outcomes.count(o) for o in dict.fromkeys(outcomes)}
        return f"{len(outcomes)} runs: " + ", ".join(f"{n} {o}" for o, n in counts.items())

    def output_zips(self) -> list[pathlib.Path]:
        """The undeclared-outputs archives of the final attempts (an idle shard writes none)."""
        return [a.outputs_zip for a in self.final_attempts() if a.outputs_zip and a.outputs_zip.exists()]

    def cases(self) -> list[Case]:
        """Every testcase of the final attempts (of every run: three runs of one test give three)."""
        return [case for attempt in self.final_attempts() for case in attempt.cases()]


@dataclasses.dataclass
class Invocation:
    path: pathlib.Path
    started_ms: int = 0
    finished: bool = False
    patterns: list[str] = dataclasses.field(default_factory=list)  # the targets as given
    options: list[str] = dataclasses.field(default_factory=list)  # the options given on the command line
    targets: dict[str, TargetResults] = dataclasses.field(default_factory=dict)

    @property
    def command(self) -> str:
        """For example 'bazel test //dist_tests:gloo_2 --test_filter=test_all_reduce_sum'."""
        return " ".join(["bazel test", *self.patterns, *self.options])

    def target(self, label: str) -> TargetResults:
        return self.targets.get(label) or TargetResults(label, NOT_IN_INVOCATION)


def _local_path(uri: str) -> pathlib.Path | None:
    if not uri.startswith("file://"):
        return None  # for example bytestream:// under remote execution without downloads
    return pathlib.Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def read_events(path: pathlib.Path) -> Invocation:
    """Reads one build event JSON file (one event per line)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise EventsError(
            f"{path} does not exist: no `bazel test` has run in this workspace with its .bazelrc "
            "(which writes it), or the last one was given another --build_event_json_file."
        ) from None
    invocation = Invocation(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            raise EventsError(f"{path}:{number}: not a build event ({error})") from None
        _apply(invocation, event)
    return invocation


def _apply(invocation: Invocation, event: dict) -> None:
    kind, key = next(iter(event["id"].items()))
    if kind == "started":
        started = event.get("started", {})
        invocation.started_ms = int(started.get("startTimeMillis", 0))
    elif kind == "optionsParsed":
        invocation.options = list(event.get("optionsParsed", {}).get("explicitCmdLine", []))
    elif kind == "pattern":
        invocation.patterns += key.get("pattern", [])
    elif kind == "testResult":
        result = event.get("testResult", {})
        files = {}
        for output in result.get("testActionOutput", []):
            local = _local_path(output.get("uri", ""))
            if local is not None:
                files[output["name"]] = local
        target = invocation.targets.setdefault(key["label"], TargetResults(key["label"], "NO_STATUS"))
        target.attempts.append(Attempt(
            run=int(key.get("run", 1)), shard=int(key.get("shard", 1)), attempt=int(key.get("attempt", 1)),
            status=result.get("status", "NO_STATUS"), seconds=int(result.get("testAttemptDurationMillis", 0)) / 1000,
            files=files,
        ))
    elif kind == "testSummary":
        summary = event.get("testSummary", {})
        target = invocation.targets.setdefault(key["label"], TargetResults(key["label"], "NO_STATUS"))
        target.status = summary.get("overallStatus", "NO_STATUS")
        target.shards = int(summary.get("shardCount", 1))
    elif kind == "targetCompleted" and not event.get("completed", {}).get("success", False):
        label = key["label"]
        if label not in invocation.targets:
            invocation.targets[label] = TargetResults(label, "FAILED_TO_BUILD")
    elif kind == "buildFinished":
        invocation.finished = True


def latest(workspace: pathlib.Path) -> Invocation:
    """The latest `bazel test` of the workspace."""
    return read_events(workspace / EVENTS_FILE)


def newer_results(invocation: Invocation, testlogs_dir: pathlib.Path) -> list[pathlib.Path]:
    """test.xml files under a bazel-testlogs folder written after the build event file.

    Any such file comes from a later `bazel test` that did not write the event file, so the
    event file no longer describes the latest invocation.
    """
    written = invocation.path.stat().st_mtime
    return sorted(p for p in testlogs_dir.rglob("test.xml") if p.stat().st_mtime > written + 1)


def read_property(xml_path: pathlib.Path, name: str) -> str | None:
    """A property the harness wrote into test.xml; None if unsaid."""
    for prop in ET.parse(xml_path).getroot().iter("property"):
        if prop.get("name") == name:
            return prop.get("value")
    return None


def read_start_method(xml_path: pathlib.Path) -> str | None:
    """How the run's ranks started (the harness's START_METHOD_PROPERTY), a fallback included; None if unsaid."""
    return read_property(xml_path, START_METHOD_PROPERTY)


def read_cell(xml_path: pathlib.Path) -> tuple[str, int, str] | None:
    """The run's (backend, world size, device class), as the harness wrote it (CELL_PROPERTY); None if unsaid."""
    value = read_property(xml_path, CELL_PROPERTY) or ""
    fields = value.split(":")
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return fields[0], int(fields[1]), fields[2]


def read_torch_flags(xml_path: pathlib.Path) -> str:
    """The --repo_env flags that chose the run's torch (the harness's TORCH_FLAGS_PROPERTY); "" for the locked one."""
    return read_property(xml_path, TORCH_FLAGS_PROPERTY) or ""


def read_cases(xml_path: pathlib.Path) -> list[Case]:
    """The testcases of one JUnit XML file; raises ET.ParseError or OSError if unreadable."""
    cases = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            text = child.get("message", "") or (child.text or "")
            if child.tag in ("failure", "error"):
                outcome = "not run" if text.startswith(NOT_RUN_PREFIX) else "failed"
                message = text
            elif child.tag == "skipped" and outcome in ("passed", "flaky"):
                outcome = ("known failure" if text.startswith(KNOWN_FAILURE_PREFIX) else
                           "excluded" if text.startswith(EXCLUDED_PREFIX) else "skipped")
                message = text
            elif child.tag in ("flakyFailure", "flakyError") and outcome == "passed":
                outcome, message = "flaky", text  # the harness writes these only for a test that passed in the end
        if outcome == "passed" and case.get("status") == "notrun":
            outcome = "skipped"
        cases.append(Case(case.get("name", "?"), outcome, message))
    return cases
