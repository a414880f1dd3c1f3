"""Faults injected into real runs: each fails that test, naming the rank and the cause; the
other tests still run; no process outlives the run, even when Bazel kills it."""

import subprocess
import time

import pytest

from conftest import all_cases, bazel

TARGET = "//dist_tests:gloo_2"
FILTER = "--test_filter=test_all_reduce_sum test_broadcast"


def leftover_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "multiprocessing.forkserver" in line or "dist_tests/spawn_test.py" in line]


def wait_for_no_leftovers(seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("kill", ["rank 1 was killed by SIGKILL"]),
        ("raise", ["Process 1 exited with error code 10", "DIST_TESTS_FAULT: injected error in rank 1"]),
        ("hang", ["timed out after 10 s", "rank 1 was at:", "in fault"]),
    ],
)
def test_a_faulty_rank_fails_only_its_test(fault, expected):
    run = bazel(
        "test", TARGET, FILTER, "--test_sharding_strategy=disabled", "--nocache_test_results",
        f"--test_env=DIST_TESTS_FAULT={fault}:1:test_all_reduce_sum", "--test_env=DIST_TESTS_PER_TEST_TIMEOUT=10",
    )
    assert run.returncode != 0
    cases = {c.name: c for c in all_cases(TARGET)}
    assert cases["test_broadcast"].outcome == "passed"
    failed = cases["test_all_reduce_sum"]
    assert failed.outcome == "failed"
    for text in expected:
        assert text in failed.message, failed.message
    assert wait_for_no_leftovers() == []


def test_no_rank_survives_when_bazel_kills_an_unsandboxed_target():
    started = time.monotonic()
    run = bazel(
        "test", TARGET, "--test_filter=test_all_reduce_sum", "--test_sharding_strategy=disabled",
        "--nocache_test_results", "--spawn_strategy=local", "--test_timeout=20",
        "--test_env=DIST_TESTS_FAULT=hang:1", "--test_env=DIST_TESTS_PER_TEST_TIMEOUT=600",
    )
    assert run.returncode != 0
    assert "TIMEOUT" in run.output
    assert time.monotonic() - started < 120
    assert wait_for_no_leftovers() == []
