"""What //dist_tests:host is chosen from, asked the way the harness asks it.

The repository rule of tools/gpu/host.bzl runs this on the host's python3 when Bazel loads the matrix:

    python3 -E -s -B tools/gpu/host_gpus.py [NAME=VALUE ...]

The NAME=VALUE words are the settings the rule reads (its `environ`), and nothing else of the
client's environment is read. It prints one NAME=VALUE line for each of:

    gpus              the GPUs a GPU target here gets (each of its ranks needs one): DIST_TESTS_HOST_GPUS
                      when given (a stand-in count: a CI that builds for other hosts, the project's
                      tests), else the harness's own count (gpu_leases.py): every GPU the NVIDIA driver
                      shows, or the GPUs DIST_TESTS_GPUS names
    gpus_from         where that number comes from
    driver            the NVIDIA driver's version as the harness reads it (cuda_driver.py), or empty
    driver_from       where it was read, or why there is none
    missing_backends  the backends the tests' torch lacks, comma-separated

A bad setting exits 3 with one message, which the rule shows. Standard library only, on any
python3 of 3.10 or newer (the harness's own code needs that); an older one exits 2, and the rule
asks another interpreter.
"""

from __future__ import annotations

import os
import sys

# Backends PyPI's torch is built without. The gpu lock's torch is PyPI's CUDA build (the cpu lock's,
# PyTorch's CPU build, has none of them either). Whether another torch (a wheel, an interpreter's own)
# has UCC could only be asked of it by fetching the gpu environment (gigabytes) or importing that torch
# while Bazel loads BUILD files, so its user says so instead: DIST_TESTS_TORCH_HAS_UCC=1.
OPTIONAL_BACKENDS = {"ucc": "DIST_TESTS_TORCH_HAS_UCC"}
BAD_SETTING = 3  # the rule stops the build with the message
TOO_OLD = 2  # the rule asks its next interpreter


class HostError(Exception):
    """A setting the rule was given is wrong; the message says how to fix it."""


def host_gpus(env: dict[str, str]) -> tuple[int, str]:
    """The number of GPUs a GPU target here would lease, and where that number comes from."""
    from dist_tests.harness import gpu_leases

    standin = env.get("DIST_TESTS_HOST_GPUS", "").strip()
    if standin:
        if not standin.isdigit():
            raise HostError(f"DIST_TESTS_HOST_GPUS={standin!r} is not a number of GPUs: give a count, for example "
                            "--repo_env=DIST_TESTS_HOST_GPUS=2 (the GPUs //dist_tests:host is chosen for), or "
                            "leave it unset to count this host's.")
        return int(standin), f"DIST_TESTS_HOST_GPUS={standin}"
    named = {"DIST_TESTS_GPUS": env["DIST_TESTS_GPUS"]} if env.get("DIST_TESTS_GPUS", "").strip() else {}
    try:
        return gpu_leases.gpu_count(named, gpu_leases.driver_gpus())
    except gpu_leases.LeaseError as error:
        raise HostError(str(error)) from None


def host_driver(env: dict[str, str]) -> tuple[str, str]:
    """The driver's version and where it was read; ("", why) when there is none to read. Never an error
    here: a GPU target reads it again before its first rank and says what is wrong."""
    from dist_tests.harness import cuda_driver

    try:
        found = cuda_driver.driver_version(env)
    except cuda_driver.DriverError as error:
        return "", str(error)
    if found is None:
        return "", f"no {cuda_driver.DRIVER_VERSION_FILE}"
    return found


def missing_backends(env: dict[str, str]) -> list[str]:
    """The optional backends the tests' torch lacks, unless its user says it has them."""
    missing = []
    for backend, setting in OPTIONAL_BACKENDS.items():
        value = env.get(setting, "").strip()
        if value not in ("", "0", "1"):
            raise HostError(f"{setting}={value!r}: use 1 (the tests' torch has {backend}: //dist_tests:host "
                            f"includes the {backend} targets) or 0 (the default: PyPI's torch has no {backend}).")
        if value != "1":
            missing.append(backend)
    return missing


def main(args: list[str]) -> int:
    if sys.version_info < (3, 10):
        print(f"{sys.executable} is Python {sys.version.split()[0]}, and the harness's code needs 3.10 or newer: "
              "put a CPython 3.11 first on PATH as python3, or pass --repo_env=DIST_TESTS_PYTHON=/path/to/python3.11.",
              file=sys.stderr)
        return TOO_OLD
    # The workspace root (two folders up), so that dist_tests.harness imports as a package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(word.split("=", 1) for word in args if "=" in word)
    try:
        gpus, gpus_from = host_gpus(env)
        driver, driver_from = host_driver(env)
        missing = missing_backends(env)
    except HostError as error:
        print(error, file=sys.stderr)
        return BAD_SETTING
    answer = {"gpus": str(gpus), "gpus_from": gpus_from, "driver": driver, "driver_from": driver_from,
              "missing_backends": ",".join(missing)}
    for name, value in answer.items():
        print(f"{name}={' '.join(value.split())}")  # one line each, whatever a message holds
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
