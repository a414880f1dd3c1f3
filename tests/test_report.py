"""tools/bazel run //tools:report: the matrix from bazel-testlogs, on synthetic and real XML,
and its HTML page rendered by a real headless browser."""

import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, bazel

MATRIX = "gloo_2,gloo_3,gloo_4,nccl_2,nccl_4,ucc_2"

PASSED_SHARD = """<?xml version="1.0"?>
<testsuites tests="3" time="4.5"><testsuite name="T" tests="3" time="4.5">
<testcase name="test_a" status="run" result="completed" time="1" classname="T"></testcase>
<testcase name="test_b" status="notrun" result="suppressed" time="0" classname="T"><skipped message="Need at least 2 CUDA devices"></skipped></testcase>
<testcase name="test_c" status="notrun" result="suppressed" time="0" classname="T"><skipped message="Need at least 2 CUDA devices"></skipped></testcase>
</testsuite></testsuites>"""

FAILED_SHARD = """<?xml version="1.0"?>
<testsuites tests="2" time="2.0"><testsuite name="T" tests="2" time="2.0">
<testcase name="test_d" status="run" result="completed" time="1" classname="T"></testcase>
<testcase name="test_e" status="run" result="completed" time="1" classname="T"><error message="rank 1 was killed by SIGKILL" type="RuntimeError"><![CDATA[trace]]></error></testcase>
</testsuite></testsuites>"""


def write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def synthetic_testlogs(tmp_path):
    logs = tmp_path / "testlogs" / "dist_tests"
    write(logs / "gloo_2/shard_1_of_2/test.xml", PASSED_SHARD)
    write(logs / "gloo_2/shard_2_of_2/test.xml", FAILED_SHARD)
    write(logs / "gloo_3/shard_1_of_1/test.xml", "<testsuites><testcase name=")  # malformed
    (logs / "gloo_4/shard_1_of_4").mkdir(parents=True)  # ran, but no XML
    write(logs / "nccl_2/test.log", "-- Test timed out at 2026-11-27 06:00:00 UTC --\n")
    write(logs / "nccl_2/test.xml", PASSED_SHARD)
    return tmp_path / "testlogs"


def run_report(python, testlogs, out):
    return subprocess.run(
        [python, str(ROOT / "tools/report.py"), f"--matrix={MATRIX}", f"--testlogs={testlogs}", f"--out={out}"],
        capture_output=True, text=True, check=True,
    ).stdout


def row(table: str, target: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.startswith(target + " "))


def test_synthetic_edge_cases(python, synthetic_testlogs, tmp_path):
    table = run_report(python, synthetic_testlogs, tmp_path / "out")
    assert row(table, "gloo_2")[3:8] == ["failed", "2", "2", "1", "0"]  # two shards merged
    assert row(table, "gloo_3")[3] == "error"
    assert "malformed XML" in table
    assert row(table, "gloo_4")[3] == "error" and "missing" in table
    assert row(table, "nccl_2")[3:5] == ["timed", "out"]
    assert row(table, "ucc_2")[3:5] == ["not", "run"]
    md = (tmp_path / "out/report.md").read_text()
    assert "tools/bazel test //dist_tests:gloo_2 --test_filter=test_e" in md
    assert "| 4 | Need at least 2 CUDA devices |" in md
    page = (tmp_path / "out/report.html").read_text()
    assert "rank 1 was killed by SIGKILL" in page and "class='failed'" in page and "class='not-run'" in page


def test_report_of_a_real_run(tmp_path):
    run = bazel("test", "//dist_tests:gloo_2", "--test_filter=test_all_reduce_sum test_all_reduce_sum_cuda test_broadcast",
                "--test_env=DIST_TESTS_ALLOW_SKIP=1", "--nocache_test_results")
    assert run.returncode == 0, run.output
    out = tmp_path / "real"
    report = bazel("run", "//tools:report", "--", f"--out={out}")
    assert report.returncode == 0, report.output
    assert row(report.output, "gloo_2")[3:7] == ["passed", "2", "1", "0"]
    assert (out / "report.html").exists() and (out / "report.md").exists()


def test_html_renders_in_a_headless_browser(python, synthetic_testlogs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is needed (apt-get install chromium); .ci/run installs it"
    out = tmp_path / "out"
    run_report(python, synthetic_testlogs, out)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "gloo_2: failed" in dom and "ucc_2: not run" in dom
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1100,900", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
