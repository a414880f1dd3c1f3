"""SpawnHarness: mixed in before torch's TestDistBackend to control how ranks start and end.

It keeps torch's test bodies and skip rules unchanged, and changes the parent's side:
ranks start through a forkserver (or spawn), write per-rank logs, and are joined by a loop
that ends a test as soon as a rank errors, dies by a signal, or the test's time budget is
spent, naming the rank and the cause and attaching every rank's traceback and log.

This is the one module that relies on private parts of torch's test internals: the
MultiProcessTestCase methods SpawnHarness overrides or calls, the module globals patched
here (common_distributed.get_timeout, distributed_test.INIT_METHOD in forked ranks), the
state common_utils.parse_cmd_line_args() sets, and TestDistBackend.setUp making TEMP_DIR
(barrier and test folders) itself. check_torch_internals() verifies all of it at start.
"""

import inspect
import os
import shutil
import sys
import time
import unittest
from types import ModuleType
from typing import Any

import torch.multiprocessing
from torch.testing._internal import common_distributed, common_utils
from torch.testing._internal.common_distributed import MultiProcessTestCase
from torch.testing._internal.distributed import distributed_test

from dist_tests.harness import ranks, reruns
from dist_tests.harness.settings import SETUP_ERROR_EXIT_CODE
from dist_tests.harness.state import ATTEMPT_VARIABLE, KNOWN_FAILURE_PREFIX, NOT_RUN_PREFIX, RUN, time_hint

_LOG_TAIL_LINES = 40
_POLL_S = 0.02


def remaining_budget_s() -> float | None:
    """Seconds left before Bazel kills this test process, or None without a deadline."""
    settings = RUN.settings
    if settings is None or settings.deadline_s is None:
        return None
    return settings.deadline_s - (time.monotonic() - RUN.started)


def _end_margin_s(deadline_s: float) -> float:
    """Room kept before Bazel's deadline for collecting stacks, stopping ranks and writing the XML."""
    return max(10.0, 0.05 * deadline_s)


# torch's own timeout of the tests whose timeout test_timeout_s cut, by test id.
_TORCH_TIMEOUT_WHEN_CUT: dict[str, float] = {}


def test_timeout_s(test_id: str, torch_timeout: int) -> float:
    """The seconds one test may take before its ranks are stopped and it fails.

    DIST_TESTS_PER_TEST_TIMEOUT, when set, is used as given. Otherwise torch's own timeout,
    cut so that a hung test fails on its own, with its ranks' stacks, before Bazel's
    TEST_TIMEOUT kills the whole shard. A cut is remembered: the test's failure says so.
    """
    _TORCH_TIMEOUT_WHEN_CUT.pop(test_id, None)
    settings = RUN.settings
    if settings and settings.per_test_timeout_s:
        return float(settings.per_test_timeout_s)
    timeout = float(torch_timeout)
    left = remaining_budget_s()
    if left is not None and settings and settings.deadline_s:
        fits = left - _end_margin_s(settings.deadline_s)
        if fits < timeout:
            _TORCH_TIMEOUT_WHEN_CUT[test_id] = timeout
            timeout = fits
    return max(timeout, 1.0)


# MultiProcessTestCase methods SpawnHarness overrides or calls, with their parameter counts (self included).
_RELIED_ON_METHODS = {"_spawn_processes": 1, "_start_processes": 2, "_join_processes": 2, "_check_return_codes": 3}


def missing_torch_internals(base: type = MultiProcessTestCase, distributed: ModuleType = common_distributed,
                            utils: ModuleType = common_utils, suite: ModuleType = distributed_test) -> list[str]:
    """What this module relies on that the given torch test internals lack (empty when all is there)."""
    missing = []
    for name, count in _RELIED_ON_METHODS.items():
        method = getattr(base, name, None)
        if not callable(method):
            missing.append(f"MultiProcessTestCase.{name}")
        elif len(inspect.signature(method).parameters) != count:
            missing.append(f"MultiProcessTestCase.{name} with {count - 1} argument(s)")
    run = getattr(base, "_run", None)
    if not callable(run) or list(inspect.signature(run).parameters)[:2] != ["rank", "test_name"]:
        missing.append("MultiProcessTestCase._run(rank, test_name, file_name, pipe)")
    if not isinstance(getattr(base, "TEST_ERROR_EXIT_CODE", None), int):
        missing.append("MultiProcessTestCase.TEST_ERROR_EXIT_CODE")
    if not hasattr(getattr(base, "Event", None), "GET_TRACEBACK"):
        missing.append("MultiProcessTestCase.Event.GET_TRACEBACK")
    if not callable(getattr(distributed, "get_timeout", None)):
        missing.append("common_distributed.get_timeout(test_id)")
    if not callable(getattr(utils, "parse_cmd_line_args", None)):
        missing.append("common_utils.parse_cmd_line_args()")
    if not isinstance(getattr(suite, "INIT_METHOD", None), str):
        missing.append("distributed_test.INIT_METHOD")
    set_up = getattr(getattr(suite, "TestDistBackend", None), "setUp", None)
    if "initialize_temp_directories" not in getattr(getattr(set_up, "__code__", None), "co_names", ()):
        missing.append("TestDistBackend.setUp making TEMP_DIR (initialize_temp_directories)")
    return missing


def check_torch_internals() -> None:
    """Exits with a clear message when the torch in use lacks what this harness relies on."""
    missing = missing_torch_internals()
    if missing:
        print(f"dist_tests: error: torch {torch.__version__} ({os.path.dirname(torch.__file__)}) lacks test internals "
              f"that this harness relies on: {'; '.join(missing)}.\n"
              "  The harness (dist_tests/harness/suite.py) is written for the lock's torch (third_party/python/"
              "requirements_*_lock.txt); adapt that module to this torch, or use the lock's.",
              file=sys.stderr, flush=True)
        sys.exit(SETUP_ERROR_EXIT_CODE)


def prepare_parent(timeout_s: Any) -> None:
    """Sets the state torch's run_tests() would, and routes torch's per-test timeout through `timeout_s`."""
    # torch's decorators read globals that its own run_tests() sets from the command line.
    argv, sys.argv = sys.argv, sys.argv[:1]
    common_utils.parse_cmd_line_args()
    sys.argv = argv
    torch_timeout = common_distributed.get_timeout
    common_distributed.get_timeout = lambda test_id: timeout_s(test_id, torch_timeout(test_id))


def prepare_forked_rank(args: tuple) -> None:
    """Makes a rank forked from the forkserver behave as a freshly imported one would.

    distributed_test reads INIT_METHOD at import, in the server; the rank must see this
    test's. And CUDA must never be used in a process forked after the driver was touched:
    should torch say so although the server was proven clean (forkserver.py), the rank
    ends before the test body runs, with BAD_FORK_EXIT_CODE, and the parent reruns the
    test with spawn (SpawnHarness._join_processes).
    """
    distributed_test.INIT_METHOD = os.environ.get("INIT_METHOD", "env://")
    if torch.cuda._is_in_bad_fork():
        print(f"dist_tests: rank {args[0]} was forked from a forkserver that had initialised CUDA (torch "
              f"{torch.__version__}), so CUDA cannot work in it: it ends before its test body runs.",
              file=sys.stderr, flush=True)
        sys.exit(ranks.BAD_FORK_EXIT_CODE)


def timeout_cut_note(test_id: str) -> str:
    torch_s = _TORCH_TIMEOUT_WHEN_CUT.get(test_id)
    if torch_s is None:
        return ""
    return (f" [torch allows this test {torch_s:.0f} s; its timeout was cut to what was left of this shard's "
            f"Bazel timeout: {time_hint()}]")


def time_too_short_message() -> str | None:
    """Why the next test cannot start: too little of the shard's Bazel timeout is left; None if it can."""
    settings = RUN.settings
    left = remaining_budget_s()
    if left is None or settings is None or settings.deadline_s is None:
        return None
    if left - _end_margin_s(settings.deadline_s) >= max(5.0, 0.05 * settings.deadline_s):
        return None
    return (f"{NOT_RUN_PREFIX}: only {max(left, 0):.0f} s of this shard's Bazel timeout "
            f"({settings.deadline_s:.0f} s) were left; {time_hint()}")


class NotRunForTime(RuntimeError):
    """A test that did not start for lack of time: an error, so the shard fails."""


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return "(no log)"
    return "".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"


class SpawnHarness:
    """Overrides of MultiProcessTestCase's parent-side methods; see the module docstring."""

    processes: list
    pid_to_pipe: dict
    _dist_cause: str | None = None
    _dist_abnormal: bool = False

    def run(self, result: Any = None) -> Any:
        """unittest's run, repeated in fresh ranks while the test fails, up to DIST_TESTS_RERUNS more times."""
        count = RUN.settings.reruns if RUN.settings else 0
        if not count or result is None:
            return super().run(result)  # type: ignore[misc]
        reruns.run_attempts(self, result, super().run, count)  # type: ignore[misc]
        return result

    def setUp(self) -> None:
        if RUN.skip_all_reason:
            raise unittest.SkipTest(RUN.skip_all_reason)
        too_short = time_too_short_message()
        if too_short:
            raise NotRunForTime(too_short)
        self._dist_cause = None
        self._dist_abnormal = False  # a timeout or a rank killed by a signal
        super().setUp()  # type: ignore[misc]
        plugin = RUN.settings.plugin if RUN.settings else None
        if plugin and plugin.init_method != "file":
            # torch's setUp chose a FileStore; a backend that cannot use one rendezvous over TCP on a fresh port.
            port = ranks.free_port()
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            os.environ["INIT_METHOD"] = "env://" if plugin.init_method == "env" else f"tcp://127.0.0.1:{port}"

    def _log_dir(self) -> str:
        base = RUN.settings.work_dir if RUN.settings else os.environ.get("TMPDIR", "/tmp")
        return os.path.join(base, "rank_logs", self._testMethodName)  # type: ignore[attr-defined]

    def _spawn_processes(self) -> None:
        # The forkserver, when used, was started and proven clean by the runner (forkserver.py);
        # each rank forked from it only re-runs the entry point's cheap top level.
        method = RUN.start_method
        context = torch.multiprocessing.get_context(method)
        log_dir = self._log_dir() if RUN.settings and RUN.settings.outputs_dir else None
        if log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)

        # A rerun's logs are named apart: a failed attempt's are kept beside them in the outputs.
        attempt = int(os.environ.get(ATTEMPT_VARIABLE, "1"))
        suffix = f".attempt{attempt}" if attempt > 1 else ""

        def start_rank(target: Any, name: str, args: tuple, kwargs: dict) -> Any:
            log_path = os.path.join(log_dir, f"rank{args[0]}{suffix}.log") if log_dir else None
            forked = method == "forkserver"
            return context.Process(target=ranks.run_rank, name=name,
                                   args=(target, dict(os.environ), log_path, forked, args, kwargs))

        self._start_processes(start_rank)  # type: ignore[attr-defined]

    def _collect_tracebacks(self) -> dict[int, str]:
        """Asks every live rank for its Python stacks (torch's GET_TRACEBACK event)."""
        asked = []
        for rank, process in enumerate(self.processes):
            if process.exitcode is None:
                pipe = self.pid_to_pipe[process.pid]
                try:
                    pipe.send(MultiProcessTestCase.Event.GET_TRACEBACK)
                    asked.append((rank, pipe))
                except (ConnectionError, OSError):
                    pass
        stacks = {}
        for rank, pipe in asked:
            try:
                if pipe.poll(5):
                    stacks[rank] = pipe.recv()
            except (ConnectionError, OSError, EOFError):
                pass
        return stacks

    def _stop_ranks(self) -> None:
        for process in self.processes:
            if process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + 5
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join(5)

    def _join_processes(self, fn: Any) -> None:
        try:
            started, bad_fork = self._wait_for_ranks()
            if bad_fork is not None:
                # Never a failure of the test: its ranks end before its body runs. Rerun it with spawn.
                why = (f"rank {bad_fork} of {self._testMethodName} found itself in a bad fork (torch says its "  # type: ignore[attr-defined]
                       "forkserver had initialised CUDA)")
                if RUN.settings and RUN.settings.start_method_given:
                    raise RuntimeError(f"{why}; DIST_TESTS_START_METHOD=forkserver makes that an error. "
                                       "Unset it to let the run fall back to spawn, or set it to spawn.")
                RUN.fall_back_to_spawn(why)
                for pipe in self.pid_to_pipe.values():
                    pipe.close()
                self.pid_to_pipe.clear()
                self._spawn_processes()
                started, _ = self._wait_for_ranks()
            self._check_return_codes(fn, time.monotonic() - started)
        finally:
            for pipe in self.pid_to_pipe.values():
                pipe.close()

    def _wait_for_ranks(self) -> tuple[float, int | None]:
        """Waits until every rank ended, or ends them all at the first error, signal or timeout.

        Returns when the wait started, and the rank that found itself in a bad fork (None when
        none did); the cause of an abnormal end is left in _dist_cause.
        """
        timeout = common_distributed.get_timeout(self.id())  # type: ignore[attr-defined]
        start = time.monotonic()
        while True:
            codes = [p.exitcode for p in self.processes]
            if ranks.BAD_FORK_EXIT_CODE in codes:
                self._stop_ranks()
                return start, codes.index(ranks.BAD_FORK_EXIT_CODE)
            killed = [f"rank {r} was killed by {ranks.signal_name(c)}"
                      for r, c in enumerate(codes) if c is not None and c < 0]
            if all(code is not None for code in codes):
                if killed:  # every rank ended before the loop looked: name the signals all the same
                    self._dist_abnormal = True
                    self._dist_cause = "; ".join(killed)
                return start, None
            errored = [r for r, c in enumerate(codes) if c == MultiProcessTestCase.TEST_ERROR_EXIT_CODE]
            if errored or killed:
                causes = killed + [f"rank {r} raised an exception" for r in errored]
                self._dist_abnormal = bool(killed)
                self._end_with("; ".join(causes))
                return start, None
            if time.monotonic() - start > timeout:
                self._dist_abnormal = True
                self._end_with(f"timed out after {timeout:.0f} s (ranks still running: "
                               f"{', '.join(str(r) for r, c in enumerate(codes) if c is None)})"
                               f"{timeout_cut_note(self.id())}")  # type: ignore[attr-defined]
                return start, None
            time.sleep(_POLL_S)

    def _end_with(self, cause: str) -> None:
        stacks = self._collect_tracebacks()
        self._stop_ranks()
        text = [cause]
        for rank, stack in sorted(stacks.items()):
            text.append(f"--- rank {rank} was at:\n{stack}")
        self._dist_cause = "\n".join(text)

    def _check_return_codes(self, fn: Any, elapsed: float) -> None:
        name = self._testMethodName  # type: ignore[attr-defined]
        reason = RUN.known.reason(name)
        try:
            errored = any(p.exitcode == MultiProcessTestCase.TEST_ERROR_EXIT_CODE for p in self.processes)
            if self._dist_cause and not errored:
                raise RuntimeError(self._dist_cause)
            super()._check_return_codes(fn, elapsed)  # type: ignore[misc]
        except unittest.SkipTest:
            raise
        except Exception as error:
            # Excused only as listed: an exception, not a timeout or a rank dead by a signal.
            if reason is not None and not self._dist_abnormal:
                raise unittest.SkipTest(f"{KNOWN_FAILURE_PREFIX} ({RUN.known.source}): {reason}") from None
            # The cause the join loop saw (a signal, a timeout) first, then torch's message.
            details = [self._dist_cause or ""]
            if reason is not None:
                details.append(f"(listed in {RUN.known.source} as a known failure, '{reason}', "
                               "but it failed differently: by a timeout or a signal, not an exception)")
            if str(error) != self._dist_cause:
                details.append(str(error))
            details.append(self._rank_logs_report())
            raise type(error)("\n".join(d for d in details if d)) from None
        if reason is not None:
            raise AssertionError(
                f"{name} is listed in {RUN.known.source} as known to fail ({reason}), but it passed. "
                "Remove it from that list."
            )

    def _rank_logs_report(self) -> str:
        """Keeps this test's rank logs in Bazel's outputs and returns their tails."""
        log_dir = self._log_dir()
        if not (RUN.settings and RUN.settings.outputs_dir and os.path.isdir(log_dir)):
            return ""
        kept = os.path.join(RUN.settings.outputs_dir, "rank_logs", self._testMethodName)  # type: ignore[attr-defined]
        shutil.copytree(log_dir, kept, dirs_exist_ok=True)
        parts = []
        for log in sorted(os.listdir(log_dir)):
            parts.append(f"--- {log} (kept in test.outputs/rank_logs/{self._testMethodName}/{log}), last lines:\n"  # type: ignore[attr-defined]
                         f"{_tail(os.path.join(log_dir, log))}")
        return "\n".join(parts)

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        if RUN.settings and RUN.settings.outputs_dir:
            shutil.rmtree(self._log_dir(), ignore_errors=True)


class StandaloneSpawnCase(SpawnHarness, MultiProcessTestCase):
    """A test class of one's own whose WORLD_SIZE ranks start exactly as the suite's do.

    For checks outside torch's suite (tools/gpu_check, the project's probes): each test
    method runs in every rank, as in MultiProcessTestCase.
    """

    @property
    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()
