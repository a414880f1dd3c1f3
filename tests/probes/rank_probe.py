"""Ranks started exactly as the harness starts them, reporting what tests/test_start_methods.py asks.

Run with BACKEND=gloo, WORLD_SIZE, DIST_TESTS_START_METHOD and PROBE_OUT (a folder). Each rank
writes PROBE_OUT/rankN.json (its thread counts, whether it was forked from the forkserver, and
any CUDA entry points the forkserver's preload called when PROBE_FAKE_CUDA_BUILD=1), registers an
atexit handler that writes PROBE_OUT/atexit.rankN, and leaves "c-stdio-tail-rankN" unflushed in C's stdout buffer.
PROBE_POISONED_FORKSERVER=1 makes torch in the forked ranks report a bad fork, as after the
server touched CUDA; PROBE_LIBCUDA maps a stand-in CUDA driver into the server
(driver_in_server.py); PROBE_PRELOAD adds a module of that name to the server's preload.
PROBE_PARENT_PRELOADS=1 makes the parent import every preload module, as the entry point does, so
that its own fork may serve (forkserver.fork_early); PROBE_PARENT_THREAD=1 starts a second thread in
it, PROBE_PARENT_LIBCUDA=PATH maps and initialises a stand-in driver in it. Each rank reports whether
its server is a fork of the parent, and the parent writes PROBE_OUT/parent.json at its exit: whether
its work folder was still there (a rank's exit must not remove it).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dist_tests.harness import runner  # noqa: E402

runner.configure()

import atexit  # noqa: E402
import ctypes  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from dist_tests.harness import forkserver, suite  # noqa: E402
from dist_tests.harness.state import RUN  # noqa: E402


def _write(name: str, text: str) -> None:
    with open(os.path.join(os.environ["PROBE_OUT"], name), "w") as f:
        f.write(text)


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _server_is_a_fork_of_the_parent() -> bool:
    """A fork keeps its parent's command line; a fresh server's is multiprocessing's `-c ...main(...)`."""
    server = os.getppid()
    with open(f"/proc/{server}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    return _cmdline(server) == _cmdline(parent)


def _parent_folders(owner: int) -> None:
    """At the parent's exit, before its folders are removed (atexit runs the latest first)."""
    if os.getpid() == owner:  # a rank forked from a fork of the parent inherits this handler
        _write("parent.json", json.dumps({"work_dir": os.path.isdir(RUN.settings.work_dir)}))


class RankProbe(suite.StandaloneSpawnCase):
    def test_report(self) -> None:
        fake = sys.modules.get("fake_cuda_build")
        report = {
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "preload_cuda_calls": fake.SERVER_CALLS if fake else None,
            # Only the forkserver preloads the proof module: a spawned rank never imports it.
            "from_forkserver": "dist_tests.harness.forkserver_proof" in sys.modules,
            "server_is_parents_fork": _server_is_a_fork_of_the_parent() if sys.modules.get(
                "dist_tests.harness.forkserver_proof") else False,
        }
        _write(f"rank{self.rank}.json", json.dumps(report))
        atexit.register(_write, f"atexit.rank{self.rank}", "ran\n")
        ctypes.CDLL(None).printf(f"c-stdio-tail-rank{self.rank}".encode())  # no newline, no flush


if __name__ == "__main__":
    # The forkserver finds its preload modules through PYTHONPATH (Python 3.11's ignores sys.path).
    probes = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([probes, ROOT, os.environ.get("PYTHONPATH", "")])
    if os.environ.get("PROBE_FAKE_CUDA_BUILD") == "1":
        forkserver.PRELOAD.insert(0, "fake_cuda_build")
    if os.environ.get("PROBE_POISONED_FORKSERVER") == "1":
        forkserver.PRELOAD.append("poisoned_fork")
    if os.environ.get("PROBE_LIBCUDA"):
        forkserver.PRELOAD.append("driver_in_server")
    if os.environ.get("PROBE_PRELOAD"):
        forkserver.PRELOAD.append(os.environ["PROBE_PRELOAD"])
    if os.environ.get("PROBE_NVML") == "0":
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # as before the harness set it
    if os.environ.get("PROBE_PARENT_PRELOADS") == "1":
        for module in forkserver.PRELOAD:
            importlib.import_module(module)
    if os.environ.get("PROBE_PARENT_THREAD") == "1":
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    if os.environ.get("PROBE_PARENT_LIBCUDA"):
        ctypes.CDLL(os.environ["PROBE_PARENT_LIBCUDA"]).cuInit(0)
    atexit.register(_parent_folders, os.getpid())
    runner.main(RankProbe)
