"""tools/bazel: finds Bazel, says how to install it when it cannot, refuses coverage clearly."""

import concurrent.futures
import os
import shutil
import subprocess

from conftest import BAZEL, ROOT


def run_launcher(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([BAZEL, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_without_bazel_it_says_how_to_install(tmp_path):
    # A PATH with the basic tools but no Bazel, and installing switched off.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "head", "id", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "DIST_TESTS_NO_INSTALL": "1"}
    result = run_launcher("version", env=env)
    assert result.returncode == 1
    assert "no Bazel found" in result.stderr
    assert "apt-get install bazel-bootstrap" in result.stderr
    assert "BAZEL_REAL" in result.stderr


def test_a_wrapper_script_named_bazel_is_not_taken_for_bazel(tmp_path):
    # Debian's /usr/bin/bazel is a script that calls tools/bazel: taking it would loop.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "head", "id", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    (bin_dir / "bazel").write_text("#!/bin/sh\nexec tools/bazel \"$@\"\n")
    (bin_dir / "bazel").chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "DIST_TESTS_NO_INSTALL": "1"}
    result = run_launcher("version", env=env)
    assert result.returncode == 1
    assert "no Bazel found" in result.stderr


def test_coverage_is_refused_with_a_clear_message():
    result = run_launcher("coverage", "//dist_tests:gloo_2", env=dict(os.environ))
    assert result.returncode == 2
    assert "not supported in this workspace" in result.stderr


def test_two_shells_at_once_both_work():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_launcher("info", "release", env=dict(os.environ)), range(2)))
    for result in results:
        assert result.returncode == 0, result.stderr
