"""Whether a wheel, by its file name, installs on one CPython version and platform.

update_lock keeps in each lock only the hashes of the wheels that fit the lock's Python and
platform, and records which wheel each hash is (`# wheel: NAME sha256`); the project's tests read
those lines back and check them with the same rules. The rules are pip's for CPython on Linux:

* python tag `cpXY` with abi `cpXY`: that version alone; with abi `abi3`: XY and newer;
  `pyX`/`pyXY` with abi `none`: any version of that major (at least XY);
* platform `any`, or `manylinux_2_N_ARCH` (and the old aliases manylinux1, 2010 and 2014) for
  N at most the platform's glibc.
"""

import re

# The lock's platform line: ARCH-manylinux_2_N.
PLATFORM_PATTERN = re.compile(r"^(?P<arch>\w+?)-manylinux_(?P<major>\d+)_(?P<minor>\d+)$")
_ALIASES = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
WHEEL_LINE = re.compile(r"^# wheel: (?P<name>\S+\.whl) (?P<sha256>[0-9a-f]{64})$", re.MULTILINE)


def tags(filename: str) -> tuple[list[str], list[str], list[str]]:
    """The python, abi and platform tags of a wheel file name (each dotted set split)."""
    if not filename.endswith(".whl"):
        raise ValueError(f"{filename} is not a wheel")
    parts = filename[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{filename} is not a wheel's name (NAME-VERSION[-BUILD]-PY-ABI-PLATFORM.whl)")
    return parts[-3].split("."), parts[-2].split("."), parts[-1].split(".")


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _python_fits(python_tag: str, abi: str, python: tuple[int, int]) -> bool:
    cpython = re.fullmatch(r"cp(\d)(\d+)", python_tag)
    if cpython:
        version = (int(cpython.group(1)), int(cpython.group(2)))
        if abi == "abi3":
            return version[0] == python[0] and version <= python
        return version == python and abi in (python_tag, "none")
    generic = re.fullmatch(r"py(\d)(\d*)", python_tag)
    if generic and abi == "none":
        major, minor = int(generic.group(1)), generic.group(2)
        return major == python[0] and (not minor or int(minor) <= python[1])
    return False


def _platform_fits(tag: str, platform: str) -> bool:
    if tag == "any":
        return True
    wanted = PLATFORM_PATTERN.match(platform)
    if not wanted:
        raise ValueError(f"platform {platform!r} is not ARCH-manylinux_2_N")
    glibc = (int(wanted.group("major")), int(wanted.group("minor")))
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    if match:
        return match.group(3) == wanted.group("arch") and (int(match.group(1)), int(match.group(2))) <= glibc
    for alias, alias_glibc in _ALIASES.items():
        if tag == f"{alias}_{wanted.group('arch')}":
            return alias_glibc <= glibc
    return False


def fits(filename: str, python: str, platform: str) -> bool:
    """Whether the wheel installs on CPython `python` ("3.12") on `platform` ("x86_64-manylinux_2_28")."""
    pythons, abis, platforms = tags(filename)
    version = _version(python)
    return (any(_python_fits(p, a, version) for p in pythons for a in abis)
            and any(_platform_fits(t, platform) for t in platforms))


def cpython_versions(filename: str) -> set[str]:
    """The CPython versions a wheel's `cpXY` tags name ("3.12"), empty for a pure wheel."""
    pythons, _, _ = tags(filename)
    return {f"{m.group(1)}.{m.group(2)}" for p in pythons for m in [re.fullmatch(r"cp(\d)(\d+)", p)] if m}
