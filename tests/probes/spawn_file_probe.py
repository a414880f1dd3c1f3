"""Ranks that import the real entry point, as every rank does, and report what its import set.

Run with BACKEND=gloo, WORLD_SIZE, DIST_TESTS_START_METHOD and PROBE_OUT (a folder). The parent
writes PROBE_OUT/parent.json and each rank PROBE_OUT/rankN.json: torch's TF32 flag for matmuls.
PROBE_NO_DISTRIBUTED=1 makes this torch look as if it had been built without torch.distributed
and runs the entry point as a script, as a target does.
"""

import json
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
ENTRY = os.path.join(ROOT, "dist_tests", "spawn_test.py")

from dist_tests.harness import runner  # noqa: E402

runner.configure()

import torch  # noqa: E402

if os.environ.get("PROBE_NO_DISTRIBUTED") == "1":
    torch.distributed.is_available = lambda: False  # what a torch built without USE_DISTRIBUTED answers
    runpy.run_path(ENTRY, run_name="__main__")

import dist_tests.spawn_test  # noqa: E402,F401  (the entry point's top level, in the parent and in every rank)
from dist_tests.harness import suite  # noqa: E402


def _write(name: str) -> None:
    with open(os.path.join(os.environ["PROBE_OUT"], name), "w") as f:
        json.dump({"allow_tf32": torch.backends.cuda.matmul.allow_tf32}, f)


class SpawnFileProbe(suite.StandaloneSpawnCase):
    def test_report(self) -> None:
        _write(f"rank{self.rank}.json")


if __name__ == "__main__":
    # The forkserver finds its preload modules through PYTHONPATH (Python 3.11's ignores sys.path).
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    _write("parent.json")
    runner.main(SpawnFileProbe)
