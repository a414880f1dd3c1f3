#!/usr/bin/env python3
"""Renames files whose names Bazel 4 cannot place in a runfiles tree (spaces), and their users.

Bazel 4.2.3's runfiles manifest separates paths with spaces, so a file such as
setuptools' vendored `jaraco/text/Lorem ipsum.txt` cannot be a test input. This renames
each such file (spaces become underscores) and rewrites the quoted old name in the .py
files of the same folder, the only place a package refers to its own data by name.
Run by //tools/python_env on a freshly installed site-packages; prints what it changed.
"""

import pathlib
import sys


def main(site_packages: str) -> int:
    root = pathlib.Path(site_packages)
    for path in sorted(root.rglob("* *")):
        if not path.is_file():
            continue
        new = path.with_name(path.name.replace(" ", "_"))
        path.rename(new)
        print(f"renamed {path.relative_to(root)} -> {new.name}")
        for source in path.parent.glob("*.py"):
            text = source.read_text(encoding="utf-8")
            patched = text.replace(f"'{path.name}'", f"'{new.name}'").replace(f'"{path.name}"', f'"{new.name}"')
            if patched != text:
                source.write_text(patched, encoding="utf-8")
                print(f"  updated {source.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
