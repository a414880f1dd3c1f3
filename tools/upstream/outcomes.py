"""Upstream's way of running the spawn suite, and the one reader of the outcomes it gives.

tools/upstream/spawn_baseline.py runs the suite as PyTorch's own spawn test file does and, given
DIST_TESTS_OUTCOMES_FILE, appends a 'name<TAB>outcome' line per test as it finishes. This module
runs it that way and reads that file; tools/upstream/benchmark and tools/gpu/gpu_check both
compare the harness with what it returns. Standard library only.
"""

import collections
import dataclasses
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Mapping

SPAWN_BASELINE = pathlib.Path(__file__).resolve().parent / "spawn_baseline.py"


@dataclasses.dataclass
class Outcomes:
    """One run's per-test outcomes (passed, skipped, failed; the harness adds its own words), and what else it said."""

    tests: dict[str, str]
    seconds: float
    output: str = ""
    exit_code: int = 0
    start_method: str | None = None

    def summary(self) -> str:
        counts = collections.Counter(self.tests.values())
        words = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        return f"{len(self.tests)} tests ({words or 'none'}) in {self.seconds:.1f} s"


def as_upstream_says(outcome: str | None) -> str | None:
    """The harness's word for a test's outcome in upstream's words: a known failure fails there, a flaky test passes.

    Any other word of the harness's own ("not run") stays as it is, so it never matches upstream.
    """
    return {"known failure": "failed", "flaky": "passed"}.get(outcome or "", outcome)


def run_in_session(args: list[str], env: Mapping[str, str], cwd: str | os.PathLike,
                   timeout: float | None) -> tuple[int, str]:
    """Runs a command in a session of its own; at the timeout, the whole session (ranks too) is killed."""
    proc = subprocess.Popen(args, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, f"timed out after {timeout} s\n{out or ''}"
    return proc.returncode, out


def read_record(path: pathlib.Path) -> dict[str, str]:
    """The 'name<TAB>outcome' lines spawn_baseline.py wrote; empty when it wrote none."""
    if not path.exists():
        return {}
    return dict(line.split("\t") for line in path.read_text().splitlines() if line)


def run_upstream(python: str, backend: str, world_size: int, args: list[str], tmp: str, env: Mapping[str, str],
                 cwd: str | os.PathLike | None = None, timeout: float | None = None) -> Outcomes:
    """Runs `args` (-k patterns) of the suite upstream's way with `python`, its files under `tmp`.

    `env` is the base environment (the caller decides what else it holds, CUDA_VISIBLE_DEVICES
    included); BACKEND, WORLD_SIZE, TEMP_DIR, TMPDIR and the record file are set here.
    """
    name = f"upstream-{backend}_{world_size}"
    temp_dir = os.path.join(tmp, name)
    for sub in ("barrier", "test_dir"):
        os.makedirs(os.path.join(temp_dir, sub), exist_ok=True)
    record = pathlib.Path(tmp) / f"{name}.tsv"
    record.unlink(missing_ok=True)
    run_env = {**env, "BACKEND": backend, "WORLD_SIZE": str(world_size), "TEMP_DIR": temp_dir, "TMPDIR": tmp,
               "DIST_TESTS_OUTCOMES_FILE": str(record)}
    started = time.monotonic()
    code, out = run_in_session([python, str(SPAWN_BASELINE), *args], run_env, cwd or tmp, timeout)
    return Outcomes(read_record(record), time.monotonic() - started, out, code)
