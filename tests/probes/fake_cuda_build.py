"""Makes this CPU torch look like a CUDA build on a host with two GPUs, and records CUDA entry points.

Imported first in the forkserver's preload by rank_probe.py. The calls recorded are those made
in the server process itself (SERVER_CALLS): the ones a forked rank would inherit as a
poisoned fork on a real CUDA host. NVML is assumed to work there and to see two GPUs.
"""

import os

import torch
import torch.cuda

SERVER_PID = os.getpid()
SERVER_CALLS: list[str] = []


def _recorder(name: str, result: object):
    def record(*args: object, **kwargs: object) -> object:
        if os.getpid() == SERVER_PID:
            SERVER_CALLS.append(name)
        return result

    return record


# torch.cuda._is_compiled() is true when this entry point exists; cudaGetDeviceCount runs cuInit.
torch._C._cuda_getDeviceCount = _recorder("torch._C._cuda_getDeviceCount", 2)
torch.cuda._device_count_nvml = lambda: 2


def _cuda_entry_point(name: str) -> object:
    """Every other torch._C._cuda* name a CUDA build has: a recorder."""
    if name.startswith(("_cuda", "_Cuda")):
        return _recorder(f"torch._C.{name}", None)
    raise AttributeError(name)


torch._C.__getattr__ = _cuda_entry_point
_lazy_init = _recorder("torch.cuda._lazy_init", None)
for module in [m for name, m in list(__import__("sys").modules.items()) if name.startswith("torch.cuda")]:
    if getattr(module, "_lazy_init", None) is not None:
        module._lazy_init = _lazy_init
