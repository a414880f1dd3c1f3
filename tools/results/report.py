"""The dist_tests matrix at a glance, for the latest `bazel test` of this workspace.

    tools/bazel run //tools/results:report                 # after tools/bazel test //dist_tests/...
    tools/bazel run //tools/results:report -- --out DIR

Reads the latest invocation's build events (bazel-test-events.json, which .bazelrc makes
every `bazel test` write; see tools/results/testlogs.py) and only the test.xml files they name.
Prints a table (one line per target: its backend, device class and world size, status as
Bazel gave it, FLAKY included, runs, passed, flaky tests among them (passed only on a
DIST_TESTS_RERUNS rerun), skipped, known failures, failed, did not run, timed out, time), and
writes `report.md` and a self-contained `report.html` (a colour grid of the matrix, a row per
backend and device class, each failing test with its message, the flight recorder's line of a
hung or failed one (where every rank was) and its repro command, shards whose ranks fell back
from the forkserver to spawn, skip reasons with counts) into DIR, by default
`dist_tests_report/` in the workspace. Targets the invocation did not test show as such; a
missing or malformed XML is reported for its target and the rest go on. If bazel-testlogs
holds results newer than the events, the last `bazel test` did not write them: the report
says so and exits non-zero.
"""

import argparse
import collections
import dataclasses
import html
import os
import pathlib
import sys
import time
import xml.etree.ElementTree as ET

# The workspace root (two folders up), so that tools.* and dist_tests.* import as packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dist_tests.harness import matrix  # noqa: E402
from dist_tests.harness.shared import FLIGHT_RECORDER_PREFIX, repro_command  # noqa: E402
from tools.results import testlogs  # noqa: E402

# Bazel's overall test status, as the report writes it.
_STATUS = {
    "PASSED": "passed",
    "FLAKY": "flaky",
    "FAILED": "failed",
    "TIMEOUT": "timed out",
    "FAILED_TO_BUILD": "not built",
    "INCOMPLETE": "incomplete",
    "REMOTE_FAILURE": "remote failure",
    "TOOL_HALTED_BEFORE_TESTING": "not run",
    "NO_STATUS": "not run",
    testlogs.NOT_IN_INVOCATION: testlogs.NOT_IN_INVOCATION,
}


@dataclasses.dataclass
class Failure:
    test: str
    message: str

    @property
    def cause(self) -> str:
        """The message's first line that is not the flight recorder's."""
        lines = [line for line in self.message.strip().splitlines() if line.strip()]
        return next((line for line in lines if not line.startswith(FLIGHT_RECORDER_PREFIX)), "(no message)")

    @property
    def diagnosis(self) -> str | None:
        """Where every rank was, for a hung or failed test whose ranks were asked (the harness's flight_records.py)."""
        return next((line for line in self.message.splitlines() if line.startswith(FLIGHT_RECORDER_PREFIX)), None)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One line of the matrix as the report names it (tools/results/BUILD.bazel passes them all)."""

    name: str
    backend: str
    world_size: int
    device: str  # "cpu", "gpu", or "-" when not given


def label_of(name: str) -> str:
    """A row's Bazel label: this table's targets are named by their name; a line declared elsewhere by its label."""
    return name if name.startswith(("//", "@")) else f"//dist_tests:{name}"


def parse_matrix(text: str) -> list[Cell]:
    """`NAME:BACKEND:WORLD_SIZE:DEVICE,...`; a bare NAME is looked up in DIST_TEST_MATRIX (tools/dist_tests.bzl)."""
    cells = []
    for item in filter(None, text.split(",")):
        fields = item.split(":")
        if len(fields) == 4:
            cells.append(Cell(fields[0], fields[1], int(fields[2]), fields[3]))
        else:
            line = matrix.line_named(item)
            if line is None:
                raise argparse.ArgumentTypeError(f"{item} is not a target of DIST_TEST_MATRIX")
            cells.append(Cell(item, line["backend"], int(line["world_size"]), line["device"]))
    return cells


def cells_declared_elsewhere(invocation: testlogs.Invocation, listed: list[Cell]) -> list[Cell]:
    """The invocation's targets of matrix lines that `listed` lacks (a package's or workspace's own lines), by label.

    The harness names each run's cell in its test.xml (CELL_PROPERTY); a target without it is not the harness's.
    """
    have = {label_of(cell.name) for cell in listed}
    found = []
    for label, target in sorted(invocation.targets.items()):
        if label in have:
            continue
        for attempt in target.final_attempts():
            try:
                cell = testlogs.read_cell(attempt.xml) if attempt.xml else None
            except (OSError, ET.ParseError):
                continue  # its row would say so; one readable shard names the cell
            if cell:
                found.append(Cell(label, *cell))
                break
    return found


@dataclasses.dataclass
class TargetResult:
    name: str
    backend: str
    world_size: int
    device: str
    status: str = testlogs.NOT_IN_INVOCATION
    runs: str = "-"  # for example "3 runs: 3 passed"
    passed: int = 0
    flaky: int = 0  # tests among the passed that passed only on a rerun (DIST_TESTS_RERUNS)
    skipped: int = 0
    known: int = 0  # known failures (dist_tests/known_failures), apart from skips
    excluded: int = 0  # tests the line's exclusion list kept from starting, apart from skips
    failed: int = 0
    not_run: int = 0  # tests that did not start for lack of time
    timed_out: int = 0  # shards that Bazel stopped at their timeout
    seconds: float = 0.0
    shards: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    flaky_tests: list[Failure] = dataclasses.field(default_factory=list)  # with their first attempt's cause
    skip_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list[str] = dataclasses.field(default_factory=list)
    fallbacks: list[str] = dataclasses.field(default_factory=list)  # shards whose ranks left the forkserver, and why
    torch_flags: str = ""  # the --repo_env flags that chose the run's torch, for rerun commands

    @property
    def label(self) -> str:
        return label_of(self.name)

    @property
    def ran(self) -> bool:
        return bool(self.shards)

    def repro(self, test: str) -> str:
        return repro_command(self.label, test, self.torch_flags)


def _count(result: TargetResult, attempt: testlogs.Attempt) -> None:
    result.seconds += attempt.seconds
    if attempt.status == "TIMEOUT":
        result.timed_out += 1
    try:
        cases = attempt.cases()
    except (testlogs.EventsError, OSError) as error:
        result.problems.append(f"run {attempt.run}, shard {attempt.shard}: test.xml missing ({error})")
        return
    except ET.ParseError as error:
        result.problems.append(f"{attempt.xml}: malformed XML ({error})")
        return
    method = testlogs.read_start_method(attempt.xml) if attempt.xml else None
    if attempt.xml:
        result.torch_flags = testlogs.read_torch_flags(attempt.xml) or result.torch_flags
    if method and method.startswith(testlogs.FALLBACK_PREFIX):
        result.fallbacks.append(f"shard {attempt.shard}: ranks by {method}")
    for case in cases:
        if case.outcome == "failed":
            result.failed += 1
            result.failures.append(Failure(case.name, case.message))
        elif case.outcome == "flaky":
            result.passed += 1
            result.flaky += 1
            result.flaky_tests.append(Failure(case.name, case.message))
        elif case.outcome == "not run":
            result.not_run += 1
        elif case.outcome == "known failure":
            result.known += 1
            result.skip_reasons[case.message] += 1
        elif case.outcome == "excluded":
            result.excluded += 1
            result.skip_reasons[case.message] += 1
        elif case.outcome == "skipped":
            result.skipped += 1
            result.skip_reasons[case.message or "(no reason)"] += 1
        else:
            result.passed += 1


def read_target(invocation: testlogs.Invocation, cell: Cell) -> TargetResult:
    result = TargetResult(cell.name, cell.backend, cell.world_size, cell.device)
    target = invocation.target(result.label)
    result.status = _STATUS.get(target.status, target.status.lower())
    final = target.final_attempts()
    if not final:
        return result
    result.runs = target.runs_text()
    result.shards = target.shards
    for attempt in final:
        _count(result, attempt)
    if result.problems and result.status == "passed":
        result.status = "error"
    elif result.status == "passed" and result.skipped + result.known + result.excluded and not result.passed:
        result.status = "all skipped"  # passed only because skipping was allowed
    return result


_COUNTS = ("passed", "flaky", "skipped", "known", "failed", "not run", "timed out")


def _counts(r: TargetResult) -> list[int]:
    return [r.passed, r.flaky, r.skipped, r.known, r.failed, r.not_run, r.timed_out]


def terminal_table(results: list[TargetResult], invocation: testlogs.Invocation | None) -> str:
    """One line per target: counts first, then the status and the runs, which may hold spaces."""
    header = (f"{'target':<10} {'backend':<8} {'device':<6} {'ranks':>5} " + " ".join(f"{c:>9}" for c in _COUNTS)
              + f" {'time':>8}  {'status':<26}  runs")
    lines = [_about(invocation), "", header, "-" * len(header)]
    for r in results:
        time_text = f"{r.seconds:.1f}s" if r.ran else "-"
        lines.append(f"{r.name:<10} {r.backend:<8} {r.device:<6} {r.world_size:>5} "
                     + " ".join(f"{n:>9}" for n in _counts(r))
                     + f" {time_text:>8}  {r.status:<26}  {r.runs}")
    for r in results:
        for problem in r.problems:
            lines.append(f"! {r.label}: {problem}")
        for fallback in r.fallbacks:
            lines.append(f"~ {r.label} {fallback}")
    return "\n".join(lines)


def _about(invocation: testlogs.Invocation | None) -> str:
    if invocation is None:
        return "no results: no `bazel test` has written its build events in this workspace"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(invocation.started_ms / 1000))
    unfinished = "" if invocation.finished else " (it did not finish)"
    return f"results of `{invocation.command}`, started {when}{unfinished}"


def markdown(results: list[TargetResult], invocation: testlogs.Invocation | None) -> str:
    out = ["# dist_tests matrix", "", _about(invocation), "",
           "| target | backend | device | ranks | status | runs | " + " | ".join(_COUNTS) + " | time |",
           "| --- | --- | --- | ---: | --- | --- | " + " | ".join("---:" for _ in _COUNTS) + " | ---: |"]
    for r in results:
        out.append(f"| `{r.label}` | {r.backend} | {r.device} | {r.world_size} | {r.status} | {r.runs} | "
                   + " | ".join(str(n) for n in _counts(r)) + f" | {r.seconds:.1f} s |")
    failures = [(r, f) for r in results for f in r.failures]
    if failures:
        out += ["", "## Failures", ""]
        for r, f in failures:
            diagnosis = f"  \n  {f.diagnosis}" if f.diagnosis else ""
            out.append(f"- `{r.label}` `{f.test}`: {f.cause}{diagnosis}  \n  `{r.repro(f.test)}`")
    flaky = [(r, f) for r in results for f in r.flaky_tests]
    if flaky:
        out += ["", "## Flaky: passed only on a rerun", ""]
        out += [f"- `{r.label}` `{f.test}`: first {f.message or '(no message)'}" for r, f in flaky]
    fallbacks = [(r, f) for r in results for f in r.fallbacks]
    if fallbacks:
        out += ["", "## Start-method fallbacks (slower, upstream's way)", ""]
        out += [f"- `{r.label}` {f}" for r, f in fallbacks]
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        out += ["", "## Unreadable results", ""] + [f"- `{r.label}`: {p}" for r, p in problems]
    reasons = _all_skip_reasons(results)
    if reasons:
        out += ["", "## Skip reasons and known failures", "", "| tests | reason |", "| ---: | --- |"]
        out += [f"| {count} | {reason} |" for reason, count in reasons.most_common()]
    return "\n".join(out) + "\n"


def _all_skip_reasons(results: list[TargetResult]) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for r in results:
        total.update(r.skip_reasons)
    return total


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: .4em .7em; text-align: left; vertical-align: top; }
.grid td { width: 11em; height: 4.5em; }
.passed { background: #c8ecc8; } .failed { background: #f5b5b5; } .timed-out { background: #f9d58b; }
.error { background: #e0b0e0; } .not-run { background: #e6e6e6; color: #666; }
.all-skipped { background: #fff3c4; } .absent { background: #fafafa; color: #aaa; }
.cell-name { font-weight: bold; } .counts { font-size: .85em; }
pre { white-space: pre-wrap; max-height: 16em; overflow: auto; background: #f6f6f6; padding: .5em; }
code { background: #f0f0f0; padding: 0 .2em; }
.diagnosis { font-weight: bold; }
"""


def html_page(results: list[TargetResult], invocation: testlogs.Invocation | None) -> str:
    esc = html.escape
    # One row per backend and device class, in the matrix's order: gloo's CPU and GPU lines apart.
    grid_rows = list(dict.fromkeys((r.backend, r.device) for r in results))
    sizes = sorted({r.world_size for r in results})
    by_cell = {(r.backend, r.device, r.world_size): r for r in results}
    rows = ["<tr><th>backend \\ ranks</th>" + "".join(f"<th>{s}</th>" for s in sizes) + "</tr>"]
    for backend, device in grid_rows:
        label = backend if device == "-" else f"{backend} ({device})"
        cells = [f"<th>{esc(label)}</th>"]
        for size in sizes:
            r = by_cell.get((backend, device, size))
            if r is None:
                cells.append("<td class='absent'>not in the matrix</td>")
                continue
            css = "not-run" if not r.ran else r.status.replace(" ", "-")
            extra = "".join(f", {n} {word}" for n, word in ((r.flaky, "flaky"), (r.known, "known failures"),
                                                            (r.excluded, "excluded"),
                                                            (r.not_run, "did not run"), (r.timed_out, "timed out"))
                            if n)
            counts = "" if not r.ran else (
                f"<div class='counts'>{esc(r.runs)}<br>{r.passed} passed, {r.skipped} skipped, {r.failed} failed"
                f"{extra}<br>{r.seconds:.1f} s, {r.shards} shard(s)</div>")
            cells.append(f"<td class='{css}'><div class='cell-name'>{esc(r.name)}: {esc(r.status)}</div>{counts}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = ["<h1>dist_tests matrix</h1>", f"<p>{esc(_about(invocation))}</p>",
            f"<table class='grid'>{''.join(rows)}</table>"]
    failures = [(r, f) for r in results for f in r.failures]
    body.append(f"<h2>Failures ({len(failures)})</h2>")
    if failures:
        for r, f in failures:
            diagnosis = f"<p class='diagnosis'>{esc(f.diagnosis)}</p>" if f.diagnosis else ""
            body.append(f"<h3><code>{esc(r.label)}</code> {esc(f.test)}</h3>{diagnosis}"
                        f"<p>Rerun alone: <code>{esc(r.repro(f.test))}</code></p><pre>{esc(f.message)}</pre>")
    else:
        body.append("<p>None.</p>")
    flaky = [(r, f) for r in results for f in r.flaky_tests]
    if flaky:
        body.append(f"<h2>Flaky: passed only on a rerun ({len(flaky)})</h2><ul>" + "".join(
            f"<li><code>{esc(r.label)}</code> {esc(f.test)}: first {esc(f.message)}</li>" for r, f in flaky) + "</ul>")
    fallbacks = [(r, f) for r in results for f in r.fallbacks]
    if fallbacks:
        body.append("<h2>Start-method fallbacks (slower, upstream's way)</h2><ul>" + "".join(
            f"<li><code>{esc(r.label)}</code> {esc(f)}</li>" for r, f in fallbacks) + "</ul>")
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        body.append("<h2>Unreadable results</h2><ul>"
                    + "".join(f"<li><code>{esc(r.label)}</code>: {esc(p)}</li>" for r, p in problems) + "</ul>")
    reasons = _all_skip_reasons(results)
    body.append(f"<h2>Skip reasons and known failures ({sum(reasons.values())} tests)</h2>")
    if reasons:
        body.append("<table><tr><th>tests</th><th>reason</th></tr>" + "".join(
            f"<tr><td>{count}</td><td>{esc(reason)}</td></tr>" for reason, count in reasons.most_common()) + "</table>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>dist_tests matrix</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workspace = pathlib.Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    parser.add_argument("--matrix", required=True, type=parse_matrix,
                        help="comma-separated NAME:BACKEND:WORLD_SIZE:DEVICE, e.g. gloo_gpu_2:gloo:2:gpu, "
                             "or bare names")
    parser.add_argument("--events", type=pathlib.Path, default=workspace / testlogs.EVENTS_FILE,
                        help="the build event JSON file of the invocation to report")
    parser.add_argument("--testlogs", type=pathlib.Path, default=workspace / "bazel-testlogs",
                        help="checked for results newer than the events, which the events would not describe")
    parser.add_argument("--out", type=pathlib.Path, default=workspace / "dist_tests_report")
    args = parser.parse_args(argv)
    try:
        invocation: testlogs.Invocation | None = testlogs.read_events(args.events)
    except testlogs.EventsError as error:
        print(f"report: {error}", file=sys.stderr)
        invocation = None
    cells = args.matrix
    elsewhere = cells_declared_elsewhere(invocation, args.matrix) if invocation else []
    if elsewhere:
        # Run from a workspace of one's own, this table's targets are not that workspace's: rows only if tested.
        tested = [c for c in args.matrix if label_of(c.name) in invocation.targets]
        cells = tested + elsewhere
    results = [read_target(invocation or testlogs.Invocation(args.events), cell) for cell in cells]
    print(terminal_table(results, invocation))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(markdown(results, invocation))
    (args.out / "report.html").write_text(html_page(results, invocation))
    print(f"\nwrote {args.out / 'report.md'} and {args.out / 'report.html'}")
    newer = (testlogs.newer_results(invocation, args.testlogs / "dist_tests")
             if invocation and args.testlogs.is_dir() else [])
    if newer:
        print(f"report: {len(newer)} test.xml file(s) under {args.testlogs} (the first: {newer[0]}) are newer than "
              f"{args.events}: a later `bazel test` did not write its build events there (was it given another "
              "--build_event_json_file, or run without this workspace's .bazelrc?). This report describes an "
              "older invocation.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
