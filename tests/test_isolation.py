"""CPU targets run in parallel without collisions, and write nothing outside their folders; a run whose sandbox
gave it no network namespace says so."""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from conftest import ROOT, bazel, output_base, results, shard_log, testlogs
from dist_tests.harness import network
from dist_tests.harness.shared import NETWORK_PROPERTY
from test_remote_cache import copy_workspace, processes_line

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


# The start of the warning a CPU target's shard prints when its action shares the Bazel server's network.
SHARED_NETWORK = "runs in the Bazel server's network namespace"
ONE_TEST = "--test_filter=test_all_reduce_sum"


def test_a_sandboxed_run_has_a_network_of_its_own_and_says_nothing():
    run = bazel("test", "//dist_tests:gloo_2", ONE_TEST, "--nocache_test_results")
    assert run.returncode == 0, run.output
    assert "linux-sandbox" in processes_line(run.output)
    assert SHARED_NETWORK not in shard_log("//dist_tests:gloo_2")


def test_a_sandbox_without_network_namespaces_is_said_once(tmp_path):
    """Bazel where no user namespace can be created, as under Ubuntu 24.04's AppArmor restriction: a user namespace
    of its own whose limit is 0 (the host's is untouched). Its Linux sandbox cannot start, so Bazel falls back, without
    a word, to the process-wrapper sandbox, with no network namespace: the shard says so once, and passes."""
    checkout, base = copy_workspace(tmp_path / "checkout"), tmp_path / "output_base"
    denied = ["unshare", "--user", "--map-root-user", "sh", "-c",
              'echo 0 >/proc/sys/user/max_user_namespaces && exec "$@"', "denied",
              str(checkout / "tools/bazel"), f"--output_base={base}"]
    try:
        run = subprocess.run([*denied, "test", "//dist_tests:gloo_2", ONE_TEST], cwd=checkout, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        assert run.returncode == 0, run.stdout
        line = processes_line(run.stdout)
        assert "processwrapper-sandbox" in line and "linux-sandbox" not in line, line
        log = shard_log("//dist_tests:gloo_2", workspace=checkout)
        assert log.count(SHARED_NETWORK) == 1, log
        assert "kernel.apparmor_restrict_unprivileged_userns=0" in log
        first = next(a for a in results("//dist_tests:gloo_2", checkout).final_attempts() if a.shard == 1)
        xml = first.xml.read_text()
        assert f'name="{NETWORK_PROPERTY}"' in xml
    finally:
        subprocess.run([*denied, "shutdown"], cwd=checkout, check=False)
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def fake_process(proc: pathlib.Path, pid: int, parent: int, args: list[str], net: str) -> None:
    folder = proc / str(pid)
    (folder / "ns").mkdir(parents=True)
    (folder / "stat").write_text(f"{pid} ({args[0][:15]}) S {parent} {pid} {pid} 0")
    (folder / "cmdline").write_bytes("\0".join(args).encode() + b"\0")
    os.symlink(f"net:[{net}]", folder / "ns" / "net")


def test_the_check_finds_the_bazel_server_above_a_test_in_its_network(tmp_path):
    """What the check reads of /proc, played: a test under process-wrapper under the server, in one network
    namespace or not; no server above (a remote worker, the Linux sandbox's own PID namespace); /proc unreadable."""
    fake_process(tmp_path, 40, 1, ["bazel(main)", "-jar", "/usr/share/bazel/A-server.jar"], "1")
    fake_process(tmp_path, 50, 40, ["process-wrapper", "--timeout=0"], "1")
    fake_process(tmp_path, 60, 50, ["python3", "spawn_test.py"], "1")
    fake_process(tmp_path, 61, 50, ["python3", "spawn_test.py"], "2")
    fake_process(tmp_path, 70, 1, ["worker"], "1")
    fake_process(tmp_path, 71, 70, ["python3", "spawn_test.py"], "1")
    assert network.bazel_server_sharing_network(str(tmp_path), 60) == 40
    assert "pid 40" in network.shared_network_warning("//dist_tests:gloo_2", str(tmp_path), 60)
    assert network.bazel_server_sharing_network(str(tmp_path), 61) is None
    assert network.shared_network_warning("//dist_tests:gloo_2", str(tmp_path), 71) is None
    assert network.shared_network_warning("//dist_tests:gloo_2", str(tmp_path / "none"), 60) is None
