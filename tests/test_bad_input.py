"""Bad settings and files: each gives a clear message and a non-zero exit before any rank
starts, and leaves nothing behind."""

import os
import subprocess

import pytest

from conftest import ROOT

ENTRY = str(ROOT / "dist_tests" / "spawn_test.py")
GOOD = {"BACKEND": "gloo", "WORLD_SIZE": "2"}

# (case id, environment changes, file content for DIST_TESTS_KNOWN_FAILURES or None, expected text)
CASES = [
    ("backend-empty", {"BACKEND": ""}, None, "BACKEND is not set"),
    ("backend-missing", {"BACKEND": None}, None, "BACKEND is not set"),
    ("backend-unknown", {"BACKEND": "infiniband"}, None, "Use one of: gloo, nccl, ucc"),
    ("backend-wrong-case", {"BACKEND": "GLOO"}, None, "did you mean 'gloo'"),
    ("device-unknown", {"DIST_TESTS_DEVICE": "tpu"}, None, "DIST_TESTS_DEVICE='tpu': use one of cpu, gpu"),
    ("world-size-0", {"WORLD_SIZE": "0"}, None, "too small"),
    ("world-size-1-on-cpu", {"WORLD_SIZE": "1"}, None, "Device classes whose lines may have 1: gpu (set "
     "DIST_TESTS_DEVICE)"),
    ("world-size-negative", {"WORLD_SIZE": "-2"}, None, "too small"),
    ("world-size-not-integer", {"WORLD_SIZE": "two"}, None, "is not an integer"),
    ("world-size-fraction", {"WORLD_SIZE": "2.5"}, None, "is not an integer"),
    ("world-size-absurd", {"WORLD_SIZE": "100000"}, None, "more ranks than this machine"),
    ("shards-index-without-total", {"TEST_SHARD_INDEX": "0"}, None, "must be set together"),
    ("shards-index-past-total", {"TEST_TOTAL_SHARDS": "4", "TEST_SHARD_INDEX": "4"}, None, "must be below"),
    ("shards-not-numbers", {"TEST_TOTAL_SHARDS": "four", "TEST_SHARD_INDEX": "0"}, None, "non-negative integers"),
    ("tmpdir-missing", {"TEST_TMPDIR": "/nonexistent/dist_tests"}, None, "is not a folder"),
    ("tmpdir-unwritable", {"TEST_TMPDIR": "/sys"}, None, "is not writable"),
    ("omp-threads-not-a-number", {"OMP_NUM_THREADS": "abc"}, None, "OMP_NUM_THREADS='abc' must be a positive integer"),
    ("omp-threads-zero", {"OMP_NUM_THREADS": "0"}, None, "OMP_NUM_THREADS='0' must be a positive integer"),
    ("timeout-not-a-number", {"TEST_TIMEOUT": "soon"}, None, "must be a positive integer"),
    ("start-method-unknown", {"DIST_TESTS_START_METHOD": "thread"}, None, "use one of forkserver, spawn"),
    ("fault-malformed", {"DIST_TESTS_FAULT": "explode:x"}, None, "DIST_TESTS_FAULT='explode:x' is malformed"),
    ("fault-attempt-zero", {"DIST_TESTS_FAULT": "raise:1:test_broadcast:0"}, None, "ATTEMPTS attempt numbers from 1"),
    ("reruns-not-integer", {"DIST_TESTS_RERUNS": "once"}, None,
     "DIST_TESTS_RERUNS='once' must be an integer from 0 to 5"),
    ("reruns-negative", {"DIST_TESTS_RERUNS": "-1"}, None, "DIST_TESTS_RERUNS='-1' must be an integer from 0 to 5"),
    ("reruns-too-many", {"DIST_TESTS_RERUNS": "50"}, None, "DIST_TESTS_RERUNS='50' must be an integer from 0 to 5"),
    ("line-not-json", {"DIST_TESTS_LINE": "{gloo"}, None,
     "DIST_TESTS_LINE='{gloo' is not the line the matrix macro (tools/dist_tests.bzl) writes"),
    ("line-missing-field", {"DIST_TESTS_LINE": '{"name": "gloo_2", "backend": "gloo", "device": "cpu"}'}, None,
     "its 'world_size' must be a int"),
    ("line-other-cell", {"DIST_TESTS_LINE": '{"name": "gloo_3", "backend": "gloo", "device": "cpu", "world_size": 3}'},
     None, "gloo_3 is declared as gloo with WORLD_SIZE=3 on cpu, but this run was given BACKEND=gloo, WORLD_SIZE=2"),
    ("known-failures-malformed", {}, "test_all_reduce_sum because it flakes\n", "cannot read"),
    ("known-failures-duplicate", {}, "test_broadcast: a\ntest_broadcast: b\n", "listed twice"),
    ("known-failures-unknown-test", {}, "test_not_in_torch: gone\n", "does not have: test_not_in_torch"),
    ("known-failures-binary", {}, b"\xff\xfe\x00bad", "cannot read it"),
    ("known-failures-missing", {"DIST_TESTS_KNOWN_FAILURES": "/nonexistent/known.txt"}, None, "does not exist"),
    ("known-failures-folder", {"DIST_TESTS_KNOWN_FAILURES": "/"}, None, "cannot read it"),
]


@pytest.mark.parametrize("case_id, changes, known, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(python, tmp_path, case_id, changes, known, expected):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_", "BACKEND", "WORLD_SIZE"))}
    env.update(GOOD)
    env["TMPDIR"] = str(scratch)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if known is not None:
        listing = tmp_path / "known.txt"
        listing.write_bytes(known if isinstance(known, bytes) else known.encode())
        env["DIST_TESTS_KNOWN_FAILURES"] = str(listing)
    result = subprocess.run([python, ENTRY], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "dist_tests: error: " in result.stderr
    assert expected in result.stderr
    assert "Started process" not in result.stderr
    assert list(scratch.iterdir()) == [], "a failed start must leave nothing in TMPDIR"
