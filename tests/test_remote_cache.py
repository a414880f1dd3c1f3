"""Test actions are cache-hermetic: a second clone at another path, with a fresh output base,
gets every test action from a real remote cache (nginx with WebDAV on loopback)."""

import re
import shutil
import subprocess

import pytest

from conftest import ROOT

# Its Bazel runs are in workspace copies with output bases of their own: tools/selftest runs it beside the others.
pytestmark = pytest.mark.own_workspace

FILTER = "--test_filter=test_all_reduce_sum test_broadcast"


def copy_workspace(dest):
    """The working tree as a fresh clone would have it (tracked and new files, nothing ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
        check=True
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture
def cache(tmp_path):
    url = subprocess.run([str(ROOT / "tools/remote/cache"), "start", str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True).stdout.strip()
    yield url
    subprocess.run([str(ROOT / "tools/remote/cache"), "stop", str(tmp_path / "cache")], check=True)


def run_clone(workspace, output_base, url):
    proc = subprocess.run(
        [str(workspace / "tools/bazel"), f"--output_base={output_base}", "test", "//dist_tests:gloo_2", FILTER,
         f"--remote_cache={url}"],
        cwd=workspace, capture_output=True, text=True, timeout=1800,
    )
    subprocess.run([str(workspace / "tools/bazel"), f"--output_base={output_base}", "shutdown"], cwd=workspace)
    return proc.returncode, proc.stdout + proc.stderr


def processes_line(output):
    return [line for line in output.splitlines() if re.match(r"INFO: \d+ process", line)][-1]


def test_second_clone_gets_every_test_action_from_the_remote_cache(tmp_path, cache):
    """Over 2 minutes: two clones, each with a fresh output base (a Bazel server, its environments, the tests
    once), are what a second machine sharing a cache is."""
    first = copy_workspace(tmp_path / "a" / "workspace")
    second = copy_workspace(tmp_path / "b" / "elsewhere" / "other-name")
    try:
        code, out = run_clone(first, tmp_path / "ob1", cache)
        assert code == 0, out
        code, out = run_clone(second, tmp_path / "ob2", cache)
        assert code == 0, out
        line = processes_line(out)
        print(f"second clone: {line}")
        # Four shards, all served by the cache, none executed.
        assert re.search(r"\b4 remote cache hit", line), line
        assert "linux-sandbox" not in line and "local" not in line, line
        assert "(cached)" in out or "PASSED" in out
    finally:
        for base in ("ob1", "ob2"):
            subprocess.run(["chmod", "-R", "u+w", str(tmp_path / base)], check=False)
            shutil.rmtree(tmp_path / base, ignore_errors=True)
