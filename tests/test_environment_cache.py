"""The environment cache (tools/python_env/environment_cache.py): a finished site-packages, stored once, is linked
into a later fetch with the same inputs, and an entry that is damaged or unfinished is never used.

The module's tests run it on small real folders, as the package rule runs it (the host's python3). The Bazel test
fetches @dist_python_cpu in a workspace copy with a cache folder of its own, with the interpreter's own torch
(DIST_TESTS_USE_INTERPRETER_TORCH=1), so that the real rule installs only the few wheels of the harness lock and the
test stays short.
"""

import os
import pathlib
import re
import shutil
import subprocess
import time

import pytest

from conftest import ROOT, bazel
from test_remote_cache import copy_workspace
from tools.python_env import environment_cache  # noqa: E402

# Its Bazel runs are in workspace copies with output bases of their own: tools/selftest runs it beside the others.
pytestmark = pytest.mark.own_workspace

MODULE = ROOT / "tools" / "python_env" / "environment_cache.py"
# The host's interpreter, as the package rules run the module.
HOST_PYTHON = shutil.which("python3")
KEY = "0123456789abcdef" * 4


def cache_cli(cache: pathlib.Path | str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([HOST_PYTHON, str(MODULE), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DIST_TESTS_ENV_CACHE": str(cache), **env})


def tree(root: pathlib.Path) -> dict[str, tuple[int, bytes] | None]:
    """Every folder (None) and file (mode, bytes) below root."""
    return {str(path.relative_to(root)): None if path.is_dir() else (path.stat().st_mode & 0o7777, path.read_bytes())
            for path in sorted(root.rglob("*"))}


@pytest.fixture
def site(tmp_path) -> pathlib.Path:
    """A small finished site-packages: sources, bytecode, a binary, an executable, an empty file and folder."""
    site = tmp_path / "made" / "site-packages"
    (site / "pkg" / "__pycache__").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (site / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(bytes(range(256)) * 4)
    (site / "pkg" / "shm_manager").write_bytes(b"\x7fELF" + b"\0" * 60)
    (site / "pkg" / "shm_manager").chmod(0o755)
    (site / "pkg-1.0.dist-info").mkdir()
    (site / "pkg-1.0.dist-info" / "RECORD").write_text("pkg/__init__.py,,\n")
    (site / ".lock").touch()
    (site / "empty").mkdir()
    return site


@pytest.fixture
def stored(site, tmp_path) -> pathlib.Path:
    """The cache folder, holding site as KEY's entry."""
    cache = tmp_path / "cache"
    run = cache_cli(cache, "store", KEY, str(site))
    assert run.returncode == 0, run.stderr
    assert f"stored {site} as {cache / KEY}" in run.stderr
    return cache


def test_a_stored_folder_is_restored_identical_by_hard_links(site, stored, tmp_path):
    made = tree(site)
    dest = tmp_path / "other_output_base" / "site-packages"
    run = cache_cli(stored, "restore", KEY, str(dest))
    assert run.returncode == 0, run.stderr
    assert re.search(rf"restored 5 files from {re.escape(str(stored / KEY))} \(linked\), verified in [\d.]+ s",
                     run.stderr)
    assert tree(dest) == made
    for name, entry in made.items():
        if entry is not None:  # a file: the entry's, which is the maker's
            assert (dest / name).stat().st_ino == (stored / KEY / "site-packages" / name).stat().st_ino
            assert (dest / name).stat().st_ino == (site / name).stat().st_ino
    manifest = (stored / KEY / "manifest.txt").read_text().splitlines()
    assert "d empty" in manifest and "f 755 64 " in "\n".join(manifest)
    assert (stored / KEY / "ready").read_text() == f"layout 1 key {KEY}\n"


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_across_filesystems_the_files_are_copied(site, stored):
    shm = pathlib.Path("/dev/shm")
    if shm.stat().st_dev == stored.stat().st_dev:
        pytest.skip("/dev/shm is on the cache's filesystem")
    dest = shm / f"dist_tests_environment_cache_test-{os.getpid()}" / "site-packages"
    try:
        run = cache_cli(stored, "restore", KEY, str(dest))
        assert run.returncode == 0, run.stderr
        assert "(copied)" in run.stderr
        assert tree(dest) == tree(site)
    finally:
        shutil.rmtree(dest.parent, ignore_errors=True)


def change_same_size(path: pathlib.Path) -> None:
    data = path.read_bytes()
    with open(path, "r+b") as f:  # in place, as a tool writing into one output base's copy would
        f.write(data[::-1] if data[::-1] != data else b"x" * len(data))
    assert path.stat().st_size == len(data)


@pytest.mark.parametrize("damage, problem", [
    (lambda files: change_same_size(files / "pkg" / "__pycache__" / "__init__.cpython-311.pyc"),
     "damaged: pkg/__pycache__/__init__.cpython-311.pyc changed (sha256)"),
    (lambda files: (files / "pkg-1.0.dist-info" / "RECORD").unlink(),
     "damaged: 1 missing, first pkg-1.0.dist-info/RECORD"),
    (lambda files: (files / "pkg" / "extra.py").write_text(""),
     "damaged: 1 not in its manifest, first pkg/extra.py"),
    (lambda files: (files / "pkg" / "shm_manager").chmod(0o644),
     "damaged: pkg/shm_manager changed (type, mode or size)"),
], ids=["content changed at the same size", "a file missing", "an extra file", "a mode changed"])
def test_a_damaged_entry_is_removed_and_not_restored(stored, tmp_path, damage, problem):
    damage(stored / KEY / "site-packages")
    dest = tmp_path / "dest" / "site-packages"
    run = cache_cli(stored, "restore", KEY, str(dest))
    assert run.returncode == 1
    assert run.stderr.strip() == f"environment_cache: removed the entry {stored / KEY}: {problem}"
    assert not (stored / KEY).exists()
    assert not dest.exists()


def test_an_entry_without_its_ready_marker_is_not_used(stored, tmp_path):
    (stored / KEY / "ready").unlink()
    dest = tmp_path / "dest" / "site-packages"
    run = cache_cli(stored, "restore", KEY, str(dest))
    assert run.returncode == 1
    assert run.stderr.strip() == f"environment_cache: removed the entry {stored / KEY}: unfinished (no ready marker)"
    assert not dest.exists()


def test_a_missing_entry_restores_nothing_and_a_store_clears_an_interrupted_ones_debris(site, tmp_path):
    cache = tmp_path / "cache"
    dest = tmp_path / "dest" / "site-packages"
    run = cache_cli(cache, "restore", KEY, str(dest))
    assert (run.returncode, run.stderr, dest.exists()) == (1, "", False)
    (cache / f".{KEY}.interrupted" / "site-packages").mkdir(parents=True)
    assert cache_cli(cache, "store", KEY, str(site)).returncode == 0
    assert sorted(p.name for p in cache.iterdir()) == [KEY, f"{KEY}.lock"]
    assert cache_cli(cache, "restore", KEY, str(dest)).returncode == 0


def test_restore_leaves_an_existing_folder_alone(stored, tmp_path):
    dest = tmp_path / "dest" / "site-packages"
    dest.mkdir(parents=True)
    (dest / "mine.py").write_text("")
    run = cache_cli(stored, "restore", KEY, str(dest))
    assert run.returncode == 2 and "restore failed" in run.stderr, run.stderr
    assert [p.name for p in dest.iterdir()] == ["mine.py"]


def test_two_stores_at_once_make_one_entry(site, tmp_path):
    cache = tmp_path / "cache"
    command = [HOST_PYTHON, str(MODULE), "store", KEY, str(site)]
    env = {**os.environ, "DIST_TESTS_ENV_CACHE": str(cache)}
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    # One made the entry under the key's lock; the other found it ready.
    assert sum("stored" in run.stderr.read() for run in runs) == 1
    assert sorted(p.name for p in cache.iterdir()) == [KEY, f"{KEY}.lock"]
    assert cache_cli(cache, "restore", KEY, str(tmp_path / "dest")).returncode == 0


def test_zero_turns_the_cache_off(site, tmp_path):
    home = tmp_path / "home"
    run = cache_cli("0", "store", KEY, str(site), XDG_CACHE_HOME=str(home))
    assert run.returncode == 0 and "off (DIST_TESTS_ENV_CACHE=0)" in run.stderr
    assert cache_cli("0", "restore", KEY, str(tmp_path / "dest"), XDG_CACHE_HOME=str(home)).returncode == 1
    assert not home.exists() and not (tmp_path / "dest").exists()


def test_the_cache_folder_defaults_to_the_users_cache():
    assert environment_cache.cache_root({"DIST_TESTS_ENV_CACHE": "/x"}) == pathlib.Path("/x")
    assert environment_cache.cache_root({"DIST_TESTS_ENV_CACHE": "0"}) is None
    assert environment_cache.cache_root({"XDG_CACHE_HOME": "/c"}) == pathlib.Path("/c/dist_tests/environments")
    assert environment_cache.cache_root({}) == pathlib.Path.home() / ".cache" / "dist_tests" / "environments"


def test_the_key_covers_the_files_bytes_the_values_and_the_interpreter(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("absl-py===2.5.1\n")

    def key(*parts: str) -> list[str]:
        run = subprocess.run([HOST_PYTHON, str(MODULE), "key", *parts], capture_output=True, text=True, check=True)
        return run.stdout.splitlines()

    first = key(f"lock=@{lock}", "torch=locked", "pip configuration=a\nb")
    assert key(f"lock=@{lock}", "torch=locked", "pip configuration=a\nb") == first
    executable, version = subprocess.check_output(
        [HOST_PYTHON, "-c", "import os, sys; print(os.path.realpath(sys.executable)); print(sys.version)"],
        text=True).split("\n", 1)
    assert f"python: {executable}" in first
    assert f"python version: {' '.join(version.split())}" in first
    assert "pip configuration: a\\nb" in first
    assert key(f"lock=@{lock}", "torch=wheel", "pip configuration=a\nb")[-1] != first[-1]
    lock.write_text("# a comment\nabsl-py===2.5.1\n")
    assert key(f"lock=@{lock}", "torch=locked", "pip configuration=a\nb")[-1] != first[-1]


def fetch(workspace: pathlib.Path, base: pathlib.Path, cache: pathlib.Path, *command: str) -> tuple[float, str]:
    """A command (a build of @dist_python_cpu//:site_packages by default) with the interpreter's own torch;
    its wall time and output."""
    started = time.monotonic()
    run = bazel(*(command or ("build", "@dist_python_cpu//:site_packages")),
                "--repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1", startup=(f"--output_base={base}",),
                env={"DIST_TESTS_ENV_CACHE": str(cache)}, workspace=workspace, timeout=600)
    assert run.returncode == 0, run.output
    return time.monotonic() - started, run.output


def test_a_fresh_output_base_links_the_environment_another_one_made(tmp_path):
    workspace = copy_workspace(tmp_path / "workspace")
    cache = tmp_path / "cache"
    bases = [tmp_path / "ob1", tmp_path / "ob2"]
    repository = [base / "external" / "dist_python_cpu" for base in bases]
    try:
        # The first fetch installs and stores.
        made, _ = fetch(workspace, bases[0], cache)
        bazel("shutdown", startup=(f"--output_base={bases[0]}",), workspace=workspace)
        entries = [p for p in cache.iterdir() if p.is_dir()]
        assert len(entries) == 1 and (entries[0] / "ready").is_file(), list(cache.iterdir())
        assert (repository[0] / "environment_cache.txt").read_text().splitlines()[-1] == \
            f"environment_cache: stored {repository[0] / 'site-packages'} as {entries[0]}"
        key = (repository[0] / "environment_cache.txt").read_text().splitlines()[-2]
        assert key == f"key: {entries[0].name}"

        # A second fresh output base links the same files, quickly.
        restored, _ = fetch(workspace, bases[1], cache)
        record = (repository[1] / "environment_cache.txt").read_text().splitlines()
        assert record[-2] == key
        took = re.fullmatch(rf"environment_cache: restored \d+ files from {re.escape(str(entries[0]))} \(linked\), "
                            r"verified in [\d.]+ s, in all ([\d.]+) s", record[-1])
        assert took and float(took[1]) < 5, record[-1]
        print(f"fresh output base: installed and stored in {made:.1f} s, restored in {restored:.1f} s "
              f"(the restore itself {took[1]} s)")
        pytest_init = pathlib.Path("site-packages") / "pytest" / "__init__.py"
        inode = (entries[0] / pytest_init).stat().st_ino
        assert (repository[1] / pytest_init).stat().st_ino == inode == (repository[0] / pytest_init).stat().st_ino
        assert tree(repository[1] / "site-packages") == tree(repository[0] / "site-packages")

        # A lock changed by a comment alone is another key: installed and stored anew.
        lock = workspace / "third_party" / "python" / "harness_lock.txt"
        lock.write_text(lock.read_text() + "# a comment\n")
        fetch(workspace, bases[1], cache)
        record = (repository[1] / "environment_cache.txt").read_text().splitlines()
        assert record[-2] != key and record[-1].startswith("environment_cache: stored"), record
        assert (repository[1] / pytest_init).stat().st_ino != inode
        second = cache / record[-2].split(" ")[-1]
        assert len([p for p in cache.iterdir() if p.is_dir()]) == 2

        # That entry, damaged in place at the same size, is removed and made again on the next fetch.
        good = (second / pytest_init).read_bytes()
        change_same_size(second / pytest_init)
        _, output = fetch(workspace, bases[1], cache, "sync", "--only=dist_python_cpu")
        assert f"environment_cache: removed the entry {second}: damaged: {pytest_init.relative_to('site-packages')} " \
               "changed (sha256)" in output
        record = (repository[1] / "environment_cache.txt").read_text().splitlines()
        assert record[-2:] == [f"environment_cache: removed the entry {second}: damaged: "
                               f"{pytest_init.relative_to('site-packages')} changed (sha256)",
                               f"environment_cache: stored {repository[1] / 'site-packages'} as {second}"], record
        assert (second / pytest_init).read_bytes() == good == (repository[1] / pytest_init).read_bytes()
    finally:
        for base in bases:
            bazel("shutdown", startup=(f"--output_base={base}",), workspace=workspace)
            subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
            shutil.rmtree(base, ignore_errors=True)
