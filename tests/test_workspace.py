"""The workspace builds offline, on the locked environment, and checks its interpreter."""

import hashlib
import pathlib

import pytest

from conftest import ROOT, bazel


def test_tests_run_on_the_locked_environment():
    run = bazel("test", "//tests:locked_env_cpu_test", "--nocache_test_results", "--test_output=errors")
    assert run.returncode == 0, run.output


def test_a_cpu_command_on_a_fresh_output_base_downloads_nothing_and_makes_no_cuda_environment(fresh_output_base):
    run = bazel("test", "//dist_tests/...", "//tests/...", "--test_tag_filters=-gpu",
                "--test_filter=test_all_reduce_sum", startup=fresh_output_base, timeout=1800)
    assert run.returncode == 0, run.output
    assert "Download from" not in run.output
    assert "Downloading" not in run.output
    external = pathlib.Path(fresh_output_base[0].split("=", 1)[1]) / "external"
    assert (external / "dist_python_cpu" / "environment.txt").is_file()
    assert not (external / "dist_python_gpu").exists(), "a CPU-only command fetched the GPU targets' environment"


def test_an_interpreter_of_a_version_without_a_lock_is_refused(fresh_output_base, tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho /opt/fake/bin/python3.9\necho cpython\necho 3.9\n")
    fake.chmod(0o755)
    run = bazel("build", "//tests:locked_env_cpu_test", f"--repo_env=DIST_TESTS_PYTHON={fake}",
                startup=fresh_output_base)
    assert run.returncode != 0
    # The versions there are (every Python with a lock of some device class), and this one's.
    versions = sorted({path.name.split("_py")[1].split("_")[0]
                       for path in (ROOT / "third_party" / "python").glob("requirements_*_py*_lock.txt")},
                      key=lambda v: tuple(map(int, v.split("."))))
    assert "3.11" in versions
    assert f"locked for CPython {', '.join(versions)}" in run.output, run.output
    assert "but /opt/fake/bin/python3.9 is Python 3.9: there is no lock for 3.9" in run.output
    # Both ways out: an interpreter of a locked version, or this interpreter's own torch.
    assert "--repo_env=DIST_TESTS_PYTHON=/path/to/python3.X" in run.output
    own_torch = "--repo_env=DIST_TESTS_PYTHON=/opt/fake/bin/python3.9 --repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1"
    assert own_torch in run.output


def test_a_torch_wheel_needs_its_own_sha256(fresh_output_base, tmp_path):
    wheel = tmp_path / "torch-2.13.0-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"a wheel rebuilt at the same path")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    target = ("build", "@dist_python_cpu//:site_packages", f"--repo_env=DIST_TESTS_TORCH_WHEEL={wheel}")

    wrong = bazel(*target, "--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256=" + "0" * 64, startup=fresh_output_base)
    assert wrong.returncode != 0
    assert f"has sha256 {actual}, but DIST_TESTS_TORCH_WHEEL_SHA256 is {'0' * 64}" in wrong.output
    assert f"--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256={actual}" in wrong.output

    missing = bazel(*target, startup=fresh_output_base)
    assert missing.returncode != 0
    assert "DIST_TESTS_TORCH_WHEEL needs DIST_TESTS_TORCH_WHEEL_SHA256" in missing.output
    assert f"--repo_env=DIST_TESTS_TORCH_WHEEL_SHA256={actual}" in missing.output


@pytest.mark.parametrize("device, torch_pin, source", [
    ("cpu", "torch===2.13.0+cpu", "--extra-index-url https://download.pytorch.org/whl/cpu"),
    ("gpu", "torch===2.13.0", "PyPI"),
])
def test_each_device_classes_lock_pins_every_package_with_a_hash_and_names_its_source(device, torch_pin, source):
    lock = ROOT / "third_party" / "python" / f"requirements_{device}_py3.11_lock.txt"
    text = lock.read_text()
    pins = [line for line in text.splitlines() if "===" in line]
    assert len(pins) >= 10
    # Each pin is followed by its hashes.
    entries = text.split("===")[1:]
    assert all("--hash=sha256:" in entry for entry in entries)
    for package in (torch_pin, "absl-py===", "pytest===", "expecttest==="):
        assert any(line.startswith(package + " ") or line.startswith(package) for line in pins), package
    assert source in text
    if device == "gpu":
        assert any(line.startswith("nvidia-nccl-cu13===") for line in pins)
    # One torch version for both, the one requirements.in names.
    assert "torch==2.13.0\n" in (ROOT / "third_party" / "python" / "requirements.in").read_text()
