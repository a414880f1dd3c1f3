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
from multiprocessing import forkserver as mp_forkserver

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


def start(report_dir: str) -> Proof:
    """Starts the server with PRELOAD, waits for its preload, returns its proof.

    Raises ForkserverError when a preload module failed to import in the server (multiprocessing
    itself would go on silently, slower) or the server died.
    """
    global _proof
    if _proof is not None:  # one server per run: its answer holds for every fork
        return _proof
    preload = list(PRELOAD)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload + [PROOF_MODULE])
    ranks.use_private_socket_folder()
    report = os.path.join(report_dir, f"forkserver-{os.getpid()}.json")
    # The server's environment is this process's while ensure_running() starts it.
    with environment.forkserver_environment(_WORKSPACE, report, preload, _DRIVER_INITIALISING_VARIABLES):
        mp_forkserver.ensure_running()
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
    _proof = Proof(bool(found["fork_safe"]), f"the CUDA driver{where} is {found['driver']} in the forkserver")
    return _proof
