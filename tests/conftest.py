"""Shared helpers for the project's own tests: real Bazel runs and their results.

Results come from the latest `bazel test`'s build events (tools/results/testlogs.py, the reader the
report and the benchmark use), never from globbing bazel-testlogs, which keeps folders of
earlier invocations.
"""

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAZEL = str(ROOT / "tools" / "bazel")

sys.path.insert(0, str(ROOT))
from tools.results import testlogs  # noqa: E402
from tools.results.testlogs import Case  # noqa: E402

# The entry the locked interpreter's wrapper adds to PYTHONPATH: its device class's site-packages.
LOCKED_PACKAGES = re.compile(r"/dist_python_[a-z]+/site-packages/?$")


def shell_pythonpath(pythonpath: str) -> str:
    """pythonpath without the locked packages: what the shell that ran tools/selftest had."""
    kept = [entry for entry in pythonpath.split(os.pathsep) if not LOCKED_PACKAGES.search(entry)]
    return os.pathsep.join(kept)


# Every process the tests start gets the environment of the shell that ran tools/selftest. The
# wrapper (tools/python_env/interpreter.bzl) runs the interpreter without the site module, so its
# packages come only through PYTHONPATH, which its own children need (3.11's forkserver finds
# torch no other way). This process has them on sys.path already; a tool started from here with
# them would work here and fail from a shell. A child that needs them runs the wrapper (`python`).
if shell := shell_pythonpath(os.environ.get("PYTHONPATH", "")):
    os.environ["PYTHONPATH"] = shell
else:
    os.environ.pop("PYTHONPATH", None)


@dataclasses.dataclass
class Run:
    returncode: int
    output: str


def bazel(*args: str, startup: tuple[str, ...] = (), env: dict | None = None, timeout: int = 900,
          workspace: pathlib.Path = ROOT) -> Run:
    """Runs the workspace's tools/bazel (this one's, or a copy's) in it; returns its exit code and combined output.

    A workspace without one (a workspace of one's own that declares this one) runs this checkout's launcher.
    """
    launcher = workspace / "tools" / "bazel"
    proc = subprocess.run(
        [str(launcher if launcher.exists() else BAZEL), *startup, *args],
        cwd=workspace,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout)


def results(target: str, workspace: pathlib.Path = ROOT) -> testlogs.TargetResults:
    """What the latest `bazel test` did for a label such as //dist_tests:gloo_2."""
    return testlogs.latest(workspace).target(target)


def all_cases(target: str) -> list[Case]:
    """Every testcase of the target's final attempts in the latest invocation."""
    return results(target).cases()


def shard_cases(target: str) -> dict[int, list[Case]]:
    """Testcases by shard number (1..N), for a single run."""
    return {a.shard: a.cases() for a in results(target).final_attempts()}


def shard_log(target: str, shard: int = 1, workspace: pathlib.Path = ROOT) -> str:
    """test.log of one shard (of the first run) in the latest invocation."""
    attempt = next(a for a in results(target, workspace).final_attempts() if a.shard == shard and a.run == 1)
    assert attempt.log is not None, f"the build events name no test.log for {target} shard {shard}"
    return attempt.log.read_text()


def output_base() -> pathlib.Path:
    """The workspace's Bazel output base."""
    run = bazel("info", "output_base")
    assert run.returncode == 0, run.output
    return pathlib.Path(run.output.strip().splitlines()[-1])


def locked_python() -> str:
    """Path of the locked environment's interpreter, as tools/python says it (`tools/python --which`)."""
    run = subprocess.run([str(ROOT / "tools" / "python"), "--which"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def python() -> str:
    return locked_python()


@pytest.fixture(scope="session")
def cluster_blobs():
    """A folder for the CAS and input cache of every cluster this session starts (tools/remote/execution
    --blobs): each cluster is new (its own database, server, workers and action cache), but the ~1 GB
    test environment is uploaded and fetched once, not once per cluster."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="dist_tests_cluster_blobs-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_output_base(tmp_path):
    """Startup options of a Bazel server with an output base of its own (tmp_path/output_base), removed after."""
    base = tmp_path / "output_base"
    yield ("--output_base=" + str(base),)
    bazel("shutdown", startup=("--output_base=" + str(base),))
    subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
    shutil.rmtree(base, ignore_errors=True)
