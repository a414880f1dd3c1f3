"""Reading flight recorder dumps (dist_tests/harness/flight_records.py) on synthetic dumps shaped as
torch 2.13's gloo writes them: the diagnosis line, the repair the analyzer needs, bad settings, stacks."""

import pickle
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from dist_tests.harness import flight_records as fr  # noqa: E402

DEFAULT = ("0", "default_pg")


def entry(seq: int, op: str, sizes=((4,),), dtype="Float", group=DEFAULT) -> dict:
    return {"collective_seq_id": seq, "p2p_seq_id": 0, "profiling_name": f"gloo:{op}", "process_group": group,
            "input_sizes": [list(s) for s in sizes], "input_dtypes": [dtype] * len(sizes),
            "output_sizes": [list(s) for s in sizes], "output_dtypes": [dtype] * len(sizes),
            "state": "scheduled", "is_p2p": False}


def dump(*entries: dict, completed: int | None = None, ranks="[0, 1]") -> dict:
    last = max((e["collective_seq_id"] for e in entries), default=0)
    return {"version": "2.10", "entries": list(entries),
            "pg_config": {"": {"name": "", "desc": "", "ranks": ranks}},
            "pg_status": {"0": {"last_enqueued_collective": last, "last_started_collective": -1,
                                "last_completed_collective": last if completed is None else completed}}}


def test_two_ranks_in_a_collective_that_a_third_never_reached():
    reached = dump(entry(1, "all_reduce"), entry(2, "all_reduce"), entry(3, "broadcast"), completed=2)
    behind = dump(entry(1, "all_reduce"), entry(2, "all_reduce"))
    line = fr.diagnose({0: reached, 1: reached, 2: behind}, 3, {})
    assert line == ("flight recorder: ranks 0 and 1 are in collective 3 (gloo:broadcast, 1 tensor of 4 floats) of "
                    "the default group; rank 2 never reached it (its last collective is 2, gloo:all_reduce)")


def test_a_rank_that_recorded_nothing_and_one_that_left_no_record():
    line = fr.diagnose({0: dump(entry(1, "all_reduce"), completed=0), 1: dump()}, 3, {2: "killed by SIGKILL"})
    assert line == ("flight recorder: rank 0 is in collective 1 (gloo:all_reduce, 1 tensor of 4 floats) of the "
                    "default group; rank 1 never reached it (it recorded no collective in that group); "
                    "rank 2 left no record (killed by SIGKILL)")


def test_different_collectives_at_the_same_step_are_named_first():
    line = fr.diagnose({0: dump(entry(1, "all_reduce"), entry(2, "all_reduce"), completed=1),
                        1: dump(entry(1, "all_reduce"), entry(2, "all_gather", dtype="Long"), completed=1)}, 2, {})
    assert line.startswith("flight recorder: at collective 2 of the default group rank 1 called all_gather where "
                           "rank 0 called all_reduce (gloo:all_gather, 1 tensor of 4 int64s against "
                           "gloo:all_reduce, 1 tensor of 4 floats)")
    assert line.endswith("; ranks 0 and 1 are in collective 2 of the default group")


def test_the_same_collective_on_other_sizes():
    line = fr.diagnose({0: dump(entry(1, "all_reduce", sizes=((4,),)), completed=0),
                        1: dump(entry(1, "all_reduce", sizes=((2, 3), (2, 3))), completed=0)}, 2, {})
    assert line.startswith("flight recorder: at collective 1 of the default group (gloo:all_reduce) rank 1 passed "
                           "2 tensors of 6 floats each where rank 0 passed 1 tensor of 4 floats")


def test_every_rank_past_its_last_collective():
    both = dump(entry(1, "all_reduce"), entry(2, "barrier", sizes=()))
    assert fr.diagnose({0: both, 1: both}, 2, {}) == (
        "flight recorder: ranks 0 and 1 completed collective 2 of the default group; none is inside a collective")
    assert fr.diagnose({}, 2, {0: "the recorder is off", 1: "did not answer"}) == (
        "flight recorder: no rank left a record; rank 0 left no record (the recorder is off); "
        "rank 1 left no record (did not answer)")


def test_subgroups_are_named_and_point_to_point_is_left_out():
    sub = ("1", "undefined")
    p2p = {**entry(5, "send"), "is_p2p": True}
    line = fr.diagnose({0: dump(entry(1, "all_reduce", group=sub), p2p), 1: dump()}, 2, {})
    assert line.startswith("flight recorder: rank 0 is in collective 1 (gloo:all_reduce, 1 tensor of 4 floats) of "
                           "group 1; rank 1 never reached it")


def test_repair_gives_the_analyzer_a_configuration_for_each_group(tmp_path):
    original = dump(entry(1, "all_reduce"), ranks="[0, 1, 2]")
    path = tmp_path / "rank0"
    path.write_bytes(pickle.dumps(original))
    fr.load_and_repair(str(path), 3)
    kept = pickle.loads(path.read_bytes())
    assert kept["pg_config"] == {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1, 2]"}}
    assert kept["entries"] == original["entries"]


def test_unreadable_dumps_are_said_and_the_rest_are_read(tmp_path):
    (tmp_path / "rank0").write_bytes(pickle.dumps(dump(entry(1, "all_reduce"), completed=0)))
    (tmp_path / "rank1").write_bytes(b"trunc")
    dumps, unread = fr.read_rank_files(str(tmp_path), 3)
    assert list(dumps) == [0] and "unreadable" in unread[1] and 2 not in unread


@pytest.mark.parametrize("env, expected", [
    ({}, {"TORCH_FR_BUFFER_SIZE": "32"}),
    ({"DIST_TESTS_FLIGHT_RECORDER": "1"}, {"TORCH_FR_BUFFER_SIZE": "32"}),
    ({"DIST_TESTS_FLIGHT_RECORDER": "0"}, None),
    ({"TORCH_FR_BUFFER_SIZE": "2000"}, {}),  # the user's size wins
    ({"TORCH_NCCL_TRACE_BUFFER_SIZE": "8"}, {}),
    ({"TORCH_FR_BUFFER_SIZE": "0"}, None),
])
def test_the_recorder_environment(env, expected):
    assert fr.recorder_environment(env) == expected


@pytest.mark.parametrize("env", [{"TORCH_FR_BUFFER_SIZE": "-5"}, {"TORCH_FR_BUFFER_SIZE": "lots"},
                                 {"TORCH_FR_BUFFER_SIZE": "1.5"}, {"DIST_TESTS_FLIGHT_RECORDER": "yes"}])
def test_bad_recorder_settings_are_refused(env):
    with pytest.raises(fr.RecorderSettingError, match="DIST_TESTS_FLIGHT_RECORDER|non-negative integer"):
        fr.recorder_environment(env)


def test_dump_folders_are_named_for_the_analyzer():
    assert fr.rank_file(fr.dump_folder("/out", "test_x", 1), 2) == "/out/flight_recorder/test_x/rank2"
    assert fr.dump_folder("/out", "test_x", 2) == "/out/flight_recorder/test_x/attempt2"


def test_stack_paths_are_shortened_with_their_prefixes_once_on_top():
    sandbox = "/root/.cache/bazel/_bazel_root/abc/sandbox/linux-sandbox/7/execroot/__main__/bazel-out/k8/bin/" \
              "dist_tests/gloo_2.runfiles"
    stacks = (f'  File "{sandbox}/dist_python_cpu/site-packages/torch/distributed/distributed_c10d.py", line 3 in a\n'
              f'  File "{sandbox}/__main__/dist_tests/harness/faults.py", line 9 in fault\n'
              f'  File "{sandbox}/dist_python/lib/python3.11/threading.py", line 1 in run\n'
              f'  File "{sandbox}/dist_python_cpu/site-packages/torch/x.py", line 4 in b\n')
    short = fr.shorten_paths(stacks, f"{sandbox}/__main__")
    lines = short.splitlines()
    assert lines[0] == (f"paths in the stacks below are shortened: the workspace's files under {sandbox}/__main__/; "
                        f"site-packages/ under {sandbox}/dist_python_cpu/; the standard library under "
                        f"{sandbox}/dist_python/lib/")
    assert lines[1:] == ['  File "site-packages/torch/distributed/distributed_c10d.py", line 3 in a',
                         '  File "dist_tests/harness/faults.py", line 9 in fault',
                         '  File "python3.11/threading.py", line 1 in run',
                         '  File "site-packages/torch/x.py", line 4 in b']
    assert fr.shorten_paths("no paths\n", "/w") == "no paths\n"
