"""Ranks that hang, started exactly as the harness starts them, for tests/test_flight_recorder.py.

Run with BACKEND=gloo, WORLD_SIZE, DIST_TESTS_PER_TEST_TIMEOUT and TEST_UNDECLARED_OUTPUTS_DIR (and
XML_OUTPUT_FILE); `-k NAME` picks a test. Every test does one all_reduce, then:
- test_mismatch: rank 0 calls all_reduce where rank 1 calls all_gather (both block);
- test_holds_gil: rank 1 sleeps in native code holding the GIL (its thread cannot answer), rank 0 all_reduces;
- test_dies_while_dumping: rank 1 ends itself when asked for its dump, rank 0 all_reduces;
- test_hang: the last rank sleeps, the others all_gather (with an unwritable dump folder, or the recorder off).
"""

import ctypes
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dist_tests.harness import runner  # noqa: E402

runner.configure()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from dist_tests.harness import rank_reports, suite  # noqa: E402


class HangProbe(suite.StandaloneSpawnCase):
    def _first(self) -> torch.Tensor:
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        tensor = torch.ones(4)
        dist.all_reduce(tensor)
        return tensor

    def test_mismatch(self) -> None:
        tensor = self._first()
        if self.rank == 1:
            dist.all_gather([torch.zeros(4) for _ in range(self.world_size)], tensor)
        else:
            dist.all_reduce(tensor)

    def test_holds_gil(self) -> None:
        tensor = self._first()
        if self.rank == 1:
            # libc's sleep through PyDLL keeps the GIL held. The faulthandler signal that asks for this rank's
            # stacks ends a sleep early, so it sleeps again: leaving would reach the collective, and its dump.
            while True:
                ctypes.PyDLL(None).sleep(600)
        dist.all_reduce(tensor)

    def test_dies_while_dumping(self) -> None:
        tensor = self._first()
        if self.rank == 1:
            rank_reports.dump_record = lambda path: os._exit(9)
            time.sleep(600)
        dist.all_reduce(tensor)

    def test_hang(self) -> None:
        tensor = self._first()
        if self.rank == self.world_size - 1:
            time.sleep(600)
        dist.all_gather([torch.zeros(4) for _ in range(self.world_size)], tensor)


if __name__ == "__main__":
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    runner.main(HangProbe)
