"""Shared helpers for the project's own tests: real Bazel runs and their JUnit XML."""

import dataclasses
import glob
import os
import pathlib
import subprocess
import xml.etree.ElementTree as ET

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAZEL = str(ROOT / "tools" / "bazel")


@dataclasses.dataclass
class Run:
    returncode: int
    output: str


def bazel(*args: str, startup: tuple[str, ...] = (), env: dict | None = None, timeout: int = 900) -> Run:
    """Runs tools/bazel in the workspace; returns its exit code and combined output."""
    proc = subprocess.run(
        [BAZEL, *startup, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout)


def logs_dir(target: str) -> pathlib.Path:
    """bazel-testlogs folder of a //dist_tests:NAME style label."""
    package, name = target.lstrip("/").split(":")
    return ROOT / "bazel-testlogs" / package / name


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # passed, skipped, failed
    message: str


def read_cases(xml_path: pathlib.Path) -> list[Case]:
    cases = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message", "")
            elif child.tag == "skipped" and outcome == "passed":
                outcome, message = "skipped", child.get("message", "")
        cases.append(Case(case.get("name"), outcome, message))
    return cases


def shard_xmls(target: str) -> list[pathlib.Path]:
    base = logs_dir(target)
    sharded = sorted(pathlib.Path(p) for p in glob.glob(str(base / "shard_*" / "test.xml")))
    return sharded or [base / "test.xml"]


def all_cases(target: str) -> list[Case]:
    return [case for xml in shard_xmls(target) for case in read_cases(xml)]


def locked_python() -> str:
    """Path of the locked environment's interpreter (the one tools/python runs)."""
    run = bazel("info", "output_base")
    assert run.returncode == 0, run.output
    return str(pathlib.Path(run.output.strip().splitlines()[-1]) / "external" / "dist_python" / "python3")


@pytest.fixture(scope="session")
def python() -> str:
    return locked_python()
