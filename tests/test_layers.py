"""The harness in layers: each module imports only from the layers below it (no circle), and one
module, environment.py, writes the process environment and lists every variable the harness names."""

import ast
import pathlib
import re

HARNESS = pathlib.Path(__file__).resolve().parent.parent / "dist_tests" / "harness"

# Bottom to top. A module may import only modules before it in this list.
ORDER = [
    # What the harness shares with tools/ (words, the repro command, free_port), then what is read
    # before torch loads: the environment, what a process removes at its end, the matrix, settings, lists, leases,
    # faults.
    "shared", "environment", "cleanup", "cuda_driver", "matrix", "selection", "known_failures", "faults",
    "flight_records", "network", "plugins", "settings", "ci_lists", "gpu_leases", "by_hand",
    # The run's state and its time budget.
    "state", "budget",
    # What faces torch: its private internals, the spawn-file settings, what ranks are asked when a test fails
    # (their records and stacks), ranks, the forkserver, reruns, reporting.
    "spawn_file", "torch_internals", "rank_reports", "ranks", "forkserver", "forkserver_proof", "reruns", "reporting",
    # The run's plugin backend, prepared on import (the parent, spawned ranks, the forkserver's preload).
    "plugin_preload",
    # The suite's harness and the runner on top.
    "suite", "runner",
]
# Names of variables the harness reads or writes, as they appear in its code.
VARIABLE = re.compile(r"^(DIST_TESTS|TEST|TESTBRIDGE|XML|PYTORCH|CUDA|HIP|OMP|NUM|MASTER|INIT|BACKEND|WORLD|TMPDIR|"
                      r"PYTHONPATH|DISABLED_TESTS|SLOW_TESTS)[A-Z0-9_]*$")
# Names of that shape that are not variables: a MultiProcessTestCase attribute.
NOT_VARIABLES = {"TEST_ERROR_EXIT_CODE"}
WRITING_METHODS = {"update", "pop", "setdefault", "clear", "popitem"}


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(HARNESS.glob("*.py"))
            if path.stem != "__init__"}


def harness_imports(tree: ast.Module) -> set[str]:
    """Every harness module a module imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "dist_tests.harness":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("dist_tests.harness."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("dist_tests.harness.")}
    return found


def is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"


def environment_writes(tree: ast.Module) -> list[int]:
    """Lines that change os.environ."""
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets if t is not None):
            lines.append(node.lineno)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_environ(node.func.value)
                and node.func.attr in WRITING_METHODS):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("putenv", "unsetenv"):
            lines.append(node.lineno)
    return lines


def test_every_harness_module_has_a_place_in_the_layers():
    assert sorted(modules()) == sorted(ORDER)


def test_each_module_imports_only_from_below_it():
    against = []
    for name, tree in modules().items():
        for imported in harness_imports(tree):
            if ORDER.index(imported) >= ORDER.index(name):
                against.append(f"{name} imports {imported}, which is not below it")
    assert against == []


def test_only_the_environment_module_writes_the_environment():
    writes = {name: lines for name, tree in modules().items() if name != "environment"
              for lines in [environment_writes(tree)] if lines}
    assert writes == {}, f"these modules write os.environ (use dist_tests/harness/environment.py): {writes}"
    assert environment_writes(modules()["environment"]), "the check itself must see environment.py's writes"


def named_variables() -> dict[str, str]:
    """Each variable name a harness module writes as a string, with a module that does."""
    return {node.value: name for name, tree in modules().items() for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.match(node.value)
            and node.value not in NOT_VARIABLES}


def test_every_variable_the_harness_names_is_listed_in_the_environment_module_and_no_other():
    listed_text = ast.get_docstring(modules()["environment"]) or ""
    words = re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", listed_text)
    listed = {w for w in words if VARIABLE.match(w) and ("_" in w or w in ("BACKEND", "TMPDIR", "PYTHONPATH"))}
    named = named_variables()
    assert {v: m for v, m in named.items() if v not in listed} == {}, "named in the harness, not listed"
    assert sorted(listed - set(named)) == [], "listed in environment.py's docstring, named nowhere in the harness"
