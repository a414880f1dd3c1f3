"""A torch whose test internals lack what the harness relies on stops the run at once, saying so."""

import os
import subprocess

from conftest import ROOT

# Runs the entry point as `python dist_tests/spawn_test.py` would, on a torch whose test internals
# were changed first (PREPARE), as a different torch release might have them.
RUN_WITH_CHANGED_TORCH = """
import runpy, sys
sys.argv = ["dist_tests/spawn_test.py", "-k", "test_all_reduce_sum"]
sys.path.insert(0, ".")
import torch.testing._internal.common_distributed as common_distributed
import torch.testing._internal.common_utils as common_utils
import torch.testing._internal.distributed.distributed_test as distributed_test
{prepare}
runpy.run_path("dist_tests/spawn_test.py", run_name="__main__")
"""


def run_changed(python: str, prepare: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "TESTBRIDGE"))}
    env.update(BACKEND="gloo", WORLD_SIZE="2")
    code = RUN_WITH_CHANGED_TORCH.format(prepare=prepare)
    return subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_missing_internals_stop_the_run_and_name_the_torch_version(python):
    run = run_changed(python, "\n".join([
        "del distributed_test.INIT_METHOD",
        "del common_utils.parse_cmd_line_args",
        "common_distributed.MultiProcessTestCase._check_return_codes = lambda self, fn: None",
    ]))
    assert run.returncode == 3, run.stdout + run.stderr
    assert "torch 2.13.0" in run.stderr
    assert "lacks test internals that this harness relies on" in run.stderr
    for missing in ("distributed_test.INIT_METHOD", "common_utils.parse_cmd_line_args()",
                    "MultiProcessTestCase._check_return_codes with 2 argument(s)"):
        assert missing in run.stderr
    assert "dist_tests/harness/torch_internals.py" in run.stderr
    assert "Ran " not in run.stderr, "no test may start"


def test_a_torch_that_no_longer_makes_temp_dir_in_setup_is_refused(python):
    run = run_changed(python, "distributed_test.TestDistBackend.setUp = common_distributed.MultiProcessTestCase.setUp")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "TestDistBackend.setUp making TEMP_DIR" in run.stderr


def test_the_locked_torch_has_everything(python):
    run = run_changed(python, "")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 0 failed, 0 skipped" in run.stdout + run.stderr
