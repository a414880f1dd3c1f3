"""The target matrix as the harness sees it: a run's own line and device class, and the table's lines and classes.

Under Bazel a target carries its own line: the matrix macro writes it, as JSON, into the
target's DIST_TESTS_LINE (line_of_target), so two lines of one backend each run their own
settings and plugin, and a line declared in another workspace's BUILD file runs as one of this
table's does. By hand there is no target: the run's line is looked up in the table.

`DIST_TEST_MATRIX` in tools/dist_tests.bzl is this workspace's table. Its lines are literal
`struct(backend = ..., world_size = ..., device = ..., ...)` calls, which Python's own parser
reads as well as Starlark's, so the harness knows the same backends and devices without a copy.
Under Bazel the file is in the harness's runfiles; by hand it is in the workspace.
"""

import ast
import dataclasses
import json
import os
from collections.abc import Mapping

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                     "dist_tests.bzl")


# The run's own line, as tools/dist_tests.bzl's dist_test_line_json() writes it.
LINE_VARIABLE = "DIST_TESTS_LINE"
_LINE_FIELDS = {"name": str, "backend": str, "world_size": int, "device": str}


class MatrixError(Exception):
    """The table, or a target's line, cannot be read; the message says where and why."""


def line_of_target(env: Mapping[str, str]) -> dict | None:
    """The line the running target was declared with (DIST_TESTS_LINE); None when run by hand."""
    text = env.get(LINE_VARIABLE)
    if not text:
        return None
    what = (f"{LINE_VARIABLE}={text!r} is not the line the matrix macro (tools/dist_tests.bzl) writes into each "
            "target's environment")
    try:
        line = json.loads(text)
    except ValueError as error:
        raise MatrixError(f"{what}: {error}. Unset it, or run the target as declared.") from None
    if not isinstance(line, dict):
        raise MatrixError(f"{what}: not a JSON object. Unset it, or run the target as declared.")
    for field, kind in _LINE_FIELDS.items():
        if not isinstance(line.get(field), kind) or isinstance(line.get(field), bool):
            raise MatrixError(f"{what}: its {field!r} must be a {kind.__name__}. Unset it, or run the target as "
                              "declared.")
    return line


def _literal(tree: ast.Module, name: str, kind: type) -> ast.expr:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            if isinstance(node.value, kind):
                return node.value
    raise MatrixError(f"it has no literal {name} = {'[...]' if kind is ast.List else '{...}'}")


def _literal_lines(tree: ast.Module) -> list[dict]:
    table = _literal(tree, "DIST_TEST_MATRIX", ast.List)
    return [{k.arg: ast.literal_eval(k.value) for k in line.keywords} for line in table.elts]  # type: ignore[attr-defined]


def _parse(table: str) -> ast.Module:
    with open(table, encoding="utf-8") as f:
        return ast.parse(f.read(), table)


@dataclasses.dataclass(frozen=True)
class DeviceClass:
    """A device class as tools/dist_tests.bzl declares it (DEVICE_CLASSES, dist_test_device_class)."""

    name: str
    least_world_size: int
    # How a host's devices are counted before any rank: NVIDIA_DRIVER, a command's label, or None (none needed).
    count: str | None = None
    count_path: str | None = None  # the command's path in the runfiles (a target's line gives it)
    visible_devices: str | None = None  # the variable that shows each rank its leased devices
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # set in every process of a run
    torch_module: str | None = None  # torch.<module>.device_count() checks the count once torch has loaded
    forkserver_proof: str | None = None  # "cuda", or None: ranks start by spawn

    @property
    def has_devices(self) -> bool:
        return self.count is not None


NVIDIA_DRIVER = "nvidia-driver"
_CLASS_FIELDS = {"least_world_size": int, "count": (str, type(None)), "visible_devices": (str, type(None)),
                 "env": dict, "torch_module": (str, type(None)), "forkserver_proof": (str, type(None))}


def device_class(name: str, fields: Mapping) -> DeviceClass:
    """A class from its fields: a table's struct(...) keywords, or a target line's `device_class` object."""
    values = {key: fields[key] for key in _CLASS_FIELDS if key in fields}
    count = fields.get("count")
    if isinstance(count, dict):  # a command, by label and by its path in the target's runfiles
        values["count"], values["count_path"] = count.get("label"), count.get("path")
        if not all(isinstance(values[k], str) and values[k] for k in ("count", "count_path")):
            raise MatrixError(f"device class {name!r}: its count is {count!r}")
    for key, kind in _CLASS_FIELDS.items():
        if key in values and (not isinstance(values[key], kind) or isinstance(values[key], bool)):
            raise MatrixError(f"device class {name!r}: its {key} is {values[key]!r}")
    if "least_world_size" not in values:
        raise MatrixError(f"device class {name!r} has no least_world_size")
    if (values.get("count") is None) != (values.get("visible_devices") is None):
        raise MatrixError(f"device class {name!r}: count and visible_devices go together")
    return DeviceClass(name=name, **values)


def device_classes(table: str | None = None) -> dict[str, DeviceClass]:
    """{name: class}: the table's DEVICE_CLASSES, which names this workspace's device classes."""
    table = table or TABLE
    try:
        literal = _literal(_parse(table), "DEVICE_CLASSES", ast.Dict)
        return {ast.literal_eval(key): device_class(ast.literal_eval(key), {
            k.arg: ast.literal_eval(k.value) for k in value.keywords})  # type: ignore[attr-defined]
            for key, value in zip(literal.keys, literal.values)}  # type: ignore[attr-defined]
    except (OSError, SyntaxError, ValueError, AttributeError, MatrixError) as error:
        raise MatrixError(f"cannot read the device classes in {table}: {error}") from None


def class_of_line(line: Mapping) -> DeviceClass | None:
    """The device class a target's line carries (the matrix macro writes its declaration); None in an older form."""
    fields = line.get("device_class")
    if fields is None:
        return None
    if not isinstance(fields, dict) or fields.get("name") != line["device"]:
        raise MatrixError(f"{line['name']}: its device_class {fields!r} is not its device {line['device']!r}'s "
                          "declaration, as the matrix macro writes it")
    return device_class(line["device"], fields)


def lines(table: str | None = None) -> list[dict]:
    """Every line of the table as a dict of its fields, in the table's order."""
    table = table or TABLE
    try:
        found = _literal_lines(_parse(table))
        for line in found:
            missing = {"backend", "world_size", "device"} - set(line)
            if missing:
                raise MatrixError(f"a line has no {', '.join(sorted(missing))}: {line}")
        return found
    except (OSError, SyntaxError, ValueError, KeyError, AttributeError, MatrixError) as error:
        raise MatrixError(f"cannot read the target matrix in {table}: {error}") from None


def device_of_backends(table: str | None = None) -> dict[str, str]:
    """{backend: the device class of its first line}, in the table's order.

    A backend on lines of both device classes (gloo) runs by hand, with DIST_TESTS_DEVICE
    unset, as its first line does.
    """
    devices: dict[str, str] = {}
    for line in lines(table):
        devices.setdefault(line["backend"], line["device"])
    return devices


def target_name(line: dict) -> str:
    """A line's target name, as tools/dist_tests.bzl's dist_test_name() gives it."""
    return line.get("name") or f"{line['backend']}_{line['world_size']}"


def find_line(backend: str, world_size: int, device: str, table: str | None = None) -> dict | None:
    """The line of that backend, world size and device class; None for a cell the table does not declare."""
    return next((line for line in lines(table)
                 if (line["backend"], line["world_size"], line["device"]) == (backend, world_size, device)), None)


def line_named(name: str, table: str | None = None) -> dict | None:
    """The line whose target is `name` (gloo_gpu_2, not a backend "gloo_gpu"); None when no line has it."""
    return next((line for line in lines(table) if target_name(line) == name), None)
