"""Faults injected into real runs: each fails that test, naming the rank and the cause; the
other tests still run; no process outlives the run, even when Bazel kills it."""

import os
import pathlib
import time
import uuid
import zipfile

import pytest

from conftest import all_cases, bazel, results

TARGET = "//dist_tests:gloo_2"
FILTER = "--test_filter=test_all_reduce_sum test_broadcast"


@pytest.fixture
def mark() -> str:
    """An environment entry given to one run (--test_env): its processes, and only they, carry it."""
    return f"DIST_TESTS_RUN_MARK={uuid.uuid4().hex}"


def marked_processes(mark: str) -> list[str]:
    """Live processes whose environment holds the mark: the test, its forkserver and ranks."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark.encode() in pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{pid} {cmdline}")
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def wait_for_no_marked_processes(mark: str, seconds: float = 30) -> list[str]:
    """Processes may take a moment to be reaped after Bazel returns; a leak stays."""
    deadline = time.monotonic() + seconds
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("kill", ["rank 1 was killed by SIGKILL"]),
        ("raise", ["Process 1 exited with error code 10", "DIST_TESTS_FAULT: injected error in rank 1"]),
        ("hang", ["timed out after 10 s", "rank 1 was at:", "in fault",
                  # The flight recorder's line on top, the dumps kept where torch's analyzer reads them.
                  "flight recorder: rank 0 is in collective 1 (gloo:all_reduce, 1 tensor of 1 float) of the default "
                  "group; rank 1 never reached it (it recorded no collective in that group)\n",
                  "flight recorder dumps kept in test.outputs/flight_recorder/test_all_reduce_sum/",
                  'File "dist_tests/harness/faults.py"']),
    ],
)
def test_a_faulty_rank_fails_only_its_test(fault, expected, mark):
    run = bazel(
        "test", TARGET, FILTER, "--test_sharding_strategy=disabled", "--nocache_test_results", f"--test_env={mark}",
        f"--test_env=DIST_TESTS_FAULT={fault}:1:test_all_reduce_sum", "--test_env=DIST_TESTS_PER_TEST_TIMEOUT=10",
    )
    assert run.returncode != 0
    cases = {c.name: c for c in all_cases(TARGET)}
    assert cases["test_broadcast"].outcome == "passed"
    failed = cases["test_all_reduce_sum"]
    assert failed.outcome == "failed"
    for text in expected:
        assert text in failed.message, failed.message
    if fault == "hang":
        assert failed.message.startswith("flight recorder: ")
        names = {n for z in results(TARGET).output_zips() for n in zipfile.ZipFile(z).namelist()}
        assert {"flight_recorder/test_all_reduce_sum/rank0", "flight_recorder/test_all_reduce_sum/rank1"} <= names
    assert wait_for_no_marked_processes(mark) == []


def test_no_rank_survives_when_bazel_kills_an_unsandboxed_target(mark):
    run = bazel(
        "test", TARGET, "--test_filter=test_all_reduce_sum", "--test_sharding_strategy=disabled",
        "--nocache_test_results", "--spawn_strategy=local", "--test_timeout=45", f"--test_env={mark}",
        "--test_env=DIST_TESTS_FAULT=hang:1", "--test_env=DIST_TESTS_PER_TEST_TIMEOUT=600",
    )
    assert run.returncode != 0
    assert "TIMEOUT" in run.output
    assert wait_for_no_marked_processes(mark) == []
