"""PyTorch CI's disabled-tests and slow-tests files, checked before torch is imported.

torch's common_utils reads them itself when it is imported (in the parent and in every
rank), from the paths in DISABLED_TESTS_FILE and SLOW_TESTS_FILE, and `check_if_enable`
(in TestCase.setUp) skips a listed test. But torch only logs a warning for a path that is
missing or a folder (the run then passes with nothing disabled), and a malformed file
fails with a JSON traceback. Checked here first, each of those stops the run with a message.

Formats (upstream's):
  DISABLED_TESTS_FILE  {"test_name (__main__.TestClass)": ["ISSUE_URL", ["linux", ...]], ...}
                       (an empty platform list: every platform)
  SLOW_TESTS_FILE      {"test_name (__main__.TestClass)": SECONDS, ...}
torch matches a key by its test name and by its class's last dotted part, which must be a
prefix of the test's class: the module part is not compared, so `__main__` and any other
module name both reach TestDistBackendWithSpawn.
"""

import json
import os
from collections.abc import Callable, Mapping

from dist_tests.harness.settings import SettingsError

DISABLED = "DISABLED_TESTS_FILE"
SLOW = "SLOW_TESTS_FILE"
_FORMATS = {
    DISABLED: '{"test_name (__main__.TestDistBackendWithSpawn)": ["ISSUE_URL", ["linux", ...]], ...}',
    SLOW: '{"test_name (__main__.TestDistBackendWithSpawn)": SECONDS, ...}',
}
_WARN_AT_MOST = 20  # names listed in one warning


def _read_json(variable: str, path: str) -> object:
    where = f"{variable}={path!r}"
    if not os.path.exists(path):
        raise SettingsError(f"{where} does not exist. Name an existing file by its absolute path "
                            "(under Bazel a relative path is read inside the test's runfiles), or unset it.")
    if os.path.isdir(path):
        raise SettingsError(f"{where} is a folder. Name the JSON file itself, or unset it.")
    if not os.path.isfile(path):  # a pipe or a device could block the read, or never end
        raise SettingsError(f"{where} is not a regular file. Name the JSON file itself, or unset it.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise SettingsError(f"{where} is not JSON ({error}). Its format: {_FORMATS[variable]}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"{where}: cannot read it: {error}") from None


def _split_key(variable: str, path: str, key: str) -> tuple[str, str]:
    """('test_name', 'TestClass') from 'test_name (module.TestClass)', as torch's matching reads it."""
    parts = key.split()
    if len(parts) < 2 or not (parts[1].startswith("(") and parts[1].endswith(")")):
        raise SettingsError(f"{variable}={path!r}: the key {key!r} is not 'test_name (module.TestClass)'. "
                            f"Its format: {_FORMATS[variable]}")
    return parts[0], parts[1][1:-1].split(".")[-1]


def _valid_value(variable: str, value: object) -> bool:
    if variable == SLOW:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], list) and all(isinstance(p, str) for p in value[1]))


def load(variable: str, path: str) -> dict[str, str]:
    """{key: test class} of a well-formed file; raises SettingsError naming the file otherwise."""
    data = _read_json(variable, path)
    if not isinstance(data, dict):
        raise SettingsError(f"{variable}={path!r} is not a JSON object. Its format: {_FORMATS[variable]}")
    classes = {}
    for key, value in data.items():
        name, test_class = _split_key(variable, path, key)
        if not _valid_value(variable, value):
            raise SettingsError(f"{variable}={path!r}: the value of {key!r} is {json.dumps(value)}. "
                                f"Its format: {_FORMATS[variable]}")
        classes[key] = test_class
    return classes


def unknown_tests(classes: Mapping[str, str], suite_class: str, suite_names: set[str]) -> list[str]:
    """Keys that would reach suite_class (torch's class rule) but name none of its tests."""
    return sorted(key for key, test_class in classes.items()
                  if suite_class.startswith(test_class) and key.split()[0] not in suite_names)


def check(env: Mapping[str, str], suite_class: str, suite_names: Callable[[], set[str] | None]) -> list[str]:
    """Checks the files the environment names; returns warnings, raises SettingsError on a bad file.

    suite_names() gives the suite's test names, asked only when a file is named; None when
    torch's suite source could not be parsed: no names are checked then.
    Entries for other classes are expected (upstream's files cover every suite) and ignored.
    """
    warnings = []
    for variable in (DISABLED, SLOW):
        path = env.get(variable)
        if not path:
            continue
        classes = load(variable, path)
        names = suite_names()
        unknown = unknown_tests(classes, suite_class, names) if names is not None else []
        if unknown:
            shown = ", ".join(unknown[:_WARN_AT_MOST]) + (f" and {len(unknown) - _WARN_AT_MOST} more"
                                                         if len(unknown) > _WARN_AT_MOST else "")
            warnings.append(f"{variable}={path!r} names {len(unknown)} test(s) that {suite_class} does not have, "
                            f"so they change nothing: {shown}")
    return warnings
