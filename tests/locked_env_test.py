"""Runs inside a py_test: the interpreter and packages are the locked environment's."""

import hashlib
import os
import re
import site
import sys
import unittest

LOCK = "third_party/python/requirements_lock.txt"


def locked_version(package: str) -> str:
    with open(LOCK) as f:
        match = re.search(rf"^{package}==(\S+)", f.read(), re.MULTILINE)
    assert match, f"{package} is not pinned in {LOCK}"
    return match.group(1)


class LockedEnvironmentTest(unittest.TestCase):
    def test_torch_is_the_locked_version(self) -> None:
        import torch

        self.assertEqual(torch.__version__, locked_version("torch"))

    def test_packages_come_from_the_external_repository(self) -> None:
        import absl
        import torch

        for module in (torch, absl):
            path = module.__file__
            self.assertIn(f"{os.sep}dist_python{os.sep}site-packages{os.sep}", path)
            # Inside this test's runfiles, not the host's or the output base's copy.
            self.assertIn(".runfiles", path)

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

    def test_identity_file_describes_this_interpreter(self) -> None:
        with open(os.path.join(os.environ["TEST_SRCDIR"], "dist_python", "python_identity.txt")) as f:
            identity = dict(line.split(": ", 1) for line in f.read().splitlines())
        self.assertEqual(identity["python"], sys.version.split()[0])
        with open(sys.executable, "rb") as f:
            self.assertEqual(identity["binary sha256"], hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(identity["torch"], "locked")

    def test_interpreter_matches_the_lock(self) -> None:
        with open(LOCK) as f:
            python = re.search(r"^# python: (\S+)", f.read(), re.MULTILINE).group(1)
        self.assertEqual("%d.%d" % sys.version_info[:2], python)


if __name__ == "__main__":
    unittest.main()
