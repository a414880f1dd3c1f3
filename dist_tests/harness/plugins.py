"""A backend shipped as its own package: the `plugin` of its DIST_TEST_MATRIX line.

Such a backend exists for torch.distributed only once its package is imported (it calls
`torch.distributed.Backend.register_backend`), in the parent and in every rank; and torch's
suite decides which tests a backend runs from `DistTestCases` (`backend_feature`, its
"plugin" set among them) when `distributed_test` is imported, so the backend's features must
be there first. A line says all of it:

    plugin = {
        "module": "example_backend",                 # imported in the parent and every rank
        "library": "//tests/plugin:example_backend", # where its code comes from (a py_library)
        "features": ["ddp", "subgroup"],             # DistTestCases.backend_feature sets it joins
        "init_method": "tcp",                        # optional: file (torch's default), env or tcp
    }

`from_line()` and `check_findable()` run before torch is imported (the fields, and that the
module can be found);
`prepare()` after torch and before torch's suite: the entry point calls it, in the parent
and in every spawned rank, and the forkserver's preload does (plugin_preload.py).
"""

import dataclasses
import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any

from dist_tests.harness import matrix

KEYS = ("module", "library", "features", "init_method")
INIT_METHODS = ("file", "env", "tcp")


class PluginError(Exception):
    """The line's plugin is malformed, cannot be imported, or does not register its backend."""


@dataclasses.dataclass(frozen=True)
class Plugin:
    backend: str
    target: str  # the line's target, for messages
    module: str
    library: str
    features: tuple[str, ...] = ()
    init_method: str = "file"


def from_line(line: Mapping[str, Any], target: str) -> Plugin | None:
    """The line's plugin, checked field by field; None for a backend torch registers itself."""
    spec = line.get("plugin")
    if spec is None:
        return None
    where = f"{target}: its `plugin`"
    if not isinstance(spec, Mapping):
        raise PluginError(f"{where} must be a dict with the keys {', '.join(KEYS)}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise PluginError(f"{where} has unknown key(s) {', '.join(unknown)}: use {', '.join(KEYS)}")
    for key in ("module", "library"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise PluginError(f"{where} needs {key!r}, a non-empty string")
    features = spec.get("features", [])
    if not isinstance(features, list | tuple) or not all(isinstance(f, str) for f in features):
        raise PluginError(f"{where}: 'features' must be a list of DistTestCases.backend_feature names")
    init_method = spec.get("init_method", "file")
    if init_method not in INIT_METHODS:
        raise PluginError(f"{where}: 'init_method' {init_method!r} is not one of {', '.join(INIT_METHODS)}")
    return Plugin(line["backend"], target, spec["module"], spec["library"], tuple(features), init_method)


def for_run(env: Mapping[str, str]) -> Plugin | None:
    """The run's plugin: its target's own line's (matrix.line_of_target); by hand, BACKEND's in the table."""
    line = matrix.line_of_target(env)
    if line is not None:
        return from_line(line, env.get("TEST_TARGET") or f"//dist_tests:{line['name']}")
    return for_backend(env.get("BACKEND", ""))


def for_backend(backend: str, table: str | None = None) -> Plugin | None:
    """By hand: the plugin of the backend's first line in the table that has one."""
    for line in matrix.lines(table):
        if line["backend"] == backend and "plugin" in line:
            return from_line(line, f"//dist_tests:{matrix.target_name(line)}")
    return None


def check_findable(plugin: Plugin) -> None:
    """Before torch loads: the module is on the path (its library is in the target's deps)."""
    try:
        found = importlib.util.find_spec(plugin.module)
    except (ImportError, ValueError) as error:
        found, why = None, f" ({error})"
    else:
        why = ""
    if found is None:
        raise PluginError(f"{plugin.target}: its plugin module {plugin.module!r} cannot be found{why}. The line's "
                          f"`plugin` names {plugin.library!r} as its library: that library must provide the module "
                          "(the matrix macro adds it to the target's deps).")


def prepare(plugin: Plugin) -> None:
    """Imports the plugin (registering its backend) and adds the backend to the suite's feature sets.

    Runs after torch is imported and before torch's distributed_test, whose decorators read
    DistTestCases at import. Idempotent: the forkserver and each rank may run it again.
    """
    from torch.testing._internal.common_distributed import DistTestCases

    known = DistTestCases.backend_feature
    unknown = [f for f in plugin.features if f not in known or f == "plugin"]
    if unknown:
        raise PluginError(f"{plugin.target}: its plugin declares feature(s) {', '.join(unknown)}, which torch's suite "
                          f"does not know; DistTestCases.backend_feature has: "
                          f"{', '.join(sorted(k for k in known if k != 'plugin'))}")
    try:
        importlib.import_module(plugin.module)
    except Exception as error:  # noqa: BLE001 - whatever the package raises is the answer
        raise PluginError(f"{plugin.target}: its plugin module {plugin.module!r} failed to import: "
                          f"{type(error).__name__}: {error}") from None
    import torch.distributed as dist

    if plugin.backend not in dist.Backend.backend_list:
        registered = ", ".join(dist.Backend.backend_list)
        raise PluginError(f"{plugin.target}: importing its plugin module {plugin.module!r} did not register the "
                          f"backend {plugin.backend!r} (torch.distributed knows {registered}). The module must call "
                          f"torch.distributed.Backend.register_backend({plugin.backend!r}, ...) when imported.")
    known["plugin"].add(plugin.backend)
    for feature in plugin.features:
        known[feature].add(plugin.backend)
