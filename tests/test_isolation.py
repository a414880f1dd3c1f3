"""CPU targets run in parallel without collisions, and write nothing outside their folders."""

import os
import pathlib
import subprocess

from conftest import ROOT, bazel

SMOKE = "--test_filter=test_all_reduce_sum test_broadcast test_barrier test_all_gather test_scatter"


def test_fixed_ports_do_not_collide_between_parallel_tests():
    run = bazel("test", "//tests:fixed_port_test", "--runs_per_test=4", "--local_test_jobs=4", "--nocache_test_results")
    assert run.returncode == 0, run.output


def snapshot_tmp() -> set[str]:
    # pytest's own tmp_path folders live in /tmp too; they are not the runs' doing.
    return {name for name in os.listdir("/tmp") if not name.startswith("pytest-of-")}


def snapshot_workspace() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout


def test_a_run_writes_nothing_outside_its_own_folders():
    bazel("build", "//dist_tests:gloo_2")  # the build's own outputs are not the run's
    tmp_before, ws_before = snapshot_tmp(), snapshot_workspace()
    # Unsandboxed, so that a stray write would land in the real /tmp and workspace.
    run = bazel("test", "//dist_tests:gloo_2", SMOKE, "--spawn_strategy=local", "--nocache_test_results")
    assert run.returncode == 0, run.output
    assert snapshot_tmp() - tmp_before == set()
    assert snapshot_workspace() == ws_before


def test_smoke_subset_in_parallel_ten_times_has_no_failure():
    run = bazel(
        "test", "//dist_tests:gloo_2", "//dist_tests:gloo_3", SMOKE, "--runs_per_test=10",
        "--test_sharding_strategy=disabled", "--nocache_test_results", timeout=1800,
    )
    assert run.returncode == 0, run.output
    assert "FAILED" not in run.output and "FLAKY" not in run.output
    for target in ("gloo_2", "gloo_3"):
        logs = list(pathlib.Path(ROOT, "bazel-testlogs/dist_tests", target).glob("run_*_of_10/test.xml"))
        assert len(logs) == 10
