"""Ranks fork from the forkserver only once the CUDA driver itself says the server never
initialised it; otherwise the run falls back to spawn, saying so once, and no test fails
for the harness's choice. On this CPU host a stand-in driver (probes/fake_libcuda.c) is
mapped into a real forkserver, initialised or not, through the rank probe."""

import json
import pathlib
import subprocess
import time

import pytest

from conftest import ROOT
from test_report import result_event, summary_event, write
from test_start_methods import rank_reports, run_probe

FALLBACK = "ranks by spawn after a forkserver fallback"


@pytest.fixture(scope="module")
def libcuda(tmp_path_factory) -> str:
    """The stand-in driver, built as libcuda.so.1 (the name the proof looks for in the process's maps)."""
    path = tmp_path_factory.mktemp("driver") / "libcuda.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(ROOT / "tests" / "probes" / "fake_libcuda.c")],
                   check=True)
    return str(path)


def test_the_driver_says_whether_this_process_initialised_it(python, libcuda):
    code = (
        "import ctypes\nfrom dist_tests.harness import cuda_driver as d\n"
        "print(d.driver_state().state)\n"
        f"lib = ctypes.CDLL({libcuda!r})\nprint(d.driver_state().state, d.driver_state().fork_safe)\n"
        "lib.cuInit(0)\nprint(d.driver_state().state, d.driver_state().fork_safe)\n"
    )
    run = subprocess.run([python, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["not loaded", "loaded, not initialised True", "initialised False"]


def test_a_server_with_the_driver_loaded_but_not_initialised_forks_every_rank(python, tmp_path, libcuda):
    run = run_probe(python, tmp_path, PROBE_LIBCUDA=libcuda, PROBE_LIBCUDA_INIT="0")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [r["from_forkserver"] for r in rank_reports(tmp_path)] == [True, True]
    assert "forkserver cannot be used" not in run.stderr and FALLBACK not in run.stderr


def test_a_server_that_initialised_the_driver_is_not_used_and_the_run_says_so_once(python, tmp_path, libcuda):
    xml = tmp_path / "test.xml"
    run = run_probe(python, tmp_path, PROBE_LIBCUDA=libcuda, PROBE_LIBCUDA_INIT="1", XML_OUTPUT_FILE=str(xml))
    assert run.returncode == 0, run.stdout + run.stderr
    assert [r["from_forkserver"] for r in rank_reports(tmp_path)] == [False, False]
    warning = f"the forkserver cannot be used: the CUDA driver ({libcuda}) is initialised in the forkserver"
    assert run.stderr.count(warning) == 1
    assert "1 passed, 0 failed" in run.stderr and FALLBACK in run.stderr
    assert (f"start method: spawn (fell back from the forkserver: the CUDA driver ({libcuda}) is initialised"
            in run.stderr)
    # The report lists the shard's fallback, from the XML's property.
    events = tmp_path / "events.json"
    lines = [result_event("//dist_tests:gloo_2", 1, "PASSED", xml), summary_event("//dist_tests:gloo_2", "PASSED", 1),
             {"id": {"buildFinished": {}}, "finished": {}}]
    write(events, "\n".join(json.dumps(line) for line in lines) + "\n")
    report = subprocess.run([python, str(ROOT / "tools/results/report.py"), "--matrix", "gloo_2:gloo:2:cpu", "--events",
                             str(events), "--testlogs", str(tmp_path / "none"), "--out", str(tmp_path / "report")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stdout + report.stderr
    assert ("~ //dist_tests:gloo_2 shard 1: ranks by spawn (fell back from the forkserver: the CUDA driver"
            in report.stdout)
    assert "## Start-method fallbacks" in (tmp_path / "report" / "report.md").read_text()


def test_asking_for_the_forkserver_makes_an_unclean_server_an_error_before_any_rank(python, tmp_path, libcuda):
    started = time.monotonic()
    run = run_probe(python, tmp_path, PROBE_LIBCUDA=libcuda, PROBE_LIBCUDA_INIT="1",
                    DIST_TESTS_START_METHOD="forkserver")
    assert run.returncode == 3, run.stdout + run.stderr
    assert (f"DIST_TESTS_START_METHOD=forkserver, but the CUDA driver ({libcuda}) is initialised in the forkserver"
            in run.stderr)
    assert not list(tmp_path.glob("rank*.json")), "no rank may run"
    assert time.monotonic() - started < 120


def test_a_rank_in_a_bad_fork_ends_before_its_test_and_the_test_reruns_with_spawn(python, tmp_path):
    run = run_probe(python, tmp_path, PROBE_POISONED_FORKSERVER="1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "was forked from a forkserver that had initialised CUDA (torch 2.13.0" in run.stderr
    assert run.stderr.count("the forkserver cannot be used: rank ") == 1
    assert "1 passed, 0 failed" in run.stderr and FALLBACK in run.stderr
    # The test body ran once, in spawned ranks only.
    assert [r["from_forkserver"] for r in rank_reports(tmp_path)] == [False, False]


def test_with_the_forkserver_asked_for_a_bad_fork_fails_the_test_saying_why(python, tmp_path):
    run = run_probe(python, tmp_path, PROBE_POISONED_FORKSERVER="1", DIST_TESTS_START_METHOD="forkserver")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "found itself in a bad fork" in run.stderr + run.stdout
    assert "DIST_TESTS_START_METHOD=forkserver makes that an error" in run.stderr + run.stdout
    assert not list(tmp_path.glob("rank*.json")), "no test body may run in such a rank"


def test_a_preload_module_that_fails_to_import_stops_the_run_naming_it(python, tmp_path):
    run = run_probe(python, tmp_path, PROBE_PRELOAD="no_such_preload_module")
    assert run.returncode == 3, run.stdout + run.stderr
    assert ("the forkserver could not import its preload module(s): no_such_preload_module: ModuleNotFoundError"
            in run.stderr)
    assert "DIST_TESTS_START_METHOD=spawn" in run.stderr
    assert not list(pathlib.Path(tmp_path).glob("rank*.json"))


def test_a_parent_that_initialised_the_driver_gets_a_fresh_clean_server_not_its_fork(python, tmp_path, libcuda):
    # Its fork would not be clean; a fresh server is (it never maps the driver), so ranks still fork.
    run = run_probe(python, tmp_path, PROBE_PARENT_PRELOADS="1", PROBE_PARENT_LIBCUDA=libcuda)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [(r["from_forkserver"], r["server_is_parents_fork"]) for r in rank_reports(tmp_path)] == [(True, False)] * 2
    assert "forkserver cannot be used" not in run.stderr and FALLBACK not in run.stderr
