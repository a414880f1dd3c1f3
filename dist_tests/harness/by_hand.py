"""What tools/python asks before it fetches a package set: which device class's, and whether a by-hand
run of the spawn suite can start at all.

    python3 -m dist_tests.harness.by_hand CALLER_DIR ARG...    (ARG...: what tools/python was given)

prints the device class (cpu or gpu) whose packages the command gets: the harness's own rule
(settings.device_class: DIST_TESTS_DEVICE, else BACKEND's class in the matrix), else cpu. When the
command runs dist_tests/spawn_test.py it first checks, as the harness would before torch, the
settings that decide the packages (BACKEND, DIST_TESTS_DEVICE, WORLD_SIZE) and, for a class with
devices, the devices counted before torch; a run that cannot start exits 3 with the harness's message, before
Bazel fetches gigabytes of CUDA packages and torch loads. Standard library only: tools/python
runs it on the host's python3.
"""

import os
import sys
from collections.abc import Mapping, Sequence

from dist_tests.harness import gpu_leases, settings

ENTRY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spawn_test.py")


def runs_the_suite(args: Sequence[str], caller_dir: str) -> bool:
    """Whether the interpreter's arguments run the spawn suite's entry point (a script, not -c or -m)."""
    words = iter(args)
    for word in words:
        if word in ("-c", "-m", "-"):
            return False
        if word in ("-X", "-W"):
            next(words, None)
        elif not word.startswith("-"):
            return os.path.realpath(os.path.join(caller_dir, word)) == os.path.realpath(ENTRY)
    return False


def device(args: Sequence[str], caller_dir: str, env: Mapping[str, str] = os.environ) -> str:
    """The device class of the command's packages; exits 3 for a run of the suite that cannot start."""
    if not runs_the_suite(args, caller_dir):
        try:
            return settings.device_class(env)
        except settings.SettingsError:  # no backend of the suite (or none): the wrapper's default
            return env.get("DIST_TESTS_DEVICE") or "cpu"
    try:
        backend, device_class, world_size = settings.cell(env)
    except settings.SettingsError as error:
        settings.exit_with_setup_error(str(error))
    if device_class.has_devices and env.get("DIST_TESTS_ALLOW_SKIP") != "1":
        counted = gpu_leases.devices_before_torch(env, device_class)
        word = gpu_leases.unit(device_class)
        missing = settings.missing_devices(backend, world_size, counted[0], word) if counted else None
        if counted and missing:
            settings.exit_with_setup_error(
                f"{missing} ({counted[1]}).\n  Run it on a host with {settings.count_of(world_size, word)}, or on CPU "
                "here (BACKEND=gloo, DIST_TESTS_DEVICE unset); DIST_TESTS_ALLOW_SKIP=1 reports every test skipped "
                "instead. No rank was started.")
    return device_class.name

if __name__ == "__main__":
    print(device(sys.argv[2:], sys.argv[1]))
