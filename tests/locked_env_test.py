"""Runs inside a py_test: the interpreter and packages are its device class's locked environment.

LOCK (the lock of that class, `{python}` for this interpreter's version: one lock per Python) and
DIST_TESTS_DEVICE come from the target (tests/BUILD.bazel).
"""

import hashlib
import os
import re
import site
import sys
import unittest

DEVICE = os.environ.get("DIST_TESTS_DEVICE", "cpu")
LOCK = os.environ["LOCK"].format(python="%d.%d" % sys.version_info[:2])
PACKAGES = f"dist_python_{DEVICE}"


def locked_version(package: str) -> str:
    with open(LOCK) as f:
        match = re.search(rf"^{package}===(\S+)", f.read(), re.MULTILINE)
    assert match, f"{package} is not pinned in {LOCK}"
    return match.group(1)


class LockedEnvironmentTest(unittest.TestCase):
    def test_torch_is_the_locked_version(self) -> None:
        import importlib.metadata

        import torch

        # The distribution's version is the lock's; PyPI's CUDA build names its CUDA in
        # torch.__version__ (2.13.0+cu130).
        self.assertEqual(importlib.metadata.version("torch"), locked_version("torch"))
        self.assertTrue(torch.__version__.startswith(locked_version("torch")), torch.__version__)

    def test_torch_is_the_build_of_this_device_class(self) -> None:
        import torch
        import torch.distributed as dist

        self.assertTrue(dist.is_available())
        self.assertTrue(dist.is_gloo_available())
        if DEVICE == "gpu":
            # PyPI's CUDA build, NCCL included; no GPU or driver is needed to see that.
            self.assertIsNotNone(torch.version.cuda)
            self.assertTrue(dist.is_nccl_available())
        else:
            self.assertIsNone(torch.version.cuda)
            self.assertFalse(dist.is_nccl_available())

    def test_packages_come_from_the_device_classes_repository(self) -> None:
        import absl
        import torch

        for module in (torch, absl):
            path = module.__file__
            self.assertIn(f"{os.sep}{PACKAGES}{os.sep}site-packages{os.sep}", path)
            # Inside this test's runfiles, not the host's or the output base's copy.
            self.assertIn(".runfiles", path)
        other = "cpu" if DEVICE == "gpu" else "gpu"
        self.assertFalse(os.path.exists(os.path.join(os.environ["TEST_SRCDIR"], f"dist_python_{other}")),
                         f"a {DEVICE} target must not carry the {other} packages")

    def test_host_site_packages_are_not_importable(self) -> None:
        self.assertTrue(sys.flags.no_site, "the interpreter must run without the site module")
        self.assertTrue(sys.flags.no_user_site)
        host_dirs = [p for p in sys.path if p.endswith("site-packages") and "dist_python" not in p]
        self.assertEqual(host_dirs, [])
        self.assertFalse(os.path.isdir(site.getusersitepackages()) and site.getusersitepackages() in sys.path)

    def test_interpreter_is_the_environments_copy(self) -> None:
        # An input of this action (in its runfiles), not the host's installation.
        self.assertIn(".runfiles", sys.executable)
        self.assertIn(f"{os.sep}dist_python{os.sep}python{os.sep}bin{os.sep}", sys.executable)
        for module in (os, hashlib):
            self.assertIn(f"{os.sep}dist_python{os.sep}python{os.sep}lib{os.sep}", module.__file__)

    def test_identity_files_describe_this_interpreter_and_packages(self) -> None:
        with open(os.path.join(os.environ["TEST_SRCDIR"], "dist_python", "python_identity.txt")) as f:
            identity = dict(line.split(": ", 1) for line in f.read().splitlines())
        self.assertEqual(identity["python"], sys.version.split()[0])
        with open(sys.executable, "rb") as f:
            self.assertEqual(identity["binary sha256"], hashlib.sha256(f.read()).hexdigest())
        with open(os.path.join(os.environ["TEST_SRCDIR"], PACKAGES, "environment.txt")) as f:
            environment = dict(line.split(": ", 1) for line in f.read().splitlines())
        self.assertEqual(environment["device"], DEVICE)
        self.assertEqual(environment["torch"], "locked, torch===" + locked_version("torch"))

    def test_interpreter_matches_the_lock(self) -> None:
        with open(LOCK) as f:
            python = re.search(r"^# python: (\S+)", f.read(), re.MULTILINE).group(1)
        self.assertEqual("%d.%d" % sys.version_info[:2], python)


if __name__ == "__main__":
    unittest.main()
