"""PyTorch's distributed spawn suite for one backend and world size.

Configured by BACKEND and WORLD_SIZE (each Bazel target sets them); see README.md.
By hand, from the workspace root:  BACKEND=gloo WORLD_SIZE=2 tools/python dist_tests/spawn_test.py -k NAME
"""

import os
import sys

if __package__ is None and "dist_tests.harness" not in sys.modules:
    # Run as a file by hand: make the workspace root importable, as Bazel's runfiles do.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dist_tests.harness import runner, spawn_file

runner.configure()  # before torch is imported: checks settings, sets TMPDIR, GPU visibility and threads

import torch  # noqa: E402

spawn_file.at_import()  # in the parent and every rank, as upstream's file: torch.distributed required, no TF32
runner.prepare_plugin()  # a backend shipped as its own package: registered, its features told to torch's suite

from torch.testing._internal.distributed.distributed_test import DistributedTest, TestDistBackend  # noqa: E402

from dist_tests.harness.suite import SpawnHarness  # noqa: E402


class TestDistBackendWithSpawn(SpawnHarness, TestDistBackend, DistributedTest._DistTestBase):
    """The shared suite: test bodies from torch, rank start-up and reporting from the harness."""

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()
        torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()


if __name__ == "__main__":
    runner.main(TestDistBackendWithSpawn)
