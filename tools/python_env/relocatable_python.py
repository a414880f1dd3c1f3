#!/usr/bin/env python3
"""Copies the running CPython into a self-contained, relocatable folder, and writes its identity.

Run by //tools/python_env with the chosen interpreter itself:

    python3 relocatable_python.py DEST IDENTITY_FILE
    python3 relocatable_python.py --describe-only IDENTITY_FILE   (the identity, no copy)

DEST receives what the tests need to run Python and nothing else:

    bin/python3.X                 the interpreter, its library path made relative ($ORIGIN/../lib)
    lib/libpython3.X.so.1.0       when the interpreter links libpython dynamically
    lib/python3X.zip              the standard library: sources and bytecode in one stored zip
    lib/python3.X/os.py           the landmark from which Python finds its prefix
    lib/python3.X/lib-dynload/    the standard library's C extensions

Left out: the prefix's own site-packages, tests, idle/tkinter/turtledemo, ensurepip, headers,
the static library and build configuration, scripts, man pages and caches. One zip instead of
~4,000 standard-library files keeps each test's sandbox cheap to build. The bytecode is
hash-based and compiled with fixed paths, and the zip has fixed dates and order, so the same
interpreter gives the same bytes in every clone.
"""

import hashlib
import os
import pathlib
import py_compile
import shutil
import struct
import sys
import sysconfig
import tempfile
import zipfile

# Folders of the standard library that no test imports.
_DROPPED_DIRS = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages",
                 "dist-packages", "__pycache__"}
# C extensions that exist only for CPython's own tests, or need a display.
_DROPPED_EXTENSION_PREFIXES = ("_tkinter", "_test", "_ctypes_test", "_xxtestfuzz", "xxlimited")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_RELATIVE_LIBRARY_PATH = b"$ORIGIN/../lib"


class RelocationError(Exception):
    """This interpreter cannot be copied; the message says why."""


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dynamic_entries(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """The ELF64 little-endian dynamic section: (file offset of entry, tag, value), and the file offset of .dynstr."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise RelocationError("the interpreter is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return [], 0
    entries, strtab_vaddr = [], None
    for offset in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:  # DT_NULL
            break
        entries.append((offset, tag, value))
        if tag == 5:  # DT_STRTAB
            strtab_vaddr = value
    for vaddr, file_offset, size in loads:
        if strtab_vaddr is not None and vaddr <= strtab_vaddr < vaddr + size:
            return entries, strtab_vaddr - vaddr + file_offset
    raise RelocationError("the interpreter's string table is not in a loaded segment")


def _dynamic_string(data: bytes, strtab: int, offset: int) -> bytes:
    start = strtab + offset
    return data[start:data.index(b"\0", start)]


def needed_libraries(binary: pathlib.Path) -> list[str]:
    """The shared libraries the binary itself links (DT_NEEDED)."""
    data = binary.read_bytes()
    entries, strtab = _dynamic_entries(data)
    return [_dynamic_string(data, strtab, value).decode() for _, tag, value in entries if tag == 1]


def make_library_path_relative(binary: pathlib.Path) -> bool:
    """Rewrites the binary's RUNPATH (or RPATH) in place to $ORIGIN/../lib; False if it has none."""
    data = bytearray(binary.read_bytes())
    entries, strtab = _dynamic_entries(bytes(data))
    changed = False
    for _, tag, value in entries:
        if tag not in (15, 29):  # DT_RPATH, DT_RUNPATH
            continue
        start = strtab + value
        end = data.index(b"\0", start)
        if end - start < len(_RELATIVE_LIBRARY_PATH):
            raise RelocationError(
                f"the interpreter's library path {data[start:end]!r} is too short to rewrite in place")
        data[start:end] = _RELATIVE_LIBRARY_PATH.ljust(end - start, b"\0")
        changed = True
    binary.write_bytes(bytes(data))
    return changed


def _stdlib_files(stdlib: pathlib.Path) -> list[pathlib.Path]:
    """Every standard-library file worth shipping, relative to its folder, in a fixed order."""
    kept = []
    for folder, dirs, files in os.walk(stdlib):
        here = pathlib.Path(folder)
        dirs[:] = sorted(d for d in dirs
                         if d not in _DROPPED_DIRS and not d.startswith("config-") and d != "lib-dynload")
        for name in sorted(files):
            path = here / name
            if not path.is_symlink() and not name.endswith((".pyc", ".pyo", ".exe")):
                kept.append(path.relative_to(stdlib))
    return kept


def _bytecode(source: pathlib.Path, shown_as: str, scratch: pathlib.Path) -> bytes | None:
    """Hash-based bytecode of one file (the same bytes for the same source), None if it does not compile."""
    target = scratch / "module.pyc"
    try:
        py_compile.compile(str(source), cfile=str(target), dfile=shown_as, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError:
        return None
    return target.read_bytes()


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.create_system = 3
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


def write_stdlib_zip(stdlib: pathlib.Path, zip_path: pathlib.Path, landmark_dir: pathlib.Path) -> int:
    """The standard library as one zip (os.py stays a file: Python finds its prefix by it). Returns the module count."""
    version_dir = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    count = 0
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(zip_path, "w") as archive:
        for relative in _stdlib_files(stdlib):
            source = stdlib / relative
            name = relative.as_posix()
            if name == "os.py":
                landmark_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, landmark_dir / "os.py")
                compiled = _bytecode(source, f"{version_dir}/os.py", pathlib.Path(scratch))
                (landmark_dir / "__pycache__").mkdir(exist_ok=True)
                (landmark_dir / "__pycache__" / f"os.{sys.implementation.cache_tag}.pyc").write_bytes(compiled)
                continue
            archive.writestr(_zip_entry(name), source.read_bytes())
            if name.endswith(".py"):
                compiled = _bytecode(source, f"{version_dir}/{name}", pathlib.Path(scratch))
                if compiled is not None:
                    archive.writestr(_zip_entry(name + "c"), compiled)
                    count += 1
    return count


def copy_extensions(source: pathlib.Path, dest: pathlib.Path) -> int:
    dest.mkdir(parents=True)
    count = 0
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.startswith(_DROPPED_EXTENSION_PREFIXES):
            shutil.copyfile(path, dest / path.name)
            count += 1
    return count


def relocate(dest: pathlib.Path) -> list[str]:
    """Builds DEST from the running interpreter; returns the identity lines."""
    if sys.implementation.name != "cpython":
        raise RelocationError(f"{sys.executable} is {sys.implementation.name}, not CPython")
    version = "%d.%d" % sys.version_info[:2]
    executable = pathlib.Path(os.path.realpath(sys.executable))
    stdlib = pathlib.Path(sysconfig.get_path("stdlib"))
    dynload = pathlib.Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
    if not dynload.is_dir():
        raise RelocationError(f"{executable} has no lib-dynload folder at {dynload}")

    binary = dest / "bin" / f"python{version}"
    binary.parent.mkdir(parents=True)
    shutil.copyfile(executable, binary)
    binary.chmod(0o755)

    soname = sysconfig.get_config_var("INSTSONAME")
    copied_library = None
    # Some distributions build libpython but link their python binary statically: ask the binary.
    if soname in needed_libraries(binary):
        library = pathlib.Path(sysconfig.get_config_var("LIBDIR")) / soname
        if not library.is_file():
            raise RelocationError(f"{executable} links {soname}, which is not at {library}")
        if not make_library_path_relative(binary):
            raise RelocationError(
                f"{executable} links {soname} without a RUNPATH, so a copy would load the host's library. "
                "Use an interpreter built with an rpath (pyenv, python-build-standalone) or a static one.")
        copied_library = dest / "lib" / soname
        shutil.copyfile(library, copied_library)
    identity = _identity(binary, copied_library)

    zip_path = dest / "lib" / f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    modules = write_stdlib_zip(stdlib, zip_path, dest / "lib" / f"python{version}")
    extensions = copy_extensions(dynload, dest / "lib" / f"python{version}" / "lib-dynload")
    identity.append(f"stdlib sha256: {sha256(zip_path)} ({modules} modules, {extensions} extensions)")
    return identity


def _identity(binary: pathlib.Path, library: pathlib.Path | None) -> list[str]:
    """The running interpreter's version, and the hashes of `binary` and of the libpython it loads (None: static)."""
    if library is None:
        libpython = "libpython: static"
    else:
        libpython = f"libpython: {library.name} sha256 {sha256(library) if library.is_file() else 'not found'}"
    return [f"python: {sys.version.split()[0]}", f"implementation: {sys.implementation.name}",
            f"binary sha256: {sha256(binary)}", libpython]


def describe() -> list[str]:
    """The identity of the running interpreter, in place."""
    executable = pathlib.Path(os.path.realpath(sys.executable))
    soname = sysconfig.get_config_var("INSTSONAME")
    linked = soname in needed_libraries(executable)
    return _identity(executable, pathlib.Path(sysconfig.get_config_var("LIBDIR")) / soname if linked else None)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "--describe-only":
        pathlib.Path(argv[2]).write_text("\n".join(describe()) + "\n")
        return 0
    dest, identity_file = pathlib.Path(argv[1]), pathlib.Path(argv[2])
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "lib").mkdir(parents=True)
    try:
        identity = relocate(dest)
    except RelocationError as error:
        print(f"cannot copy the interpreter: {error}", file=sys.stderr)
        return 1
    identity_file.write_text("\n".join(identity) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
