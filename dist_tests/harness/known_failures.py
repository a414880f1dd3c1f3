"""Checked-in lists of tests that fail for reasons outside this project.

One file per backend, `dist_tests/known_failures/<backend>.txt` (or the file that
DIST_TESTS_KNOWN_FAILURES names, which must exist). Each line is

    test_name: reason
    test_name[3,4]: reason      (only at these world sizes)

Blank lines and lines starting with '#' are ignored. A listed test still runs: when it
fails with an exception it is reported as a known failure with the reason (counted apart
from skips); when it times out or a rank dies by a signal, it fails as usual; when it
passes it fails loudly, so the list never outlives the bug.

A matrix line's exclusion list (its `exclude`) has the same format, and its tests never start
on that line: for a test that hangs or crashes the process there (load_exclusions).
"""

import dataclasses
import re

_LINE = re.compile(r"^(?P<name>test_\w+)(?:\[(?P<sizes>\d+(?:\s*,\s*\d+)*)\])?\s*:\s*(?P<reason>\S.*)$")


class KnownFailuresError(ValueError):
    """The list is malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class KnownFailures:
    source: str
    reasons: dict[str, str]

    @classmethod
    def empty(cls) -> "KnownFailures":
        return cls(source="(none)", reasons={})

    @classmethod
    def parse(cls, text: str, source: str, world_size: int) -> "KnownFailures":
        reasons: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if not match:
                raise KnownFailuresError(
                    f"{source}:{number}: cannot read {raw!r}. Write 'test_name: reason' or 'test_name[3,4]: reason'."
                )
            name = match["name"]
            if name in reasons:
                raise KnownFailuresError(f"{source}:{number}: {name} is listed twice.")
            sizes = match["sizes"]
            if sizes is None or world_size in {int(s) for s in sizes.split(",")}:
                reasons[name] = match["reason"]
        return cls(source=source, reasons=reasons)

    @classmethod
    def load(cls, path: str, source: str, world_size: int, required: bool = False) -> "KnownFailures":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            if required:
                raise KnownFailuresError(
                    f"DIST_TESTS_KNOWN_FAILURES={source!r} does not exist. Name an existing list by its absolute path "
                    "(under Bazel a relative path is read inside the test's runfiles), or unset it."
                ) from None
            return cls(source=source, reasons={})
        except (OSError, UnicodeDecodeError) as error:
            raise KnownFailuresError(f"{source}: cannot read it: {error}") from None
        return cls.parse(text, source, world_size)

    @classmethod
    def load_exclusions(cls, label: str, path: str, world_size: int) -> "KnownFailures":
        """A line's exclusion list, which must exist: the matrix macro put it in the target's runfiles."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as error:
            raise KnownFailuresError(f"{label}: the line's exclusion list cannot be read ({error})") from None
        return cls.parse(text, label, world_size)

    def reason(self, test_name: str) -> str | None:
        return self.reasons.get(test_name)

    def unknown_names(self, test_names: set[str]) -> list[str]:
        """Listed names that are not tests of this suite (typos, or tests torch removed)."""
        return sorted(set(self.reasons) - test_names)
