"""Imported last in the forkserver's preload: it records, from inside the server, what a fork inherits.

multiprocessing's server imports its preload modules and drops an ImportError silently; it
then forks every rank. So, after the other preloads and before any fork, this records in
the file the parent named (FORKSERVER_REPORT) which preload modules failed to import (and
why) and what the CUDA driver says of this process. The parent reads it (forkserver.py).
In any other process the import does nothing.
"""

import importlib
import json
import os
import sys
import traceback

from dist_tests.harness import cuda_driver
from dist_tests.harness.environment import FORKSERVER_PRELOAD, FORKSERVER_REPORT


def _import_errors(modules: list[str]) -> dict[str, str]:
    """The preload modules this process lacks, with the error importing each gives now."""
    errors = {}
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            errors[name] = "multiprocessing's import of it failed; a second import worked"
        except BaseException:  # noqa: BLE001 - any failure is the answer
            errors[name] = traceback.format_exc(limit=3).strip().splitlines()[-1]
    return errors


def _write_report(path: str) -> None:
    modules = [m for m in os.environ.get(FORKSERVER_PRELOAD, "").split(",") if m and m != __name__]
    state = cuda_driver.driver_state()
    report = {"pid": os.getpid(), "import_errors": _import_errors(modules), "driver": state.state,
              "library": state.library, "fork_safe": state.fork_safe}
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(path + ".part", path)


if os.environ.get(FORKSERVER_REPORT):
    _write_report(os.environ[FORKSERVER_REPORT])
