"""What runs inside a rank process before PyTorch's own `_run`: environment, logs, faults.

With the forkserver start method a rank is forked from a server that imported torch and
the test module once, so it does not pay for those imports. The server's environment is
frozen when it starts, so each rank receives the parent's current environment (torch's
setUp writes per-test TEMP_DIR and INIT_METHOD into it). A forked rank then ends the way a
spawned one does: atexit handlers run and Python's and C's stdio buffers are flushed
(multiprocessing would end it with os._exit, which skips both).
"""

import atexit
import ctypes
import os
import signal
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from dist_tests.harness import cleanup, environment, faults, rank_reports
from dist_tests.harness.environment import ATTEMPT


def _redirect_output(log_path: str) -> None:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_rank(target: Callable[..., None], environ: Mapping[str, str], log_path: str | None, forked: bool, args: tuple,
             kwargs: dict, line: rank_reports.RankLine | None = None) -> None:
    """The entry of every rank process: sets it up, then calls torch's `_run` (`target`).

    `forked` says the rank came from the forkserver rather than a fresh interpreter; `line`
    is how the parent asks it for its stacks and flight recorder dump (rank_reports.py).
    """
    environment.become_rank(environ)
    if log_path:
        _redirect_output(log_path)
    if line:
        rank_reports.serve(line)
    try:
        if forked:
            from dist_tests.harness import torch_internals  # torch is loaded in a forked rank

            torch_internals.prepare_forked_rank(args)
            _use_thread_share()
            _skip_inherited_exit_finalizers()
        try:
            _run_target(target, args, kwargs)
        except SystemExit as end:
            if line and line.dump_path and end.code not in (0, None):
                _dump_on_error(line.dump_path, end.code)
            raise
    finally:
        if forked:
            _end_like_a_spawned_process()


def _dump_on_error(path: str, code: Any) -> None:
    """A rank whose test raised keeps its own record: it is gone before the parent could ask for it."""
    from torch.testing._internal.common_distributed import MultiProcessTestCase

    if code == MultiProcessTestCase.TEST_ERROR_EXIT_CODE:
        why = rank_reports.dump_record(path)
        if why:
            print(f"dist_tests: this rank's flight recorder dump was not kept: {why}", file=sys.stderr, flush=True)


def _use_thread_share() -> None:
    """The forkserver's torch sized its thread pool when the server started; apply this run's share."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def _skip_inherited_exit_finalizers() -> None:
    """Keeps the weakref finalisers that the forkserver's imports registered from running at this rank's exit.

    Importing torch registers about 170 of them, each deregistering an operator library
    from torch's dispatcher: identical in every rank and test, about 0.1 to 0.4 s per rank
    on this machine, a third of a forked rank's cost. Finalisers the rank registers itself
    still run at its exit, as every atexit handler does.
    """
    for finalizer in list(weakref.finalize._registry):  # type: ignore[attr-defined]
        finalizer.atexit = False


def _run_target(target: Callable[..., None], args: tuple, kwargs: dict) -> None:
    rank, test_name = args[0], args[1]
    spec = os.environ.get("DIST_TESTS_FAULT")
    if spec:
        fault = faults.parse_fault(spec)
        if fault.applies(rank, test_name, int(os.environ.get(ATTEMPT, "1"))):
            faults.inject_fault(fault.kind, rank)
    outputs = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if os.environ.get("DIST_TESTS_TIMING") != "1" or not outputs:
        target(*args, **kwargs)
        return
    # For tools/upstream/benchmark: how long this rank spent in torch's _run (rendezvous and test body).
    timing_dir = os.path.join(outputs, "timing")
    os.makedirs(timing_dir, exist_ok=True)
    started = time.monotonic()
    try:
        target(*args, **kwargs)
    finally:
        with open(os.path.join(timing_dir, f"{test_name}.rank{rank}"), "w") as f:
            f.write(f"{time.monotonic() - started:.6f}\n")


def _end_like_a_spawned_process() -> None:
    """What an interpreter's normal exit does and a forkserver child's os._exit skips.

    Runs the atexit handlers (a handler that raises is reported and the rest still run,
    as at a normal exit), then flushes Python's and C's stdio buffers, so the tail of a
    rank's C/C++ output reaches its log. The exit code is the one the test produced.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    ctypes.CDLL(None).fflush(None)


def signal_name(exit_code: int) -> str:
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


_SOCKET_FOLDER_BASES = ("/tmp", "/dev/shm", "/var/tmp")
_SOCKET_PATH_LIMIT = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def socket_folder_base(env: Mapping[str, str] = os.environ) -> str:
    """A folder for the private socket folder: TMPDIR when short enough, else the first writable short one."""
    for base in (env.get("TMPDIR", ""), *_SOCKET_FOLDER_BASES):
        # Room for "/dist_tests-XXXXXXXX/fs-PID-XXXXXXXXXXXX" below the base.
        if base and len(os.fsencode(base)) + 48 <= _SOCKET_PATH_LIMIT and os.access(base, os.W_OK | os.X_OK):
            return base
    raise OSError("no writable folder with a path short enough for a Unix socket "
                  f"(tried TMPDIR, {', '.join(_SOCKET_FOLDER_BASES)})")


def use_private_socket_folder() -> str:
    """Binds multiprocessing's Unix sockets (the forkserver's) in a folder only this user can enter.

    The forkserver unpickles whatever a client sends it, so a client is code run as this
    user: its socket must not be reachable by anyone else. Linux's abstract namespace has no
    permissions at all, and Bazel's TEST_TMPDIR is longer than the 107 bytes a socket path
    may have, so the sockets go in a 0700 folder under a short base (usually /tmp), which is
    removed when this process exits. Returns the folder.
    """
    from multiprocessing import connection

    folder = getattr(connection.arbitrary_address, "dist_tests_folder", None)
    if folder:
        return folder
    folder = tempfile.mkdtemp(prefix="dist_tests-", dir=socket_folder_base())  # mode 0700
    cleanup.remove_at_exit(folder)
    cleanup.remove_on_sigterm(folder)
    original = connection.arbitrary_address

    def arbitrary_address(family: str) -> Any:
        if family == "AF_UNIX":
            return os.path.join(folder, f"fs-{os.getpid()}-{os.urandom(6).hex()}")
        return original(family)

    arbitrary_address.dist_tests_folder = folder  # type: ignore[attr-defined]
    connection.arbitrary_address = arbitrary_address
    return folder
