"""GPU targets on a host without the GPUs or the backend: fail fast, or skip when asked. An NVIDIA driver
too old for the torch's CUDA, or one whose version cannot be read: fail before any rank."""

import os
import re
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


# --- the NVIDIA driver: the oldest each CUDA runs on (third_party/python/cuda_drivers.txt) ---------

def test_every_cuda_of_the_gpu_lock_has_a_minimum_driver_and_the_docs_name_it():
    from dist_tests.harness import cuda_driver

    lock = "".join(path.read_text() for path in (ROOT / "third_party" / "python").glob("requirements_gpu_py*_lock.txt"))
    cudas = {int(major) for major in re.findall(r"^nvidia-[a-z-]+-cu(\d+)===", lock, re.MULTILINE)}
    minimums = cuda_driver.driver_minimums()
    assert cudas and cudas <= set(minimums), f"CUDA majors of the gpu lock: {cudas}; minimums for: {set(minimums)}"
    docs = (ROOT / "docs" / "gpus.md").read_text()
    assert all(f"r{minimums[major].split('.')[0]}" in docs for major in cudas)


def test_an_old_driver_fails_each_shard_before_torch_loads_naming_both_and_what_to_do():
    target = "//dist_tests:nccl_1"
    run = bazel("test", target, "--nocache_test_results", "--test_env=DIST_TESTS_DRIVER_VERSION=535.104.05")
    assert run.returncode != 0
    attempts = results(target).final_attempts()
    assert len(attempts) == 2
    for attempt in attempts:
        log = attempt.log.read_text()
        assert ("the NVIDIA driver here is 535.104.05 (DIST_TESTS_DRIVER_VERSION, a stand-in), and torch 2.13.0"
                in log), log[-2000:]
        assert "is built with CUDA 13.0, which needs driver 580 or newer" in log
        assert "Install an NVIDIA driver of branch r580 or newer" in log and "--test_tag_filters=-gpu" in log
        assert "No rank was started" in log and "Started process" not in log
        assert "cannot run:" not in log, "the driver is checked before torch loads and counts the GPUs"
        assert attempt.seconds < 30, f"shard {attempt.shard} took {attempt.seconds:.0f} s"


def configure_gpu_run(python, env: dict[str, str], before: str = "") -> subprocess.CompletedProcess:
    """runner.configure() of nccl_1 by hand on the gpu packages (torch 2.13.0 built with CUDA 13.0)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "BACKEND", "WORLD_SIZE"))}
    code = (f"import sys; sys.argv = ['x']; sys.path.insert(0, '.'); {before}\n"
            "from dist_tests.harness import runner; runner.configure(); print('torch loaded:', 'torch' in sys.modules)")
    return subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**clean, "BACKEND": "nccl", "WORLD_SIZE": "1", "DIST_TESTS_DEVICE": "gpu", **env})


def test_a_driver_new_enough_passes_the_check_without_loading_torch(python):
    run = configure_gpu_run(python, {"DIST_TESTS_DRIVER_VERSION": "580.65.06"})
    assert run.returncode == 0, run.stderr
    assert "torch loaded: False" in run.stdout


@pytest.mark.parametrize("record, standin, message", [
    (None, "r580-beta", "DIST_TESTS_DRIVER_VERSION='r580-beta' is not an NVIDIA driver version: give it as "
                        "nvidia-smi prints it, for example 580.65.06."),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  (unknown build)\n", None,
     "says 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  (unknown build)', which names no version such as "
     "580.65.06. State it with --test_env=DIST_TESTS_DRIVER_VERSION=VERSION"),
])
def test_a_driver_version_that_cannot_be_read_stops_the_run_before_any_rank(python, tmp_path, record, standin,
                                                                             message):
    before = ""
    if record is not None:  # the driver's own record, as /proc/driver/nvidia/version would hold it
        path = tmp_path / "version"
        path.write_text(record)
        before = f"from dist_tests.harness import cuda_driver; cuda_driver.DRIVER_VERSION_FILE = {str(path)!r}"
    run = configure_gpu_run(python, {"DIST_TESTS_DRIVER_VERSION": standin} if standin else {}, before)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "dist_tests: error: //dist_tests:nccl_1: " in run.stderr and message in run.stderr, run.stderr
    assert "No rank was started." in run.stderr and "torch loaded" not in run.stdout
