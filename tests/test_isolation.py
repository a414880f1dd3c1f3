"""CPU targets run in parallel without collisions, and write nothing outside their folders."""

import subprocess

from conftest import ROOT, bazel, output_base, results, shard_log, testlogs

SMOKE = "--test_filter=test_all_reduce_sum test_broadcast test_barrier test_all_gather test_scatter"


def test_fixed_ports_do_not_collide_between_parallel_tests():
    run = bazel("test", "//tests:fixed_port_test", "--runs_per_test=4", "--local_test_jobs=4", "--nocache_test_results")
    assert run.returncode == 0, run.output


def snapshot_workspace() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".", f":!{testlogs.EVENTS_FILE}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout


def test_a_run_writes_nothing_outside_its_own_folders():
    bazel("build", "//dist_tests:gloo_2")  # the build's own outputs are not the run's
    ws_before = snapshot_workspace()
    # Unsandboxed, so that a stray write would land in /tmp or the workspace. The test runs
    # with an empty /tmp of its own (tests/private_tmp.sh) and prints what it left there; the
    # workspace and the output base, which its runfiles point into, stay visible in it.
    private_tmp = f"{ROOT / 'tests/private_tmp.sh'} {ROOT} {output_base()} --"
    run = bazel("test", "//dist_tests:gloo_2", SMOKE, "--spawn_strategy=local", "--nocache_test_results",
                "--test_sharding_strategy=disabled", f"--run_under={private_tmp}")
    assert run.returncode == 0, run.output
    assert "private /tmp after the run: []" in shard_log("//dist_tests:gloo_2")
    # Bazel itself writes the build events there; the run writes nothing.
    assert snapshot_workspace() == ws_before


def test_smoke_subset_in_parallel_ten_times_has_no_failure():
    run = bazel(
        "test", "//dist_tests:gloo_2", "//dist_tests:gloo_3", SMOKE, "--runs_per_test=10",
        "--test_sharding_strategy=disabled", "--nocache_test_results", timeout=1800,
    )
    assert run.returncode == 0, run.output
    assert "FAILED" not in run.output and "FLAKY" not in run.output
    for target in ("//dist_tests:gloo_2", "//dist_tests:gloo_3"):
        assert results(target).runs_text() == "10 runs: 10 passed"
