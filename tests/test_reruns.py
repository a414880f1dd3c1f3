"""DIST_TESTS_RERUNS on real gloo_2 runs: a test that fails once and then passes is reported
flaky, with its first attempt's cause; one that fails every attempt fails with each cause."""

import subprocess
import xml.etree.ElementTree as ET
import zipfile

from conftest import ROOT, all_cases, bazel, results, shard_log
from test_report import row
from tools.results import testlogs

TARGET = "//dist_tests:gloo_2"


def run(fault: str, reruns: int = 1):
    return bazel(
        "test", TARGET, "--test_filter=test_all_reduce_sum test_broadcast", "--test_sharding_strategy=disabled",
        "--nocache_test_results", f"--test_env=DIST_TESTS_RERUNS={reruns}", f"--test_env=DIST_TESTS_FAULT={fault}",
    )


def xml_testcase(name: str) -> ET.Element:
    [attempt] = results(TARGET).final_attempts()
    return next(c for c in ET.parse(attempt.xml).getroot().iter("testcase") if c.get("name") == name)


def kept_rank_logs() -> list[str]:
    [archive] = results(TARGET).output_zips()
    with zipfile.ZipFile(archive) as z:
        return sorted(n for n in z.namelist() if n.startswith("rank_logs/") and n.endswith(".log"))


def test_a_test_that_fails_only_on_its_first_attempt_passes_reported_flaky(python, tmp_path):
    outcome = run("raise:1:test_all_reduce_sum:1")
    assert outcome.returncode == 0, outcome.output
    cases = {c.name: c for c in all_cases(TARGET)}
    assert cases["test_broadcast"].outcome == "passed"
    assert cases["test_all_reduce_sum"].outcome == "flaky"
    # Its testcase passed, and keeps the first attempt as the JUnit flaky element, with the cause.
    case = xml_testcase("test_all_reduce_sum")
    assert [child.tag for child in case] == ["flakyError"]
    # The first line of the harness's cause (rank 0 may be named too: its peer left it).
    assert case[0].get("message").startswith("attempt 1: ") and "rank 1 raised an exception" in case[0].get("message")
    assert "DIST_TESTS_FAULT: injected error in rank 1" in case[0].find("stackTrace").text
    log = shard_log(TARGET)
    assert "test_all_reduce_sum failed on attempt 1 of 2; rerunning it in fresh ranks" in log
    assert "Flaky, passed only on a rerun: test_all_reduce_sum" in log
    assert "//dist_tests:gloo_2: 2 passed, 0 failed, 0 skipped, 0 known failures, 0 did not run, 1 flaky" in log
    # The failed attempt's rank logs are kept; the passing attempt's are not needed.
    assert kept_rank_logs() == ["rank_logs/test_all_reduce_sum/rank0.log", "rank_logs/test_all_reduce_sum/rank1.log"]
    table = subprocess.run(
        [python, str(ROOT / "tools/results/report.py"), "--matrix=gloo_2", f"--events={ROOT / testlogs.EVENTS_FILE}",
         f"--out={tmp_path / 'report'}"], capture_output=True, text=True, check=True,
    ).stdout
    assert row(table, "gloo_2") == ([2, 1, 0, 0, 0, 0, 0], "passed 1 run: passed")
    assert "`test_all_reduce_sum`: first attempt 1: " in (tmp_path / "report/report.md").read_text()


def test_a_test_that_fails_every_attempt_fails_with_each_cause():
    outcome = run("kill:1:test_all_reduce_sum", reruns=2)
    assert outcome.returncode != 0
    cases = {c.name: c for c in all_cases(TARGET)}
    assert cases["test_broadcast"].outcome == "passed"
    failed = cases["test_all_reduce_sum"]
    assert failed.outcome == "failed"
    lines = failed.message.splitlines()
    assert lines[0] == "failed all 3 attempts:", failed.message
    for number, line in enumerate(lines[1:4], start=1):
        assert line.startswith(f"  attempt {number}: rank 1 was killed by SIGKILL"), failed.message
    case = xml_testcase("test_all_reduce_sum")
    assert [child.tag for child in case] == ["error", "rerunError", "rerunError"]
    for number, child in enumerate(case[1:], start=2):
        assert child.get("message").startswith(f"attempt {number}: rank 1 was killed by SIGKILL")
    assert "1 passed, 1 failed, 0 skipped, 0 known failures, 0 did not run, 0 flaky" in shard_log(TARGET)
    assert kept_rank_logs() == sorted(f"rank_logs/test_all_reduce_sum/rank{r}{s}.log"
                                      for r in (0, 1) for s in ("", ".attempt2", ".attempt3"))


def test_without_reruns_a_fault_on_the_first_attempt_fails_the_test():
    outcome = run("raise:1:test_all_reduce_sum:1", reruns=0)
    assert outcome.returncode != 0
    failed = {c.name: c for c in all_cases(TARGET)}["test_all_reduce_sum"]
    assert failed.outcome == "failed" and not failed.message.startswith("failed all")
    assert [child.tag for child in xml_testcase("test_all_reduce_sum")] == ["error"]
