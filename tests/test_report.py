"""tools/bazel run //tools/results:report: the matrix of the latest `bazel test`, from its build events
(synthetic and real), and its HTML page rendered by a real headless browser."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, bazel, results

# As tools/BUILD.bazel passes it, with gloo on both device classes; ucc_2 by its name alone.
MATRIX = ("gloo_2:gloo:2:cpu,gloo_3:gloo:3:cpu,gloo_4:gloo:4:cpu,gloo_gpu_2:gloo:2:gpu,"
          "nccl_2:nccl:2:gpu,nccl_4:nccl:4:gpu,ucc_2")

PASSED_SHARD = """<?xml version="1.0"?>
<testsuites tests="3" time="4.5"><testsuite name="T" tests="3" time="4.5">
<testcase name="test_a" status="run" result="completed" time="1" classname="T"></testcase>
<testcase name="test_b" status="notrun" result="suppressed" time="0" classname="T"><skipped message="Need at least 2 CUDA devices"></skipped></testcase>
<testcase name="test_c" status="notrun" result="suppressed" time="0" classname="T"><skipped message="Need at least 2 CUDA devices"></skipped></testcase>
</testsuite></testsuites>"""  # noqa: E501 (one test case a line)

FAILED_SHARD = """<?xml version="1.0"?>
<testsuites tests="2" time="2.0"><testsuite name="T" tests="2" time="2.0">
<testcase name="test_d" status="run" result="completed" time="1" classname="T"></testcase>
<testcase name="test_e" status="run" result="completed" time="1" classname="T"><error message="rank 1 was killed by SIGKILL" type="RuntimeError"><![CDATA[trace]]></error></testcase>
<testcase name="test_f" status="run" result="completed" time="2" classname="T"><flakyError message="attempt 1: rank 0 raised an exception" type="RuntimeError"><stackTrace><![CDATA[trace]]></stackTrace></flakyError></testcase>
</testsuite></testsuites>"""  # noqa: E501 (one test case a line)


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def result_event(label: str, shard: int, status: str, xml: pathlib.Path, attempt: int = 1) -> dict:
    return {"id": {"testResult": {"label": label, "run": 1, "shard": shard, "attempt": attempt}},
            "testResult": {"status": status, "testAttemptDurationMillis": "1500",
                           "testActionOutput": [{"name": "test.xml", "uri": xml.as_uri()}]}}


def summary_event(label: str, status: str, shards: int) -> dict:
    return {"id": {"testSummary": {"label": label}},
            "testSummary": {"overallStatus": status, "runCount": 1, "shardCount": shards}}


@pytest.fixture
def synthetic_events(tmp_path):
    """A build event file and the XML it names; bazel-testlogs also holds stale folders it does not name."""
    logs = tmp_path / "testlogs" / "dist_tests"
    passed = write(logs / "gloo_2/shard_1_of_2/test.xml", PASSED_SHARD)
    failed = write(logs / "gloo_2/shard_2_of_2/test.xml", FAILED_SHARD)
    write(logs / "gloo_2/shard_1_of_4_run_1_of_3/test.xml", PASSED_SHARD)  # stale: an earlier invocation
    write(logs / "ucc_2/test.xml", PASSED_SHARD)  # stale: ucc_2 is not in this invocation
    malformed = write(logs / "gloo_3/test.xml", "<testsuites><testcase name=")
    events = [
        {"id": {"started": {}}, "started": {"startTimeMillis": "1795000000000", "command": "test"}},
        {"id": {"pattern": {"pattern": ["//dist_tests:all"]}}},
        {"id": {"optionsParsed": {}}, "optionsParsed": {"explicitCmdLine": ["--config=ci"]}},
        result_event("//dist_tests:gloo_2", 1, "PASSED", passed),
        result_event("//dist_tests:gloo_2", 2, "FAILED", failed),
        summary_event("//dist_tests:gloo_2", "FAILED", 2),
        result_event("//dist_tests:gloo_3", 1, "PASSED", malformed),
        summary_event("//dist_tests:gloo_3", "PASSED", 1),
        result_event("//dist_tests:gloo_4", 1, "FAILED", logs / "gloo_4/test.xml"),  # named, never written
        summary_event("//dist_tests:gloo_4", "FAILED", 1),
        result_event("//dist_tests:nccl_2", 1, "TIMEOUT", passed),
        summary_event("//dist_tests:nccl_2", "TIMEOUT", 1),
        result_event("//dist_tests:nccl_4", 1, "FAILED", failed, attempt=1),  # passed on its retry
        result_event("//dist_tests:nccl_4", 1, "PASSED", passed, attempt=2),
        summary_event("//dist_tests:nccl_4", "FLAKY", 1),
        {"id": {"buildFinished": {}}, "finished": {"exitCode": {"name": "TESTS_FAILED"}}},
    ]
    path = tmp_path / "events.json"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    later = max(p.stat().st_mtime for p in logs.rglob("test.xml")) + 10
    os.utime(path, (later, later))
    return path


def run_report(python, events, out, check=True):
    return subprocess.run(
        [python, str(ROOT / "tools/results/report.py"), f"--matrix={MATRIX}", f"--events={events}",
         f"--testlogs={events.parent / 'testlogs'}", f"--out={out}"],
        capture_output=True, text=True, check=check,
    )


def row_words(table: str, target: str) -> list[str]:
    """A target's line of the terminal table, split on spaces."""
    return next(line.split() for line in table.splitlines() if line.startswith(target + " "))


def row(table: str, target: str) -> tuple[list[int], str]:
    """A target's counts (passed, flaky, skipped, known, failed, did not run, timed out) and its status and runs."""
    words = row_words(table, target)
    return [int(w) for w in words[4:11]], " ".join(words[12:])


def test_synthetic_edge_cases(python, synthetic_events, tmp_path):
    table = run_report(python, synthetic_events, tmp_path / "out").stdout
    assert "results of `bazel test //dist_tests:all --config=ci`" in table
    assert row(table, "gloo_2") == ([3, 1, 2, 0, 1, 0, 0], "failed 1 run: failed")  # stale folders not counted
    assert row(table, "gloo_3")[1].startswith("error") and "malformed XML" in table
    assert row(table, "gloo_4")[1].startswith("failed") and "test.xml missing" in table
    assert row(table, "nccl_2") == ([1, 0, 2, 0, 0, 0, 1], "timed out 1 run: timed out")
    assert row(table, "nccl_4") == ([1, 0, 2, 0, 0, 0, 0], "flaky 1 run: flaky")  # the retry's results only
    assert row(table, "ucc_2")[1] == "not in the last invocation -"
    # gloo's GPU line is gloo on 2 ranks, not a backend of its own
    assert row_words(table, "gloo_gpu_2")[1:4] == ["gloo", "gpu", "2"]
    md = (tmp_path / "out/report.md").read_text()
    assert "tools/bazel test //dist_tests:gloo_2 --test_filter=test_e" in md
    assert "| 6 | Need at least 2 CUDA devices |" in md
    assert "`//dist_tests:gloo_2` `test_f`: first attempt 1: rank 0 raised an exception" in md
    page = (tmp_path / "out/report.html").read_text()
    assert "rank 1 was killed by SIGKILL" in page and "class='failed'" in page and "class='not-run'" in page
    assert "1 flaky" in page and "attempt 1: rank 0 raised an exception" in page
    assert "<th>gloo (cpu)</th>" in page and "<th>gloo (gpu)</th>" in page and "<th>gloo_gpu</th>" not in page


def test_results_newer_than_the_events_make_the_report_fail(python, synthetic_events, tmp_path):
    os.utime(synthetic_events, (1, 1))  # as if a later bazel test had not written its events
    report = run_report(python, synthetic_events, tmp_path / "out", check=False)
    assert report.returncode == 1
    assert "newer than" in report.stderr and "describes an older invocation" in report.stderr


def test_the_report_describes_the_latest_invocation_only(tmp_path):
    run = bazel("test", "//dist_tests:gloo_2", "//dist_tests:gloo_3", "--test_filter=test_all_reduce_sum",
                "--runs_per_test=3", "--nocache_test_results")
    assert run.returncode == 0, run.output
    report = bazel("run", "//tools/results:report", "--", f"--out={tmp_path / 'first'}")
    assert report.returncode == 0, report.output
    assert row(report.output, "gloo_2") == ([3, 0, 0, 0, 0, 0, 0], "passed 3 runs: 3 passed")
    assert row(report.output, "gloo_3") == ([3, 0, 0, 0, 0, 0, 0], "passed 3 runs: 3 passed")

    run = bazel("test", "//dist_tests:gloo_2",
                "--test_filter=test_all_reduce_sum test_all_reduce_sum_cuda test_broadcast",
                "--test_env=DIST_TESTS_ALLOW_SKIP=1", "--nocache_test_results")
    assert run.returncode == 0, run.output
    out = tmp_path / "second"
    report = bazel("run", "//tools/results:report", "--", f"--out={out}")
    assert report.returncode == 0, report.output
    assert row(report.output, "gloo_2") == ([2, 0, 1, 0, 0, 0, 0], "passed 1 run: passed")
    assert row(report.output, "gloo_3")[1] == "not in the last invocation -"
    assert (out / "report.html").exists() and (out / "report.md").exists()


def test_a_target_that_passed_on_a_retry_is_flaky(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    run = bazel("test", "//tests:fails_once_test", "--flaky_test_attempts=2", "--nocache_test_results",
                f"--test_env=FAILS_ONCE_DIR={markers}", f"--sandbox_writable_path={markers}")
    assert run.returncode == 0, run.output
    result = results("//tests:fails_once_test")
    assert result.status == "FLAKY"
    assert [a.status for a in result.attempts] == ["FAILED", "PASSED"]
    assert result.runs_text() == "1 run: flaky"


def test_html_renders_in_a_headless_browser(python, synthetic_events, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is needed (apt-get install chromium); .ci/run installs it"
    out = tmp_path / "out"
    run_report(python, synthetic_events, out)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "gloo_2: failed" in dom and "ucc_2: not in the last invocation" in dom
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1100,900", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_a_hung_tests_flight_recorder_line_is_shown_beside_its_cause():
    import sys

    sys.path.insert(0, str(ROOT))
    from tools.results import report

    diagnosis = ("flight recorder: ranks 0 and 1 are in collective 3 (gloo:broadcast, 1 tensor of 4 floats) of the "
                 "default group; rank 2 never reached it (its last collective is 2, gloo:all_reduce)")
    message = f"{diagnosis}\ntimed out after 10 s (ranks still running: 0, 1, 2)\n--- rank 0 was at:\n..."
    result = report.TargetResult("gloo_3", "gloo", 3, "cpu", status="failed", shards=1,
                                 failures=[report.Failure("test_broadcast", message),
                                           report.Failure("test_other", "rank 1 was killed by SIGKILL")])
    md = report.markdown([result], None)
    assert (f"- `//dist_tests:gloo_3` `test_broadcast`: timed out after 10 s (ranks still running: 0, 1, 2)  \n"
            f"  {diagnosis}  \n  `tools/bazel test //dist_tests:gloo_3 --test_filter=test_broadcast`") in md
    assert "- `//dist_tests:gloo_3` `test_other`: rank 1 was killed by SIGKILL  \n  `tools/bazel" in md
    page = report.html_page([result], None)
    assert "<p class='diagnosis'>flight recorder: ranks 0 and 1 are in collective 3" in page
