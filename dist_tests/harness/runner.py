"""Sets up a run of the spawn suite and hands it to absltest.

`configure()` runs before torch is imported (environment checks, TMPDIR, GPU visibility,
threads); `main()` runs the tests. In rank processes and the forkserver, which re-import
the entry point, `configure()` does nothing: the parent already did it.
"""

import os
import shlex
import sys
import tempfile
import unittest

from dist_tests.harness import (
    budget,
    ci_lists,
    environment,
    faults,
    gpu_leases,
    network,
    selection,
    spawn_file,
)
from dist_tests.harness import settings as settings_lib
from dist_tests.harness.cuda_driver import DriverError, check_driver
from dist_tests.harness.matrix import NVIDIA_DRIVER
from dist_tests.harness.state import RUN, time_hint

_KNOWN_FAILURES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "known_failures")


die = settings_lib.exit_with_setup_error


def configure() -> None:
    """Checks the environment and prepares it for torch; exits with a clear message if wrong."""
    if os.environ.get(environment.CONFIGURED) == "1":
        return
    try:
        settings = settings_lib.load()
        # PyTorch CI's disabled and slow tests: torch reads the files; a bad one stops the run here.
        for warning in ci_lists.check(os.environ, selection.SUITE_CLASS, selection.suite_names_from_source):
            print(f"dist_tests: warning: {warning}", file=sys.stderr, flush=True)
        selection.check_filter(selection.filter_text(os.environ, sys.argv))  # here, before any shard or rank
    except (settings_lib.SettingsError, selection.FilterError) as error:
        die(str(error))
    _leave_idle_filtered_shard()
    RUN.settings = settings
    RUN.start_method = settings.start_method
    if settings.start_method == "forkserver" and not settings.device_class.forkserver_proof:
        _without_forkserver_proof(settings)
    not_run = spawn_file.not_run_reason()
    if not_run:
        if not settings.allow_skip:
            die(f"{settings.target} does not run: {not_run}.\n"
                "  Pass --test_env=DIST_TESTS_ALLOW_SKIP=1 to report every test as skipped instead.")
        RUN.skip_all_reason = f"not run: {not_run}"
    if not settings.has_devices and not RUN.skip_all_reason:
        _check_network(settings)
    # Everything torch writes through tempfile (init files, barriers) lands in the work dir.
    tmp = os.path.join(settings.work_dir, "tmp")
    os.makedirs(tmp, exist_ok=True)
    tempfile.tempdir = None
    # The server imports torch's test internals, which ask whether CUDA is available: through NVML,
    # that question does not initialise the CUDA driver, so its forked ranks can use CUDA.
    environment.prepare_for_torch(tmp, settings.line_env, settings.rank_threads, settings.device,
                                  settings.device_class.env, nvml_cuda_check=settings.start_method == "forkserver",
                                  recorder_env=settings.recorder_env)
    if settings.line_env:
        given = " ".join(f"{name}={os.environ[name]}" + ("" if os.environ[name] == value else " (given)")
                         for name, value in sorted(settings.line_env.items()))
        print(f"dist_tests: {settings.target} runs with its matrix line's settings: {given}", file=sys.stderr,
              flush=True)
    if settings.device_class.count == NVIDIA_DRIVER:
        _check_driver(settings)
    if settings.has_devices:
        _lease_devices(settings)
    if os.environ.get("DIST_TESTS_FAULT"):
        try:
            faults.parse_fault(os.environ["DIST_TESTS_FAULT"])
        except faults.FaultSpecError as error:
            die(str(error))
    environment.mark_configured()


def prepare_plugin() -> None:
    """After torch, before torch's suite, in every process: a plugin backend registered and described.

    plugin_preload.py does it when imported, once per process."""
    from dist_tests.harness import plugin_preload  # noqa: F401


def _without_forkserver_proof(settings: settings_lib.Settings) -> None:
    """A device class whose runtime has no forkserver proof (its line's declaration) starts its ranks by spawn."""
    reason = (f"device class {settings.device!r} declares no forkserver proof (forkserver_proof), so nothing shows "
              "that its runtime was not initialised in the server")
    if settings.start_method_given:
        die(f"{settings.target}: DIST_TESTS_START_METHOD=forkserver, but {reason}. Unset it, or set it to spawn.")
    RUN.fall_back_to_spawn(reason)


def _check_network(settings: settings_lib.Settings) -> None:
    """Says once per shard, before its first test, when the action shares the Bazel server's network (network.py).

    CPU targets are tagged block-network (tools/dist_tests.bzl); a sandbox that ignored it only warns, as the
    tests may well pass alone.
    """
    warning = network.shared_network_warning(settings.target)
    if warning:
        print(f"dist_tests: warning: {warning}", file=sys.stderr, flush=True)
        RUN.network_shared = True


def _check_driver(settings: settings_lib.Settings) -> None:
    """Fails the run before any rank, and before it waits for GPUs, when the NVIDIA driver is older than
    this torch's CUDA needs or its version cannot be read (cuda_driver.py). DIST_TESTS_ALLOW_SKIP does
    not skip it: the host has a driver, and one its GPU targets cannot use."""
    try:
        warning = check_driver(os.environ)
    except DriverError as error:
        die(f"{settings.target}: {error}.\n  No rank was started.")
    if warning:
        print(f"dist_tests: warning: {warning}", file=sys.stderr, flush=True)


def _lease_devices(settings: settings_lib.Settings) -> None:
    """Holds WORLD_SIZE devices of the host for this run (gpu_leases); the wait counts against its timeout."""
    give_up_at, why = None, ""
    if settings.deadline_s:
        give_up_at = budget.give_up_waiting_at(settings.deadline_s)  # waiting past this, no test could run
        why = (f": too little of this shard's Bazel timeout ({settings.deadline_s:.0f} s) was left to run a test. "
               f"Free those devices, give the tests others (DIST_TESTS_GPUS), or {time_hint()}")
    try:
        RUN.gpu_lease, RUN.devices_counted = gpu_leases.lease_gpus(
            settings.world_size, os.environ, give_up_at, why, settings.allow_skip, settings.device_class)
    except gpu_leases.LeaseError as error:
        die(f"{settings.target}: {error}")


def _leave_idle_filtered_shard() -> None:
    """Ends shards 2..N of a small filtered run at once, before torch loads: it runs in shard 1.

    See selection.runs_in_first_shard(); main() makes the same decision in shard 1.
    """
    if int(os.environ.get("TEST_SHARD_INDEX", "0")) == 0:
        return
    total = int(os.environ.get("TEST_TOTAL_SHARDS", "1"))
    if not selection.runs_in_first_shard(selection.filter_text(os.environ, sys.argv), total):
        return
    for variable in ("TEST_SHARD_STATUS_FILE", "XML_OUTPUT_FILE"):
        if os.environ.get(variable):
            with open(os.environ[variable], "w") as f:
                f.write('<?xml version="1.0"?>\n<testsuites tests="0" failures="0" errors="0" time="0"></testsuites>\n'
                        if variable == "XML_OUTPUT_FILE" else "")
    index = int(os.environ["TEST_SHARD_INDEX"])
    print(f"dist_tests: shard {index + 1} of {total} has nothing to run: a small filtered selection runs in shard 1")
    sys.exit(0)


def _missing_hardware(settings: settings_lib.Settings) -> str | None:
    import torch
    import torch.distributed as dist

    backend, world_size, device_class = settings.backend, settings.world_size, settings.device_class
    available = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "ucc": dist.is_ucc_available}
    # A plugin backend is available once prepare_plugin() saw its package register it.
    if backend in available and not available[backend]():
        return (f"this torch build ({torch.__version__}) has no {backend} backend. Bring a torch built with it "
                f"(PyPI's builds have gloo and nccl, not ucc or mpi): a wheel, --repo_env=DIST_TESTS_TORCH_WHEEL=PATH "
                "--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256=SHA256, or an interpreter that has one, "
                "--repo_env=DIST_TESTS_PYTHON=PATH --repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1 "
                "(docs/torch.md: Using another torch)")
    if not device_class.has_devices:
        return None
    word = gpu_leases.unit(device_class)
    if device_class.torch_module:  # what torch itself shows the ranks, within the lease
        module = getattr(torch, device_class.torch_module, None)
        if module is None or not hasattr(module, "device_count"):
            return (f"this torch build ({torch.__version__}) has no torch.{device_class.torch_module}, which device "
                    f"class {device_class.name!r} counts its devices with: bring the class's own torch build")
        return settings_lib.missing_devices(backend, world_size, module.device_count(), word)
    if RUN.gpu_lease is not None:
        return None
    counted = RUN.devices_counted
    missing = settings_lib.missing_devices(backend, world_size, counted[0] if counted else 0, word)
    return f"{missing} ({counted[1]})" if missing and counted else missing


def _start_forkserver(settings: settings_lib.Settings) -> None:
    """Starts the ranks' forkserver and uses it only if proven clean; else spawn, or an error when asked for."""
    from dist_tests.harness import forkserver
    try:
        proof = forkserver.start(settings.work_dir)
    except forkserver.ForkserverError as error:
        die(f"{settings.target}: {error}.\n  Fix that import (PYTHONPATH, the environment's packages), or run with "
            "--test_env=DIST_TESTS_START_METHOD=spawn, upstream's way (slower).")
    if proof.fork_safe:
        return
    reason = f"{proof.driver}, so ranks forked from it could not use CUDA"
    if settings.start_method_given:
        die(f"{settings.target}: DIST_TESTS_START_METHOD=forkserver, but {reason}. Unset it to let the run fall back "
            "to spawn, or set it to spawn.")
    RUN.fall_back_to_spawn(reason)


def _test_names(test_class: type) -> set[str]:
    return {name for name in dir(test_class) if name.startswith("test") and callable(getattr(test_class, name))}


def main(test_class: type) -> None:
    """Runs `test_class` under absltest with this harness's checks and reporting."""
    from absl.testing import absltest

    from dist_tests.harness import reporting, torch_internals
    from dist_tests.harness.known_failures import KnownFailures, KnownFailuresError

    settings = RUN.settings
    assert settings is not None, "configure() must run first"
    if RUN.start_method == "forkserver" and not RUN.skip_all_reason:
        # Before anything below changes this process: its fork becomes the ranks' server, proven or
        # replaced by _start_forkserver() once every check has passed.
        from dist_tests.harness import forkserver
        forkserver.fork_early(settings.work_dir, RUN.gpu_lease.fds() if RUN.gpu_lease else ())
    torch_internals.check_torch_internals()
    torch_internals.prepare_parent(budget.test_timeout_s)

    # DIST_TESTS_KNOWN_FAILURES points at another list, for a backend's own CI.
    named = os.environ.get("DIST_TESTS_KNOWN_FAILURES")
    path = named or os.path.join(_KNOWN_FAILURES_DIR, f"{settings.backend}.txt")
    source = named or f"dist_tests/known_failures/{settings.backend}.txt"
    try:
        # A list named explicitly must exist; a backend may have no list of its own.
        RUN.known = KnownFailures.load(path, source, settings.world_size, required=bool(named))
    except KnownFailuresError as error:
        die(str(error))
    unknown = RUN.known.unknown_names(_test_names(test_class))
    if unknown:
        die(f"{source} lists tests this suite does not have: {', '.join(unknown)}. Fix or remove those lines.")
    if settings.exclusions:
        label, path = settings.exclusions
        try:
            RUN.excluded = KnownFailures.load_exclusions(label, path, settings.world_size)
        except KnownFailuresError as error:
            die(f"{settings.target}: {error}")
        stale = RUN.excluded.unknown_names(_test_names(test_class))
        if stale:
            die(f"{settings.target}: its exclusion list {label} names tests this suite does not have: "
                f"{', '.join(stale)}. Fix or remove those lines.")

    missing = _missing_hardware(settings)
    if missing:
        if not settings.allow_skip:
            die(f"{settings.target} cannot run: {missing}.\n"
                f"  Exclude {settings.device} targets with --test_tag_filters=-{settings.device}, or pass "
                "--test_env=DIST_TESTS_ALLOW_SKIP=1 to report every test as skipped instead.")
        RUN.skip_all_reason = f"not run: {missing}"

    test_filter = selection.filter_text(os.environ, sys.argv)
    sys.argv = sys.argv[:1] + selection.take_k_options(sys.argv[1:])[0]
    patterns = selection.Patterns([], [])
    if test_filter:
        names, class_name = _test_names(test_class), test_class.__qualname__
        patterns = selection.exact_patterns(test_filter, names, class_name)
        RUN.selected_total = selection.count_selected(patterns, names, test_class.__module__, class_name)
        RUN.filter_text = test_filter
        # absltest hands these to unittest's -k (none: every test); the loader below drops the excluded.
        environment.select_tests(" ".join(shlex.quote(p) for p in patterns.include))
        if selection.runs_in_first_shard(test_filter, int(os.environ.get("TEST_TOTAL_SHARDS", "1"))):
            _run_filtered_selection_in_first_shard()
    if RUN.start_method == "forkserver" and not RUN.skip_all_reason:
        _start_forkserver(settings)  # last: every setting and list above was checked without it
    absltest.main(testRunner=reporting.SpawnTestRunner, testLoader=_loader(patterns))


def _loader(patterns: selection.Patterns) -> unittest.TestLoader:
    """absltest's loader, less the tests the filter excludes: unittest's -k can only include.

    absltest shards the names this returns, so every shard drops the same tests before it takes its share.
    """
    from absl.testing import absltest

    class Loader(absltest.TestLoader):
        def getTestCaseNames(self, testCaseClass: type) -> list[str]:
            prefix = f"{testCaseClass.__module__}.{testCaseClass.__qualname__}."
            return [name for name in super().getTestCaseNames(testCaseClass)
                    if not selection.is_excluded(prefix + name, patterns)]

    return Loader()


def _run_filtered_selection_in_first_shard() -> None:
    """A small filtered selection runs whole in shard 1; configure() already ended shards 2..N.

    Kept together, one shard sees all of it, so a selection whose every test is skipped
    fails instead of passing shard by shard.
    """
    status_file = os.environ.get("TEST_SHARD_STATUS_FILE")
    if status_file:  # tells Bazel this runner understood sharding
        open(status_file, "a").close()
    environment.run_whole_selection_here()
