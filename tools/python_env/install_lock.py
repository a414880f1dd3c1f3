#!/usr/bin/env python3
"""Installs a hash-locked requirements file into one folder with uv, from pip's wheel sources.

Run by //tools/python_env:packages.bzl:

    python3 install_lock.py UV LOCK TARGET_DIR [PYTHON]

for PYTHON, the interpreter the packages are for (the one running this script when not given;
the running one must have pip, whose configuration is read).

uv installs the wheels of a hash-checked lock in parallel (a cold CUDA environment here: about
20 s against pip's 51 s), but it does not read pip's configuration. So the sources are pip's own:
the lock's `--index-url` / `--extra-index-url` lines, then pip's configuration (`pip config
list`, which includes PIP_* variables): index-url, extra-index-url, find-links, no-index,
trusted-host and cert. A machine whose pip reaches a mirror or a folder of wheels installs the
same locked wheels with uv. Every wheel must match a hash of the lock, whatever its source.
"""

import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping

DEFAULT_INDEX = "https://pypi.org/simple"
# A lock's lines that say where wheels come from (install_lock passes its own flags instead).
INDEX_OPTIONS = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--no-index"}
# pip settings that send an install somewhere other than the folder or environment named.
PIP_ELSEWHERE = ("PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT")


def clean_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment for making or checking a tool environment: no PYTHON* variable, no user site.

    pip counts a package it can import as installed, wherever it lies: under a caller whose
    PYTHONPATH holds the locked test packages (a process of tools/python), an environment came out
    without them and worked only for callers with the same PYTHONPATH. pip's wheel sources stay.
    """
    env = {name: value for name, value in (os.environ if environ is None else environ).items()
           if not name.startswith("PYTHON") and name not in PIP_ELSEWHERE}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def install_tool(python: str, into: str, lock: str, command: str) -> str:
    """Installs a tool's wheels, pinned by hash in lock, into the folder into with pip (pip's own sources),
    from a clean environment; returns the path of its command."""
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--require-hashes", "--ignore-installed", "--target", into,
                    "--requirement", lock],
                   check=True, env=clean_environ())
    return os.path.join(into, "bin", command)


def install_uv(python: str, into: str, installer_lock: str) -> str:
    """Installs uv, pinned by hash in installer_lock.txt, with pip (pip's own sources); returns its path."""
    return install_tool(python, into, installer_lock, "uv")


def pip_config(python: str) -> dict[str, str]:
    """pip's effective settings by name (index-url, find-links, ...): PIP_* variables win, then install.,
    then global."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         env=clean_environ()).stdout
    ranked: dict[str, tuple[int, str]] = {}
    rank = {"global": 0, "install": 1, ":env:": 2}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep and section in rank and rank[section] >= ranked.get(name, (-1, ""))[0]:
            ranked[name] = (rank[section], value.strip().strip("'\""))
    return {name: value for name, (_, value) in ranked.items()}


def lock_indexes(lock: str) -> tuple[str | None, list[str]]:
    """The `--index-url` and `--extra-index-url` lines a lock names for its wheels."""
    index, extra = None, []
    with open(lock) as f:
        for line in f:
            option, _, value = line.strip().partition(" ")
            if option == "--index-url":
                index = value.strip()
            elif option == "--extra-index-url":
                extra.append(value.strip())
    return index, extra


def reachable(url: str) -> bool:
    """Whether an index answers at all. pip warns about one that does not and goes on; uv would stop."""
    if url.startswith("file:"):
        return os.path.isdir(url[len("file://"):])
    try:
        urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/", method="HEAD"), timeout=10)
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError):
        return False


def uv_source_args(lock_index: str | None, lock_extra: list[str], config: dict[str, str]) -> list[str]:
    """uv's flags for the indexes a lock names plus pip's configured sources, leaving out indexes that do not answer."""
    if config.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args = ["--no-index"]
        indexes: list[str] = []
    else:
        index = config.get("index-url") or lock_index or DEFAULT_INDEX
        indexes = [index] + config.get("extra-index-url", "").split() + lock_extra
        usable = []
        for url in dict.fromkeys(indexes):
            if reachable(url):
                usable.append(url)
            else:
                print(f"install_lock: the index {url} does not answer; the wheels come from pip's other sources",
                      file=sys.stderr)
        if not usable:
            sys.exit(f"install_lock: no index answers ({', '.join(indexes)}). Check the network, or point pip at a "
                     "mirror or a folder of wheels: pip config set global.find-links DIR")
        args = ["--index-url", usable[0]] + [a for url in usable[1:] for a in ("--extra-index-url", url)]
    for links in config.get("find-links", "").split():
        args += ["--find-links", links]
    for host in config.get("trusted-host", "").split():
        args += ["--allow-insecure-host", host]
    return args


def hint(output: str, lock: str, sources: list[str]) -> str:
    """What to do about the usual ways a locked install fails, from uv's own words."""
    return _hint(output, lock) + "\nSources: " + " ".join(sources)


def _hint(output: str, lock: str) -> str:
    if "Hash mismatch" in output:
        return (f"A downloaded wheel is not the one {lock} pins (its sha256 differs; named above). A mirror serving "
                "another build of that version is the usual cause: point pip at one that serves the original wheels, "
                "or regenerate the locks from your sources with tools/python_env/update_lock.")
    if "not found in the package registry" in output or "No solution found" in output or "no wheels" in output:
        return ("A pinned wheel (named above) is in none of the sources: the lock's indexes and pip's configuration. "
                "Make it reachable (internet, or a mirror or folder of wheels in pip's configuration: "
                "pip config set global.find-links DIR), or regenerate the locks with tools/python_env/update_lock.")
    return "See uv's output above."


def requirements_only(lock: str) -> str:
    """A temporary copy of the lock without its index lines (uv would obey them, unreachable or not); its path.
    Not beside the lock: that may be a checkout's file."""
    fd, copy = tempfile.mkstemp(prefix="install_lock_", suffix=".txt")
    with open(lock) as f, os.fdopen(fd, "w") as out:
        out.writelines(line for line in f if line.split(" ", 1)[0].strip() not in INDEX_OPTIONS)
    return copy


def main(uv: str, lock: str, target: str, python: str = sys.executable) -> int:
    """Installs lock into target for python (an environment made with uv may lack pip: this script's
    interpreter, which has it, says what pip's configuration is)."""
    return install(uv, lock, python, target)


def install(uv: str, lock: str, python: str, target: str | None = None) -> int:
    """Installs lock for python into target, or into python's own environment (a venv: its scripts too) when None;
    returns uv's exit code, having printed what went wrong and what to do."""
    config = pip_config(sys.executable)
    env = clean_environ()
    if config.get("cert"):
        env["SSL_CERT_FILE"] = config["cert"]
    sources = uv_source_args(*lock_indexes(lock), config)
    command = [
        uv, "pip", "install", "--no-progress", "--python", python, *(["--target", target] if target else []),
        "--require-hashes", "--no-deps", "--only-binary", ":all:", "--no-compile",
        # Every source is weighed for every pin, as pip does; the hashes decide what is installed.
        "--index-strategy", "unsafe-best-match",
        # Copies, not links into uv's cache: files here are rewritten later (runfiles_safe_names).
        "--link-mode", "copy",
        *sources,
        "--requirement", pins := requirements_only(lock),
    ]
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        os.remove(pins)
    if run.returncode != 0:
        output = run.stdout + run.stderr
        print(output[-6000:] + "\n" + hint(output, lock, sources), file=sys.stderr)
        return run.returncode
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
