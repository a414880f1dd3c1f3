"""The target matrix as the harness sees it: each backend's device class, read from the one table.

`DIST_TEST_MATRIX` in tools/dist_tests.bzl is the only list of backends. Its lines are literal
`struct(backend = ..., world_size = ..., device = ..., ...)` calls, which Python's own parser
reads as well as Starlark's, so the harness knows the same backends and devices without a copy.
Under Bazel the file is in the harness's runfiles; by hand it is in the workspace.
"""

import ast
import os

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "dist_tests.bzl")


class MatrixError(Exception):
    """The table cannot be read; the message says where and why."""


def _literal_lines(tree: ast.Module) -> list[dict]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DIST_TEST_MATRIX" for t in node.targets):
            if not isinstance(node.value, ast.List):
                break
            return [{k.arg: ast.literal_eval(k.value) for k in line.keywords} for line in node.value.elts]
    raise MatrixError("it has no literal DIST_TEST_MATRIX = [struct(...), ...] table")


def device_of_backends(table: str | None = None) -> dict[str, str]:
    """{backend: "cpu" or "gpu"}, in the table's order."""
    table = table or TABLE
    try:
        with open(table, encoding="utf-8") as f:
            lines = _literal_lines(ast.parse(f.read(), table))
        return {line["backend"]: line["device"] for line in lines}
    except (OSError, SyntaxError, ValueError, KeyError, AttributeError, MatrixError) as error:
        raise MatrixError(f"cannot read the target matrix in {table}: {error}") from None
