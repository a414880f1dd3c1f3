"""Every setting the harness and the tools read is documented: a row of docs/settings.md (or docs/torch.md)."""

import re

from conftest import ROOT

# Names the harness and the tools set for their own child processes, never for a user to set.
HANDOFFS = {
    "DIST_TESTS_CONFIGURED",  # the parent configured the environment; ranks skip it (environment.py)
    "DIST_TESTS_ATTEMPT",  # a rerun's number, for its ranks (reruns.py)
    "DIST_TESTS_FORKSERVER_REPORT",  # where the forkserver's proof is written (forkserver.py)
    "DIST_TESTS_FORKSERVER_PRELOAD",  # what the forkserver must have imported (forkserver.py)
    "DIST_TESTS_GPU_CHECK_DEVICE",  # tools/gpu/gpu_check to its rank script
    "DIST_TESTS_GPU_CHECK_VISIBLE_DEVICES",  # tools/gpu/gpu_check to its rank script
    "DIST_TESTS_OUTCOMES_FILE",  # the benchmarks to tools/upstream/spawn_baseline.py
}


def named_in_code() -> set[str]:
    files = [p for folder in ("dist_tests", "tools") for p in (ROOT / folder).rglob("*") if p.is_file()]
    files += [ROOT / ".bazelrc", ROOT / "WORKSPACE"]  # tools/ holds dist_tests.bazelrc and deps.bzl
    return {name for path in files for name in re.findall(r"DIST_TESTS_[A-Z0-9_]+", path.read_text(errors="ignore"))}


def test_every_setting_the_code_reads_has_a_row_in_the_docs():
    docs = (ROOT / "docs" / "settings.md").read_text() + (ROOT / "docs" / "torch.md").read_text()
    names = named_in_code()
    assert "DIST_TESTS_RERUNS" in names and "DIST_TESTS_PYTHON" in names  # the reader finds them at all
    missing = sorted(name for name in names - HANDOFFS if f"`{name}" not in docs)
    assert not missing, f"settings the code reads that docs/settings.md and docs/torch.md do not name: {missing}"
    assert HANDOFFS <= names, f"no longer in the code: {sorted(HANDOFFS - names)}"
