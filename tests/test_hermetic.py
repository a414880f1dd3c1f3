"""The interpreter and torch are inputs of the tests: runs that prove it, and the errors for a torch that changed."""

import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, bazel

FILTER = "--test_filter=test_all_reduce_sum"


def host_prefix(python: str) -> pathlib.Path:
    """The installation the environment's interpreter was copied from (manifest.txt names its binary)."""
    manifest = pathlib.Path(python).parent / "manifest.txt"
    binary = manifest.read_text().splitlines()[0].split(": ", 1)[1].split(" (")[0]
    return pathlib.Path(os.path.realpath(binary)).parent.parent


def can_hide_folders() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_hide_folders(), reason="needs root and unshare to hide the host's interpreter")
def test_a_test_action_passes_with_the_host_interpreter_hidden(tmp_path, python):
    """A Bazel server in a mount namespace where the host's prefix is an empty tmpfs runs a filtered gloo_2."""
    prefix = host_prefix(python)
    assert (prefix / "bin").is_dir(), prefix
    environment = pathlib.Path(python).parent
    packages = environment.parent / "dist_python_cpu"
    for needed in (ROOT, environment.resolve(), packages.resolve()):
        if needed.is_relative_to(prefix):
            pytest.skip(f"{needed} lies inside {prefix}, the installation this test hides")
    output_base = tmp_path / "output_base"
    bazel_args = f"--output_base={output_base}"
    # This server cannot create the environment (its interpreter is hidden): it takes the one built here.
    script = f"""
set -eu
mount -t tmpfs -o ro,size=1m hidden '{prefix}'
test -z "$(ls -A '{prefix}')"
echo "hidden: {prefix}"
tools/bazel {bazel_args} test //dist_tests:gloo_2 {FILTER} --nocache_test_results \
  --override_repository=dist_python={environment} --override_repository=dist_python_cpu={packages} \
  --test_output=errors
"""
    try:
        run = subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                             timeout=900)
    finally:
        subprocess.run([str(ROOT / "tools/bazel"), bazel_args, "shutdown"], cwd=ROOT, capture_output=True)
        subprocess.run(["chmod", "-R", "u+w", str(output_base)], check=False)
    output = run.stdout + run.stderr
    assert f"hidden: {prefix}" in output
    assert run.returncode == 0, output
    logs = output_base / "execroot" / "dist_tests" / "bazel-out" / "k8-fastbuild" / "testlogs" / "dist_tests" / "gloo_2"
    assert "//dist_tests:gloo_2: 1 passed, 0 failed, 0 skipped" in (logs / "shard_1_of_4" / "test.log").read_text()
    shutil.rmtree(output_base, ignore_errors=True)


def fake_torch_interpreter(tmp_path: pathlib.Path, host: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A venv of the host's Python whose only torch is a stub distribution: enough to fingerprint, nothing to run."""
    venv = tmp_path / "venv"
    subprocess.run([str(host / "bin" / "python3"), "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True)
    site = next(venv.glob("lib/python3.*/site-packages"))
    (site / "torch").mkdir()
    (site / "torch" / "version.py").write_text("__version__ = '9.9.9+stub'\ngit_version = 'abc123'\n")
    info = site / "torch-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 9.9.9\n")
    (info / "RECORD").write_text("torch/version.py,,\n"
                                 "torch-9.9.9.dist-info/METADATA,,\ntorch-9.9.9.dist-info/RECORD,,\n")
    return venv / "bin" / "python3", info / "RECORD"


def test_the_interpreters_own_torch_is_fingerprinted_and_checked(tmp_path, python, fresh_output_base):
    interpreter, record = fake_torch_interpreter(tmp_path, host_prefix(python))
    run = bazel("build", "@dist_python//:runtime", "@dist_python_cpu//:site_packages",
                f"--repo_env=DIST_TESTS_PYTHON={interpreter}", "--repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1",
                startup=fresh_output_base)
    assert run.returncode == 0, run.output
    environment = tmp_path / "output_base" / "external" / "dist_python"
    identity = (environment / "python_identity.txt").read_text()
    assert "torch: the interpreter's own, 9.9.9+stub (git abc123), RECORD sha256 " in identity
    wrapper = str(environment / "python3")
    assert subprocess.run([wrapper, "-c", "pass"], capture_output=True).returncode == 0

    record.write_text(record.read_text() + "torch/new_file.py,,\n")  # torch reinstalled in place
    changed = subprocess.run([wrapper, "-c", "pass"], capture_output=True, text=True)
    assert changed.returncode == 3
    assert f"the torch installed for {interpreter} changed" in changed.stderr
    assert "tools/bazel sync --only=dist_python," in changed.stderr
