"""Upstream's way of running the spawn suite, for tools/upstream/benchmark to compare against.

What PyTorch's own spawn test file does: the shared class, a setUp that spawns every rank
as a fresh interpreter, and torch's run_tests(). Needs BACKEND, WORLD_SIZE and TEMP_DIR.
"""

import os

# As under Bazel, whose test actions do not inherit CI: with it set, torch's run_tests writes
# XML reports through a package that the lock does not hold, and fails before any test runs.
os.environ.pop("CI", None)

import torch  # noqa: E402
from torch.testing._internal.common_utils import run_tests  # noqa: E402
from torch.testing._internal.distributed.distributed_test import DistributedTest, TestDistBackend  # noqa: E402


class TestDistBackendWithSpawn(TestDistBackend, DistributedTest._DistTestBase):
    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()
        torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()


def record_outcomes(path: str) -> None:
    """Appends 'name<TAB>outcome' lines to path as tests finish (for tools/upstream/benchmark)."""
    import unittest

    def recorder(outcome: str, original):
        def record(self, test, *args):
            with open(path, "a") as f:
                f.write(f"{test.id().rsplit('.', 1)[-1]}\t{outcome}\n")
            return original(self, test, *args)

        return record

    result = unittest.TestResult
    result.addSuccess = recorder("passed", result.addSuccess)
    result.addSkip = recorder("skipped", result.addSkip)
    result.addFailure = recorder("failed", result.addFailure)
    result.addError = recorder("failed", result.addError)


if __name__ == "__main__":
    if os.environ.get("DIST_TESTS_OUTCOMES_FILE"):
        record_outcomes(os.environ["DIST_TESTS_OUTCOMES_FILE"])
    run_tests()
