"""What upstream's spawn file (test/distributed/test_distributed_spawn.py) does when imported.

The entry point calls `at_import()` right after importing torch. Every rank imports the entry
point again (a spawned rank as a fresh interpreter, a forked one re-runs its top level), so
this runs in the parent and in every rank, as upstream's module-level code does.

Upstream exits 0 when torch has no distributed support and under a dev-debug ASAN build: a
run that ran nothing and passed. Here the first is always an error, and the second is
treated as missing hardware is: an error, or every test skipped with the reason when
DIST_TESTS_ALLOW_SKIP=1 says that is expected.
"""

import os
from collections.abc import Mapping

from dist_tests.harness.settings import exit_with_setup_error

DEV_DBG_ASAN = "PYTORCH_TEST_WITH_DEV_DBG_ASAN"  # torch's TEST_WITH_DEV_DBG_ASAN, enabled by "1"


def not_run_reason(env: Mapping[str, str] = os.environ) -> str | None:
    """Why upstream would not run the suite in this environment (read before torch loads); None if it would."""
    if env.get(DEV_DBG_ASAN) == "1":
        return (f"{DEV_DBG_ASAN}=1 says this torch is a dev-debug ASAN build, where upstream does not run the "
                "spawn suite (torch and multiprocessing spawn have known issues there)")
    return None


def require_distributed() -> None:
    """Exits with a clear message when this torch was built without torch.distributed."""
    import torch

    if not torch.distributed.is_available():
        exit_with_setup_error(f"this torch ({torch.__version__}, {os.path.dirname(torch.__file__)}) has no "
                              "distributed support (torch.distributed.is_available() is False), so the spawn suite "
                              "cannot run.\n  Use a torch built with USE_DISTRIBUTED=1, as PyTorch's Linux wheels are.")


def at_import() -> None:
    """Upstream's module-level settings: distributed support required, and matmuls in full FP32.

    With TF32 matmuls (Ampere and newer GPUs), tests that compare a distributed result with a
    local one (DDP against a local model) can differ where upstream's runs agree.
    """
    import torch

    require_distributed()
    torch.backends.cuda.matmul.allow_tf32 = False
