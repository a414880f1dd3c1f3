"""PyTorch CI's disabled-tests and slow-tests files (upstream's formats) on real filtered runs:
listed tests skipped with their reason and counted, only on their platforms, slow ones run
when asked, names the suite lacks warned about, and a bad file stopping the run first."""

import json
import os
import subprocess

import pytest

from conftest import ROOT, all_cases, bazel, shard_log

TARGET = "//dist_tests:gloo_2"
SUITE = "__main__.TestDistBackendWithSpawn"
ISSUE = "https://github.com/pytorch/pytorch/issues/"
DISABLED = {
    f"test_all_reduce_sum ({SUITE})": [ISSUE + "1001", []],  # every platform
    f"test_broadcast ({SUITE})": [ISSUE + "1002", ["linux", "rocm"]],
    # Windows only, so it runs here; torch compares the class, not the module.
    "test_all_gather (distributed.test_distributed_spawn.TestDistBackendWithSpawn)": [ISSUE + "1003", ["win"]],
    f"test_removed_long_ago ({SUITE})": [ISSUE + "1004", []],  # a test this suite does not have
    "test_conv2d (__main__.TestNN)": [ISSUE + "1005", []],  # another suite's, as in upstream's file
}
SLOW = {f"test_barrier ({SUITE})": 74.5}
FILTER = "--test_filter=test_all_reduce_sum test_broadcast test_all_gather test_barrier"


@pytest.fixture
def lists(tmp_path):
    disabled, slow = tmp_path / "disabled-tests.json", tmp_path / "slow-tests.json"
    disabled.write_text(json.dumps(DISABLED))
    slow.write_text(json.dumps(SLOW))
    return [f"--test_env=DISABLED_TESTS_FILE={disabled}", f"--test_env=SLOW_TESTS_FILE={slow}"]


def run_filtered(*flags: str):
    return bazel("test", TARGET, FILTER, "--nocache_test_results", *flags)


def test_disabled_and_slow_tests_are_skipped_with_their_reasons_and_counted(lists, tmp_path):
    run = run_filtered(*lists)
    assert run.returncode == 0, run.output
    cases = {c.name: c for c in all_cases(TARGET)}
    assert set(cases) == {"test_all_reduce_sum", "test_broadcast", "test_all_gather", "test_barrier"}
    assert cases["test_all_gather"].outcome == "passed"
    for name, issue in (("test_all_reduce_sum", "1001"), ("test_broadcast", "1002")):
        assert cases[name].outcome == "skipped"
        assert cases[name].message.startswith(f"Test is disabled because an issue exists disabling it: {ISSUE}{issue}")
    assert cases["test_barrier"].outcome == "skipped"
    assert cases["test_barrier"].message == "test is slow; run with PYTORCH_TEST_WITH_SLOW to enable test"

    log = shard_log(TARGET)
    assert "//dist_tests:gloo_2: 1 passed, 0 failed, 3 skipped, 0 known failures, 0 did not run" in log
    assert "skipped    1: test is slow; run with PYTORCH_TEST_WITH_SLOW to enable test" in log
    assert f"skipped    1: Test is disabled because an issue exists disabling it: {ISSUE}1001" in log
    assert f"skipped    1: Test is disabled because an issue exists disabling it: {ISSUE}1002" in log
    warning = next(line for line in log.splitlines() if line.startswith("dist_tests: warning: DISABLED_TESTS_FILE"))
    assert f"names 1 test(s) that TestDistBackendWithSpawn does not have, so they change nothing: " \
           f"test_removed_long_ago ({SUITE})" in warning
    assert "TestNN" not in log, "entries for other suites are expected, not warned about"


def test_slow_tests_run_with_pytorch_test_with_slow(lists):
    run = run_filtered(*lists, "--test_env=PYTORCH_TEST_WITH_SLOW=1")
    assert run.returncode == 0, run.output
    outcomes = {c.name: c.outcome for c in all_cases(TARGET)}
    assert outcomes == {"test_all_reduce_sum": "skipped", "test_broadcast": "skipped", "test_all_gather": "passed",
                        "test_barrier": "passed"}


def test_a_list_that_is_a_folder_stops_the_run_before_any_test(tmp_path):
    run = run_filtered(f"--test_env=SLOW_TESTS_FILE={tmp_path}")
    assert run.returncode != 0
    log = shard_log(TARGET)
    assert f"dist_tests: error: SLOW_TESTS_FILE='{tmp_path}' is a folder" in log
    assert "Started process" not in log and "passed," not in log


# (case id, variable, file content: text, bytes, "folder", "fifo" or None for a missing file, expected text)
BAD_FILES = [
    ("disabled-missing", "DISABLED_TESTS_FILE", None, "does not exist"),
    ("disabled-folder", "DISABLED_TESTS_FILE", "folder", "is a folder"),
    ("disabled-fifo", "DISABLED_TESTS_FILE", "fifo", "is not a regular file"),
    ("disabled-not-json", "DISABLED_TESTS_FILE", '{"test_broadcast (__main__.TestDistBackendWithSpawn)": ',
     "is not JSON"),
    ("disabled-not-an-object", "DISABLED_TESTS_FILE", '["test_broadcast"]', "is not a JSON object"),
    ("disabled-key-without-class", "DISABLED_TESTS_FILE", '{"test_broadcast": ["u", []]}',
     "the key 'test_broadcast' is not 'test_name (module.TestClass)'"),
    ("disabled-value-not-a-pair", "DISABLED_TESTS_FILE", '{"test_broadcast (__main__.TestDistBackendWithSpawn)": "u"}',
     "the value of 'test_broadcast (__main__.TestDistBackendWithSpawn)' is \"u\""),
    ("disabled-platforms-not-a-list", "DISABLED_TESTS_FILE",
     '{"test_broadcast (__main__.TestDistBackendWithSpawn)": ["u", "linux"]}', '["ISSUE_URL", ["linux", ...]]'),
    ("disabled-unreadable", "DISABLED_TESTS_FILE", b"\xff\xfe\x00{", "cannot read it"),
    ("slow-folder", "SLOW_TESTS_FILE", "folder", "is a folder"),
    ("slow-not-seconds", "SLOW_TESTS_FILE", '{"test_broadcast (__main__.TestDistBackendWithSpawn)": "slow"}',
     "SECONDS"),
]


@pytest.mark.parametrize("case_id, variable, content, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_list_stops_the_run_naming_it(python, tmp_path, case_id, variable, content, expected):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    path = tmp_path / "list.json"
    if content == "folder":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)  # a read would block forever
    elif content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_"))}
    env.update(BACKEND="gloo", WORLD_SIZE="2", TMPDIR=str(scratch), **{variable: str(path)})
    result = subprocess.run([python, str(ROOT / "dist_tests" / "spawn_test.py")], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"dist_tests: error: {variable}='{path}'" in result.stderr
    assert expected in result.stderr
    assert "Started process" not in result.stderr
    assert list(scratch.iterdir()) == [], "a failed start must leave nothing in TMPDIR"
