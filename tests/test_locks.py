"""The locks, read as files: one requirements.in, a lock per device class and Python of update_lock's
PYTHONS, each holding only wheels that fit its `# python:` line; update_lock refuses another Python."""

import importlib.machinery
import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import ROOT

PYTHON_DIR = ROOT / "third_party" / "python"
sys.path.insert(0, str(ROOT / "tools" / "python_env"))
import wheel_tags  # noqa: E402  (beside update_lock, which imports it the same way)


def _update_lock():
    loader = importlib.machinery.SourceFileLoader("update_lock", str(ROOT / "tools" / "python_env" / "update_lock"))
    spec = importlib.util.spec_from_loader("update_lock", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


UPDATE_LOCK = _update_lock()
LOCKS = sorted(PYTHON_DIR.glob("requirements_*_py*_lock.txt"))


def _name_parts(lock):
    device, python = re.fullmatch(r"requirements_(\w+?)_py(\d+\.\d+)_lock\.txt", lock.name).groups()
    return device, python


def test_one_requirements_in_and_every_lock_is_of_a_device_class_and_a_listed_python():
    assert [p.name for p in PYTHON_DIR.glob("*.in") if p.name.startswith("requirements")] == ["requirements.in"]
    assert LOCKS
    for lock in LOCKS:
        device, python = _name_parts(lock)
        assert device in UPDATE_LOCK.DEVICES, lock.name
        assert python in UPDATE_LOCK.PYTHONS, lock.name
        assert UPDATE_LOCK.lock_path(device, python) == lock
    # The names the build reads (tools/python_env/common.bzl's LOCKS) are update_lock's.
    common = (ROOT / "tools" / "python_env" / "common.bzl").read_text()
    for device in UPDATE_LOCK.DEVICES:
        assert f'"{device}": "//third_party/python:requirements_{device}_py{{python}}_lock.txt"' in common
    assert "3.11" in UPDATE_LOCK.PYTHONS and UPDATE_LOCK.DEFAULT_PYTHON == "3.11"
    assert {"3.10", "3.11", "3.12", "3.13"} <= set(UPDATE_LOCK.PYTHONS)


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: lock.name)
def test_each_locks_python_line_is_its_names_and_every_wheel_it_pins_fits_it(lock):
    device, python = _name_parts(lock)
    text = lock.read_text()
    assert re.findall(r"^# python: (\S+)$", text, re.MULTILINE) == [python]
    platform = re.search(r"^# platform: (\S+)$", text, re.MULTILINE).group(1)
    wheels = {m.group("sha256"): m.group("name") for m in wheel_tags.WHEEL_LINE.finditer(text)}
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", text)
    assert hashes and len(hashes) == len(set(hashes))
    # Every hash is a wheel the lock names, and names no other.
    assert set(hashes) == set(wheels), f"hashes without a '# wheel:' line: {set(hashes) - set(wheels)}"
    for name in wheels.values():
        assert wheel_tags.fits(name, python, platform), f"{name} does not install on CPython {python} ({platform})"
        assert wheel_tags.cpython_versions(name) <= {python} or "abi3" in name, name
    # Each pin's wheels are of that pin's distribution and version.
    for pin, block in re.findall(r"^([A-Za-z0-9._-]+===\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", text,
                                 re.MULTILINE):
        name, version = pin.split("===")
        for digest in re.findall(r"[0-9a-f]{64}", block):
            wheel = wheels[digest].split("-")
            assert re.sub(r"[-_.]+", "_", name).lower() == wheel[0].lower(), (pin, wheels[digest])
            assert wheel[1] == version, (pin, wheels[digest])
    torch = "torch===2.13.0+cpu" if device == "cpu" else "torch===2.13.0 "
    assert torch in text


def test_the_wheel_rules_tell_pythons_and_platforms_apart():
    linux = "x86_64-manylinux_2_28"
    assert wheel_tags.fits("torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl", "3.12", linux)
    assert not wheel_tags.fits("torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl", "3.11", linux)
    assert not wheel_tags.fits("torch-2.13.0-cp312-cp312-manylinux_2_28_aarch64.whl", "3.12", linux)
    assert not wheel_tags.fits("torch-2.13.0-cp312-cp312-win_amd64.whl", "3.12", linux)
    assert not wheel_tags.fits("x-1-cp312-cp312-manylinux_2_34_x86_64.whl", "3.12", linux)
    assert wheel_tags.fits("x-1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "3.12", linux)
    assert wheel_tags.fits("x-1-cp39-abi3-manylinux_2_17_x86_64.whl", "3.13", linux)
    assert not wheel_tags.fits("x-1-cp314-abi3-manylinux_2_17_x86_64.whl", "3.13", linux)
    assert wheel_tags.fits("absl_py-2.5.1-py3-none-any.whl", "3.10", linux)
    assert wheel_tags.fits("cuda_toolkit-13.0.3.0-py2.py3-none-any.whl", "3.13", linux)


@pytest.mark.parametrize("device", ["gpu", pytest.param("cpu", marks=pytest.mark.xfail(strict=True, reason=(
    "the cpu locks of 3.10, 3.12 and 3.13 need PyTorch's CPU index (download.pytorch.org/whl/cpu), which did "
    "not answer where they were to be made; run tools/python_env/update_lock where it does")))])
def test_every_listed_python_has_a_lock_of_each_device_class(device):
    have = {_name_parts(lock)[1] for lock in LOCKS if _name_parts(lock)[0] == device}
    assert have == set(UPDATE_LOCK.PYTHONS), f"{device}: locks for {sorted(have)}, PYTHONS {UPDATE_LOCK.PYTHONS}"


def test_the_3_11_locks_keep_the_versions_they_had():
    """The default Python's locks: the versions of before (numpy's 3.10 marker changes nothing for it)."""
    cpu = (PYTHON_DIR / "requirements_cpu_py3.11_lock.txt").read_text()
    gpu = (PYTHON_DIR / "requirements_gpu_py3.11_lock.txt").read_text()
    for pin in ("torch===2.13.0+cpu", "numpy===2.4.6", "absl-py===2.5.1", "pytest===9.2.0", "expecttest===0.3.0"):
        assert pin + " " in cpu, pin
        assert pin.replace("+cpu", "") + " " in gpu, pin
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu
    assert "--extra-index-url" not in gpu


def test_update_lock_refuses_a_python_without_a_lock_before_resolving_anything(tmp_path):
    # No network and no pip: an empty PATH beyond this interpreter, an index that cannot answer.
    env = {"PATH": "/nonexistent", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "python_env" / "update_lock"), "--python", "3.14"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode != 0
    assert "update_lock: Python 3.14 has no lock: the locked Pythons are 3.10, 3.11, 3.12, 3.13." in run.stderr
    assert "PYTHONS in tools/python_env/update_lock" in run.stderr
    assert not (PYTHON_DIR / "requirements_cpu_py3.14_lock.txt").exists()
