"""tools/gpu/gpu_check, run without Bazel the way a GPU host runs it: here, without CUDA."""

import os
import re
import subprocess

import pytest

from conftest import ROOT

# It runs no Bazel, and from any checkout: tools/selftest runs it in its second lane, beside the first's.
pytestmark = pytest.mark.second_lane


def gpu_check(python: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "TESTBRIDGE"))}
    # As on a CI service, which sets CI: torch's own test runner behaves differently under it.
    env["CI"] = "true"
    return subprocess.run([python, str(ROOT / "tools" / "gpu" / "gpu_check"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)


def test_without_cuda_it_says_so_and_exits_with_its_own_code(python):
    run = gpu_check(python)
    assert run.returncode == 77, run.stdout + run.stderr
    assert "NO CUDA: this torch is a CPU build, so nothing was checked" in run.stdout
    assert "PASS" not in run.stdout


def test_its_checks_pass_on_cpu_tensors(python):
    # The same machinery with gloo standing in for nccl: each check prints one line, and the
    # comparison with upstream's way says both times and their ratio.
    run = gpu_check(python, "--device", "cpu")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line.split(":")[0] for line in run.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert lines == ["PASS  gloo-cpu-forkserver", "PASS  nccl_2-needs-2-gpus", "PASS  gloo_2-matches-upstream",
                     "PASS  two-leases-disjoint"]
    compared = next(line for line in run.stdout.splitlines() if line.startswith("PASS  gloo_2-matches-upstream"))
    assert re.search(r"harness 11 tests \(.*\) in [\d.]+ s, ranks by forkserver; "
                     r"upstream's way 11 tests \(.*\) in [\d.]+ s; "
                     r"time ratio [\d.]+; per-test outcomes equal", compared), compared
    assert "gpu_check: 4 passed, 0 failed" in run.stdout
