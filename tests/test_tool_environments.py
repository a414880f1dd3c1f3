"""A tool environment made outside Bazel works from a plain shell, whoever made it.

The remote-execution cluster's environment (BuildGrid from third_party/remote_execution's lock) is
made here by a process of the locked interpreter, whose PYTHONPATH holds the locked test packages:
pip once counted those as installed and left them out (typing_extensions, which grpc.aio imports),
and the cluster then started only under that PYTHONPATH. Each test has a cache folder of its own
(XDG_CACHE_HOME), shared by this file's tests, so the user's cached environment is not touched.
"""

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT

# Its clusters and Bazel runs fill the waits of the other lane (tools/selftest).
pytestmark = pytest.mark.second_lane

TOOL = str(ROOT / "tools" / "remote" / "execution")
LOCK = ROOT / "third_party" / "remote_execution" / "requirements_lock.txt"
DIGEST = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
# Run by the locked interpreter: the command it is given, with the interpreter's own PYTHONPATH.
UNDER_LOCKED_PYTHONPATH = """
import os, subprocess, sys
print("PYTHONPATH=" + os.environ["PYTHONPATH"])
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"""


def shell_env(cache: pathlib.Path) -> dict[str, str]:
    """A plain shell's environment: no PYTHON* variable at all."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    return {**env, "XDG_CACHE_HOME": str(cache)}


def tool(action: str, state: pathlib.Path, env: dict[str, str],
         python: str | None = None) -> subprocess.CompletedProcess:
    """tools/remote/execution ACTION on a small cluster (one cpu worker), run by a shell or, given
    python, by a process of that interpreter."""
    argv = [TOOL, action, "--dir", str(state)]
    if action == "start":
        argv += ["--cpu-workers", "1", "--gpu-workers", "0"]
    if python:
        argv = [python, "-c", UNDER_LOCKED_PYTHONPATH, *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def start_and_stop(cache: pathlib.Path, python: str | None = None) -> subprocess.CompletedProcess:
    """Starts a cluster (PostgreSQL runs as its own user: the folder lies in /tmp), checks it runs, stops it."""
    state = pathlib.Path(tempfile.mkdtemp(prefix="dist_tests_tool_environment-", dir="/tmp"))
    env = shell_env(cache)
    try:
        started = tool("start", state, env, python)
        assert started.returncode == 0, started.stdout + started.stderr
        status = tool("status", state, env)
        assert status.returncode == 0, status.stdout
        return started
    finally:
        stopped = tool("stop", state, env)
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def site_packages(cache: pathlib.Path) -> pathlib.Path:
    return next((cache / "dist_tests" / f"remote_execution_env-{DIGEST}").glob("lib/python3.*/site-packages"))


def made_again(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if "making it again" in line]


@pytest.fixture(scope="module")
def cache(python, tmp_path_factory) -> pathlib.Path:
    """A cache folder whose cluster environment was made by a cluster started from the locked interpreter."""
    cache = tmp_path_factory.mktemp("cache")
    run = start_and_stop(cache, python)
    pythonpath = re.search(r"^PYTHONPATH=(.*)$", run.stdout, re.MULTILINE)[1].split(os.pathsep)
    # The case itself: the maker could import the locked typing_extensions through its PYTHONPATH.
    assert [p for p in pythonpath if (pathlib.Path(p) / "typing_extensions.py").exists()], pythonpath
    assert "creating the tool environment" in run.stderr, run.stderr
    return cache


def test_an_environment_made_under_the_locked_pythonpath_starts_the_cluster_from_a_shell(cache):
    assert (site_packages(cache) / "typing_extensions.py").exists()
    run = start_and_stop(cache)
    # The cached environment passed its check: nothing was made again.
    assert "creating" not in run.stderr and made_again(run) == [], run.stderr


def test_a_cached_environment_missing_a_locked_package_is_made_again(cache):
    version = re.search(r"^typing-extensions===?(\S+)", LOCK.read_text(), re.MULTILINE)[1]
    site = site_packages(cache)
    (site / "typing_extensions.py").unlink()
    shutil.rmtree(site / f"typing_extensions-{version}.dist-info")
    run = start_and_stop(cache)
    env = cache / "dist_tests" / f"remote_execution_env-{DIGEST}"
    assert made_again(run) == [f"remote_execution: the tool environment in {env} fails its check (not installed as "
                               f"locked: typing-extensions {version}: missing); making it again"], run.stderr
    assert (site_packages(cache) / "typing_extensions.py").exists()


def test_a_cached_environment_marked_by_an_older_layout_is_made_again(cache):
    env = cache / "dist_tests" / f"remote_execution_env-{DIGEST}"
    (env / "ready").write_text(DIGEST + "\n")  # the marker before environments were checked
    run = start_and_stop(cache)
    assert made_again(run) == [f"remote_execution: the tool environment in {env} is marked by another layout "
                               "(not 2); making it again"], run.stderr
    assert (env / "ready").read_text() != DIGEST + "\n"
