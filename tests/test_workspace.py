"""The workspace builds offline, on the locked environment, and checks its interpreter."""

import hashlib
import pathlib

from conftest import bazel


def test_tests_run_on_the_locked_environment():
    run = bazel("test", "//tests:locked_env_test", "--nocache_test_results", "--test_output=errors")
    assert run.returncode == 0, run.output


def test_a_fresh_output_base_builds_without_downloading(fresh_output_base):
    run = bazel("build", "//dist_tests:all", "//tests:all", startup=fresh_output_base, timeout=1800)
    assert run.returncode == 0, run.output
    assert "Download from" not in run.output
    assert "Downloading" not in run.output


def test_an_interpreter_of_another_version_is_refused(fresh_output_base, tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho /opt/fake/bin/python3.9\necho 3.9\n")
    fake.chmod(0o755)
    run = bazel("build", "//tests:locked_env_test", f"--repo_env=DIST_TESTS_PYTHON={fake}", startup=fresh_output_base)
    assert run.returncode != 0
    assert "is Python 3.9" in run.output
    assert "locked for Python 3.11" in run.output
    assert "DIST_TESTS_PYTHON" in run.output


def test_a_torch_wheel_needs_its_own_sha256(fresh_output_base, tmp_path):
    wheel = tmp_path / "torch-2.13.0-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"a wheel rebuilt at the same path")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    target = ("build", "@dist_python//:runtime", f"--repo_env=DIST_TESTS_TORCH_WHEEL={wheel}")

    wrong = bazel(*target, "--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256=" + "0" * 64, startup=fresh_output_base)
    assert wrong.returncode != 0
    assert f"has sha256 {actual}, but DIST_TESTS_TORCH_WHEEL_SHA256 is {'0' * 64}" in wrong.output
    assert f"--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256={actual}" in wrong.output

    missing = bazel(*target, startup=fresh_output_base)
    assert missing.returncode != 0
    assert "DIST_TESTS_TORCH_WHEEL needs DIST_TESTS_TORCH_WHEEL_SHA256" in missing.output
    assert f"--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256={actual}" in missing.output


def test_the_lock_pins_every_package_with_a_hash():
    lock = pathlib.Path(__file__).resolve().parent.parent / "third_party/python/requirements_lock.txt"
    text = lock.read_text()
    pins = [line for line in text.splitlines() if "==" in line]
    hashes = [line for line in text.splitlines() if "--hash=sha256:" in line]
    assert len(pins) >= 10
    assert len(pins) == len(hashes)
    for package in ("torch==2.13.0", "absl-py==", "pytest==", "expecttest=="):
        assert any(line.startswith(package) for line in pins), package
