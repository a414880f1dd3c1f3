"""Known-failure lists on real runs: counted apart from skips, excused only for the failure
they describe (an exception), and a list named explicitly must exist."""

import subprocess

import pytest

from conftest import ROOT, all_cases, bazel, shard_log
from test_report import row
from tools.results import testlogs

TARGET = "//dist_tests:gloo_2"
FILTER = "--test_filter=test_all_reduce_sum test_broadcast"
REASON = "gloo drops the sum on this platform"


@pytest.fixture
def known_list(tmp_path):
    path = tmp_path / "known.txt"
    path.write_text(f"test_all_reduce_sum: {REASON}\n")
    return path


def run_with(known_list, fault):
    return bazel(
        "test", TARGET, FILTER, "--test_sharding_strategy=disabled", "--nocache_test_results",
        f"--test_env=DIST_TESTS_KNOWN_FAILURES={known_list}",
        f"--test_env=DIST_TESTS_FAULT={fault}:1:test_all_reduce_sum",
    )


def test_a_listed_test_failing_by_an_exception_is_a_known_failure_counted_apart(known_list, python, tmp_path):
    run = run_with(known_list, "raise")
    assert run.returncode == 0, run.output
    cases = {c.name: c for c in all_cases(TARGET)}
    assert cases["test_broadcast"].outcome == "passed"
    known = cases["test_all_reduce_sum"]
    assert known.outcome == "known failure"
    assert known.message == f"known failure ({known_list}): {REASON}"
    assert "//dist_tests:gloo_2: 1 passed, 0 failed, 0 skipped, 1 known failures, 0 did not run" in shard_log(TARGET)

    table = subprocess.run(
        [python, str(ROOT / "tools/results/report.py"), "--matrix=gloo_2", f"--events={ROOT / testlogs.EVENTS_FILE}",
         f"--out={tmp_path / 'report'}"], capture_output=True, text=True, check=True,
    ).stdout
    # passed, flaky, skipped, known, failed, did not run, timed out
    assert row(table, "gloo_2")[0] == [1, 0, 0, 1, 0, 0, 0]


def test_a_listed_test_killed_by_a_signal_is_reported_as_that(known_list):
    run = run_with(known_list, "kill")
    assert run.returncode != 0
    failed = {c.name: c for c in all_cases(TARGET)}["test_all_reduce_sum"]
    assert failed.outcome == "failed"
    assert "rank 1 was killed by SIGKILL" in failed.message
    assert f"listed in {known_list} as a known failure" in failed.message
    assert "failed differently" in failed.message


def test_a_named_list_that_does_not_exist_is_a_setup_error(tmp_path):
    missing = tmp_path / "no-such-list.txt"
    run = bazel("test", TARGET, "--test_filter=test_broadcast", "--nocache_test_results",
                f"--test_env=DIST_TESTS_KNOWN_FAILURES={missing}")
    assert run.returncode != 0
    log = shard_log(TARGET)
    assert f"DIST_TESTS_KNOWN_FAILURES='{missing}' does not exist" in log
    assert "Started process" not in log
