#!/usr/bin/env python3
"""A command-line tool pinned by hash in a lock (ruff for tools/lint), installed once into a cache; prints its path.

    python3 tools/python_env/locked_tool.py LOCK COMMAND

The tool's wheels are installed with pip from pip's own sources (install_lock.install_tool) into
${DIST_TESTS_TOOLS_CACHE:-~/.cache/dist_tests}/COMMAND-VERSION-DIGEST, one folder per lock content,
under a file lock. The folder is made from a clean environment (install_lock.clean_environ: no
PYTHONPATH of the caller's) and marked ready only once its command, run from a clean environment,
answers `--version` with the locked version; a cached one that fails that check, or carries another
marker, is made again.
"""

import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import install_lock

CACHE = pathlib.Path(os.environ.get("DIST_TESTS_TOOLS_CACHE") or pathlib.Path.home() / ".cache" / "dist_tests")


def locked_version(lock: pathlib.Path, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}===?(\S+)", lock.read_text(), re.MULTILINE)
    if not match:
        sys.exit(f"locked_tool: {lock} pins no {name}")
    return match.group(1)


def check(command: pathlib.Path, version: str) -> str | None:
    """None when the command, from a clean environment, says it is the locked version; otherwise what is wrong."""
    try:
        run = subprocess.run([str(command), "--version"], env=install_lock.clean_environ(), capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{command} --version: {error}"
    said = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or version not in said.split():
        return f"{command} --version said {said!r} (exit {run.returncode}), not version {version}"
    return None


def tool(lock: pathlib.Path, name: str) -> pathlib.Path:
    """The path of the locked command, installing and checking it first if the cache has no ready copy."""
    version = locked_version(lock, name)
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    folder = CACHE / f"{name}-{version}-{digest}"
    command = folder / "bin" / name
    marker = folder / "ready"
    ready = f"{name} {version}, lock {digest}\n"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{folder.name}.lock", "w") as file_lock:
        fcntl.flock(file_lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == ready:
            problem = check(command, version)
            if problem is None:
                return command
            print(f"locked_tool: the cached {name} fails its check ({problem}); installing it again", file=sys.stderr)
        print(f"locked_tool: installing {name} {version} ({lock.name}) into {folder}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            install_lock.install_tool(sys.executable, str(folder), str(lock), name)
        except subprocess.CalledProcessError:
            shutil.rmtree(folder, ignore_errors=True)
            sys.exit(f"locked_tool: pip could not install {lock}: pip must reach its wheels (PyPI, or a mirror or "
                     "folder of wheels in pip's configuration)")
        problem = check(command, version)
        if problem is not None:
            shutil.rmtree(folder, ignore_errors=True)
            sys.exit(f"locked_tool: {name} installed from {lock} fails its check: {problem}")
        marker.write_text(ready)
    return command


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(tool(pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]))
