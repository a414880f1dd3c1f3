#!/usr/bin/env python3
"""A cache of finished `site-packages` folders, by the digest of everything that made them; one per machine.

Run by //tools/python_env:packages.bzl with the interpreter the packages are for:

    python3 environment_cache.py key NAME=VALUE|NAME=@FILE...  the inputs, one a line, then `key: HEX`
    python3 environment_cache.py restore KEY DEST   exit 0: a verified entry was linked into DEST;
                                                    exit 1: no entry (a damaged one is removed, saying so)
    python3 environment_cache.py store KEY SRC      puts the finished folder SRC into the cache

Every fresh output base (a workspace copy, the project's own tests) would otherwise install, rename
and compile the same ~1 GB of locked wheels again. An entry is `KEY/site-packages` (hard links to the
files of the output base that made it: no second copy on disk), `KEY/manifest.txt` (every folder, and
every file's mode, size and sha256) and `KEY/ready`, written last; it is made in a temporary folder
and renamed into place, under a lock per key (`KEY.lock`), so two fetches at once do not collide.
A restore hashes every file against the manifest before linking it (the CPU environment's 1 GB:
about 2 s here, more on a busy machine): the files are shared with every output base that restored
them, so a file written to in any of them shows up here. Across filesystems the files are copied.

DIST_TESTS_ENV_CACHE: the cache folder (default ${XDG_CACHE_HOME:-~/.cache}/dist_tests/environments);
`0` turns the cache off (restore finds nothing, store stores nothing).
"""

import errno
import fcntl
import hashlib
import importlib.metadata
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import TextIO

# The layout of an entry; the ready marker names it, so an entry of another layout is made again.
LAYOUT = "1"
KEY = re.compile(r"[0-9a-f]{16,64}")


class Unsupported(Exception):
    """SRC holds something an entry cannot (a link, a device, a newline in a name)."""


def cache_root(environ: Mapping[str, str] | None = None) -> pathlib.Path | None:
    """The cache folder, or None when DIST_TESTS_ENV_CACHE=0 turns the cache off."""
    environ = os.environ if environ is None else environ
    setting = environ.get("DIST_TESTS_ENV_CACHE", "")
    if setting == "0":
        return None
    if setting:
        return pathlib.Path(setting)
    return pathlib.Path(environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "dist_tests" / "environments"


def sha256(path: pathlib.Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key(parts: list[str]) -> tuple[list[str], str]:
    """The key's inputs, one a line, and the key: NAME=VALUE as given, NAME=@FILE as the file's sha256, and what
    this process knows best itself: the interpreter's real path and full version, pip's version (pip installs
    the installer and a torch wheel), and this module's own bytes."""
    try:
        pip = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        pip = "none"
    lines = [f"layout: {LAYOUT}", f"python: {os.path.realpath(sys.executable)}",
             f"python version: {' '.join(sys.version.split())}", f"pip: {pip}",
             f"environment_cache.py: sha256 {sha256(__file__)}"]
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ValueError(f"a key input must be NAME=VALUE or NAME=@FILE, not {part!r}")
        value = f"sha256 {sha256(value[1:])}" if value.startswith("@") else value
        # One line each: a value with newlines (pip's configuration) is folded, still unambiguous.
        lines.append(f"{name}: {value}".replace("\\", "\\\\").replace("\n", "\\n"))
    return lines, hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def _tree(root: pathlib.Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every folder and file below root, folders before what they hold."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            yield os.path.relpath(path, root), os.lstat(path)


def _record(relative: str, stat: os.stat_result, digest: str | None) -> str:
    if "\n" in relative:
        raise Unsupported(f"a name with a newline: {relative!r}")
    if _is_dir(stat):
        return f"d {relative}"
    return f"f {stat.st_mode & 0o7777:o} {stat.st_size} {digest} {relative}"


def _is_dir(stat: os.stat_result) -> bool:
    return (stat.st_mode & 0o170000) == 0o040000


def _is_file(stat: os.stat_result) -> bool:
    return (stat.st_mode & 0o170000) == 0o100000


class _Placer:
    """Hard-links files, copying instead (file and mode) once the two folders lie on different filesystems."""

    def __init__(self) -> None:
        self.copies = False

    def place(self, source: str, target: str) -> None:
        if not self.copies:
            try:
                os.link(source, target)
                return
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self.copies = True
        shutil.copy2(source, target)


def _locked(root: pathlib.Path, key_: str) -> TextIO:
    """The key's lock file, locked; closing it (the end of a with block) unlocks it."""
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / f"{key_}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


Manifest = dict[str, tuple[int, int, str] | None]  # relative path: (mode, size, sha256) of a file, None for a folder


def _problem(entry: pathlib.Path, key_: str) -> tuple[str | None, Manifest]:
    """(None, its manifest) when the entry is complete and every file is as its manifest says; otherwise what is
    wrong."""
    ready = entry / "ready"
    if not ready.is_file():
        return "unfinished (no ready marker)", {}
    if ready.read_text() != f"layout {LAYOUT} key {key_}\n":
        return f"of another layout or key (marked {ready.read_text().strip()!r})", {}
    want: Manifest = {}
    try:
        for line in (entry / "manifest.txt").read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "d":
                want[rest] = None
            else:
                mode, size, digest, relative = rest.split(" ", 3)
                want[relative] = (int(mode, 8), int(size), digest)
    except (OSError, ValueError) as error:
        return f"damaged: its manifest cannot be read ({error})", {}
    files = entry / "site-packages"
    have = dict(_tree(files)) if files.is_dir() else {}
    if missing := sorted(want.keys() - have.keys()):
        return f"damaged: {len(missing)} missing, first {missing[0]}", {}
    if extra := sorted(have.keys() - want.keys()):
        return f"damaged: {len(extra)} not in its manifest, first {extra[0]}", {}
    for relative, expected in want.items():
        stat = have[relative]
        if expected is None:
            if not _is_dir(stat):
                return f"damaged: {relative} is not a folder", {}
            continue
        mode, size, digest = expected
        if not _is_file(stat) or stat.st_mode & 0o7777 != mode or stat.st_size != size:
            return f"damaged: {relative} changed (type, mode or size)", {}
        # Same size is not same content: a file written to in place in any output base that shares it.
        if sha256(files / relative) != digest:
            return f"damaged: {relative} changed (sha256)", {}
    return None, want


def restore(key_: str, dest: pathlib.Path, root: pathlib.Path | None) -> int:
    """Links a verified entry into dest (which must not exist yet); 0 when done, 1 when there is none."""
    if root is None:
        return 1
    entry = root / key_
    with _locked(root, key_):
        if not entry.exists():
            return 1
        started = time.monotonic()
        problem, manifest = _problem(entry, key_)
        if problem is not None:
            shutil.rmtree(entry, ignore_errors=True)
            print(f"environment_cache: removed the entry {entry}: {problem}", file=sys.stderr)
            return 1
        verified = time.monotonic() - started
        placer = _Placer()
        files = entry / "site-packages"
        dest.mkdir(parents=True)  # fails when dest exists: nothing of the caller's is touched
        try:
            # The manifest lists each folder before what it holds.
            for relative, expected in manifest.items():
                if expected is None:
                    (dest / relative).mkdir()
                else:
                    placer.place(str(files / relative), str(dest / relative))
        except OSError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    count = sum(expected is not None for expected in manifest.values())
    print(f"environment_cache: restored {count} files from {entry} ({'copied' if placer.copies else 'linked'}), "
          f"verified in {verified:.1f} s, in all {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def store(key_: str, src: pathlib.Path, root: pathlib.Path | None) -> int:
    """Puts the finished folder src into the cache as the entry of key_ (nothing when one is there already)."""
    if root is None:
        print("environment_cache: off (DIST_TESTS_ENV_CACHE=0); nothing stored", file=sys.stderr)
        return 0
    entry = root / key_
    with _locked(root, key_):
        if (entry / "ready").is_file() and _problem(entry, key_)[0] is None:
            return 0
        # Under the lock, anything else of this key is debris of an interrupted store: start clean.
        shutil.rmtree(entry, ignore_errors=True)
        for debris in root.glob(f".{key_}.*"):
            shutil.rmtree(debris, ignore_errors=True)
        building = pathlib.Path(tempfile.mkdtemp(prefix=f".{key_}.", dir=root))
        try:
            files = building / "site-packages"
            files.mkdir()
            placer = _Placer()
            manifest = []
            for relative, stat in _tree(src):
                if _is_dir(stat):
                    (files / relative).mkdir()
                    manifest.append(_record(relative, stat, None))
                elif _is_file(stat):
                    placer.place(str(src / relative), str(files / relative))
                    # Hashed once placed: a link is the same file, a copy is what later restores will check.
                    manifest.append(_record(relative, stat, sha256(files / relative)))
                else:
                    raise Unsupported(f"{relative} is neither a file nor a folder")
            (building / "manifest.txt").write_text("".join(line + "\n" for line in manifest))
            (building / "ready").write_text(f"layout {LAYOUT} key {key_}\n")
            os.rename(building, entry)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    print(f"environment_cache: stored {src} as {entry}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "key":
        lines, digest = key(argv[1:])
        print("\n".join(lines + [f"key: {digest}"]))
        return 0
    if len(argv) != 3 or argv[0] not in ("restore", "store") or not KEY.fullmatch(argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    verb, key_, folder = argv
    root = cache_root()
    try:
        if verb == "restore":
            return restore(key_, pathlib.Path(folder), root)
        return store(key_, pathlib.Path(folder), root)
    except (OSError, Unsupported) as error:
        print(f"environment_cache: {verb} failed: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
