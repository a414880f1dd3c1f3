"""Bazel's test protocol on real runs: --test_filter, JUnit XML, sharding, repro lines."""

import pytest

from conftest import all_cases, bazel, read_cases, shard_xmls, testlogs

TARGET = "//dist_tests:gloo_2"
# Nine real tests: some pass, some skip (they need CUDA or another world size).
PATTERN = "*test_all_reduce_sum*"


def test_a_test_name_selects_that_test_alone():
    run = bazel("test", TARGET, "--test_filter=test_all_reduce_sum", "--nocache_test_results")
    assert run.returncode == 0, run.output
    cases = all_cases(TARGET)
    assert [(c.name, c.outcome) for c in cases] == [("test_all_reduce_sum", "passed")]


def test_class_dot_name_works_too():
    run = bazel("test", TARGET, "--test_filter=TestDistBackendWithSpawn.test_broadcast", "--nocache_test_results")
    assert run.returncode == 0, run.output
    assert [c.name for c in all_cases(TARGET)] == ["test_broadcast"]


@pytest.fixture(scope="module")
def sharded_run():
    run = bazel("test", TARGET, f"--test_filter={PATTERN}", "--nocache_test_results")
    assert run.returncode == 0, run.output
    return {xml.parent.name: read_cases(xml) for xml in shard_xmls(TARGET)}


def test_xml_has_one_testcase_per_test_and_skip_reasons(sharded_run):
    cases = [c for shard in sharded_run.values() for c in shard]
    assert len(cases) == len({c.name for c in cases}) >= 5
    assert {c.outcome for c in cases} == {"passed", "skipped"}
    for case in cases:
        if case.outcome == "skipped":
            assert case.message, f"{case.name} is skipped without a reason"


def test_shards_are_disjoint_and_cover_the_unsharded_run(sharded_run):
    assert len(sharded_run) == 4
    names = [c.name for shard in sharded_run.values() for c in shard]
    assert len(names) == len(set(names))
    run = bazel("test", TARGET, f"--test_filter={PATTERN}", "--test_sharding_strategy=disabled", "--nocache_test_results")
    assert run.returncode == 0, run.output
    unsharded = {c.name for c in read_cases(testlogs(TARGET) / "test.xml")}
    assert set(names) == unsharded


def test_a_filter_that_matches_nothing_fails():
    run = bazel("test", TARGET, "--test_filter=test_no_such_test_anywhere", "--nocache_test_results")
    assert run.returncode != 0
    log = (testlogs(TARGET) / "shard_1_of_4" / "test.log").read_text()
    assert "matches --test_filter" in log


def test_a_failing_test_prints_the_command_that_reruns_it():
    run = bazel(
        "test", TARGET, "--test_filter=test_all_reduce_sum", "--test_env=DIST_TESTS_FAULT=raise:1:test_all_reduce_sum",
        "--nocache_test_results",
    )
    assert run.returncode != 0
    assert "Reproduce alone: tools/bazel test //dist_tests:gloo_2 --test_filter=test_all_reduce_sum" in run.output
    failed = [c for c in all_cases(TARGET) if c.outcome == "failed"]
    assert [c.name for c in failed] == ["test_all_reduce_sum"]


def test_rank_logs_of_a_failing_test_are_kept_in_undeclared_outputs():
    import zipfile

    bazel(
        "test", TARGET, "--test_filter=test_all_reduce_sum", "--test_env=DIST_TESTS_FAULT=raise:1:test_all_reduce_sum",
        "--nocache_test_results",
    )
    zips = list(testlogs(TARGET).glob("shard_*/test.outputs/outputs.zip"))
    names = [n for z in zips for n in zipfile.ZipFile(z).namelist()]
    assert "rank_logs/test_all_reduce_sum/rank1.log" in names
    assert "rank_logs/test_all_reduce_sum/rank0.log" in names
