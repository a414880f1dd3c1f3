"""Every relative link of README.md and the Markdown pages of the docs folder leads somewhere: its file
exists (relative to the page that links it), and where it names an anchor (`docs/gpus.md#gpu-leases`,
`#known-failures`), the page it leads to has a heading with that anchor.

Anchors are GitHub's: the heading's text in lower case, markup and punctuation dropped (letters,
digits, `_`, `-` and spaces kept), each space a `-`; a repeated heading gets `-1`, `-2`, ...

Not checked: links with a scheme (`https:`, `mailto:`), and text inside code (fenced blocks and
`inline code`), which Markdown does not render as links.
"""

import pathlib
import re

import pytest

from conftest import ROOT

LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_pages(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line, text) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, target) of every link of a page."""
    return [(number, target) for number, line in prose_lines(path.read_text())
            for target in LINK.findall(CODE_SPAN.sub("", line))]


def broken_links(pages: list[pathlib.Path], root: pathlib.Path = ROOT) -> list[str]:
    broken = []
    for page in pages:
        for number, target in links(page):
            if SCHEME.match(target) or target.startswith("/"):
                continue
            file, _, anchor = target.partition("#")
            destination = (page.parent / file if file else page).resolve()
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not destination.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{where} (no heading with that anchor in {destination.relative_to(root.resolve())})")
    return broken


def test_links_resolve():
    pages = markdown_pages()
    assert len(pages) > 1, "no pages in docs/"
    assert any(links(page) for page in pages)
    broken = broken_links(pages)
    assert not broken, "links in README.md and docs/ that lead nowhere:\n" + "\n".join(broken)


def test_readme_links_every_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    unlinked = [str(page.relative_to(ROOT)) for page in markdown_pages()[1:] if page.resolve() not in linked]
    assert not unlinked, "pages of docs/ that README.md does not link:\n" + "\n".join(unlinked)


@pytest.mark.parametrize("heading, anchor", [
    ("GPU leases", "gpu-leases"),
    ("PyTorch CI's disabled and slow tests", "pytorch-cis-disabled-and-slow-tests"),
    ("Settings (environment, with `--test_env=` under Bazel)", "settings-environment-with---test_env-under-bazel"),
    ("Missing GPUs or backends", "missing-gpus-or-backends"),
    ("A [linked](x.md) heading", "a-linked-heading"),
])
def test_anchor_of_a_heading(heading, anchor):
    assert slug(heading) == anchor


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## GPU leases\n\n## Twice\n\n## Twice\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/page.md) [ok](docs/page.md#gpu-leases) [ok](docs/page.md#twice-1) [ok](#top)\n"
        "# Top\n"
        "[no file](docs/none.md) [no anchor](docs/page.md#gpu-lease) [no anchor here](#none)\n"
        "`[in code](docs/none.md)` [outside](https://example.org/none.md)\n"
        "```\n[fenced](docs/none.md)\n```\n")
    assert broken_links(markdown_pages(tmp_path), tmp_path) == [
        "README.md:3: docs/none.md (no such file)",
        "README.md:3: docs/page.md#gpu-lease (no heading with that anchor in docs/page.md)",
        "README.md:3: #none (no heading with that anchor in README.md)",
    ]
