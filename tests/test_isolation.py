"""CPU targets run in parallel without collisions, and write nothing outside their folders."""

import pathlib
import re
import shutil
import subprocess
import tempfile

from conftest import ROOT, bazel, output_base, results, shard_log, testlogs
from test_remote_cache import copy_workspace

SMOKE = "--test_filter=test_all_reduce_sum test_broadcast test_barrier test_all_gather test_scatter"


def test_fixed_ports_do_not_collide_between_parallel_tests():
    run = bazel("test", "//tests:fixed_port_test", "--runs_per_test=4", "--local_test_jobs=4", "--nocache_test_results")
    assert run.returncode == 0, run.output


def snapshot_workspace() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".", f":!{testlogs.EVENTS_FILE}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout


def left_in_a_private_tmp(workspace: pathlib.Path, base: pathlib.Path, startup: tuple[str, ...] = ()) -> str:
    """Runs the smoke subset unsandboxed, so that a stray write would land in /tmp or the workspace,
    with an empty /tmp of its own (tests/private_tmp.sh) in which the workspace and the output base
    (what the runfiles point into) stay visible; returns what the run left in that /tmp."""
    private_tmp = f"{workspace / 'tests/private_tmp.sh'} {workspace} {base} --"
    run = bazel("test", "//dist_tests:gloo_2", SMOKE, "--spawn_strategy=local", "--nocache_test_results",
                "--test_sharding_strategy=disabled", f"--run_under={private_tmp}", startup=startup,
                workspace=workspace)
    assert run.returncode == 0, run.output
    left = re.search(r"^private /tmp after the run: \[(.*)\]$", shard_log("//dist_tests:gloo_2", workspace=workspace),
                     re.MULTILINE)
    assert left, "tests/private_tmp.sh printed no listing"
    return left.group(1)


def test_a_run_writes_nothing_outside_its_own_folders():
    bazel("build", "//dist_tests:gloo_2")  # the build's own outputs are not the run's
    ws_before = snapshot_workspace()
    assert left_in_a_private_tmp(ROOT, output_base()) == ""
    # Bazel itself writes the build events there; the run writes nothing.
    assert snapshot_workspace() == ws_before


def test_a_run_from_a_checkout_under_tmp_writes_nothing_outside_its_own_folders():
    """As many CI services have them: the same run from a copy of the workspace under /tmp."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="dist_tests-checkout-", dir="/tmp"))
    checkout, base = copy_workspace(folder / "checkout"), folder / "output_base"
    startup = (f"--output_base={base}",)
    try:
        assert left_in_a_private_tmp(checkout, base, startup) == ""
    finally:
        bazel("shutdown", startup=startup, workspace=checkout)
        subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_smoke_subset_in_parallel_ten_times_has_no_failure():
    """Over 2 minutes here because it must be: 20 real runs (two targets, ten times each, in parallel) are what
    can show a rare collision of ports or folders between concurrent runs."""
    run = bazel(
        "test", "//dist_tests:gloo_2", "//dist_tests:gloo_3", SMOKE, "--runs_per_test=10",
        "--test_sharding_strategy=disabled", "--nocache_test_results", timeout=1800,
    )
    assert run.returncode == 0, run.output
    assert "FAILED" not in run.output and "FLAKY" not in run.output
    for target in ("//dist_tests:gloo_2", "//dist_tests:gloo_3"):
        assert results(target).runs_text() == "10 runs: 10 passed"
