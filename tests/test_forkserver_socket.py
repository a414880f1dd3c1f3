"""The forkserver's socket (it runs whatever a client sends) is reachable by the run's user alone."""

import os
import pathlib
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import ROOT

# Connects to the Unix socket argv[1] ('@name' for the abstract namespace); prints the outcome.
CONNECT = """
import socket, sys
address = "\\0" + sys.argv[1][1:] if sys.argv[1].startswith("@") else sys.argv[1]
try:
    socket.socket(socket.AF_UNIX).connect(address)
    print("connected")
except OSError as error:
    print(type(error).__name__)
"""


def connect_as_nobody(address: str) -> str:
    # The system Python: the locked one lives in a folder that nobody may not enter.
    run = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c",
                          CONNECT, address], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in pathlib.Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def listening_unix_sockets(pids: list[int]) -> list[str]:
    """Paths of the listening Unix sockets these processes hold."""
    inodes = set()
    for pid in pids:
        for fd in pathlib.Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    paths = []
    for line in pathlib.Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Flags 00010000: a listening socket.
        if len(fields) >= 8 and fields[6] in inodes and fields[3] == "00010000":
            paths.append(fields[7])
    return paths


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the user nobody")
def test_another_user_cannot_connect_to_the_forkserver_during_a_run(python, tmp_path):
    # Control: the abstract namespace (the old design) lets anyone connect.
    name = f"@dist_tests-control-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as control:
        control.bind("\0" + name[1:])
        control.listen()
        assert connect_as_nobody(name) == "connected"

    # A Bazel-like TEST_TMPDIR longer than a socket path may be.
    test_tmpdir = tmp_path / ("x" * 60) / ("y" * 60)
    test_tmpdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "TESTBRIDGE"))}
    # Rank 1 hangs in its first collective, which keeps the run (and its forkserver) alive a while.
    env.update(BACKEND="gloo", WORLD_SIZE="2", TEST_TMPDIR=str(test_tmpdir), DIST_TESTS_FAULT="hang:1")
    run = subprocess.Popen([python, "dist_tests/spawn_test.py", "-k", "test_all_reduce_sum"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        sockets: list[str] = []
        while not sockets and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)
            sockets = listening_unix_sockets(descendants(run.pid))
        assert len(sockets) == 1, f"the forkserver's socket was not found: {sockets}"
        path = sockets[0]
        folder = os.path.dirname(path)
        assert len(os.fsencode(path)) < 108
        mode = os.stat(folder)
        assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == os.geteuid()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert connect_as_nobody(path) == "PermissionError"
        # Ended as Bazel ends a test that runs out of time.
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        else:
            os.killpg(run.pid, signal.SIGKILL)  # the hung rank
    assert run.returncode == -signal.SIGTERM
    assert not os.path.exists(folder), "the socket folder was left behind"
