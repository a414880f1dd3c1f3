"""Whether the CUDA driver was initialised in this process, asked of the driver itself.

A process forked after the driver's cuInit cannot use CUDA. torch's own flags
(`torch.cuda._initialized`, `_is_in_bad_fork()`) record only torch's lazy init: a driver
initialised by anything else (another library, C++ code, a CUDA runtime call) leaves them
False. The driver's answer does not: before cuInit every driver call, cuDeviceGetCount
included, returns CUDA_ERROR_NOT_INITIALIZED and initialises nothing. The library is asked
through a handle opened with RTLD_NOLOAD, so a process that never loaded it still has not.

Standard library only: the forkserver imports this after torch, the parent before.
"""

import ctypes
import dataclasses
import os

CUDA_SUCCESS = 0
CUDA_ERROR_NOT_INITIALIZED = 3

NOT_LOADED = "not loaded"
NOT_INITIALISED = "loaded, not initialised"
INITIALISED = "initialised"


@dataclasses.dataclass(frozen=True)
class DriverState:
    state: str  # NOT_LOADED, NOT_INITIALISED, INITIALISED, or what else the driver answered
    library: str | None = None  # the libcuda mapped into this process

    @property
    def fork_safe(self) -> bool:
        """A child forked now can initialise CUDA itself."""
        return self.state in (NOT_LOADED, NOT_INITIALISED)

    def describe(self) -> str:
        where = f" ({self.library})" if self.library else ""
        return f"the CUDA driver{where} is {self.state}"


def mapped_libcuda(maps: str = "/proc/self/maps") -> str | None:
    """The path of the libcuda shared object mapped into this process, or None."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libcuda.so"):
                    return fields[5].strip()
    except OSError:
        return None
    return None


def driver_state() -> DriverState:
    """Asks the mapped driver, if any, whether cuInit has run in this process."""
    library = mapped_libcuda()
    if library is None:
        return DriverState(NOT_LOADED)
    try:
        handle = ctypes.CDLL(library, mode=os.RTLD_NOLOAD)
    except OSError as error:
        return DriverState(f"unanswerable: dlopen with RTLD_NOLOAD failed ({error})", library)
    count = ctypes.c_int(-1)
    code = handle.cuDeviceGetCount(ctypes.byref(count))
    if code == CUDA_ERROR_NOT_INITIALIZED:
        return DriverState(NOT_INITIALISED, library)
    if code == CUDA_SUCCESS:
        return DriverState(INITIALISED, library)
    return DriverState(f"unanswerable: cuDeviceGetCount returned {code}", library)
