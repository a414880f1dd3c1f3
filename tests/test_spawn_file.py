"""What upstream's spawn file does when imported, done by the entry point: matmuls without TF32
in the parent and in every rank (both start methods), torch.distributed required, and no
silent pass under a dev-debug ASAN build."""

import json
import os
import subprocess

import pytest

from conftest import ROOT

PROBE = str(ROOT / "tests" / "probes" / "spawn_file_probe.py")
ENTRY = str(ROOT / "dist_tests" / "spawn_test.py")
# torch's own switch that turns TF32 matmuls on by default, as a TF32-friendly build or site would.
TF32_ON = {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "TESTBRIDGE", "PROBE_"))}
    env.update(BACKEND="gloo", WORLD_SIZE="2", **extra)
    return env


def run(python, script, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([python, script, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_tf32_is_on_by_default_without_the_entry_point(python):
    # The control: without the entry point, this torch matmuls in TF32 under the override.
    out = run(python, "-c", clean_env(**TF32_ON), "import torch; print(torch.backends.cuda.matmul.allow_tf32)")
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_the_entry_point_turns_tf32_off_in_the_parent_and_every_rank(python, tmp_path, method):
    out = run(python, PROBE, clean_env(PROBE_OUT=str(tmp_path), DIST_TESTS_START_METHOD=method, **TF32_ON))
    assert out.returncode == 0, out.stdout + out.stderr
    reports = [json.loads((tmp_path / f"{who}.json").read_text()) for who in ("parent", "rank0", "rank1")]
    assert [r["allow_tf32"] for r in reports] == [False, False, False]


def test_a_torch_without_distributed_support_fails_saying_so(python, tmp_path):
    out = run(python, PROBE, clean_env(PROBE_OUT=str(tmp_path), PROBE_NO_DISTRIBUTED="1"))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "has no distributed support (torch.distributed.is_available() is False)" in out.stderr
    assert "Started process" not in out.stderr and "passed," not in out.stdout + out.stderr
    assert not list(tmp_path.iterdir()), "no test may run"


def test_a_dev_debug_asan_build_fails_or_skips_every_test_when_asked(python):
    env = clean_env(PYTORCH_TEST_WITH_DEV_DBG_ASAN="1")
    out = run(python, ENTRY, env, "-k", "test_all_reduce_sum")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "does not run: PYTORCH_TEST_WITH_DEV_DBG_ASAN=1 says this torch is a dev-debug ASAN build" in out.stderr
    assert "DIST_TESTS_ALLOW_SKIP=1" in out.stderr
    out = run(python, ENTRY, {**env, "DIST_TESTS_ALLOW_SKIP": "1"}, "-k", "test_all_reduce_sum")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout + out.stderr
    assert "//dist_tests:gloo_2: 0 passed, 0 failed, 1 skipped" in summary
    assert "skipped    1: not run: PYTORCH_TEST_WITH_DEV_DBG_ASAN=1" in summary
    assert "Started process" not in summary
