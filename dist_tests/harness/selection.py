"""What a --test_filter (or `-k` by --test_arg) selects, and which shard runs it.

A small filtered selection (no more tests than one shard's share of the suite) runs whole in
shard 1: a selection whose every test skips then fails in one place instead of passing shard
by shard, and shards 2..N end before torch loads. A larger selection is sharded as usual.
A word `-PATTERN` excludes the tests PATTERN matches; the count is taken after exclusions.

Every shard must reach the same decision, and shards 2..N make it before torch is imported,
so the decision counts the suite's test names in torch's source (parsed, not imported).
Nothing here imports torch.
"""

import ast
import fnmatch
import importlib.util
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import NamedTuple

SUITE_CLASS = "TestDistBackendWithSpawn"
_SUITE_SOURCE = ("testing", "_internal", "distributed", "distributed_test.py")
_SUITE_BASE = "_DistTestBase"


def take_k_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits unittest-style `-k NAME` options off argv; absl's flag parser rejects them."""
    rest, words = [], []
    args = iter(argv)
    for arg in args:
        if arg == "-k":
            words.append(next(args, ""))
        elif arg.startswith("-k"):
            words.append(arg[2:].lstrip("="))
        else:
            rest.append(arg)
    return rest, [w for w in words if w]


def filter_text(environ: Mapping[str, str], argv: Sequence[str]) -> str:
    """--test_filter's words and `-k` words, as one space-separated filter ('' when none)."""
    _, by_hand = take_k_options(argv[1:])
    return " ".join([environ.get("TESTBRIDGE_TEST_ONLY", "")] + [shlex.quote(w) for w in by_hand]).strip()


class FilterError(ValueError):
    """A --test_filter (or -k) the harness cannot use; the message says what to write instead."""


class Patterns(NamedTuple):
    """A filter as unittest `-k` patterns: a test runs if it matches an include (or there is none) and no exclude."""

    include: list[str]
    exclude: list[str]  # `-PATTERN` words; unittest's -k can only include, so the runner drops these itself


def check_filter(test_filter: str) -> None:
    """Refuses a bare '-': as an empty pattern it would match, and so exclude, every test."""
    if "-" in shlex.split(test_filter):
        raise FilterError(f"--test_filter={test_filter!r} has a bare '-'. Write -PATTERN to exclude the tests that "
                          "PATTERN matches (-test_all_reduce_sum_cuda), or drop the '-'.")


def exact_patterns(test_filter: str, names: set[str], class_name: str) -> Patterns:
    """Makes `test_x` (or Class.test_x) select that test only, not test_x_async too; `-WORD` excludes.

    Other words are unittest `-k` patterns: a substring, or a glob when they contain '*'.
    """
    check_filter(test_filter)
    patterns = Patterns([], [])
    for word in shlex.split(test_filter):
        excluded = word.startswith("-")
        word = word[1:] if excluded else word
        short = word[len(class_name) + 1:] if word.startswith(class_name + ".") else word
        pattern = f"*.{class_name}.{short}" if short in names else word
        (patterns.exclude if excluded else patterns.include).append(pattern)
    return patterns


def _matches(test_id: str, patterns: list[str]) -> bool:
    """unittest's `-k` matching: a glob, or a substring when there is no '*'."""
    return any(fnmatch.fnmatchcase(test_id, p if "*" in p else f"*{p}*") for p in patterns)


def is_excluded(test_id: str, patterns: Patterns) -> bool:
    return _matches(test_id, patterns.exclude)


def count_selected(patterns: Patterns, names: set[str], module: str, class_name: str) -> int:
    """How many tests the filter selects: unittest's `-k` matching, less the excluded ones."""
    ids = [f"{module}.{class_name}.{name}" for name in names]
    return sum(1 for test_id in ids if (not patterns.include or _matches(test_id, patterns.include))
               and not is_excluded(test_id, patterns))


def suite_names_from_source() -> set[str] | None:
    """The spawn suite's test names, parsed from torch's distributed_test.py; None if not found."""
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, *_SUITE_SOURCE)
        if os.path.isfile(path):
            break
    else:
        return None
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == _SUITE_BASE:
            return _test_methods(node.body)
    return None


def _test_methods(body: list[ast.stmt]) -> set[str]:
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, (ast.If, ast.Try)):  # tests defined only on some platforms
            names |= _test_methods(node.body) | _test_methods(node.orelse)
    return names


def runs_in_first_shard(test_filter: str, total_shards: int) -> bool:
    """Whether a filtered selection is small enough to run whole in shard 1 (see the module docstring)."""
    if not test_filter or total_shards <= 1:
        return False
    names = suite_names_from_source()
    if not names:
        return False  # sharded as usual: never loses a test
    selected = count_selected(exact_patterns(test_filter, names, SUITE_CLASS), names, "__main__", SUITE_CLASS)
    return selected <= math.ceil(len(names) / total_shards)
