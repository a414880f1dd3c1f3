"""What the harness asks of the NVIDIA driver itself: whether CUDA was initialised in this process,
and whether the driver is new enough for this torch's CUDA.

A process forked after the driver's cuInit cannot use CUDA. torch's own flags
(`torch.cuda._initialized`, `_is_in_bad_fork()`) record only torch's lazy init: a driver
initialised by anything else (another library, C++ code, a CUDA runtime call) leaves them
False. The driver's answer does not: before cuInit every driver call, cuDeviceGetCount
included, returns CUDA_ERROR_NOT_INITIALIZED and initialises nothing. The library is asked
through a handle opened with RTLD_NOLOAD, so a process that never loaded it still has not.

The driver's version is the kernel module's own record (/proc/driver/nvidia/version, beside the
GPUs gpu_leases.py counts), compared before any rank starts with the oldest driver the CUDA of
this torch runs on: a table beside the GPU lock (third_party/python/cuda_drivers.txt), and
torch's CUDA version read from its torch/version.py, not imported (the parent must not load torch
for this). tools/gpu/host_gpus.py reads the version the same way for //dist_tests:host.

Standard library only: the forkserver imports this after torch, the parent before, and
tools/gpu/host_gpus.py on the host's python3.
"""

import ast
import ctypes
import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping

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


# The kernel module's record of the driver: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  ..."
# (or "... Open Kernel Module for x86_64  580.65.06  Release Build ..."). Absent: no NVIDIA driver here.
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
# A driver version as the project's tests play one (a stand-in, as DIST_TESTS_GPUS names stand-in GPUs);
# it also states the version where the driver's own record cannot be read.
STANDIN_DRIVER_VERSION = "DIST_TESTS_DRIVER_VERSION"
# {CUDA major: oldest driver}, beside the GPU lock. Under Bazel it is in the harness's runfiles.
DRIVER_MINIMUMS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "third_party", "python", "cuda_drivers.txt")
DRIVER_MINIMUMS_NAME = "third_party/python/cuda_drivers.txt"
_VERSION = re.compile(r"\d+(?:\.\d+){0,2}")
_NVRM = re.compile(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)(?:\s|$)")
_STATE_IT = (f"State it with --test_env={STANDIN_DRIVER_VERSION}=VERSION (as nvidia-smi prints it), or exclude "
             "GPU targets with --test_tag_filters=-gpu")


class DriverError(Exception):
    """The driver's version cannot be read, or is older than this torch's CUDA needs; the message says what to do."""


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def driver_version(env: Mapping[str, str], record: str | None = None) -> tuple[str, str] | None:
    """The NVIDIA driver's version and where it was read (for messages); None on a host without the driver.

    DIST_TESTS_DRIVER_VERSION, when given, stands in for the driver's own record (DRIVER_VERSION_FILE).
    """
    record = record or DRIVER_VERSION_FILE
    given = env.get(STANDIN_DRIVER_VERSION, "").strip()
    if given:
        if not _VERSION.fullmatch(given):
            raise DriverError(f"{STANDIN_DRIVER_VERSION}={given!r} is not an NVIDIA driver version: give it as "
                              "nvidia-smi prints it, for example 580.65.06")
        return given, f"{STANDIN_DRIVER_VERSION}, a stand-in"
    try:
        with open(record, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise DriverError(f"the NVIDIA driver's version cannot be read: {record}: {error.strerror or error}. "
                          f"{_STATE_IT}") from None
    found = _NVRM.search(text)
    if not found:
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise DriverError(f"the NVIDIA driver's version cannot be read: {record} says {first!r}, which names no "
                          f"version such as 580.65.06. {_STATE_IT}")
    return found.group(1), record


def torch_cuda() -> tuple[str, str] | None:
    """(torch's version, the CUDA version it was built with), read from torch/version.py without importing
    torch; None when no torch is found or it is not a CUDA build (a CPU or ROCm torch)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "version.py")
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
        except (OSError, SyntaxError):
            continue
        values: dict[str, object] = {}
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
                node.target if isinstance(node, ast.AnnAssign) else None)
            if isinstance(target, ast.Name) and node.value is not None:
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError):
                    pass  # not a literal: torch's own files hold literals for the names read here
        cuda = values.get("cuda")
        if isinstance(cuda, str) and cuda:
            return str(values.get("__version__", "?")), cuda
        return None
    return None


def driver_minimums(table: str | None = None) -> dict[int, str]:
    """{CUDA major: the oldest driver version it runs on}, from the table beside the GPU lock (DRIVER_MINIMUMS)."""
    table = table or DRIVER_MINIMUMS
    minimums: dict[int, str] = {}
    try:
        with open(table, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as error:
        raise DriverError(f"cannot read the minimum NVIDIA drivers in {table}: {error.strerror or error}") from None
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or not words[0].isdigit() or not _VERSION.fullmatch(words[1]):
            raise DriverError(f"{table}:{number}: {line.strip()!r} is not a line 'CUDA_MAJOR MINIMUM_DRIVER' "
                              "(for example '13 580')")
        minimums[int(words[0])] = words[1]
    return minimums


def check_driver(env: Mapping[str, str], record: str | None = None, table: str | None = None) -> str | None:
    """Raises DriverError when this host's NVIDIA driver is older than this torch's CUDA needs, or its version
    cannot be read; returns a warning when no minimum is known for that CUDA, else None.

    Nothing to compare (no driver here, or a torch that is not a CUDA build) passes: the GPU count,
    after torch loads, says what is missing then.
    """
    found = driver_version(env, record)  # first: a bad stand-in is an error whatever the torch
    torch = torch_cuda()
    if found is None or torch is None:
        return None
    (torch_version, cuda), (version, source) = torch, found
    major = int(cuda.split(".")[0]) if cuda.split(".")[0].isdigit() else None
    minimum = driver_minimums(table).get(major) if major is not None else None
    if minimum is None:
        return (f"no minimum NVIDIA driver is known for CUDA {cuda} (torch {torch_version}) in {DRIVER_MINIMUMS_NAME}, "
                f"so the driver ({version}) was not checked: add a line for CUDA {major} there")
    if _as_tuple(version) >= _as_tuple(minimum):
        return None
    branch = minimum.split(".")[0]
    raise DriverError(
        f"the NVIDIA driver here is {version} ({source}), and torch {torch_version} is built with CUDA {cuda}, "
        f"which needs driver {minimum} or newer ({DRIVER_MINIMUMS_NAME}). Install an NVIDIA driver of branch "
        f"r{branch} or newer, or run a torch built with an older CUDA (docs/torch.md: Using another torch); "
        "--test_tag_filters=-gpu leaves out the GPU targets")
