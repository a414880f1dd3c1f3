"""GPU leases with stand-in GPUs (DIST_TESTS_GPUS): real processes, real flocks, real Bazel.

Runs that share a host get disjoint GPUs or wait; a killed holder frees its GPUs; bad settings
stop a run before any rank starts. What each run held comes from the holders' own records
(tests/lease_holder_test.py), never from timing.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BAZEL, ROOT, bazel, shard_log

HOLDER = "//tests:lease_holder_test"
HOLDER_FILE = str(ROOT / "tests" / "lease_holder_test.py")
ENTRY = str(ROOT / "dist_tests" / "spawn_test.py")
WAITING = "waiting for 2 free GPUs"

sys.path.insert(0, str(ROOT))
from dist_tests.harness import gpu_leases  # noqa: E402

# Its clusters and Bazel runs fill the waits of the other lane (tools/selftest).
pytestmark = pytest.mark.second_lane


class Leases:
    """A private lock folder, records folder and release file under /dev/shm (host-wide, and
    outside a remote worker's private /tmp), so tests never touch the host's real leases."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.locks = root / "locks"
        self.records = root / "records"
        self.release_file = root / "release"
        self.records.mkdir()

    def env(self, gpus: str, release: bool = True) -> dict[str, str]:
        env = {"DIST_TESTS_GPUS": gpus, "DIST_TESTS_GPU_LOCK_DIR": str(self.locks),
               "LEASE_RECORDS_DIR": str(self.records)}
        if release:
            env["LEASE_RELEASE_FILE"] = str(self.release_file)
        return env

    def bazel_flags(self, gpus: str, release: bool = True) -> list[str]:
        return ["--nocache_test_results", *(f"--test_env={k}={v}" for k, v in self.env(gpus, release).items())]

    def held(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.records.glob("*.json"))]

    def wait_for_holders(self, count: int, procs: list[subprocess.Popen], seconds: float = 900) -> list[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(found := self.held()) >= count:
                return found
            ended = [p for p in procs if p.poll() is not None]
            if ended:
                raise AssertionError(f"ended before {count} runs held leases: {ended[0].communicate()[0][-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"only {len(self.held())} of {count} runs held a lease within {seconds}s")

    def holder_pid(self, gpu: int) -> int:
        """The host pid of the process holding one GPU's lock, as the kernel's lock table names it."""
        inode = (self.locks / f"gpu{gpu}.lock").stat().st_ino
        for line in pathlib.Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1] == "FLOCK" and int(fields[5].split(":")[2]) == inode:
                return int(fields[4])
        raise AssertionError(f"nobody holds GPU {gpu}")


@pytest.fixture
def leases():
    root = pathlib.Path(tempfile.mkdtemp(prefix="dist_tests_lease_test-", dir="/dev/shm"))
    yield Leases(root)
    shutil.rmtree(root, ignore_errors=True)


def overlap(a: dict, b: dict) -> bool:
    return a["acquired"] < b["released"] and b["acquired"] < a["released"]


# --- by hand: the harness's entry points as plain processes ---------------------------------------

def by_hand_env(tmp_path: pathlib.Path, **changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_", "LEASE_", "CUDA_"))}
    # nccl's device class (gpu) comes from the matrix; the interpreter keeps its cpu packages.
    env.update(BACKEND="nccl", WORLD_SIZE="2", TMPDIR=str(tmp_path), **changes)
    return env


def start_holder(python: str, env: dict[str, str], log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([python, HOLDER_FILE], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for_text(path: pathlib.Path, text: str, proc: subprocess.Popen, seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        if proc.poll() is not None:
            raise AssertionError(f"ended without saying {text!r}:\n{path.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not said within {seconds}s:\n{path.read_text()}")


BAD = [
    ("garbage", {"DIST_TESTS_GPUS": "0,one"}, "DIST_TESTS_GPUS='0,one' is not a list of GPU indices"),
    ("negative", {"DIST_TESTS_GPUS": "-1,0"}, "is not a list of GPU indices"),
    ("duplicate", {"DIST_TESTS_GPUS": "3,1,3"}, "names GPU 3 more than once"),
    ("too-few", {"DIST_TESTS_GPUS": "5"}, "needs 2 GPUs, and DIST_TESTS_GPUS=5 names 1"),
    ("lock-dir-uncreatable", {"DIST_TESTS_GPUS": "0,1", "DIST_TESTS_GPU_LOCK_DIR": "/proc/dist_tests_leases"},
     "the GPU lock folder /proc/dist_tests_leases cannot be created"),
    ("lock-dir-unwritable", {"DIST_TESTS_GPUS": "0,1", "DIST_TESTS_GPU_LOCK_DIR": "/sys"},
     "the GPU lock folder /sys is not writable"),
    ("lock-dir-relative", {"DIST_TESTS_GPUS": "0,1", "DIST_TESTS_GPU_LOCK_DIR": "leases"}, "is not an absolute path"),
]


@pytest.mark.parametrize("changes, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_gpu_settings_stop_the_run_before_any_rank(python, tmp_path, changes, expected):
    result = subprocess.run([python, ENTRY, "-k", "test_all_reduce_sum"], env=by_hand_env(tmp_path, **changes),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert expected in result.stderr
    assert "DIST_TESTS_GPU_LOCK_DIR" in result.stderr or "DIST_TESTS_GPUS" in result.stderr
    assert "leased GPUs" not in result.stderr and "Started process" not in result.stdout + result.stderr


def test_indices_the_driver_does_not_show_are_refused_and_the_default_is_the_visible_ones():
    # With a driver showing GPUs 0..3 (shown), as gpu_pool() gets it from /proc/driver/nvidia/gpus.
    with pytest.raises(gpu_leases.LeaseError, match=r"names GPU 4, 9, which this host's driver does not show"):
        gpu_leases.gpu_pool({"DIST_TESTS_GPUS": "2,4,9"}, shown=[0, 1, 2, 3])
    assert gpu_leases.gpu_pool({}, shown=[0, 1, 2, 3])[0] == [0, 1, 2, 3]
    assert gpu_leases.gpu_pool({"CUDA_VISIBLE_DEVICES": "3,1"}, shown=[0, 1, 2, 3])[0] == [1, 3]
    assert gpu_leases.gpu_pool({"CUDA_VISIBLE_DEVICES": ""}, shown=[0, 1, 2, 3])[0] == []
    # No driver: stand-ins are taken as given.
    assert gpu_leases.gpu_pool({"DIST_TESTS_GPUS": "6,7"}, shown=None)[0] == [6, 7]


def accel(tmp_path: pathlib.Path, script: str) -> gpu_leases.DeviceClass:
    """A device class of one's own whose devices the given shell script counts, as a target's line declares it."""
    command = tmp_path / "count.sh"
    command.write_text(f"#!/bin/sh\n{script}\n")
    command.chmod(0o755)
    return gpu_leases.DeviceClass("accel", 1, count="//vendor:count.sh", count_path=str(command),
                                  visible_devices="ACCEL_VISIBLE_DEVICES")


def test_a_class_of_ones_own_is_counted_by_its_command_within_its_own_variable(tmp_path):
    shown, source = gpu_leases.count_devices(accel(tmp_path, "echo 4"), {})
    assert shown == [0, 1, 2, 3] and source == "the accel devices //vendor:count.sh counts"
    # The user's own value of the class's variable narrows the pool, as CUDA_VISIBLE_DEVICES does for GPUs.
    pool, why = gpu_leases.gpu_pool({"ACCEL_VISIBLE_DEVICES": "3,1"}, shown, "ACCEL_VISIBLE_DEVICES", source)
    assert pool == [1, 3] and why.endswith("within ACCEL_VISIBLE_DEVICES=3,1")


@pytest.mark.parametrize("script, message", [
    ("echo two", "exited 0 and printed 'two'"),
    ("echo no device here >&2; exit 2", "exited 2 and printed '' (no device here)"),
    ("exec sleep 600", "did not finish within 1 s"),
    ("sleep 600 & echo 2; wait", "did not finish within 1 s"),  # its child holds the output open
])
def test_a_count_command_that_fails_hangs_or_prints_no_number_stops_the_run_naming_it(tmp_path, monkeypatch, script,
                                                                                      message):
    monkeypatch.setattr(gpu_leases, "_COUNT_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(gpu_leases.LeaseError) as error:
        gpu_leases.count_devices(accel(tmp_path, script), {})
    assert "//vendor:count.sh" in str(error.value) and message in str(error.value), str(error.value)
    assert "Fix //vendor:count.sh: it must print the number of accel devices on this host" in str(error.value)
    assert time.monotonic() - started < 30


def test_a_run_that_does_not_fit_waits_naming_the_holder_then_runs(python, tmp_path, leases):
    first = start_holder(python, by_hand_env(tmp_path, **leases.env("0,1")), tmp_path / "first.log")
    [held] = leases.wait_for_holders(1, [first])
    second_log = tmp_path / "second.log"
    second = start_holder(python, by_hand_env(tmp_path, **leases.env("0,1", release=False)), second_log)
    waiting = wait_for_text(second_log, WAITING, second)
    assert f"GPU 0 by nccl_2 by hand, pid {first.pid} " in waiting
    leases.release_file.touch()
    assert first.wait(60) == 0 and second.wait(60) == 0, second_log.read_text()
    first_record, second_record = sorted(leases.held(), key=lambda r: r["acquired"])
    assert first_record["gpus"] == second_record["gpus"] == held["gpus"] == [0, 1]
    assert first_record["visible"] == second_record["visible"] == "0,1", "ranks would see only the leased GPUs"
    assert second_record["acquired"] >= first_record["released"]
    assert "leased GPUs 0,1 of GPUs 0,1 (DIST_TESTS_GPUS=0,1) after waiting" in second_log.read_text()


def test_a_sigkilled_holder_frees_its_gpus_at_once(python, tmp_path, leases):
    first = start_holder(python, by_hand_env(tmp_path, **leases.env("0,1")), tmp_path / "first.log")
    leases.wait_for_holders(1, [first])
    second_log = tmp_path / "second.log"
    second = start_holder(python, by_hand_env(tmp_path, **leases.env("0,1", release=False)), second_log)
    wait_for_text(second_log, WAITING, second)
    assert leases.holder_pid(0) == first.pid
    first.send_signal(signal.SIGKILL)
    assert second.wait(60) == 0, second_log.read_text()
    assert first.wait() == -signal.SIGKILL
    killed, after = sorted(leases.held(), key=lambda r: r["acquired"])
    assert "released" not in killed, "the first holder was killed while holding"
    assert after["gpus"] == killed["gpus"] == [0, 1]


def test_a_run_that_waits_past_its_timeout_fails_saying_so(python, tmp_path, leases):
    first = start_holder(python, by_hand_env(tmp_path, **leases.env("0,1")), tmp_path / "first.log")
    leases.wait_for_holders(1, [first])
    # TEST_TIMEOUT=20: after the end margin and the least time a test needs, about 5 s of waiting.
    late = subprocess.run([python, ENTRY], env=by_hand_env(tmp_path, TEST_TIMEOUT="20", **leases.env("0,1")),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    leases.release_file.touch()
    assert first.wait(60) == 0
    assert late.returncode == 3, late.stdout + late.stderr
    assert "gave up: too little of this shard's Bazel timeout (20 s) was left to run a test" in late.stderr
    assert f"still held: GPU 0 by nccl_2 by hand, pid {first.pid} " in late.stderr
    assert "Started process" not in late.stdout + late.stderr


# --- real Bazel --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_server():
    """Startup options of a second Bazel server (an output base of its own) for the module's tests."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="dist_tests_second_server-"))
    startup = ("--output_base=" + str(base / "output_base"),)
    yield startup
    bazel("shutdown", startup=startup)
    subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
    shutil.rmtree(base, ignore_errors=True)


def bazel_in_background(log: pathlib.Path, *args: str, startup: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen([BAZEL, *startup, *args], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_two_bazel_servers_at_once_get_disjoint_gpus(tmp_path, leases, second_server):
    flags = ["test", HOLDER, *leases.bazel_flags("0,1,2,3")]
    runs = [bazel_in_background(tmp_path / "first.log", *flags),
            bazel_in_background(tmp_path / "second.log", *flags, startup=second_server)]
    try:
        leases.wait_for_holders(2, runs)
    finally:
        leases.release_file.touch()
    for run, name in zip(runs, ("first", "second")):
        assert run.wait(300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    first, second = leases.held()
    assert overlap(first, second), "both held their leases at the same time"
    assert set(first["gpus"]).isdisjoint(second["gpus"]), (first, second)
    assert {first["visible"], second["visible"]} == {",".join(map(str, r["gpus"])) for r in (first, second)}


def test_under_bazel_a_run_that_does_not_fit_waits_and_runs_once_the_holder_is_killed(tmp_path, leases, second_server):
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = bazel_in_background(first_log, "test", HOLDER, *leases.bazel_flags("0,1"))
    try:
        leases.wait_for_holders(1, [first])
        # Streamed: the waiting run's messages arrive while it waits.
        second = bazel_in_background(second_log, "test", HOLDER, "--test_output=streamed",
                                     *leases.bazel_flags("0,1", release=False), startup=second_server)
        waiting = wait_for_text(second_log, WAITING, second, seconds=900)
        assert f"GPU 0 by {HOLDER} shard" not in waiting  # not sharded: no shard in its record
        assert f"GPU 0 by {HOLDER}, pid " in waiting
        os.kill(leases.holder_pid(0), signal.SIGKILL)
        assert second.wait(300) == 0, second_log.read_text()[-3000:]
    finally:
        leases.release_file.touch()
    assert first.wait(300) != 0, "the killed holder's test fails"
    killed, after = sorted(leases.held(), key=lambda r: r["acquired"])
    assert "released" not in killed and after["gpus"] == killed["gpus"] == [0, 1]
    assert "leased GPUs 0,1 of GPUs 0,1 (DIST_TESTS_GPUS=0,1) after waiting" in second_log.read_text()


def test_matrix_gpu_target_leases_before_its_hardware_check(leases):
    target = "//dist_tests:nccl_2"
    run = bazel("test", target, "--test_filter=test_all_reduce_sum", "--test_env=DIST_TESTS_ALLOW_SKIP=1",
                *leases.bazel_flags("2,3", release=False))
    assert run.returncode == 0, run.output[-3000:]
    log = shard_log(target, 1)
    assert "dist_tests: leased GPUs 2,3 of GPUs 2,3 (DIST_TESTS_GPUS=2,3)" in log
    assert "skipped, 0 known failures, 0 did not run, 0 flaky, on leased GPUs 2,3" in log
    assert "0 passed, 0 failed, 1 skipped" in log  # then the hardware check skipped it, as without leases


# --- remote execution ----------------------------------------------------------------------------

def exclusive_targets(*flags: str) -> tuple[int, list[str]]:
    run = bazel("query", *flags, "attr(tags, '\\bexclusive\\b', //dist_tests:all + //tests:all)")
    return run.returncode, sorted(line for line in run.output.splitlines() if line.startswith("//"))


def test_gpu_targets_are_exclusive_locally_and_not_under_config_remote():
    code, exclusive = exclusive_targets()
    gpu = {"//dist_tests:nccl_2", "//dist_tests:nccl_4", "//dist_tests:ucc_2", "//dist_tests:gloo_gpu_2",
           "//dist_tests:gloo_gpu_4", HOLDER}
    assert code == 0 and gpu <= set(exclusive)
    # The CPU targets run in parallel.
    assert not set(exclusive) & {"//dist_tests:gloo_2", "//dist_tests:gloo_3", "//dist_tests:gloo_4"}
    # What --config=remote sets: Bazel 4.2.3 would run exclusive tests one at a time.
    assert exclusive_targets("--repo_env=DIST_TESTS_GPU_EXCLUSIVE=0") == (0, [])
    run = bazel("query", "--repo_env=DIST_TESTS_GPU_EXCLUSIVE=maybe", "//dist_tests:all")
    assert run.returncode != 0 and 'DIST_TESTS_GPU_EXCLUSIVE="maybe": use 1' in run.output


def test_two_gpu_workers_run_two_2_gpu_actions_at_once_on_disjoint_gpus(leases, cluster_blobs):
    """Over 2 minutes: a real cluster whose holders each keep their GPUs for a while, so that overlap shows."""
    from test_remote_execution import start_cluster, stop_cluster

    cluster = start_cluster(cpu=1, gpu=2, blobs=cluster_blobs)
    try:
        run = subprocess.Popen([BAZEL, "test", HOLDER, *cluster.flags, "--runs_per_test=2", "--remote_timeout=600",
                                *leases.bazel_flags("0,1,2,3")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            leases.wait_for_holders(2, [run])
        finally:
            leases.release_file.touch()
        output = run.communicate(timeout=600)[0]
        assert run.returncode == 0, output[-3000:]
        workers = {a.worker for a in cluster.actions() if a.target == HOLDER}
    finally:
        stop_cluster(cluster)
        shutil.rmtree(cluster.state, ignore_errors=True)
    first, second = leases.held()
    assert overlap(first, second), "the two actions held their leases at the same time"
    assert set(first["gpus"]).isdisjoint(second["gpus"]), (first, second)
    assert workers == {"gpu-1", "gpu-2"}
