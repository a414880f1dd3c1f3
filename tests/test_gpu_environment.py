"""GPU targets run PyPI's CUDA build of the locked torch, in a sandbox that reaches the host's driver."""

import ctypes.util
import glob

from conftest import bazel


def test_the_gpu_environment_is_the_cuda_build_with_nccl():
    run = bazel("test", "//tests:locked_env_gpu_test", "--nocache_test_results", timeout=1800)
    assert run.returncode == 0, run.output


def test_a_sandboxed_gpu_test_sees_the_drivers_nodes_and_library_and_writes_dev_shm():
    nodes = " ".join(sorted(glob.glob("/dev/nvidia*")))
    library = ctypes.util.find_library("cuda") or ""
    run = bazel("test", "//tests:gpu_sandbox_test", "--nocache_test_results",
                f"--test_env=HOST_NVIDIA_NODES={nodes}", f"--test_env=HOST_CUDA_LIBRARY={library}")
    assert run.returncode == 0, run.output
