"""Hung ranks, started as the harness starts them (tests/probes/hang_probe.py, no Bazel): the flight recorder's
line names the right rank, collective and sequence number; the dumps are kept where torch's analyzer reads them;
a rank holding the GIL still gives its stacks (faulthandler by signal); a dump that cannot be written, a rank
that dies while dumping and a run with the recorder off still fail with their cause and stacks."""

import os
import pickle
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from tools.results import testlogs  # noqa: E402

PROBE = str(ROOT / "tests" / "probes" / "hang_probe.py")
ANALYZER = ["-m", "torch.distributed.flight_recorder.fr_trace"]


def run_probe(python: str, out, world_size: int, tests: list[str], **extra: str) -> dict[str, str]:
    """Runs the probe's tests in one process; returns each test's failure message (empty: it passed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "TESTBRIDGE", "TORCH_"))}
    env.update(BACKEND="gloo", WORLD_SIZE=str(world_size), DIST_TESTS_PER_TEST_TIMEOUT="5",
               TEST_UNDECLARED_OUTPUTS_DIR=str(out / "outputs"), XML_OUTPUT_FILE=str(out / "test.xml"), **extra)
    args = [a for t in tests for a in ("-k", t)]
    run = subprocess.run([python, PROBE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (out / "test.xml").exists(), run.stdout + run.stderr
    return {case.name: case.message for case in testlogs.read_cases(out / "test.xml")}


def analyze(python: str, folder) -> subprocess.CompletedProcess:
    return subprocess.run([python, *ANALYZER, str(folder)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_ranks(python, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    return out, run_probe(python, out, 2, ["test_mismatch", "test_holds_gil", "test_dies_while_dumping"])


def test_two_ranks_calling_different_collectives_at_the_same_step(python, two_ranks):
    out, messages = two_ranks
    message = messages["test_mismatch"]
    assert message.splitlines()[0] == (
        "flight recorder: at collective 2 of the default group rank 1 called all_gather where rank 0 called "
        "all_reduce (gloo:all_gather, 1 tensor of 4 floats against gloo:all_reduce, 1 tensor of 4 floats); "
        "ranks 0 and 1 are in collective 2 of the default group"), message
    assert "timed out after 5 s" in message
    folder = out / "outputs" / "flight_recorder" / "test_mismatch"
    assert sorted(os.listdir(folder)) == ["rank0", "rank1"]
    analysis = analyze(python, folder)
    assert "COLLECTIVE_TYPE_MISMATCH" in analysis.stdout + analysis.stderr, analysis.stdout + analysis.stderr


def test_a_rank_holding_the_gil_gives_its_stacks_by_signal(two_ranks):
    message = two_ranks[1]["test_holds_gil"]
    assert message.startswith("flight recorder: rank 0 is in collective 2 (gloo:all_reduce, 1 tensor of 4 floats) "
                              "of the default group; rank 1 "), message
    assert "--- rank 1 was at (by signal: it did not answer on its pipe, as when it holds the GIL):" in message
    assert "in test_holds_gil" in message
    assert "--- rank 0 was at:" in message


def test_a_rank_that_dies_while_dumping(two_ranks):
    message = two_ranks[1]["test_dies_while_dumping"]
    assert message.splitlines()[:2] == [
        "flight recorder: rank 0 is in collective 2 (gloo:all_reduce, 1 tensor of 4 floats) of the default group; "
        "rank 1 left no record (it died while dumping it)", "timed out after 5 s (ranks still running: 0, 1)"]
    assert "--- rank 0 was at:" in message


def test_three_ranks_one_never_reached_the_collective(python, tmp_path):
    messages = run_probe(python, tmp_path, 3, ["test_hang"])
    message = messages["test_hang"]
    assert message.splitlines()[0] == (
        "flight recorder: ranks 0 and 1 are in collective 2 (gloo:all_gather, 1 tensor of 4 floats) of the default "
        "group; rank 2 never reached it (its last collective is 1, gloo:all_reduce)"), message
    # Stack paths are shown from site-packages/ or the workspace on, their prefixes once on top.
    assert "paths in the stacks below are shortened: the workspace's files under " in message
    assert 'File "tests/probes/hang_probe.py"' in message and 'File "site-packages/torch/' in message
    folder = tmp_path / "outputs" / "flight_recorder" / "test_hang"
    kept = pickle.loads((folder / "rank2").read_bytes())
    assert [e["profiling_name"] for e in kept["entries"]] == ["gloo:all_reduce"]
    assert kept["pg_config"]["0"]["ranks"] == "[0, 1, 2]"  # repaired for the analyzer
    analysis = analyze(python, folder)
    assert "missing ranks: {2}" in analysis.stdout + analysis.stderr, analysis.stdout + analysis.stderr


def test_a_dump_that_cannot_be_written_still_fails_with_its_stacks(python, tmp_path):
    (tmp_path / "outputs" / "flight_recorder").mkdir(parents=True)
    (tmp_path / "outputs" / "flight_recorder" / "test_hang").write_text("a file where the folder would go")
    message = run_probe(python, tmp_path, 2, ["test_hang"])["test_hang"]
    assert message.startswith("flight recorder: no rank left a record; rank 0 left no record (its dump was not "
                              "kept: it could not be written to "), message
    assert "flight recorder dumps: none was kept" in message
    assert "timed out after 5 s" in message and "--- rank 0 was at:" in message and "--- rank 1 was at:" in message


@pytest.mark.parametrize("setting", [{"DIST_TESTS_FLIGHT_RECORDER": "0"}, {"TORCH_FR_BUFFER_SIZE": "-1"}])
def test_recorder_off_still_gives_the_stacks_and_a_bad_size_stops_the_run(python, tmp_path, setting):
    if "TORCH_FR_BUFFER_SIZE" in setting:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_"))}
        run = subprocess.run([python, PROBE], env={**env, "BACKEND": "gloo", "WORLD_SIZE": "2", **setting},
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 3 and "TORCH_FR_BUFFER_SIZE='-1' must be a non-negative integer" in run.stderr
        return
    message = run_probe(python, tmp_path, 2, ["test_hang"], **setting)["test_hang"]
    assert message.startswith("timed out after 5 s"), message
    assert "(torch's flight recorder was off: DIST_TESTS_FLIGHT_RECORDER=0" in message
    assert "--- rank 0 was at:" in message and "--- rank 1 was at:" in message
    assert not (tmp_path / "outputs" / "flight_recorder").exists()
