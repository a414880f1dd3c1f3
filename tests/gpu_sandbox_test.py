"""Runs inside a sandboxed test scheduled as the GPU targets are: what a GPU run needs from the host.

A GPU host provides only the NVIDIA driver: its device nodes (/dev/nvidia*) and its library
(libcuda.so.1). NCCL's shared-memory transport writes /dev/shm. The caller passes what the
host has (HOST_NVIDIA_NODES, HOST_CUDA_LIBRARY); this checks the sandbox shows the same.
"""

import ctypes.util
import glob
import os
import tempfile
import unittest


class GpuSandboxTest(unittest.TestCase):
    def test_dev_shm_is_writable(self) -> None:
        with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="dist_tests-sandbox-check-") as f:
            f.write(b"nccl shared memory")
            f.flush()
            self.assertTrue(os.path.exists(f.name))

    def test_the_drivers_device_nodes_are_the_hosts(self) -> None:
        want = sorted(os.environ.get("HOST_NVIDIA_NODES", "").split())
        self.assertEqual(sorted(glob.glob("/dev/nvidia*")), want)
        # /dev is the host's, not an empty one made for the sandbox.
        self.assertTrue(os.path.exists("/dev/null") and os.path.exists("/dev/shm"))

    def test_the_drivers_library_is_the_hosts(self) -> None:
        self.assertEqual(ctypes.util.find_library("cuda") or "", os.environ.get("HOST_CUDA_LIBRARY", ""))


if __name__ == "__main__":
    unittest.main()
