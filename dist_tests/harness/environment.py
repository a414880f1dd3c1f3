"""The one module that writes the process environment; every variable the harness reads or writes.

Ranks, the forkserver and torch's test internals are configured through the environment
(ranks get the parent's environment when they start), so the harness writes it, here only.
Other modules read it; tests/test_layers.py checks that no other harness module writes it and
that every variable a harness module names is listed below.

Read (set by Bazel, a target, or the user):
  BACKEND, WORLD_SIZE, DIST_TESTS_DEVICE      the run's matrix cell (each target sets them)
  DIST_TESTS_LINE                             the target's whole line and device class, as JSON (matrix.py)
  TEST_TMPDIR, TEST_TIMEOUT, TEST_TARGET      Bazel's test protocol: work folder, deadline, label
  TEST_TOTAL_SHARDS, TEST_SHARD_INDEX, TEST_SHARD_STATUS_FILE, XML_OUTPUT_FILE,
  TEST_UNDECLARED_OUTPUTS_DIR, TESTBRIDGE_TEST_ONLY
                                              sharding, the XML, outputs, --test_filter
  DIST_TESTS_ALLOW_SKIP, DIST_TESTS_START_METHOD, DIST_TESTS_CPUS, DIST_TESTS_PER_TEST_TIMEOUT,
  DIST_TESTS_KNOWN_FAILURES, DIST_TESTS_FAULT, DIST_TESTS_RERUNS, DIST_TESTS_MAX_WORLD_SIZE,
  DIST_TESTS_TIMING, DIST_TESTS_FLIGHT_RECORDER
                                              the harness's own settings (docs/settings.md)
  DIST_TESTS_GPUS, DIST_TESTS_GPU_LOCK_DIR      device leases (gpu_leases.py); a class's own
                                              visible-devices variable, read as CUDA_VISIBLE_DEVICES is
  DIST_TESTS_DRIVER_VERSION                   a stand-in for the NVIDIA driver's version (cuda_driver.py)
  DIST_TESTS_TORCH_FLAGS                      the --repo_env flags that chose the torch (set by the
                                              interpreter's wrapper), for repro lines
  DISABLED_TESTS_FILE, SLOW_TESTS_FILE, PYTORCH_TEST_WITH_DEV_DBG_ASAN
                                              PyTorch CI's lists, upstream's ASAN switch (ci_lists.py,
                                              spawn_file.py); torch reads them too
  OMP_NUM_THREADS, NUM_PARALLEL_PROCS, PYTHONPATH, TMPDIR
                                              read before they are set or passed on

Written:
  by prepare_for_torch(), in the parent before torch loads:
    TMPDIR (the run's folder), PYTORCH_NVML_BASED_CUDA_CHECK=1 (the forkserver's import asks
    NVML, not the CUDA driver), the line's `env` (a user's value wins), OMP_NUM_THREADS (each
    rank's share, a user's value wins), torch's flight recorder's buffer size (flight_records.py,
    a user's value wins), PYTORCH_PRINT_REPRO_ON_FAILURE=0, the device class's `env` (its
    declaration in tools/dist_tests.bzl: cpu's hides the host's GPUs, gpu's numbers them by PCI bus),
    DIST_TESTS_DEVICE (the resolved class, for ranks), DIST_TESTS_CONFIGURED=1 (ranks skip the
    configuration)
  by show_devices(): the class's visible-devices variable (CUDA_VISIBLE_DEVICES), the leased devices
  by forkserver_environment(): while the server starts, PYTHONPATH with the workspace,
    DIST_TESTS_FORKSERVER_REPORT and DIST_TESTS_FORKSERVER_PRELOAD, without NUM_PARALLEL_PROCS
  by use_rendezvous(): MASTER_ADDR, MASTER_PORT and INIT_METHOD, for a plugin's TCP rendezvous
  by set_attempt(): DIST_TESTS_ATTEMPT, a rerun's number (reruns.py)
  by select_tests() and run_whole_selection_here(): TESTBRIDGE_TEST_ONLY; TEST_TOTAL_SHARDS and
    TEST_SHARD_INDEX removed
  by become_rank(): a rank's whole environment, the parent's as the test started
"""

import contextlib
import os
from collections.abc import Iterator, Mapping

CONFIGURED = "DIST_TESTS_CONFIGURED"
ATTEMPT = "DIST_TESTS_ATTEMPT"
# Where the forkserver's last preload module writes its proof, and what it expects the server imported.
FORKSERVER_REPORT = "DIST_TESTS_FORKSERVER_REPORT"
FORKSERVER_PRELOAD = "DIST_TESTS_FORKSERVER_PRELOAD"


def prepare_for_torch(tmp: str, line_env: Mapping[str, str], rank_threads: int, device: str,
                      class_env: Mapping[str, str], nvml_cuda_check: bool,
                      recorder_env: Mapping[str, str] | None = None) -> None:
    """The parent's environment for torch, its ranks and the forkserver; see the module docstring."""
    for name, value in (recorder_env or {}).items():
        os.environ.setdefault(name, value)
    os.environ["DIST_TESTS_DEVICE"] = device
    # The device class's switches: what its runs are (cpu hides the host's GPUs: with GPUs visible but
    # fewer than ranks, torch's ranks would skip even gloo tests).
    os.environ.update(class_env)
    os.environ["TMPDIR"] = tmp
    if nvml_cuda_check:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    for name, value in line_env.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("OMP_NUM_THREADS", str(rank_threads))
    # Failures print this harness's own repro command; torch's would name a file that isn't there.
    os.environ["PYTORCH_PRINT_REPRO_ON_FAILURE"] = "0"


def mark_configured() -> None:
    os.environ[CONFIGURED] = "1"


def show_devices(variable: str, visible: str) -> None:
    """The leased devices the ranks see, through their device class's variable (CUDA_VISIBLE_DEVICES)."""
    os.environ[variable] = visible


@contextlib.contextmanager
def forkserver_environment(workspace: str, report: str, preload: list[str],
                           driver_initialising: tuple[str, ...]) -> Iterator[None]:
    """This process's environment while it starts the forkserver, which inherits it; restored after."""
    saved = {name: os.environ.get(name) for name in (*driver_initialising, "PYTHONPATH")}
    for name in driver_initialising:
        os.environ.pop(name, None)
    os.environ[FORKSERVER_REPORT] = report
    os.environ[FORKSERVER_PRELOAD] = ",".join(preload)
    # The server ignores this process's sys.path: run by hand, the workspace is only there.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workspace, saved["PYTHONPATH"]) if p)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ.pop(FORKSERVER_REPORT)
        os.environ.pop(FORKSERVER_PRELOAD)


def use_rendezvous(init_method: str, port: int) -> None:
    """A TCP rendezvous on loopback for the next test's ranks: env:// or tcp://."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["INIT_METHOD"] = "env://" if init_method == "env" else f"tcp://127.0.0.1:{port}"


def set_attempt(number: int | None) -> None:
    """The attempt the next ranks belong to (None: back to the first)."""
    if number is None:
        os.environ.pop(ATTEMPT, None)
    else:
        os.environ[ATTEMPT] = str(number)


def select_tests(test_only: str) -> None:
    """The exact test patterns absltest runs (--test_filter, rewritten)."""
    os.environ["TESTBRIDGE_TEST_ONLY"] = test_only


def run_whole_selection_here() -> None:
    """absltest runs every selected test in this process, whatever shard Bazel said it was."""
    del os.environ["TEST_TOTAL_SHARDS"]
    del os.environ["TEST_SHARD_INDEX"]


def become_rank(parent: Mapping[str, str]) -> None:
    """A rank's environment is the parent's as its test started (a forked rank inherits the server's)."""
    os.environ.clear()
    os.environ.update(parent)
