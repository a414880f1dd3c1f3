"""GPU targets on a host without the GPUs or the backend: fail fast, or skip when asked."""

import os
import subprocess
import time

import pytest

from conftest import LOCKED_PACKAGES, ROOT, all_cases, bazel, results, shard_log

# The CUDA environment has NCCL and gloo: what both lack here is the GPUs.
GPU_TARGETS = {
    "//dist_tests:nccl_1": "nccl with WORLD_SIZE=1 needs 1 GPU, and this host has 0",
    "//dist_tests:nccl_2": "nccl with WORLD_SIZE=2 needs 2 GPUs, and this host has 0",
    "//dist_tests:gloo_gpu_2": "gloo with WORLD_SIZE=2 needs 2 GPUs, and this host has 0",
}


@pytest.mark.parametrize("target", sorted(GPU_TARGETS))
def test_missing_backend_or_gpus_fails_fast_and_says_how_to_exclude(target):
    run = bazel("test", target, "--nocache_test_results")
    assert run.returncode != 0
    shards = sorted({a.shard for a in results(target).final_attempts()})
    log = "".join(shard_log(target, shard) for shard in shards)
    assert log.count("cannot run:") == len(shards) > 1, "every shard must fail on its own"
    assert GPU_TARGETS[target] in log
    assert "has no nccl backend" not in log and "has no gloo backend" not in log
    assert "--test_tag_filters=-gpu" in log
    assert "DIST_TESTS_ALLOW_SKIP=1" in log
    assert "Started process" not in log, "no rank may start when the hardware is missing"


def test_a_gpu_targets_binary_run_by_hand_runs_as_gpu_or_says_what_to_set():
    # It holds only the gpu packages: unset, DIST_TESTS_DEVICE is gpu; set to cpu, the message says what to do.
    assert bazel("build", "//dist_tests:nccl_2").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "BACKEND", "WORLD_SIZE"))}
    binary = [str(ROOT / "bazel-bin" / "dist_tests" / "nccl_2"), "-k", "test_all_reduce_sum"]
    by_hand = subprocess.run(binary, env={**env, "BACKEND": "nccl", "WORLD_SIZE": "2"}, cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert by_hand.returncode == 3, by_hand.stdout + by_hand.stderr
    assert GPU_TARGETS["//dist_tests:nccl_2"] in by_hand.stderr
    assert "no Python packages" not in by_hand.stderr
    as_cpu = subprocess.run(binary, env={**env, "BACKEND": "nccl", "WORLD_SIZE": "2", "DIST_TESTS_DEVICE": "cpu"},
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert as_cpu.returncode == 3
    assert ("DIST_TESTS_DEVICE=cpu, but this program holds the Python packages of device class gpu only. "
            "Unset DIST_TESTS_DEVICE (or set it to gpu)") in as_cpu.stderr


def test_nccl_run_by_hand_with_tools_python_says_it_needs_the_gpus_within_seconds():
    # Asked before Bazel and torch (dist_tests/harness/by_hand.py): no CPU packages, no "has no nccl backend".
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "BACKEND", "WORLD_SIZE"))}
    started = time.monotonic()
    run = subprocess.run([str(ROOT / "tools" / "python"), "dist_tests/spawn_test.py", "-k", "test_all_reduce_sum"],
                         env={**env, "BACKEND": "nccl", "WORLD_SIZE": "2"}, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    elapsed = time.monotonic() - started
    assert run.returncode == 3, run.stdout + run.stderr
    assert GPU_TARGETS["//dist_tests:nccl_2"] in run.stderr
    assert "BACKEND=gloo" in run.stderr and "DIST_TESTS_ALLOW_SKIP=1" in run.stderr
    assert "has no nccl backend" not in run.stdout + run.stderr
    assert elapsed < 20, f"took {elapsed:.0f} s"


@pytest.mark.parametrize("backend, device", [("gloo", "cpu"), ("nccl", "gpu")])
def test_tools_python_takes_the_packages_of_backends_device_class(backend, device):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "BACKEND", "WORLD_SIZE"))}
    run = subprocess.run([str(ROOT / "tools" / "python"), "-c", "import os; print(os.environ['PYTHONPATH'])"],
                         env={**env, "BACKEND": backend, "WORLD_SIZE": "2"}, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    packages = run.stdout.strip().split(os.pathsep)[-1]
    assert LOCKED_PACKAGES.search(packages) and f"/dist_python_{device}/" in packages, packages


def test_a_backend_pypis_torch_lacks_says_so_and_how_to_bring_one():
    run = bazel("test", "//dist_tests:ucc_2", "--nocache_test_results")
    assert run.returncode != 0
    log = shard_log("//dist_tests:ucc_2", 1)
    assert "has no ucc backend" in log
    assert "DIST_TESTS_TORCH_WHEEL" in log and "DIST_TESTS_USE_INTERPRETER_TORCH" in log
    assert "Started process" not in log


@pytest.mark.parametrize("target", sorted(GPU_TARGETS))
def test_opt_in_reports_every_test_skipped_with_the_reason(target):
    run = bazel("test", target, "--test_env=DIST_TESTS_ALLOW_SKIP=1", "--nocache_test_results")
    assert run.returncode == 0, run.output
    cases = all_cases(target)
    assert len(cases) > 250
    assert {c.outcome for c in cases} == {"skipped"}
    # Tests that torch itself skips for the backend keep torch's reason; every other one says why it did not run.
    not_run = [c for c in cases if c.message.startswith("not run: ")]
    assert len(not_run) > 100
    assert all(GPU_TARGETS[target] in c.message for c in not_run)
    assert all(c.message for c in cases)


def test_gloo_targets_hide_gpus_from_their_ranks(python):
    # The entry point sets CUDA_VISIBLE_DEVICES="" for CPU backends before torch loads.
    code = (
        "import os, sys; sys.argv=['x']; os.environ.update(BACKEND='gloo', WORLD_SIZE='2', CUDA_VISIBLE_DEVICES='0');"
        "sys.path.insert(0, '.'); from dist_tests.harness import runner; runner.configure();"
        "print('VISIBLE=' + repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIST_TESTS")}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "VISIBLE=''" in out.stdout, out.stderr
