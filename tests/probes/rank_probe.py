"""Ranks started exactly as the harness starts them, reporting what tests/test_start_methods.py asks.

Run with BACKEND=gloo, WORLD_SIZE, DIST_TESTS_START_METHOD and PROBE_OUT (a folder). Each rank
writes PROBE_OUT/rankN.json (its thread counts, whether it was forked from the forkserver, and
any CUDA entry points the forkserver's preload called when PROBE_FAKE_CUDA_BUILD=1), registers an
atexit handler that writes PROBE_OUT/atexit.rankN, and leaves "c-stdio-tail-rankN" unflushed in C's stdout buffer.
PROBE_POISONED_FORKSERVER=1 makes torch in the forked ranks report a bad fork, as after the
server touched CUDA; PROBE_LIBCUDA maps a stand-in CUDA driver into the server
(driver_in_server.py); PROBE_PRELOAD adds a module of that name to the server's preload.
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
import json  # noqa: E402

import torch  # noqa: E402

from dist_tests.harness import forkserver, suite  # noqa: E402


def _write(name: str, text: str) -> None:
    with open(os.path.join(os.environ["PROBE_OUT"], name), "w") as f:
        f.write(text)


class RankProbe(suite.StandaloneSpawnCase):
    def test_report(self) -> None:
        fake = sys.modules.get("fake_cuda_build")
        report = {
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "preload_cuda_calls": fake.SERVER_CALLS if fake else None,
            # Only the forkserver preloads the proof module: a spawned rank never imports it.
            "from_forkserver": "dist_tests.harness.forkserver_proof" in sys.modules,
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
    runner.main(RankProbe)
