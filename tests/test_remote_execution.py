"""Remote execution on a real local cluster (tools/remote/execution: PostgreSQL, BuildGrid, worker
pools): where each test action runs, what comes back, the remote action cache across clones, a
worker lost mid-action, and bad input ending quickly with a message that says what to do."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zipfile

import pytest

from conftest import BAZEL, ROOT, all_cases, bazel, results
from test_remote_cache import copy_workspace, processes_line

# Its clusters and Bazel runs fill the waits of the other lane (tools/selftest).
pytestmark = pytest.mark.second_lane

TOOL = str(ROOT / "tools" / "remote" / "execution")
GLOO, NCCL = "//dist_tests:gloo_2", "//dist_tests:nccl_2"
FILTER = "--test_filter=test_all_reduce_sum test_broadcast test_barrier"
# Some 30 tests: the shard runs well past 10 s, when Bazel's test-setup.sh first checks that its
# own pid is alive (in the worker's PID namespace, it must find its own /proc).
LONG_FILTER = "--test_filter=*all_reduce*"
# Every test writes a timing file to Bazel's undeclared outputs; all-skipped GPU shards pass.
ENV = ("--test_env=DIST_TESTS_TIMING=1", "--test_env=DIST_TESTS_ALLOW_SKIP=1")
QUEUE_TIMEOUT_S = 20
# No more actions at once than the cluster has cpu workers, so that Bazel's own work and the workers'
# do not crowd this 2-core host (a job waiting for a busy worker of its pool no longer times out: see
# test_a_job_waiting_for_a_busy_worker...). After --config=remote, whose --jobs=64 would win otherwise.
JOBS = ("--jobs=2",)
ACTION_LINE = re.compile(r" action (?P<digest>\S+) (?P<event>started|done) pool=(?P<pool>\S+) worker=(?P<worker>\S+) "
                         r"target=(?P<target>\S+) shard=(?P<shard>\S+)(?P<rest>.*)")


@dataclasses.dataclass(frozen=True)
class Action:
    digest: str
    event: str
    pool: str
    worker: str
    target: str
    shard: str
    rest: str


class Cluster:
    def __init__(self, state: pathlib.Path, endpoint: str):
        self.state = state
        self.endpoint = endpoint
        self.flags = ("--config=remote", f"--remote_executor={endpoint}")

    def actions(self, event: str = "done") -> list[Action]:
        """Every action the workers logged, from their own logs."""
        found = []
        for log in sorted((self.state / "logs").glob("worker-*.log")):
            for line in log.read_text().splitlines():
                if (m := ACTION_LINE.search(line)) and m["event"] == event:
                    found.append(Action(m["digest"], m["event"], m["pool"], m["worker"], m["target"], m["shard"],
                                        m["rest"]))
        return found

    def pid(self, name: str) -> int:
        return int((self.state / "pids" / f"{name}.pid").read_text())


def start_cluster(cpu: int, gpu: int, blobs: pathlib.Path) -> Cluster:
    """A new cluster whose CAS and input cache are in blobs (the session's cluster_blobs)."""
    # PostgreSQL runs as the postgres user: the folder must be reachable by it (not under /root).
    state = pathlib.Path(tempfile.mkdtemp(prefix="dist_tests_remote_execution-", dir="/tmp"))
    proc = subprocess.run([TOOL, "start", "--dir", str(state), "--cpu-workers", str(cpu), "--gpu-workers", str(gpu),
                           "--queue-timeout", str(QUEUE_TIMEOUT_S), "--blobs", str(blobs)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return Cluster(state, proc.stdout.strip().splitlines()[-1])


def processes_using(folder: pathlib.Path) -> list[str]:
    """Processes whose command line or working folder lies in folder (the cluster's own)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def stop_cluster(cluster: Cluster) -> None:
    pids = [int(p.read_text()) for p in (cluster.state / "pids").glob("*.pid")]
    proc = subprocess.run([TOOL, "stop", "--dir", str(cluster.state)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [pid for pid in pids if pathlib.Path(f"/proc/{pid}").exists()] == []
    assert processes_using(cluster.state) == []


@pytest.fixture(scope="module")
def cluster(cluster_blobs):
    started = start_cluster(cpu=2, gpu=1, blobs=cluster_blobs)
    try:
        yield started
    finally:
        stop_cluster(started)
        shutil.rmtree(started.state, ignore_errors=True)


def case_outcomes(target: str) -> list[tuple[str, str]]:
    return sorted((c.name, c.outcome) for c in all_cases(target))


def test_filtered_suite_runs_on_the_cpu_pool_gpu_target_on_the_gpu_pool_with_local_outcomes(cluster):
    """Over 2 minutes: the same selection runs locally and then through the real cluster (with the upload of the
    ~900 MB environment when no earlier cluster of the session made it), so that outcomes can be compared test by
    test."""
    local = bazel("test", GLOO, LONG_FILTER, *ENV, "--nocache_test_results")
    assert local.returncode == 0, local.output
    local_outcomes = case_outcomes(GLOO)
    assert len(local_outcomes) > 10

    run = bazel("test", GLOO, NCCL, LONG_FILTER, *ENV, "--nocache_test_results", *cluster.flags, *JOBS)
    assert run.returncode == 0, run.output
    print(f"remote run: {processes_line(run.output)}")
    assert re.search(r"\b6 remote\b", processes_line(run.output)), processes_line(run.output)
    assert case_outcomes(GLOO) == local_outcomes
    assert {outcome for _, outcome in case_outcomes(NCCL)} == {"skipped"}
    # Undeclared outputs came back: the timing file of every test that ran.
    # (Shards that a small filtered selection leaves idle write none.)
    zips = results(GLOO).output_zips()
    assert zips, "no shard's undeclared outputs came back"
    outputs = [name for z in zips for name in zipfile.ZipFile(z).namelist()]
    for test, outcome in local_outcomes:
        if outcome == "passed":
            assert f"timing/{test}.rank0" in outputs, outputs

    done = cluster.actions()
    for action in done:
        print(f"{action.worker} {action.target} shard {action.shard}:{action.rest}")
    gloo = [a for a in done if a.target == GLOO]
    assert sorted(a.shard for a in gloo) == ["0", "1", "2", "3"]
    assert {(a.pool, a.worker.split("-")[0]) for a in gloo} == {("cpu", "cpu")}
    nccl = [a for a in done if a.target == NCCL]
    assert sorted(a.shard for a in nccl) == ["0", "1"]
    assert {(a.pool, a.worker) for a in nccl} == {("gpu", "gpu-1")}
    assert "this host has no GPU" in (cluster.state / "logs" / "worker-gpu-1.log").read_text()


def test_second_clone_gets_every_test_action_from_the_remote_action_cache(cluster, tmp_path):
    """Over 2 minutes: the first clone runs its actions on the cluster, then a second clone with a fresh output
    base must get every one from the action cache."""
    # Its own action keys, so that this clone runs them remotely (--nocache_test_results runs
    # are not cached, and this workspace may hold local results of the same keys).
    key = "--test_env=DIST_TESTS_REMOTE_CACHE_CHECK=1"
    first = bazel("test", GLOO, NCCL, FILTER, *ENV, key, *cluster.flags, *JOBS)
    assert first.returncode == 0, first.output
    assert re.search(r"\b6 remote\b", processes_line(first.output)), processes_line(first.output)
    executed = len(cluster.actions())
    clone = copy_workspace(tmp_path / "elsewhere" / "clone")
    output_base = tmp_path / "output_base"
    try:
        proc = subprocess.run(
            [str(clone / "tools/bazel"), f"--output_base={output_base}", "test", GLOO, NCCL, FILTER, *ENV, key,
             *cluster.flags, *JOBS],
            cwd=clone, capture_output=True, text=True, timeout=1800,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output
        line = processes_line(output)
        print(f"second clone: {line}")
        assert re.search(r"\b6 remote cache hit", line), line
        assert not re.search(r"\d+ remote[,.]|linux-sandbox|local", line), line
        assert len(cluster.actions()) == executed  # no worker ran anything for it
    finally:
        subprocess.run([str(clone / "tools/bazel"), f"--output_base={output_base}", "shutdown"], cwd=clone, timeout=120)
        subprocess.run(["chmod", "-R", "u+w", str(output_base)], check=False)
        shutil.rmtree(output_base, ignore_errors=True)


def wait_for_new_start(cluster: Cluster, before: list[Action], proc: subprocess.Popen, seconds: float = 600) -> Action:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        new = [a for a in cluster.actions("started") if a not in before]
        if new:
            return new[0]
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"no action started: {proc.communicate()[0]}")


def bazel_in_background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([BAZEL, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


SOCKET_FOLDER = re.compile(r"(/\S+/dist_tests-[^/\s]+)/fs-")


def wait_for_forkserver_socket(folder: pathlib.Path, proc: subprocess.Popen, seconds: float = 600) -> str:
    """The folder of the forkserver socket that an action running in `folder` has bound, as the
    action names it (from its own network namespace's socket table)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        for entry in pathlib.Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.readlink(entry / "cwd").startswith(str(folder)):
                    if found := SOCKET_FOLDER.search((entry / "net" / "unix").read_text()):
                        return found[1]
            except OSError:
                continue
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no forkserver socket seen under {folder}: {proc.communicate()[0]}")


def test_a_worker_killed_mid_action_is_retried_on_another_worker(cluster):
    before, done_before = cluster.actions("started"), cluster.actions()
    # A new action key (its own per-test timeout), one action: the whole filtered suite, long
    # enough (some 30 tests) that its forkserver is surely seen before it ends.
    proc = bazel_in_background("test", GLOO, LONG_FILTER, "--test_sharding_strategy=disabled",
                               "--test_env=DIST_TESTS_PER_TEST_TIMEOUT=123", "--nocache_test_results", *cluster.flags)
    victim = wait_for_new_start(cluster, before, proc)
    # Killed while its test runs: the forkserver is up, its socket folder made.
    socket_folder = wait_for_forkserver_socket(cluster.state / "workers" / victim.worker, proc)
    os.kill(cluster.pid(f"worker-{victim.worker}"), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    done = [a for a in cluster.actions() if a not in done_before]
    print(f"killed {victim.worker}; then: {done}")
    assert [(a.target, a.pool) for a in done] == [(GLOO, "cpu")]
    assert done[0].worker != victim.worker and " exit=0 " in done[0].rest
    # Nothing the killed worker started is still running, nor left in /tmp: the action's /tmp was its own.
    assert processes_using(cluster.state / "workers" / victim.worker) == []
    assert not os.path.exists(socket_folder)


@pytest.mark.parametrize(
    "platform, message",
    [
        ("//tests:remote_unknown_property", "Unregistered platform property [Colour={'blue'}]"),
        ("//tests:remote_pool_without_workers", "no worker with {ISA=x86-64, OSFamily=linux, Pool=tpu} took it"),
    ],
)
def test_an_action_no_worker_can_take_fails_quickly_naming_why(cluster, platform, message):
    # The bound is the timeout: a hang would raise TimeoutExpired.
    run = bazel("test", GLOO, "--test_filter=test_barrier", "--nocache_test_results", *cluster.flags,
                f"--//tools/platforms:remote={platform}", timeout=4 * QUEUE_TIMEOUT_S + 120)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]


def test_a_job_waiting_for_a_busy_worker_of_its_pool_waits_past_the_queue_timeout(cluster):
    """Two runs of a test that holds its worker longer than the queue timeout, sent at once to the one
    worker of the gpu pool: the second waits for the first instead of failing as if the pool had none."""
    wait_s = QUEUE_TIMEOUT_S + 10  # past the timeout and the server's 5 s check period
    target = "//tests:holds_a_worker_test"
    # Without Bazel's retry, which would hide a job failed at the timeout by queueing it again.
    run = bazel("test", target, "--runs_per_test=2", f"--test_env=WAIT_S={wait_s}", "--nocache_test_results",
                *cluster.flags, "--//tools/platforms:remote=//tests:remote_gpu_pool", *JOBS, "--remote_retries=0",
                timeout=4 * wait_s + 120)
    assert run.returncode == 0, run.output[-3000:]
    # Each run is two actions: the test, then Bazel's XML writer for a test that wrote none.
    held = [a for a in cluster.actions()
            if a.target == target and float(re.search(r" exec_s=(\S+)", a.rest)[1]) >= wait_s]
    assert [(a.pool, a.worker) for a in held] == [("gpu", "gpu-1")] * 2, held
    assert all(" exit=0 " in a.rest for a in held)


def test_a_wrong_endpoint_fails_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    run = bazel("test", GLOO, "--config=remote", f"--remote_executor=grpc://127.0.0.1:{unused}", timeout=120)
    assert run.returncode != 0
    assert f"Failed to query remote execution capabilities: Connection refused: /127.0.0.1:{unused}" in run.output


def test_the_server_stopped_mid_run_fails_the_run_and_stop_leaves_no_process(cluster_blobs):
    own = start_cluster(cpu=1, gpu=0, blobs=cluster_blobs)
    try:
        before = own.actions("started")
        proc = bazel_in_background("test", GLOO, "--test_filter=test_broadcast", "--test_sharding_strategy=disabled",
                                   "--test_env=DIST_TESTS_PER_TEST_TIMEOUT=124", "--nocache_test_results", *own.flags)
        wait_for_new_start(own, before, proc)
        stop_cluster(own)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0
        assert "UNAVAILABLE" in output or "Connection refused" in output, output[-3000:]
    finally:
        subprocess.run([TOOL, "stop", "--dir", str(own.state)], capture_output=True, timeout=120)
        shutil.rmtree(own.state, ignore_errors=True)
