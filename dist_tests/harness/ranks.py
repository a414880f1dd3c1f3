"""What runs inside a rank process before PyTorch's own `_run`: environment, logs, faults.

With the forkserver start method a rank is forked from a server that imported torch and
the test module once, so it does not pay for those imports. The server's environment is
frozen when it starts, so each rank receives the parent's current environment (torch's
setUp writes per-test TEMP_DIR and INIT_METHOD into it) and re-reads the one module global
that torch derives from it at import time.
"""

import fnmatch
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

# Collectives a fault is injected into: the first one a test calls in the chosen rank.
_FAULT_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "reduce", "gather", "scatter", "barrier", "all_to_all", "reduce_scatter")
FAULT_KINDS = ("kill", "raise", "hang")


class FaultSpecError(ValueError):
    """DIST_TESTS_FAULT is malformed."""


def parse_fault(spec: str) -> tuple[str, int, str]:
    """Parses DIST_TESTS_FAULT=KIND:RANK[:TEST_GLOB], for example 'kill:1:test_all_reduce_sum'."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in FAULT_KINDS or not parts[1].isdigit():
        raise FaultSpecError(
            f"DIST_TESTS_FAULT={spec!r} is malformed: use KIND:RANK[:TEST_GLOB] with KIND one of {', '.join(FAULT_KINDS)}, "
            "for example kill:1:test_all_reduce_sum."
        )
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "*"


def _inject_fault(kind: str, rank: int) -> None:
    """Makes this rank's first collective call fail the chosen way."""
    import torch.distributed as dist

    def fault(*args: Any, **kwargs: Any) -> None:
        print(f"DIST_TESTS_FAULT: rank {rank} injects '{kind}' into a collective", file=sys.stderr, flush=True)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "raise":
            raise RuntimeError(f"DIST_TESTS_FAULT: injected error in rank {rank}")
        while True:  # "hang": block inside the collective, as a lost peer would
            time.sleep(3600)

    for name in _FAULT_COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, fault)


def _redirect_output(log_path: str) -> None:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_rank(target: Callable[..., None], environ: Mapping[str, str], log_path: str | None, args: tuple, kwargs: dict) -> None:
    """The entry of every rank process: sets it up, then calls torch's `_run`."""
    os.environ.clear()
    os.environ.update(environ)
    from torch.testing._internal.distributed import distributed_test

    # Read at import time upstream; a forked rank must see this test's value.
    distributed_test.INIT_METHOD = os.environ.get("INIT_METHOD", "env://")
    if log_path:
        _redirect_output(log_path)
    rank, test_name = args[0], args[1]
    spec = os.environ.get("DIST_TESTS_FAULT")
    if spec:
        kind, fault_rank, pattern = parse_fault(spec)
        if rank == fault_rank and fnmatch.fnmatchcase(test_name, pattern):
            _inject_fault(kind, rank)
    outputs = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if os.environ.get("DIST_TESTS_TIMING") != "1" or not outputs:
        target(*args, **kwargs)
        return
    # For tools/benchmark: how long this rank spent in torch's _run (rendezvous and test body).
    timing_dir = os.path.join(outputs, "timing")
    os.makedirs(timing_dir, exist_ok=True)
    started = time.monotonic()
    try:
        target(*args, **kwargs)
    finally:
        with open(os.path.join(timing_dir, f"{test_name}.rank{rank}"), "w") as f:
            f.write(f"{time.monotonic() - started:.6f}\n")


def signal_name(exit_code: int) -> str:
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


def use_abstract_unix_sockets() -> None:
    """Binds multiprocessing's Unix sockets (the forkserver's) in Linux's abstract namespace.

    Its default is a file under TMPDIR, and a Bazel TEST_TMPDIR is longer than the 107
    bytes a socket path may have. Abstract sockets have no file and no length problem,
    and each sandboxed test's network namespace keeps its own.
    """
    from multiprocessing import connection

    if getattr(connection.arbitrary_address, "dist_tests_abstract", False):
        return
    original = connection.arbitrary_address

    def arbitrary_address(family: str) -> Any:
        if family == "AF_UNIX":
            return f"\0dist_tests-{os.getpid()}-{os.urandom(6).hex()}"
        return original(family)

    arbitrary_address.dist_tests_abstract = True  # type: ignore[attr-defined]
    connection.arbitrary_address = arbitrary_address
