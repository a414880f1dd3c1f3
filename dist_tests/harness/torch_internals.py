"""The one module that relies on torch's private test internals, and the forked-rank setup they need.

The harness keeps torch's test bodies and skip rules and replaces the parent's side of
MultiProcessTestCase (suite.py). What it relies on: the MultiProcessTestCase methods
SpawnHarness overrides or calls, the module globals patched here
(common_distributed.get_timeout, distributed_test.INIT_METHOD in forked ranks), the state
common_utils.parse_cmd_line_args() sets, and TestDistBackend.setUp making TEMP_DIR (barrier
and test folders) itself. check_torch_internals() verifies all of it at start.
"""

import inspect
import os
import sys
from types import ModuleType
from typing import Any

import torch
from torch.testing._internal import common_distributed, common_utils
from torch.testing._internal.common_distributed import MultiProcessTestCase
from torch.testing._internal.distributed import distributed_test

from dist_tests.harness.settings import exit_with_setup_error

# Exit code of a forked rank that finds torch's CUDA unusable in it: outside torch's own codes
# (10 and 72..89), so the parent can tell it apart and rerun the test with spawn.
BAD_FORK_EXIT_CODE = 71

# MultiProcessTestCase methods SpawnHarness overrides or calls, with their parameter counts (self included).
_RELIED_ON_METHODS = {"_spawn_processes": 1, "_start_processes": 2, "_join_processes": 2, "_check_return_codes": 3}


def missing_torch_internals(base: type = MultiProcessTestCase, distributed: ModuleType = common_distributed,
                            utils: ModuleType = common_utils, suite: ModuleType = distributed_test) -> list[str]:
    """What this module relies on that the given torch test internals lack (empty when all is there)."""
    missing = []
    for name, count in _RELIED_ON_METHODS.items():
        method = getattr(base, name, None)
        if not callable(method):
            missing.append(f"MultiProcessTestCase.{name}")
        elif len(inspect.signature(method).parameters) != count:
            missing.append(f"MultiProcessTestCase.{name} with {count - 1} argument(s)")
    run = getattr(base, "_run", None)
    if not callable(run) or list(inspect.signature(run).parameters)[:2] != ["rank", "test_name"]:
        missing.append("MultiProcessTestCase._run(rank, test_name, file_name, pipe)")
    if not isinstance(getattr(base, "TEST_ERROR_EXIT_CODE", None), int):
        missing.append("MultiProcessTestCase.TEST_ERROR_EXIT_CODE")
    if not hasattr(getattr(base, "Event", None), "GET_TRACEBACK"):
        missing.append("MultiProcessTestCase.Event.GET_TRACEBACK")
    if not callable(getattr(distributed, "get_timeout", None)):
        missing.append("common_distributed.get_timeout(test_id)")
    if not callable(getattr(utils, "parse_cmd_line_args", None)):
        missing.append("common_utils.parse_cmd_line_args()")
    if not isinstance(getattr(suite, "INIT_METHOD", None), str):
        missing.append("distributed_test.INIT_METHOD")
    set_up = getattr(getattr(suite, "TestDistBackend", None), "setUp", None)
    if "initialize_temp_directories" not in getattr(getattr(set_up, "__code__", None), "co_names", ()):
        missing.append("TestDistBackend.setUp making TEMP_DIR (initialize_temp_directories)")
    return missing


def check_torch_internals() -> None:
    """Exits with a clear message when the torch in use lacks what this harness relies on."""
    missing = missing_torch_internals()
    if missing:
        exit_with_setup_error(
            f"torch {torch.__version__} ({os.path.dirname(torch.__file__)}) lacks test internals that this harness "
            f"relies on: {'; '.join(missing)}.\n  The harness (dist_tests/harness/torch_internals.py) is written for "
            "the lock's torch (third_party/python/requirements_*_lock.txt); adapt that module to this torch, or use "
            "the lock's.")


def prepare_parent(timeout_s: Any) -> None:
    """Sets the state torch's run_tests() would, and routes torch's per-test timeout through `timeout_s`."""
    # torch's decorators read globals that its own run_tests() sets from the command line.
    argv, sys.argv = sys.argv, sys.argv[:1]
    common_utils.parse_cmd_line_args()
    sys.argv = argv
    torch_timeout = common_distributed.get_timeout
    common_distributed.get_timeout = lambda test_id: timeout_s(test_id, torch_timeout(test_id))


def prepare_forked_rank(args: tuple) -> None:
    """Makes a rank forked from the forkserver behave as a freshly imported one would.

    distributed_test reads INIT_METHOD at import, in the server; the rank must see this
    test's. And CUDA must never be used in a process forked after the driver was touched:
    should torch say so although the server was proven clean (forkserver.py), the rank
    ends before the test body runs, with BAD_FORK_EXIT_CODE, and the parent reruns the
    test with spawn (SpawnHarness._join_processes).
    """
    distributed_test.INIT_METHOD = os.environ.get("INIT_METHOD", "env://")
    if torch.cuda._is_in_bad_fork():
        print(f"dist_tests: rank {args[0]} was forked from a forkserver that had initialised CUDA (torch "
              f"{torch.__version__}), so CUDA cannot work in it: it ends before its test body runs.",
              file=sys.stderr, flush=True)
        sys.exit(BAD_FORK_EXIT_CODE)
