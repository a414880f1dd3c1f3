"""Two ranks that use tensors on one device through gloo, started the way the harness starts ranks.

tools/gpu/gpu_check runs this file with BACKEND=gloo, WORLD_SIZE=2, DIST_TESTS_START_METHOD and
DIST_TESTS_GPU_CHECK_DEVICE (cuda or cpu). It is an entry point like dist_tests/spawn_test.py:
configure(), then the harness's SpawnHarness starting each rank, then the harness's runner and reporting.
The one difference from //dist_tests:gloo_2: the GPUs stay visible to the ranks.
"""

import os
import sys

if __package__ is None and "dist_tests.harness" not in sys.modules:  # the workspace root, two folders up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dist_tests.harness import runner

_VISIBLE = "DIST_TESTS_GPU_CHECK_VISIBLE_DEVICES"
runner.configure()  # hides GPUs from a gloo run; this check needs them
if os.environ.get(_VISIBLE) is not None:
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[_VISIBLE]
elif os.environ.get("DIST_TESTS_GPU_CHECK_DEVICE") == "cuda":
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from dist_tests.harness import suite  # noqa: E402


class GlooOnDevice(suite.StandaloneSpawnCase):
    """all_reduce and broadcast of tensors on DIST_TESTS_GPU_CHECK_DEVICE, both ranks on device 0."""

    def _device(self) -> torch.device:
        kind = os.environ.get("DIST_TESTS_GPU_CHECK_DEVICE", "cuda")
        return torch.device("cuda", 0) if kind == "cuda" else torch.device("cpu")

    def _init(self) -> torch.device:
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        return self._device()

    def test_all_reduce(self) -> None:
        device = self._init()
        tensor = torch.full((1024,), float(self.rank + 1), device=device)
        dist.all_reduce(tensor)
        expected = float(sum(range(1, self.world_size + 1)))
        self.assertEqual(tensor.device.type, device.type)
        self.assertTrue(torch.equal(tensor.cpu(), torch.full((1024,), expected)), f"rank {self.rank} got {tensor[:4]}")
        dist.destroy_process_group()

    def test_broadcast(self) -> None:
        device = self._init()
        source = torch.arange(1024, dtype=torch.float32)
        tensor = source.to(device) if self.rank == 0 else torch.zeros(1024, device=device)
        dist.broadcast(tensor, src=0)
        self.assertEqual(tensor.device.type, device.type)
        self.assertTrue(torch.equal(tensor.cpu(), source), f"rank {self.rank} got {tensor[:4]}")
        dist.destroy_process_group()


if __name__ == "__main__":
    runner.main(GlooOnDevice)
