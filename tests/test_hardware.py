"""GPU targets on a host without the GPUs or the backend: fail fast, or skip when asked."""

from conftest import ROOT, all_cases, bazel, shard_log

TARGET = "//dist_tests:nccl_2"


def test_missing_backend_or_gpus_fails_fast_and_says_how_to_exclude():
    run = bazel("test", TARGET, "--nocache_test_results")
    assert run.returncode != 0
    log = shard_log(TARGET, 1) + shard_log(TARGET, 2)
    assert "cannot run:" in log
    # The CUDA environment has NCCL: what is missing here is the GPUs.
    assert "nccl with WORLD_SIZE=2 needs 2 GPUs, and this host has 0" in log
    assert "has no nccl backend" not in log
    assert "--test_tag_filters=-gpu" in log
    assert "DIST_TESTS_ALLOW_SKIP=1" in log
    assert "Started process" not in log, "no rank may start when the hardware is missing"


def test_a_backend_pypis_torch_lacks_says_so_and_how_to_bring_one():
    run = bazel("test", "//dist_tests:ucc_2", "--nocache_test_results")
    assert run.returncode != 0
    log = shard_log("//dist_tests:ucc_2", 1)
    assert "has no ucc backend" in log
    assert "DIST_TESTS_TORCH_WHEEL" in log and "DIST_TESTS_USE_INTERPRETER_TORCH" in log
    assert "Started process" not in log


def test_opt_in_reports_every_test_skipped_with_the_reason():
    run = bazel("test", TARGET, "--test_env=DIST_TESTS_ALLOW_SKIP=1", "--nocache_test_results")
    assert run.returncode == 0, run.output
    cases = all_cases(TARGET)
    assert len(cases) > 250
    assert {c.outcome for c in cases} == {"skipped"}
    # Tests that torch itself skips for nccl keep torch's reason; every other one says why it did not run.
    not_run = [c for c in cases if c.message.startswith("not run: ")]
    assert len(not_run) > 100
    assert all("nccl" in c.message for c in not_run)
    assert all(c.message for c in cases)


def test_gloo_targets_hide_gpus_from_their_ranks(python):
    # The entry point sets CUDA_VISIBLE_DEVICES="" for CPU backends before torch loads.
    import os
    import subprocess

    code = (
        "import os, sys; sys.argv=['x']; os.environ.update(BACKEND='gloo', WORLD_SIZE='2', CUDA_VISIBLE_DEVICES='0');"
        "sys.path.insert(0, '.'); from dist_tests.harness import runner; runner.configure();"
        "print('VISIBLE=' + repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIST_TESTS")}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "VISIBLE=''" in out.stdout, out.stderr
