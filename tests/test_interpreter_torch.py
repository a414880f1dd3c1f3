"""The torch a developer is changing is the targets' torch: every edit reruns the tests, an unchanged tree is cached.

The stand-ins (tools/python_env/standin_torch.py) are the locked torch wheel installed the three ways a
PyTorch developer has it: in site-packages, editable from a checkout (PEP 660), and through an
.egg-link (`setup.py develop`). Each runs a gloo_2 selection through Bazel with
DIST_TESTS_USE_INTERPRETER_TORCH=1 in one output base of this module's own (a Bazel server and fetches
shared by its tests), with a disk cache, then sees one function of torch/distributed/distributed_c10d.py
edited so that it raises, then reverted.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, bazel
from test_remote_cache import copy_workspace

sys.path.insert(0, str(ROOT / "tools" / "python_env"))
import standin_torch  # noqa: E402

# Its Bazel runs are in workspace copies with output bases of their own: tools/selftest runs it beside the others.
pytestmark = pytest.mark.own_workspace

TARGET = "//dist_tests:gloo_2"
SELECTION = "--test_filter=test_all_reduce_sum"
EDITED = "all_reduce edited to raise"
LOCATE = ROOT / "tools" / "python_env" / "locate_torch.py"
# The host's interpreter, which the stand-ins' virtual environments are made from.
HOST_PYTHON = shutil.which("python3")


def interpreter_flags(python: pathlib.Path) -> tuple[str, str]:
    return f"--repo_env=DIST_TESTS_PYTHON={python}", "--repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """This module's workspace copy, the startup options of its Bazel server (an output base of its own) and a
    disk cache beside it: nothing here touches the checkout's own server or files."""
    folder = tmp_path_factory.mktemp("interpreter_torch")
    workspace = copy_workspace(folder / "workspace")
    startup = (f"--output_base={folder / 'output_base'}",)
    yield startup, folder / "disk_cache", workspace
    bazel("shutdown", startup=startup, workspace=workspace)
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """The three stand-in installs by kind: (interpreter, the folder of the torch package it imports)."""
    made = {}
    for kind in standin_torch.KINDS:
        folder = tmp_path_factory.mktemp(kind)
        python = standin_torch.make(kind, folder, HOST_PYTHON)
        torch = (folder / "checkout" / "torch") if kind != "regular" else standin_torch.site_packages(
            folder / "venv") / "torch"
        made[kind] = (python, torch)
    yield made
    for python, _ in made.values():
        shutil.rmtree(python.parent.parent.parent, ignore_errors=True)


def run_selection(base, python: pathlib.Path, *extra: str):
    startup, disk_cache, workspace = base
    return bazel("test", TARGET, SELECTION, *interpreter_flags(python), f"--disk_cache={disk_cache}", *extra,
                 startup=startup, workspace=workspace)


def status(output: str) -> str:
    """The target's line of Bazel's summary: 'PASSED', '(cached) PASSED' or 'FAILED'."""
    line = next(line for line in output.splitlines() if line.startswith(TARGET + " "))
    return " ".join(word for word in line.split()[1:] if word in ("(cached)", "PASSED", "FAILED"))


def edit_all_reduce(torch: pathlib.Path) -> str:
    """Makes torch.distributed.all_reduce raise; returns the file's text before."""
    source = torch / "distributed" / "distributed_c10d.py"
    text = source.read_text()
    start = text.index("\ndef all_reduce(")
    docstring_end = text.index('"""', text.index('"""', start) + 3) + 3
    source.write_text(text[:docstring_end] + f"\n    raise RuntimeError({EDITED!r})" + text[docstring_end:])
    return text


def pycache_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    return list(folder.rglob("__pycache__"))


def test_an_editable_checkout_is_the_targets_torch_every_edit_reruns_and_an_unchanged_one_is_cached(
        base, standins, tmp_path, python):
    """Over 2 minutes: the developer's whole loop for real (a run, a cached run, an edit that fails, its revert,
    a second clone served from the cache, the checkout moved), each a Bazel command on torch's real tree."""
    locked = python
    python, torch = standins["editable"]
    first = run_selection(base, python)
    assert first.returncode == 0, first.output
    assert status(first.output) == "PASSED"
    identity = (pathlib.Path(base[0][0].split("=", 1)[1]) / "external/dist_python/python_identity.txt").read_text()
    assert "torch: the interpreter's own, 2.13.0+cpu (git " in identity and f"at {torch}\n" in identity

    again = run_selection(base, python)
    assert status(again.output) == "(cached) PASSED", again.output

    original = edit_all_reduce(torch)
    try:
        edited = run_selection(base, python)
        assert edited.returncode != 0 and status(edited.output) == "FAILED", edited.output
        assert f"RuntimeError: {EDITED}" in edited.output
        # The rerun command keeps the torch it ran on.
        flags = " ".join(interpreter_flags(python))
        rerun = f"tools/bazel test {TARGET} --test_filter=test_all_reduce_sum {flags}"
        assert f"Reproduce alone: {rerun}" in edited.output
        testlogs = pathlib.Path(base[0][0].split("=", 1)[1]) / "execroot/dist_tests/bazel-out/k8-fastbuild/testlogs"
        subprocess.run([locked, str(ROOT / "tools/results/report.py"), "--matrix=gloo_2",
                        f"--events={base[2] / 'bazel-test-events.json'}", f"--testlogs={testlogs}",
                        f"--out={tmp_path / 'report'}"], capture_output=True, text=True)
        assert rerun in (tmp_path / "report" / "report.md").read_text()
    finally:
        (torch / "distributed" / "distributed_c10d.py").write_text(original)
    # Bazel reruns a shard that failed last time; the others have the first run's inputs again, cached.
    reverted = run_selection(base, python)
    assert reverted.returncode == 0 and status(reverted.output) == "PASSED", reverted.output
    assert "3 remote cache hit" in reverted.output, reverted.output

    # A second clone, with an output base of its own, is served from the same cache.
    clone = copy_workspace(tmp_path / "clone")
    clone_base = (f"--output_base={tmp_path / 'clone_output_base'}",)
    try:
        cloned = run_selection((clone_base, base[1], clone), python)
        assert status(cloned.output) == "(cached) PASSED", cloned.output
    finally:
        bazel("shutdown", startup=clone_base, workspace=clone)
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path / "clone_output_base")], check=False)
    # Nothing was written into the checkout.
    assert pycache_folders(torch.parent) == []

    # The checkout moved: the fetched interpreter refuses to start, and a new fetch names where torch was.
    moved = torch.parent.with_name("moved")
    torch.parent.rename(moved)
    try:
        wrapper = pathlib.Path(base[0][0].split("=", 1)[1]) / "external/dist_python/python3"
        gone = subprocess.run([str(wrapper), "-c", "pass"], capture_output=True, text=True)
        assert gone.returncode == 3 and f"was at {torch}, and that folder is gone" in gone.stderr
        refetch = bazel("sync", "--only=dist_python", *interpreter_flags(python), startup=base[0],
                        workspace=base[2])
        assert refetch.returncode != 0, refetch.output
        assert f"torch is installed from {torch.parent}, but no torch package is there any more" in refetch.output
    finally:
        moved.rename(torch.parent)
        bazel("sync", "--only=dist_python", *interpreter_flags(python), startup=base[0], workspace=base[2])


def assert_an_edit_fails(base, python: pathlib.Path, torch: pathlib.Path) -> None:
    """An edited all_reduce reruns the selection, which fails with the edit's error; the edit is reverted after."""
    original = edit_all_reduce(torch)
    try:
        edited = run_selection(base, python, "--test_sharding_strategy=disabled")
        assert status(edited.output) == "FAILED", edited.output
        assert f"RuntimeError: {EDITED}" in edited.output
    finally:
        (torch / "distributed" / "distributed_c10d.py").write_text(original)


def test_a_torch_in_site_packages_edited_in_place_is_not_answered_from_the_cache(base, standins):
    """The stale pass this mode once gave: the cache knew the install, not its files."""
    python, torch = standins["regular"]
    first = run_selection(base, python, "--test_sharding_strategy=disabled")
    assert status(first.output) == "PASSED", first.output
    assert_an_edit_fails(base, python, torch)
    assert pycache_folders(torch) == []


def test_a_setup_py_develop_checkout_is_the_targets_torch_and_an_edit_is_seen(base, standins):
    python, torch = standins["develop"]
    assert_an_edit_fails(base, python, torch)
    reverted = run_selection(base, python, "--test_sharding_strategy=disabled")
    assert reverted.returncode == 0 and status(reverted.output) == "PASSED", reverted.output
    assert pycache_folders(torch.parent) == []


def test_an_interpreter_without_torch_stops_the_fetch_naming_it(base, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([HOST_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    run = bazel("build", "@dist_python//:runtime", *interpreter_flags(venv / "bin" / "python"), startup=base[0],
                workspace=base[2])
    assert run.returncode != 0
    assert f"{venv / 'bin' / 'python'} has no torch: no torch package on its sys.path" in run.output, run.output
    assert "pip install -e your PyTorch checkout" in run.output


def test_a_python_outside_3_10_to_3_13_is_refused_naming_it(base, tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho /opt/fake/bin/python3.9\necho cpython\necho 3.9\n")
    fake.chmod(0o755)
    run = bazel("build", "@dist_python//:runtime", *interpreter_flags(fake), startup=base[0], workspace=base[2])
    assert run.returncode != 0
    assert "DIST_TESTS_USE_INTERPRETER_TORCH=1 runs the tests on the interpreter's own torch with CPython 3.10 to " \
           "3.13" in run.output
    assert "but /opt/fake/bin/python3.9 is Python 3.9" in run.output


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root, to become another user")
def test_a_torch_folder_the_user_cannot_read_is_named():
    """Root reads every folder, so the locator runs as the user nobody over a torch it may not read."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="unreadable_torch_"))
    try:
        folder.chmod(0o755)
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
        torch = standin_torch.site_packages(folder / "venv") / "torch"
        torch.mkdir()
        (torch / "__init__.py").write_text("")
        torch.chmod(0o700)
        locate = folder / "locate_torch.py"
        shutil.copy(LOCATE, locate)
        run = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              str(folder / "venv" / "bin" / "python"), "-E", str(locate)],
                             capture_output=True, text=True)
        assert run.returncode == 1
        assert f"the torch package at {torch} cannot be read by this user" in run.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def other_python(version: str) -> str | None:
    """A CPython of that version on this machine that runs (a pyenv shim of another version does not)."""
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv")) / "versions"
    candidates = [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"))]
    candidates += filter(None, [shutil.which(f"python{version}")])
    for python in candidates:
        said = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if said.returncode == 0 and said.stdout.strip() == version:
            return python
    return None


def test_the_harness_lock_pins_the_locked_environments_versions():
    """Both ways of running test the same harness: the harness lock's pins are the CPU lock's where both have them."""
    def pins(lock: str) -> dict[str, str]:
        text = (ROOT / "third_party" / "python" / lock).read_text()
        return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9._-]+)===(\S+)", text, re.M)}
    harness, cpu = pins("harness_lock.txt"), pins("requirements_cpu_py3.11_lock.txt")
    assert {"absl-py", "pytest", "expecttest"} <= harness.keys()
    assert {name: version for name, version in harness.items() if name in cpu} == \
           {name: cpu[name] for name in harness if name in cpu}
    assert "# python: 3.10-3.13\n" in (ROOT / "third_party" / "python" / "harness_lock.txt").read_text()


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_the_harness_installs_and_loads_on_each_python_of_the_range(base, version):
    """3.11 runs in the tests above; the other versions of the range, where this machine has them, install the
    harness lock through the package rule and import the harness's packages and parse its sources."""
    python = other_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} on this machine (PATH or pyenv)")
    fetch = bazel("fetch", "@dist_python_cpu//:site_packages", *interpreter_flags(pathlib.Path(python)),
                  startup=base[0], workspace=base[2])
    assert fetch.returncode == 0, fetch.output
    external = pathlib.Path(base[0][0].split("=", 1)[1]) / "external" / "dist_python_cpu"
    assert f"python: {version}\n" in (external / "environment.txt").read_text()
    sources = [str(p) for p in (ROOT / "dist_tests").rglob("*.py")]
    check = subprocess.run(
        [python, "-I", "-c", "import sys; sys.path.append(sys.argv[1]); import absl.testing.absltest, pytest, "
         "expecttest, ast\nfor f in sys.argv[2:]: ast.parse(open(f).read(), f)\nprint(pytest.__version__)",
         str(external / "site-packages"), *sources], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "9.2.0"


def test_a_python_without_a_cpu_lock_gives_the_cpu_targets_the_gpu_lock_and_says_so(base, tmp_path):
    """A 3.12 workstation: no CPU lock for its Python (the CPU build is not on PyPI), so its cpu targets take the gpu
    lock, saying so once. pip is shown no index here, so the fetch stops at the install instead of downloading the
    CUDA wheels: what is checked is the choice and the words."""
    python = other_python("3.12")
    if python is None:
        pytest.skip("no CPython 3.12 on this machine (PATH or pyenv)")
    assert not (ROOT / "third_party" / "python" / "requirements_cpu_py3.12_lock.txt").exists()
    fetch = bazel("fetch", "@dist_python_cpu//:site_packages", f"--repo_env=DIST_TESTS_PYTHON={python}",
                  "--repo_env=PIP_CONFIG_FILE=/dev/null", "--repo_env=PIP_NO_INDEX=1",
                  f"--repo_env=PIP_FIND_LINKS={tmp_path}", startup=base[0], workspace=base[2])
    said = [line for line in fetch.output.splitlines() if "python_env: Python 3.12 has no cpu lock" in line]
    assert len(said) == 1, fetch.output[-3000:]
    assert "the cpu targets install //third_party/python:requirements_gpu_py3.12_lock.txt instead" in said[0]
