"""The interpreter and torch are inputs of the tests: runs that prove it (an interpreter's own torch:
test_interpreter_torch.py)."""

import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT

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
