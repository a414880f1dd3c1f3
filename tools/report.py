"""The dist_tests matrix at a glance, from the JUnit XML under bazel-testlogs.

    tools/bazel run //tools:report                 # after tools/bazel test //dist_tests/...
    tools/bazel run //tools:report -- --out DIR

Prints a table (backend x world size: passed, skipped, failed, timed out, time), and writes
`report.md` and a self-contained `report.html` (a colour grid of the matrix, each failing
test with its message and repro command, skip reasons with counts) into DIR, by default
`dist_tests_report/` in the workspace. Shards are merged; targets with no results show as
not run; a missing or malformed XML is reported for its target and the rest go on.
"""

import argparse
import collections
import dataclasses
import html
import os
import pathlib
import sys
import xml.etree.ElementTree as ET

_TIMED_OUT_MARK = "-- Test timed out at"


@dataclasses.dataclass
class Failure:
    test: str
    message: str


@dataclasses.dataclass
class TargetResult:
    name: str
    backend: str
    world_size: int
    status: str = "not run"  # not run, passed, all skipped, failed, timed out, error
    passed: int = 0
    skipped: int = 0
    failed: int = 0
    timed_out: int = 0  # shards that Bazel stopped at their timeout
    seconds: float = 0.0
    shards: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    skip_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"//dist_tests:{self.name}"

    def repro(self, test: str) -> str:
        return f"tools/bazel test {self.label} --test_filter={test}"


def _shard_dirs(target_dir: pathlib.Path) -> list[pathlib.Path]:
    shards = sorted(p for p in target_dir.glob("shard_*_of_*") if p.is_dir())
    return shards or [target_dir]


def _read_shard(result: TargetResult, shard: pathlib.Path) -> None:
    log = shard / "test.log"
    if log.exists() and _TIMED_OUT_MARK in log.read_text(errors="replace"):
        result.timed_out += 1
    xml = shard / "test.xml"
    if not xml.exists():
        result.problems.append(f"{xml}: missing")
        return
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as error:
        result.problems.append(f"{xml}: malformed XML ({error})")
        return
    suite_times = [float(s.get("time", 0) or 0) for s in root.iter("testsuite")]
    result.seconds += max(suite_times, default=0.0)
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        children = {child.tag: child for child in case}
        bad = children.get("failure", children.get("error"))
        if bad is not None:
            result.failed += 1
            result.failures.append(Failure(name, bad.get("message", "") or (bad.text or "")))
        elif "skipped" in children:
            result.skipped += 1
            result.skip_reasons[children["skipped"].get("message", "") or "(no reason)"] += 1
        elif case.get("status") == "notrun":
            result.skipped += 1
            result.skip_reasons["(no reason)"] += 1
        else:
            result.passed += 1


def read_target(testlogs: pathlib.Path, name: str) -> TargetResult:
    backend, world_size = name.rsplit("_", 1)
    result = TargetResult(name, backend, int(world_size))
    target_dir = testlogs / "dist_tests" / name
    if not target_dir.is_dir():
        return result
    shards = _shard_dirs(target_dir)
    result.shards = len(shards)
    for shard in shards:
        _read_shard(result, shard)
    if result.timed_out:
        result.status = "timed out"
    elif result.problems and not (result.passed or result.failed or result.skipped):
        result.status = "error"
    elif result.failed or result.problems:
        result.status = "failed"
    elif result.skipped and not result.passed:
        result.status = "all skipped"  # passed only because skipping was allowed
    else:
        result.status = "passed"
    return result


def terminal_table(results: list[TargetResult]) -> str:
    header = f"{'target':<10} {'backend':<8} {'ranks':>5} {'status':<11} {'passed':>6} {'skipped':>7} {'failed':>6} {'timed out':>9} {'time':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        time_text = f"{r.seconds:.1f}s" if r.shards else "-"
        lines.append(f"{r.name:<10} {r.backend:<8} {r.world_size:>5} {r.status:<11} {r.passed:>6} {r.skipped:>7} "
                     f"{r.failed:>6} {r.timed_out:>9} {time_text:>8}")
    for r in results:
        for problem in r.problems:
            lines.append(f"! {r.label}: {problem}")
    return "\n".join(lines)


def markdown(results: list[TargetResult]) -> str:
    out = ["# dist_tests matrix", "", "| target | backend | ranks | status | passed | skipped | failed | timed out | time |",
           "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        out.append(f"| `{r.label}` | {r.backend} | {r.world_size} | {r.status} | {r.passed} | {r.skipped} | {r.failed} "
                   f"| {r.timed_out} | {r.seconds:.1f} s |")
    failures = [(r, f) for r in results for f in r.failures]
    if failures:
        out += ["", "## Failures", ""]
        for r, f in failures:
            first = f.message.strip().splitlines()[0] if f.message.strip() else "(no message)"
            out.append(f"- `{r.label}` `{f.test}`: {first}  \n  `{r.repro(f.test)}`")
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        out += ["", "## Unreadable results", ""] + [f"- `{r.label}`: {p}" for r, p in problems]
    reasons = _all_skip_reasons(results)
    if reasons:
        out += ["", "## Skip reasons", "", "| tests | reason |", "| ---: | --- |"]
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
"""


def html_page(results: list[TargetResult]) -> str:
    esc = html.escape
    backends = sorted({r.backend for r in results}, key=lambda b: [r.backend for r in results].index(b))
    sizes = sorted({r.world_size for r in results})
    by_cell = {(r.backend, r.world_size): r for r in results}
    rows = ["<tr><th>backend \\ ranks</th>" + "".join(f"<th>{s}</th>" for s in sizes) + "</tr>"]
    for backend in backends:
        cells = [f"<th>{esc(backend)}</th>"]
        for size in sizes:
            r = by_cell.get((backend, size))
            if r is None:
                cells.append("<td class='absent'>not in the matrix</td>")
                continue
            css = r.status.replace(" ", "-")
            counts = "" if r.status == "not run" else (
                f"<div class='counts'>{r.passed} passed, {r.skipped} skipped, {r.failed} failed"
                f"{f', {r.timed_out} timed out' if r.timed_out else ''}<br>{r.seconds:.1f} s, {r.shards} shard(s)</div>")
            cells.append(f"<td class='{css}'><div class='cell-name'>{esc(r.name)}: {esc(r.status)}</div>{counts}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = [f"<h1>dist_tests matrix</h1>", f"<table class='grid'>{''.join(rows)}</table>"]
    failures = [(r, f) for r in results for f in r.failures]
    body.append(f"<h2>Failures ({len(failures)})</h2>")
    if failures:
        for r, f in failures:
            body.append(f"<h3><code>{esc(r.label)}</code> {esc(f.test)}</h3>"
                        f"<p>Rerun alone: <code>{esc(r.repro(f.test))}</code></p><pre>{esc(f.message)}</pre>")
    else:
        body.append("<p>None.</p>")
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        body.append("<h2>Unreadable results</h2><ul>" + "".join(f"<li><code>{esc(r.label)}</code>: {esc(p)}</li>" for r, p in problems) + "</ul>")
    reasons = _all_skip_reasons(results)
    body.append(f"<h2>Skip reasons ({sum(reasons.values())} skipped tests)</h2>")
    if reasons:
        body.append("<table><tr><th>tests</th><th>reason</th></tr>" + "".join(
            f"<tr><td>{count}</td><td>{esc(reason)}</td></tr>" for reason, count in reasons.most_common()) + "</table>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>dist_tests matrix</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workspace = pathlib.Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    parser.add_argument("--matrix", required=True, help="comma-separated target names, e.g. gloo_2,nccl_2")
    parser.add_argument("--testlogs", type=pathlib.Path, default=workspace / "bazel-testlogs")
    parser.add_argument("--out", type=pathlib.Path, default=workspace / "dist_tests_report")
    args = parser.parse_args(argv)
    results = [read_target(args.testlogs, name) for name in args.matrix.split(",") if name]
    print(terminal_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(markdown(results))
    (args.out / "report.html").write_text(html_page(results))
    print(f"\nwrote {args.out / 'report.md'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
