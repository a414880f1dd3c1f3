"""Preloaded in the forkserver after torch and before torch's suite: the run's plugin backend.

Forked ranks inherit the server's modules, so the backend a plugin package registers, and the
features it declares to torch's suite, must be there before the server imports the suite
(runner.prepare_plugin, as the entry point does in the parent and in spawned ranks).
"""

from dist_tests.harness import runner

runner.prepare_plugin()
