"""Starts the forkserver that ranks fork from, and proves it clean before any rank forks.

The server imports torch and the suite once (PRELOAD), so a rank costs a fork instead of a
fresh interpreter. Forked ranks can use CUDA only if the server never initialised the CUDA
driver, which importing torch's test internals does not do with the NVML-based check the
runner sets, unless NVML fails or NUM_PARALLEL_PROCS makes common_utils ask CUDA for its
memory. So the server runs without NUM_PARALLEL_PROCS, and its last preload module
(forkserver_proof.py) asks the driver itself; `start()` reads that answer before the first
rank forks. A server that cannot be proven clean is not used: the caller falls back to spawn.
"""

import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from multiprocessing import connection
from multiprocessing import forkserver as mp_forkserver
from typing import Any

from dist_tests.harness import environment, ranks

PRELOAD = [
    "torch",
    "dist_tests.harness.plugin_preload",  # before the suite, whose decorators read the backend's features
    "torch.testing._internal.distributed.distributed_test",
    "dist_tests.harness.ranks",
    "dist_tests.harness.suite",
]
# Read by common_utils at import: with it set, the import asks CUDA for its memory (cuInit).
_DRIVER_INITIALISING_VARIABLES = ("NUM_PARALLEL_PROCS",)
_START_TIMEOUT_S = 600.0
# The proof module, preloaded last (environment.forkserver_environment() tells it where to write).
PROOF_MODULE = "dist_tests.harness.forkserver_proof"
_proof: "Proof | None" = None
# The folder that holds the dist_tests package: the workspace, or Bazel's runfiles.
_WORKSPACE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ForkserverError(Exception):
    """The server could not start or import its preload modules: a broken setup, not a CUDA state."""


@dataclasses.dataclass(frozen=True)
class Proof:
    fork_safe: bool
    driver: str  # what the driver answered in the server, in words


def _started() -> None:
    """The first process forked from the server: it exists only once the preload has finished."""


@dataclasses.dataclass(frozen=True)
class _Early:
    """A server forked from this process by fork_early(), not yet proven."""

    pid: int
    report: str


_early: _Early | None = None
# What fork_early() sets in multiprocessing's ForkServer, as its ensure_running() does.
_SERVER_STATE = ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid")


def fork_early(report_dir: str, close: Sequence[int] = ()) -> bool:
    """Makes a fork of this process the forkserver now, when that is safe; start() proves it and uses it.

    Called first in runner.main(): this process has imported torch, the suite and every PRELOAD
    module, and has run nothing of its tests, so its fork holds what a fresh server would import,
    without importing it again (about 5 s of CPU and of wall time per shard here). Returns False,
    having started nothing, when a preload module is missing here or another Python thread runs
    (a fork copies only this one); start() then starts a fresh server, as it would have anyway.

    The fork holds the descriptors this process holds, for no longer: it ends when this process
    ends. `close` are those this process releases before its end (its GPU leases' locks): the
    fork closes them.
    """
    global _early
    if _proof is not None or _early is not None or not _forkable():
        return False
    server = mp_forkserver._forkserver  # type: ignore[attr-defined]
    if not all(hasattr(server, name) for name in _SERVER_STATE) or server._forkserver_pid is not None:
        return False  # not the multiprocessing this reads (3.10 to 3.13), or a server already runs
    ranks.use_private_socket_folder()  # before the fork: the server listens there
    report = os.path.join(report_dir, f"forkserver-{os.getpid()}-early.json")
    listener = socket.socket(socket.AF_UNIX)
    address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
    listener.bind(address)
    os.chmod(address, 0o600)
    listener.listen()
    alive_r, alive_w = os.pipe()  # the server ends when this process, the last holder of alive_w, ends
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or both processes would write what is buffered
    with environment.forkserver_environment(_WORKSPACE, report, list(PRELOAD), ()):
        pid = os.fork()
        if pid == 0:
            _serve_from_fork(listener.fileno(), alive_r, alive_w, close)
    os.close(alive_r)
    listener.close()
    server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid
    _early = _Early(pid, report)
    return True


def _forkable() -> bool:
    """Whether a fork of this process may serve as the forkserver (see fork_early)."""
    return threading.active_count() == 1 and all(name in sys.modules for name in PRELOAD)


def _serve_from_fork(listener_fd: int, alive_r: int, alive_w: int, close: Sequence[int]) -> None:
    """In the fork: multiprocessing's server loop, with the proof as its only preload. Never returns."""
    code = 1
    try:
        os.close(alive_w)
        for fd in close:
            os.close(fd)
        mp_forkserver.main(listener_fd, alive_r, [PROOF_MODULE])
    except SystemExit:  # every client is gone: the server's normal end
        code = 0
    finally:
        os._exit(code)


def _stop_early() -> None:
    """Ends an early server that could not be proven clean; multiprocessing forgets it."""
    global _early
    server = mp_forkserver._forkserver  # type: ignore[attr-defined]
    os.close(server._forkserver_alive_fd)
    assert _early is not None
    try:
        os.kill(_early.pid, signal.SIGKILL)
        os.waitpid(_early.pid, 0)
    except OSError:
        pass
    server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
    _early = None


def start(report_dir: str) -> Proof:
    """Proves the early server (fork_early), or starts a fresh one with PRELOAD; returns its proof.

    An early server that is not clean is stopped and a fresh one started: this process may have
    touched CUDA where a fresh import does not. Raises ForkserverError when a preload module
    failed to import in the server (multiprocessing itself would go on silently, slower) or the
    server died.
    """
    global _proof
    if _proof is not None:  # one server per run: its answer holds for every fork
        return _proof
    preload = list(PRELOAD)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload + [PROOF_MODULE])
    if _early is not None:
        proof = _await_proof(context, preload, _early.report)
        if proof.fork_safe:
            _proof = proof
            return _proof
        _stop_early()
    ranks.use_private_socket_folder()
    report = os.path.join(report_dir, f"forkserver-{os.getpid()}.json")
    # The server's environment is this process's while ensure_running() starts it.
    with environment.forkserver_environment(_WORKSPACE, report, preload, _DRIVER_INITIALISING_VARIABLES):
        mp_forkserver.ensure_running()
    _proof = _await_proof(context, preload, report)
    return _proof


def _await_proof(context: Any, preload: list[str], report: str) -> Proof:
    """Waits until the server has finished its preload (it then forks a first process), and reads its proof."""
    try:
        first = context.Process(target=_started, name="forkserver-ready")
        first.start()
        first.join(_START_TIMEOUT_S)
    except (OSError, EOFError) as error:
        raise ForkserverError(f"the forkserver died while importing {', '.join(preload)} ({error}); "
                              "its traceback is above") from None
    if first.exitcode is None:
        first.kill()
        raise ForkserverError(f"the forkserver did not import {', '.join(preload)} within {_START_TIMEOUT_S:.0f} s")
    try:
        with open(report, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError) as error:
        raise ForkserverError(f"the forkserver wrote no proof ({error}): {PROOF_MODULE} did not run "
                              "in it") from None
    finally:
        if os.path.exists(report):
            os.unlink(report)
    if found["import_errors"]:
        raise ForkserverError("the forkserver could not import its preload module(s): " + "; ".join(
            f"{name}: {error}" for name, error in found["import_errors"].items()))
    where = f" ({found['library']})" if found["library"] else ""
    return Proof(bool(found["fork_safe"]), f"the CUDA driver{where} is {found['driver']} in the forkserver")
