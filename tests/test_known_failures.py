"""Known-failure lists on real runs: counted apart from skips, excused only for the failure
they describe (an exception), and a list named explicitly must exist."""

import json
import os
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


ENTRY = str(ROOT / "dist_tests" / "spawn_test.py")
EXCLUSIONS_LABEL = "//vendor:gloo_exclusions.txt"


def run_with_exclusions(python, tmp_path, exclusions: str, tests: list[str]) -> subprocess.CompletedProcess:
    """The entry point by hand, as a target whose line names an exclusion list runs it (DIST_TESTS_LINE)."""
    listing = tmp_path / "exclusions.txt"
    listing.write_text(exclusions)
    line = {"name": "gloo_2", "backend": "gloo", "world_size": 2, "device": "cpu",
            "exclude": {"label": EXCLUSIONS_LABEL, "path": str(listing)}}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_", "BACKEND", "WORLD_SIZE"))}
    env.update(BACKEND="gloo", WORLD_SIZE="2", DIST_TESTS_DEVICE="cpu", DIST_TESTS_LINE=json.dumps(line),
               XML_OUTPUT_FILE=str(tmp_path / "test.xml"), TMPDIR=str(tmp_path))
    args = [a for t in tests for a in ("-k", t)]
    return subprocess.run([python, ENTRY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_test_on_its_lines_exclusion_list_never_starts_and_is_counted_apart(python, tmp_path):
    run = run_with_exclusions(python, tmp_path, "# hangs there\ntest_broadcast: hangs on this backend (its bug 12)\n"
                              "test_scatter[3]: only at 3 ranks\n", ["test_all_reduce_sum", "test_broadcast",
                                                                      "test_scatter"])
    assert run.returncode == 0, run.stdout + run.stderr
    cases = {c.name: c for c in testlogs.read_cases(tmp_path / "test.xml")}
    assert (cases["test_broadcast"].outcome, cases["test_broadcast"].message) == (
        "excluded", f"excluded ({EXCLUSIONS_LABEL}): hangs on this backend (its bug 12)")
    assert cases["test_all_reduce_sum"].outcome == cases["test_scatter"].outcome == "passed"
    assert "//dist_tests:gloo_2: 2 passed, 0 failed, 0 skipped, 0 known failures, 1 excluded," in run.stderr
    assert run.stderr.count("Started process 0") == 2  # the two tests that ran; the excluded one started no rank


def test_an_exclusion_list_naming_a_test_the_suite_lacks_stops_the_run(python, tmp_path):
    run = run_with_exclusions(python, tmp_path, "test_broadcast: hangs\ntest_gone_from_torch: crashed\n",
                              ["test_all_reduce_sum"])
    assert run.returncode == 3, run.stdout + run.stderr
    assert (f"//dist_tests:gloo_2: its exclusion list {EXCLUSIONS_LABEL} names tests this suite does not have: "
            "test_gone_from_torch. Fix or remove those lines.") in run.stderr
    assert "Started process" not in run.stderr
