"""Reads and checks the environment a spawn-suite run is configured by.

Everything here runs before torch is imported, so a bad setting fails in well under a
second with a message that says what to do.
"""

import dataclasses
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import NoReturn

from dist_tests.harness import cleanup, flight_records, matrix, plugins

START_METHODS = ("forkserver", "spawn")


# Ranks fork from a forkserver that imported torch once. The server first proves that no CUDA
# driver was initialised in it (cuda_driver.py) and the run falls back to spawn, upstream's way,
# when it cannot; DIST_TESTS_START_METHOD=forkserver makes that an error.
DEFAULT_START_METHOD = "forkserver"

# Exit code for a run that could not start: bad settings or missing hardware.
SETUP_ERROR_EXIT_CODE = 3


def exit_with_setup_error(message: str) -> NoReturn:
    """Stops a run that cannot start, before any rank: one message that says what to do, and exit code 3."""
    print(f"dist_tests: error: {message}", file=sys.stderr, flush=True)
    sys.exit(SETUP_ERROR_EXIT_CODE)


def unwritable_reason(folder: str) -> str | None:
    """Why a real write in `folder` fails, or None: permission bits say nothing for root or read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return error.strerror or str(error)
    return None

# Most reruns of a failing test (DIST_TESTS_RERUNS): beyond a few, a failure is no longer flakiness.
MAX_RERUNS = 5


class SettingsError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str
    world_size: int
    device: str  # the device class's name: "cpu", "gpu", or a class of one's own
    allow_skip: bool
    start_method: str
    start_method_given: bool  # DIST_TESTS_START_METHOD was set: no fallback from it
    work_dir: str  # every file the run writes goes below this folder
    outputs_dir: str | None  # Bazel's undeclared outputs, when run by Bazel
    target: str  # the Bazel label, for repro lines
    torch_flags: str  # the --repo_env flags that chose the interpreter or torch, for repro lines
    deadline_s: float | None  # seconds after start when Bazel kills the run
    per_test_timeout_s: int | None
    rank_threads: int  # intra-op threads per rank: a fair share of the cores the target reserved
    line_env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the matrix line's `env`
    reruns: int = 0  # times a failing test is rerun in fresh ranks (DIST_TESTS_RERUNS)
    plugin: plugins.Plugin | None = None  # a backend shipped as its own package (its line's `plugin`)
    # The variables that turn torch's flight recorder on in the ranks ({}: the user set them); None: off.
    recorder_env: Mapping[str, str] | None = None
    exclusions: tuple[str, str] | None = None  # the line's exclusion list: (its label, its path here)
    # The device class's declaration (tools/dist_tests.bzl): its devices, leases, switches and forkserver proof.
    device_class: matrix.DeviceClass = matrix.DeviceClass("cpu", 2)

    @property
    def has_devices(self) -> bool:
        """Whether each rank needs a device of its own, which the run leases (a gpu line's GPU)."""
        return self.device_class.has_devices


def max_world_size() -> int:
    """More ranks than this cannot make progress on this machine in a test's time."""
    override = os.environ.get("DIST_TESTS_MAX_WORLD_SIZE")
    if override and override.isdigit():
        return int(override)
    return max(16, 4 * (os.cpu_count() or 1))


def _backend(env: Mapping[str, str], backends: Mapping[str, str]) -> str:
    value = env.get("BACKEND")
    allowed = ", ".join(backends)
    if value is None or not value.strip():
        raise SettingsError(f"BACKEND is not set. Set it to one of: {allowed} (for example BACKEND=gloo).")
    if value in backends:
        return value
    hint = ""
    if value.strip().lower() in backends:
        hint = f" Backend names are lower case: did you mean '{value.strip().lower()}'?"
    raise SettingsError(f"BACKEND={value!r} is not a backend of this suite. Use one of: {allowed}.{hint}")


def _device(env: Mapping[str, str], backend: str, backends: Mapping[str, str],
            devices: Mapping[str, matrix.DeviceClass]) -> matrix.DeviceClass:
    """DIST_TESTS_DEVICE, which each target sets; by hand, unset, the device of BACKEND's lines in the matrix."""
    value = env.get("DIST_TESTS_DEVICE") or backends[backend]
    if value not in devices:
        raise SettingsError(f"DIST_TESTS_DEVICE={value!r}: use one of {', '.join(devices)} (or leave it unset).")
    return devices[value]


def _world_size(env: Mapping[str, str], device_class: matrix.DeviceClass,
                devices: Mapping[str, matrix.DeviceClass]) -> int:
    """WORLD_SIZE: at least the device class's fewest ranks (its least_world_size in tools/dist_tests.bzl)."""
    device, least = device_class.name, device_class.least_world_size
    value = env.get("WORLD_SIZE")
    if value is None or not value.strip():
        raise SettingsError(f"WORLD_SIZE is not set. Set it to the number of ranks, an integer >= {least} "
                            "(for example WORLD_SIZE=2).")
    try:
        size = int(value.strip())
    except ValueError:
        raise SettingsError(f"WORLD_SIZE={value!r} is not an integer. Set it to the number of ranks, "
                            f"an integer >= {least}.") from None
    if size < 1:
        raise SettingsError(
            f"WORLD_SIZE={size} is too small: the spawn suite needs at least 1 rank.")
    if size < least:
        fewer = sorted(name for name, other in devices.items() if other.least_world_size <= size)
        raise SettingsError(
            f"WORLD_SIZE={size} is too small for device class {device!r}: "
            f"on {device.upper()} the spawn suite needs at least {least} ranks."
            + (f" Device classes whose lines may have {size}: {', '.join(fewer)} (set DIST_TESTS_DEVICE); one rank is "
               "what upstream runs on a 1-GPU host (targets nccl_1, gloo_gpu_1)." if fewer else "")
        )
    limit = max_world_size()
    if size > limit:
        raise SettingsError(
            f"WORLD_SIZE={size} is more ranks than this machine ({os.cpu_count()} cores) can run: "
            f"the limit here is {limit}. "
            "Use a smaller world size, or raise the limit with DIST_TESTS_MAX_WORLD_SIZE."
        )
    return size


def _shards(env: Mapping[str, str]) -> None:
    """Bazel sets both shard variables or neither; anything else would run the wrong tests."""
    total, index = env.get("TEST_TOTAL_SHARDS"), env.get("TEST_SHARD_INDEX")
    if total is None and index is None:
        return
    if total is None or index is None:
        raise SettingsError("TEST_TOTAL_SHARDS and TEST_SHARD_INDEX must be set together (Bazel sets both).")
    if not (total.isdigit() and index.isdigit()):
        raise SettingsError(
            f"TEST_TOTAL_SHARDS={total!r} and TEST_SHARD_INDEX={index!r} must be non-negative integers.")
    if int(total) < 1 or int(index) >= int(total):
        raise SettingsError(
            f"TEST_SHARD_INDEX={index} must be below TEST_TOTAL_SHARDS={total}, which must be at least 1.")


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"{name}={value!r} must be a positive integer (seconds).")
    return int(value)


def _reruns(env: Mapping[str, str]) -> int:
    value = env.get("DIST_TESTS_RERUNS", "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) > MAX_RERUNS:
        raise SettingsError(f"DIST_TESTS_RERUNS={value!r} must be an integer from 0 to {MAX_RERUNS}: "
                            "the times a failing test is rerun in fresh ranks "
                            "(for example --test_env=DIST_TESTS_RERUNS=1).")
    return int(value)


def _omp_threads(env: Mapping[str, str]) -> None:
    """A user's OMP_NUM_THREADS is every rank's thread count: libgomp would ignore a bad one with a warning."""
    value = env.get("OMP_NUM_THREADS")
    if value is not None and (not value.strip().isdigit() or int(value) < 1):
        raise SettingsError(f"OMP_NUM_THREADS={value!r} must be a positive integer: the threads of each rank "
                            "(unset, each rank gets its share of the cores the target reserved).")


def reserved_cpus(env: Mapping[str, str]) -> int:
    """The cores this run may use: DIST_TESTS_CPUS (a CPU target's `cpu:N` tag), else this process's."""
    value = env.get("DIST_TESTS_CPUS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise SettingsError(
                f"DIST_TESTS_CPUS={value!r} must be a positive integer (the cores the target reserved).")
        return int(value)
    return len(os.sched_getaffinity(0))


def _work_dir(env: Mapping[str, str]) -> str:
    """TEST_TMPDIR under Bazel; by hand, a private folder removed at exit."""
    base = env.get("TEST_TMPDIR")
    if base is None:
        private = tempfile.mkdtemp(prefix="dist_tests-")
        cleanup.remove_at_exit(private)
        return private
    if not os.path.isdir(base):
        raise SettingsError(f"TEST_TMPDIR={base!r} is not a folder. Bazel creates it; by hand, unset it or create it.")
    why = unwritable_reason(base)
    if why:
        raise SettingsError(f"TEST_TMPDIR={base!r} is not writable ({why}). Point it at a writable folder.")
    return base


def _classes(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, matrix.DeviceClass]]:
    """{backend: device class name} and {name: device class}: the table's, and the target's own line's."""
    try:
        backends, devices = matrix.device_of_backends(), matrix.device_classes()
        line = matrix.line_of_target(env)
        own_class = matrix.class_of_line(line) if line is not None else None
    except matrix.MatrixError as error:
        raise SettingsError(str(error)) from None
    if line is not None:
        backends.setdefault(line["backend"], line["device"])
    if own_class is not None:  # the target's own declaration, as its macro wrote it
        devices[own_class.name] = own_class
    return backends, devices


def device_class(env: Mapping[str, str] = os.environ) -> str:
    """The device class of a run, as load() resolves it: DIST_TESTS_DEVICE, else BACKEND's (the matrix's rule).

    tools/python asks it (by_hand.py) to choose the package set a command runs with.
    """
    backends, devices = _classes(env)
    return _device(env, _backend(env, backends), backends, devices).name


def cell(env: Mapping[str, str] = os.environ) -> tuple[str, matrix.DeviceClass, int]:
    """(backend, device class, world size), checked as load() checks them: what decides the packages and devices."""
    backends, devices = _classes(env)
    backend = _backend(env, backends)
    device_class = _device(env, backend, backends, devices)
    return backend, device_class, _world_size(env, device_class, devices)


def _run_line(env: Mapping[str, str], backend: str, world_size: int, device: str) -> dict:
    """The run's matrix line: its target's own; by hand, the table's line of that cell ({}: the table has none)."""
    try:
        line = matrix.line_of_target(env)
        if line is None:
            return matrix.find_line(backend, world_size, device) or {}
    except matrix.MatrixError as error:
        raise SettingsError(str(error)) from None
    declared = (line["backend"], line["world_size"], line["device"])
    if declared != (backend, world_size, device):
        raise SettingsError(
            f"{env.get('TEST_TARGET') or line['name']} is declared as {declared[0]} with WORLD_SIZE={declared[1]} on "
            f"{declared[2]}, but this run was given BACKEND={backend}, WORLD_SIZE={world_size} and "
            f"DIST_TESTS_DEVICE={device} (by --test_env?). Run the target declared for that cell instead.")
    return line


def count_of(count: int, word: str) -> str:
    """A number of things in words: 1 GPU, 2 GPUs, 2 accel devices."""
    return f"{count} {word}{'s' if count != 1 else ''}"


def missing_devices(backend: str, world_size: int, devices: int, word: str = "GPU") -> str | None:
    """Why a run of world_size ranks cannot run with `devices` devices (each rank needs its own), or None."""
    if devices >= world_size:
        return None
    return f"{backend} with WORLD_SIZE={world_size} needs {count_of(world_size, word)}, and this host has {devices}"


def load(env: Mapping[str, str] = os.environ) -> Settings:
    """Checks every setting; raises SettingsError on the first bad one."""
    backend, device_class, world_size = cell(env)
    device = device_class.name
    _shards(env)
    given = env.get("DIST_TESTS_START_METHOD", "")
    start_method = given or DEFAULT_START_METHOD
    if start_method not in START_METHODS:
        raise SettingsError(f"DIST_TESTS_START_METHOD={start_method!r}: use one of {', '.join(START_METHODS)} "
                            f"(unset: {DEFAULT_START_METHOD}, "
                            "falling back to spawn when the server cannot be proven clean).")
    line = _run_line(env, backend, world_size, device)
    try:
        plugin = plugins.for_run(env)
        if plugin:
            plugins.check_findable(plugin)
    except (plugins.PluginError, matrix.MatrixError) as error:
        raise SettingsError(str(error)) from None
    _omp_threads(env)
    timeout = _positive_int(env, "TEST_TIMEOUT")
    per_test = _positive_int(env, "DIST_TESTS_PER_TEST_TIMEOUT")
    outputs = env.get("TEST_UNDECLARED_OUTPUTS_DIR") or None
    try:
        recorder_env = flight_records.recorder_environment(env)
    except flight_records.RecorderSettingError as error:
        raise SettingsError(str(error)) from None
    return Settings(
        backend=backend,
        world_size=world_size,
        device=device,
        allow_skip=env.get("DIST_TESTS_ALLOW_SKIP") == "1",
        start_method=start_method,
        start_method_given=bool(given),
        work_dir=_work_dir(env),
        outputs_dir=outputs,
        target=env.get("TEST_TARGET",
                       f"//dist_tests:{matrix.target_name(line) if line else f'{backend}_{world_size}'}"),
        torch_flags=env.get("DIST_TESTS_TORCH_FLAGS", ""),
        deadline_s=float(timeout) if timeout else None,
        per_test_timeout_s=per_test,
        rank_threads=max(1, reserved_cpus(env) // world_size),
        line_env=line.get("env", {}),
        reruns=_reruns(env),
        plugin=plugin,
        recorder_env=recorder_env,
        exclusions=_exclusions(line),
        device_class=device_class,
    )


def _exclusions(line: Mapping) -> tuple[str, str] | None:
    """The line's `exclude`, as the matrix macro writes it: the list's label and its path in the runfiles."""
    value = line.get("exclude")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value[k] for k in ("label", "path")):
        raise SettingsError(f"{line.get('name', 'the line')}: its `exclude` must be the label of a list file, as the "
                            f"matrix macro writes it (got {value!r})")
    return value["label"], value["path"]

