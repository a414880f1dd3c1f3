#!/usr/bin/env python3
"""Where the torch of this interpreter lives, asked of the interpreter itself, without importing torch.

Run by //tools/python_env:interpreter.bzl with the interpreter in question (under -E) when
DIST_TESTS_USE_INTERPRETER_TORCH=1. Prints one JSON line:

    {"version": "2.13.0+cpu", "git_version": "...", "packages": {"torch": "/src/pytorch/torch", ...}}

The import system answers for every kind of install alike: a regular one, a PEP 660 editable one
(a .pth and a finder, or a plain .pth path) and a `setup.py develop` one (an .egg-link and a path in
easy-install.pth). torchgen and functorch are named too where they are found beside it. When torch
cannot be used, it exits 1 with one message that names the path and what to do.
"""

import ast
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import sys
from urllib.parse import unquote, urlparse

# Packages of a PyTorch checkout that torch imports from beside it.
COMPANIONS = ("torchgen", "functorch")


def package_folder(name: str) -> pathlib.Path | None:
    """The folder of a top-level package as the import system would find it, or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations))).resolve()


def recorded_location() -> str | None:
    """Where an installed torch says it should be, when the import system cannot find it:
    an editable install's source (PEP 610's direct_url.json), or a setup.py develop .egg-link."""
    try:
        direct_url = importlib.metadata.distribution("torch").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        direct_url = None
    if direct_url:
        url = json.loads(direct_url).get("url", "")
        if url.startswith("file:"):
            return unquote(urlparse(url).path)
    for entry in sys.path:
        link = pathlib.Path(entry or ".") / "torch.egg-link"
        if link.is_file():
            return link.read_text().splitlines()[0].strip()
    return None


def version_of(folder: pathlib.Path) -> tuple[str, str]:
    """torch's version and git version, from its version.py (written by every build), else its metadata."""
    values: dict[str, str] = {}
    try:
        for node in ast.parse((folder / "version.py").read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                values[getattr(node.targets[0], "id", "")] = str(node.value.value)
    except OSError:
        pass
    try:
        fallback = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        fallback = "unknown"
    return values.get("__version__", fallback), values.get("git_version", "unknown")


def main() -> int:
    torch = package_folder("torch")
    if torch is None:
        where = recorded_location()
        if where:
            print(f"torch is installed from {where}, but no torch package is there any more (a checkout moved "
                  f"or deleted?). Restore it, or reinstall torch for {sys.executable} (pip install -e CHECKOUT).",
                  file=sys.stderr)
        else:
            print(f"{sys.executable} has no torch: no torch package on its sys.path ({os.pathsep.join(sys.path)}).",
                  file=sys.stderr)
        return 1
    init = torch / "__init__.py"
    if not (os.access(torch, os.R_OK | os.X_OK) and (not init.exists() or os.access(init, os.R_OK))):
        print(f"the torch package at {torch} cannot be read by this user: fix its permissions.", file=sys.stderr)
        return 1
    if not init.is_file():
        print(f"{torch} is not a torch package (it has no __init__.py): a partial install or a stray folder on "
              f"sys.path. Reinstall torch for {sys.executable}.", file=sys.stderr)
        return 1
    packages = {"torch": str(torch)}
    for name in COMPANIONS:
        folder = package_folder(name)
        if folder is not None:
            packages[name] = str(folder)
    version, git_version = version_of(torch)
    print(json.dumps({"version": version, "git_version": git_version, "packages": packages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
