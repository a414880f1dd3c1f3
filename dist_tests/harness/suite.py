"""SpawnHarness: mixed in before torch's TestDistBackend to control how ranks start and end.

It keeps torch's test bodies and skip rules unchanged, and changes the parent's side:
ranks start through a forkserver (or spawn), write per-rank logs, and are joined by a loop
that ends a test as soon as a rank errors, dies by a signal, or the test's time budget is
spent, naming the rank and the cause and attaching every rank's traceback and log.

What it relies on in torch's private test internals is checked at start (torch_internals.py).
"""

import os
import shutil
import time
import unittest
from typing import Any

import torch.multiprocessing
from torch.testing._internal import common_distributed
from torch.testing._internal.common_distributed import MultiProcessTestCase

from dist_tests.harness import environment, flight_records, rank_reports, ranks, reruns, shared
from dist_tests.harness.budget import NotRunForTime, time_too_short_message, timeout_cut_note
from dist_tests.harness.environment import ATTEMPT
from dist_tests.harness.shared import EXCLUDED_PREFIX, KNOWN_FAILURE_PREFIX
from dist_tests.harness.state import RUN
from dist_tests.harness.torch_internals import BAD_FORK_EXIT_CODE

_LOG_TAIL_LINES = 40
_POLL_S = 0.02
# Stack paths are shown from here on (flight_records.shorten_paths): under Bazel, the runfiles' workspace.
_WORKSPACE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    _dist_lines: dict  # rank -> (the parent's end of its pipe, its stacks file, its dump file or None)
    _dist_dump_folder: str | None = None

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
        excluded = RUN.excluded.reason(self._testMethodName)  # type: ignore[attr-defined]
        if excluded is not None:  # never started on this line: it hangs or crashes there
            raise unittest.SkipTest(f"{EXCLUDED_PREFIX}{RUN.excluded.source}): {excluded}")
        too_short = time_too_short_message()
        if too_short:
            raise NotRunForTime(too_short)
        self._dist_cause = None
        self._dist_abnormal = False  # a timeout or a rank killed by a signal
        super().setUp()  # type: ignore[misc]
        plugin = RUN.settings.plugin if RUN.settings else None
        if plugin and plugin.init_method != "file":
            # torch's setUp chose a FileStore; a backend that cannot use one rendezvous over TCP on a fresh port.
            environment.use_rendezvous(plugin.init_method, shared.free_port())

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
        attempt = int(os.environ.get(ATTEMPT, "1"))
        suffix = f".attempt{attempt}" if attempt > 1 else ""

        # Each rank answers on a pipe of its own for its stacks and flight recorder dump (rank_reports.py).
        self._close_rank_lines()
        self._dist_dump_folder = self._dump_folder(attempt)
        stacks_dir = os.path.join(self._work_dir(), "rank_stacks", self._testMethodName)  # type: ignore[attr-defined]
        os.makedirs(stacks_dir, exist_ok=True)
        child_ends = []

        def start_rank(target: Any, name: str, args: tuple, kwargs: dict) -> Any:
            rank = args[0]
            log_path = os.path.join(log_dir, f"rank{rank}{suffix}.log") if log_dir else None
            forked = method == "forkserver"
            parent_end, child_end = context.Pipe()
            child_ends.append(child_end)
            stacks = os.path.join(stacks_dir, f"rank{rank}{suffix}")
            dump = flight_records.rank_file(self._dist_dump_folder, rank) if self._dist_dump_folder else None
            self._dist_lines[rank] = (parent_end, stacks, dump)
            line = rank_reports.RankLine(child_end, stacks, dump)
            return context.Process(target=ranks.run_rank, name=name,
                                   args=(target, dict(os.environ), log_path, forked, args, kwargs, line))

        try:
            self._start_processes(start_rank)  # type: ignore[attr-defined]
        finally:
            for end in child_ends:  # the ranks hold theirs: a rank's death then closes the parent's end
                end.close()

    def _work_dir(self) -> str:
        return RUN.settings.work_dir if RUN.settings else os.environ.get("TMPDIR", "/tmp")

    def _dump_folder(self, attempt: int) -> str | None:
        """Where this test's ranks write their flight recorder dumps: the outputs (kept), else the work dir."""
        if not (RUN.settings and RUN.settings.recorder_env is not None):
            return None
        base = RUN.settings.outputs_dir or self._work_dir()
        return flight_records.dump_folder(base, self._testMethodName, attempt)  # type: ignore[attr-defined]

    def _close_rank_lines(self) -> None:
        for parent_end, _, _ in getattr(self, "_dist_lines", {}).values():
            parent_end.close()
        self._dist_lines = {}

    def _ask_ranks(self) -> dict[int, rank_reports.Answer]:
        """Asks every live rank for its stacks and its flight recorder dump (rank_reports.ask)."""
        live = {}
        for rank, process in enumerate(self.processes):
            if process.exitcode is None and rank in self._dist_lines:
                conn, stacks, dump = self._dist_lines[rank]
                live[rank] = rank_reports.Asked(process.pid, conn, stacks, dump)
        return rank_reports.ask(live)

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
            self._close_rank_lines()

    def _wait_for_ranks(self) -> tuple[float, int | None]:
        """Waits until every rank ended, or ends them all at the first error, signal or timeout.

        Returns when the wait started, and the rank that found itself in a bad fork (None when
        none did); the cause of an abnormal end is left in _dist_cause.
        """
        timeout = common_distributed.get_timeout(self.id())  # type: ignore[attr-defined]
        start = time.monotonic()
        while True:
            codes = [p.exitcode for p in self.processes]
            if BAD_FORK_EXIT_CODE in codes:
                self._stop_ranks()
                return start, codes.index(BAD_FORK_EXIT_CODE)
            killed = [f"rank {r} was killed by {ranks.signal_name(c)}"
                      for r, c in enumerate(codes) if c is not None and c < 0]
            errored = [r for r, c in enumerate(codes) if c == MultiProcessTestCase.TEST_ERROR_EXIT_CODE]
            causes = killed + [f"rank {r} raised an exception" for r in errored]
            if all(code is not None for code in codes):
                if causes:  # every rank ended before the loop looked (a loaded host): name them all the same
                    self._dist_abnormal = bool(killed)
                    self._dist_cause = "; ".join(causes)
                return start, None
            if causes:
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
        """Before the ranks are stopped: each live one's stacks and record; then the diagnosis on top."""
        answers = self._ask_ranks()
        self._stop_ranks()
        text = [self._records_diagnosis(answers), cause, self._records_note()]
        stacks = []
        for rank in sorted(answers):
            answer = answers[rank]
            if answer.stacks is not None:
                how = " (by signal: it did not answer on its pipe, as when it holds the GIL)" \
                    if answer.stacks_by_signal else ""
                stacks.append(f"--- rank {rank} was at{how}:\n{answer.stacks}")
            else:
                stacks.append(f"--- rank {rank} answered neither the request for its stacks nor the signal "
                              f"({rank_reports.STACKS_SIGNAL.name}, faulthandler)")
        if stacks:
            text.append(flight_records.shorten_paths("\n".join(stacks), _WORKSPACE))
        self._dist_cause = "\n".join(t for t in text if t)

    def _records_diagnosis(self, answers: dict[int, rank_reports.Answer]) -> str:
        """The flight recorder's line: where each rank is, from the dumps the ranks wrote (flight_records.py)."""
        folder = self._dist_dump_folder
        if folder is None:
            return ""
        world_size = len(self.processes)
        dumps, unread = flight_records.read_rank_files(folder, world_size)
        missing = {}
        for rank, process in enumerate(self.processes):
            if rank in dumps:
                continue
            answer = answers.get(rank)
            if rank in unread:
                missing[rank] = unread[rank]
            elif answer is None:
                code = process.exitcode
                missing[rank] = (f"it was killed by {ranks.signal_name(code)}" if code is not None and code < 0
                                 else f"it had ended, exit code {code}")
            elif answer.dump_error:
                missing[rank] = f"its dump was not kept: {answer.dump_error}"
            elif answer.died:
                missing[rank] = "it died while dumping it"
            else:
                missing[rank] = f"it did not answer in {rank_reports.ANSWER_WAIT_S:.0f} s"
        return flight_records.diagnose(dumps, world_size, missing)

    def _records_note(self) -> str:
        """Where the dumps are and how to read them with torch's analyzer."""
        folder = self._dist_dump_folder
        if folder is None:
            return ("(torch's flight recorder was off: DIST_TESTS_FLIGHT_RECORDER=0, or a buffer size of 0 "
                    "given in TORCH_FR_BUFFER_SIZE)")
        if not os.path.isdir(folder) or not any(n.startswith("rank") for n in os.listdir(folder)):
            return "flight recorder dumps: none was kept"
        outputs = RUN.settings.outputs_dir if RUN.settings else None
        if outputs and folder.startswith(outputs):
            shown = "test.outputs/" + os.path.relpath(folder, outputs)
            return (f"flight recorder dumps kept in {shown}/ (outputs.zip); to read them with torch's analyzer, "
                    f"unzip it and run: {flight_records.analyzer_command(os.path.relpath(folder, outputs))}")
        return f"flight recorder dumps in {folder} (removed when the run ends)"

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
                if self._dist_dump_folder and RUN.settings and RUN.settings.outputs_dir:
                    shutil.rmtree(self._dist_dump_folder, ignore_errors=True)  # kept only for failures
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
        shutil.rmtree(os.path.join(self._work_dir(), "rank_stacks", self._testMethodName),  # type: ignore[attr-defined]
                      ignore_errors=True)


class StandaloneSpawnCase(SpawnHarness, MultiProcessTestCase):
    """A test class of one's own whose WORLD_SIZE ranks start exactly as the suite's do.

    For checks outside torch's suite (tools/gpu/gpu_check, the project's probes): each test
    method runs in every rank, as in MultiProcessTestCase.
    """

    @property
    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()
