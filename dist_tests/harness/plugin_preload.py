"""The run's plugin backend, prepared when this module is imported: once per process.

A backend shipped as its own package is registered with torch, and the features it declares
told to torch's suite (plugins.py), after torch and before the suite, whose decorators read
them. The entry point imports this (runner.prepare_plugin) in the parent and in spawned ranks;
the forkserver preloads it, so forked ranks inherit it. The parent's import is also what lets a
fork of the parent serve as the forkserver (forkserver.fork_early).
"""

import os

from dist_tests.harness import matrix, plugins
from dist_tests.harness.settings import exit_with_setup_error


def _prepare() -> None:
    try:
        plugin = plugins.for_run(os.environ)
        if plugin is None:
            return
        plugins.prepare(plugin)
    except (plugins.PluginError, matrix.MatrixError) as error:
        exit_with_setup_error(f"{error}\n  No rank was started.")


_prepare()
