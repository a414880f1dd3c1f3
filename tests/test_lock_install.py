"""A locked install that cannot be done stops with a message naming the package, or the lock, and what to do."""

import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT
from test_remote_cache import copy_workspace
from tools.python_env import install_lock  # noqa: E402

# Its Bazel runs are in workspace copies with output bases of their own: tools/selftest runs it beside the others.
pytestmark = pytest.mark.own_workspace

INSTALL_LOCK = ROOT / "tools" / "python_env" / "install_lock.py"
# The host's interpreter, as the package rules run it (it has pip; the environment's copy has not).
HOST_PYTHON = shutil.which("python3")


@pytest.fixture(scope="module")
def uv(tmp_path_factory) -> str:
    """The locked installer, installed as the package rules install it (pip, hash-checked)."""
    into = tmp_path_factory.mktemp("installer")
    return install_lock.install_uv(HOST_PYTHON, str(into), str(ROOT / "third_party/python/installer_lock.txt"))


def install(uv: str, tmp_path: pathlib.Path, pin: str) -> subprocess.CompletedProcess:
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# python: 3.11\n{pin} \\\n    --hash=sha256:{'0' * 64}\n")
    return subprocess.run([HOST_PYTHON, str(INSTALL_LOCK), uv, str(lock), str(tmp_path / "site-packages")],
                          capture_output=True, text=True, timeout=300)


def test_a_wheel_that_does_not_match_its_hash_stops_naming_it(uv, tmp_path):
    run = install(uv, tmp_path, "absl-py===2.5.1")
    assert run.returncode != 0
    assert "Hash mismatch for `absl-py==2.5.1`" in run.stderr
    assert "tools/python_env/update_lock" in run.stderr and "Sources: " in run.stderr
    assert not list(tmp_path.glob("site-packages/absl*"))


def test_a_wheel_in_no_source_stops_naming_it(uv, tmp_path):
    run = install(uv, tmp_path, "absl-py===99.9.9")
    assert run.returncode != 0
    assert "absl-py==99.9.9" in run.stderr
    assert "is in none of the sources" in run.stderr
    assert "pip config set global.find-links" in run.stderr


def test_a_gpu_lock_whose_python_line_is_not_its_names_stops_the_build_naming_it(tmp_path):
    workspace = tmp_path / "workspace"
    copy_workspace(workspace)
    lock = workspace / "third_party/python/requirements_gpu_py3.11_lock.txt"
    lock.write_text(lock.read_text().replace("# python: 3.11", "# python: 3.9"))
    base = f"--output_base={tmp_path / 'output_base'}"
    try:
        run = subprocess.run([str(workspace / "tools/bazel"), base, "build", "@dist_python_gpu//:site_packages"],
                             cwd=workspace, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run([str(workspace / "tools/bazel"), base, "shutdown"], cwd=workspace, capture_output=True)
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path / "output_base")], check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "requirements_gpu_py3.11_lock.txt is named for Python 3.11 but says '# python: 3.9'" in output, output
    assert "tools/python_env/update_lock --python 3.11" in output
    # It stopped before installing anything.
    assert not (tmp_path / "output_base" / "external" / "dist_python_gpu" / "site-packages").exists()
