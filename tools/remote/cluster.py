"""Starting and stopping a local remote-execution cluster (tools/remote/execution) from a tool.

Used by tools/remote/benchmark and tools/gpu/lease_benchmark: each starts a fresh cluster in
a state folder of its own and stops it, whatever happens, when done.
"""

import contextlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "remote" / "execution"


@contextlib.contextmanager
def local_cluster(who: str, *start_args: str, timeout: float = 900) -> Iterator[tuple[str, pathlib.Path]]:
    """A fresh cluster started with `tools/remote/execution start --dir STATE START_ARGS`: (its endpoint, STATE).

    Exits with `who`'s message and the tool's error output when it does not start; always stops it
    and removes its state folder afterwards.
    """
    state = pathlib.Path(tempfile.mkdtemp(prefix=f"dist_tests_{who}-cluster-", dir="/tmp"))
    try:
        proc = subprocess.run([str(TOOL), "start", "--dir", str(state), *start_args], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            sys.exit(f"{who}: the cluster did not start:\n{proc.stderr[-3000:]}")
        yield proc.stdout.strip().splitlines()[-1], state
    finally:
        subprocess.run([str(TOOL), "stop", "--dir", str(state)], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
