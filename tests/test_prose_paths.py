"""Every path that the prose names exists: README.md, the Markdown pages of the docs folder, and the
docstrings and comments of the project's Python and Starlark files, for paths under the folders
tools, dist_tests, docs and tests.

A path is a word that starts with one of those folders at the repository root, in any of:

    tools/python_env/install_lock.py     a file
    dist_tests/harness/                  a folder (trailing punctuation and a final `/` are dropped)
    dist_tests/known_failures/<backend>.txt, tests/test_*.py
                                         a pattern: each `<...>`, `{...}` or `*` stands for any name,
                                         and at least one path must match it

Not checked, because they are not paths of the checkout:
  - a word that continues another path (`bazel-testlogs/dist_tests/...`, `$TEST_TMPDIR/tests`, a URL)
    or a Bazel label (`//dist_tests:gloo_2`, `//tools/gpu:...`): the character before it is `/`, `@`,
    `.`, a letter, a digit, `_` or `-`;
  - a path of another repository that the prose names as such (OTHER_REPOSITORIES);
  - Python string literals other than docstrings (test data, commands), and Markdown outside README.md
    and the docs folder.
"""

import ast
import io
import os
import pathlib
import re
import tokenize

import pytest

from conftest import ROOT

FOLDERS = ("tools", "dist_tests", "docs", "tests")
# A word of path characters, plus the placeholders of a pattern (<...>, {...}, *), that starts with
# one of FOLDERS and is not the continuation of a longer path or label (see the module docstring).
PATH = re.compile(r"(?<![\w./@$-])(?:" + "|".join(FOLDERS) + r")/[\w./*<>{}-]*")
PLACEHOLDER = re.compile(r"<[^<>/]*>|\{[^{}/]*\}")
# Folders that hold no source: Bazel's output links, caches, and what the tools write into the checkout.
SKIPPED_DIRS = {".git", "__pycache__", ".ruff_cache", "node_modules", "dist_tests_report"}
STARLARK_NAMES = {"BUILD", "BUILD.bazel", "WORKSPACE", "WORKSPACE.bazel"}
# Paths that the prose names in another repository, not this one: each with where it lies.
OTHER_REPOSITORIES = {
    "tools/stats/import_test_stats.py": "PyTorch's repository (docs/pytorch-ci.md: what its CI runs)",
}


def source_files() -> list[pathlib.Path]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("bazel-"))
        files += [pathlib.Path(folder) / name for name in sorted(names)]
    return files


def is_python(path: pathlib.Path) -> bool:
    if path.suffix == ".py":
        return True
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as f:
        first = f.readline()
    return first.startswith(b"#!") and b"python" in first


def is_starlark(path: pathlib.Path) -> bool:
    return path.suffix == ".bzl" or path.name in STARLARK_NAMES


def comments_and_docstrings(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python or Starlark file."""
    source = path.read_text()
    found = [(token.start[0], token.string)
             for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT]
    # Starlark parses as Python: its docstrings sit where Python's do.
    tree = ast.parse(source, str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.append((body[0].lineno, body[0].value.value))
    return found


def prose() -> list[tuple[str, int, str]]:
    """(file, line, text) of the prose that names paths."""
    texts = []
    markdown = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in markdown:
        texts += [(str(path.relative_to(ROOT)), n, line) for n, line in enumerate(path.read_text().splitlines(), 1)]
    for path in source_files():
        if is_python(path) or is_starlark(path):
            texts += [(str(path.relative_to(ROOT)), n, text) for n, text in comments_and_docstrings(path)]
    return texts


def named_paths(text: str) -> list[str]:
    """The paths a text names, trailing punctuation and a final `/` dropped."""
    return [match.rstrip(".,;:/") for match in PATH.findall(text)]


def exists(path: str, root: pathlib.Path = ROOT) -> bool:
    pattern = PLACEHOLDER.sub("*", path)
    if "*" in pattern:
        return next(root.glob(pattern), None) is not None
    return (root / path).exists()


def missing_paths(texts: list[tuple[str, int, str]], root: pathlib.Path = ROOT) -> list[str]:
    return [f"{where}:{line}: {path}" for where, line, text in texts for path in named_paths(text)
            if path not in OTHER_REPOSITORIES and not exists(path, root)]


def test_named_paths_exist():
    texts = prose()
    assert any(where == "README.md" for where, _, _ in texts)
    assert any(where.endswith(".bzl") for where, _, _ in texts)
    missing = missing_paths(texts)
    assert not missing, "paths named in prose that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("text, names", [
    ("see tools/python_env/install_lock.py.", ["tools/python_env/install_lock.py"]),
    ("(dist_tests/harness/), and", ["dist_tests/harness"]),
    ("`dist_tests/known_failures/<backend>.txt`", ["dist_tests/known_failures/<backend>.txt"]),
    ("bazel-testlogs/dist_tests/<target>/test.xml, //dist_tests:gloo_2, //tools/gpu:x", []),
    ("https://example.org/tools/x and $TEST_TMPDIR/tests", []),
])
def test_what_counts_as_a_path(text, names):
    assert named_paths(text) == names


def test_a_missing_path_is_found():
    texts = [("README.md", 1, "run tools/no_such_tool, then dist_tests/known_failures/<backend>.txt "
                              "and tests/no_such_*.py")]
    assert missing_paths(texts) == ["README.md:1: tools/no_such_tool", "README.md:1: tests/no_such_*.py"]
