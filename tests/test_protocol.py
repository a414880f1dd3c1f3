"""Bazel's test protocol on real runs: --test_filter, JUnit XML, sharding, repro lines."""

import pytest

from conftest import all_cases, bazel, results, shard_cases, shard_log

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


def test_a_minus_word_excludes_that_test_and_it_does_not_appear():
    run = bazel("test", TARGET, f"--test_filter={PATTERN} -test_all_reduce_sum_cuda", "--nocache_test_results")
    assert run.returncode == 0, run.output
    names = {c.name for c in all_cases(TARGET)}
    assert "test_all_reduce_sum_cuda" not in names
    # An exact name excludes that test only, not the tests it is a prefix of.
    assert {"test_all_reduce_sum", "test_all_reduce_sum_cuda_async", "test_all_reduce_sum_cuda_complex"} <= names
    assert all("test_all_reduce_sum" in name for name in names)


@pytest.fixture(scope="module")
def full_sharded_run():
    """The whole gloo_2 suite, in its four shards."""
    run = bazel("test", TARGET, "--nocache_test_results")
    assert run.returncode == 0, run.output
    return shard_cases(TARGET)


def test_xml_has_one_testcase_per_test_and_skip_reasons(full_sharded_run):
    cases = [c for shard in full_sharded_run.values() for c in shard]
    assert len(cases) == len({c.name for c in cases}) > 250
    assert {c.outcome for c in cases} == {"passed", "skipped"}
    for case in cases:
        if case.outcome == "skipped":
            assert case.message, f"{case.name} is skipped without a reason"


def test_shards_are_disjoint_and_cover_the_unsharded_run(full_sharded_run):
    assert len(full_sharded_run) == 4
    assert all(len(cases) > 50 for cases in full_sharded_run.values())
    names = [c.name for shard in full_sharded_run.values() for c in shard]
    assert len(names) == len(set(names))
    run = bazel("test", TARGET, "--test_sharding_strategy=disabled", "--nocache_test_results")
    assert run.returncode == 0, run.output
    unsharded = all_cases(TARGET)
    assert set(names) == {c.name for c in unsharded}
    # Same outcome for every test, sharded or not.
    sharded_outcomes = {c.name: c.outcome for shard in full_sharded_run.values() for c in shard}
    assert sharded_outcomes == {c.name: c.outcome for c in unsharded}


def test_a_small_filtered_selection_runs_whole_in_the_first_shard():
    run = bazel("test", TARGET, f"--test_filter={PATTERN}", "--nocache_test_results")
    assert run.returncode == 0, run.output
    per_shard = shard_cases(TARGET)
    assert len(per_shard[1]) >= 5
    assert all(per_shard[i] == [] for i in (2, 3, 4))
    assert "has nothing to run" in shard_log(TARGET, 2)


def test_a_large_filtered_selection_is_sharded_as_usual():
    # 74 tests, more than one shard's share of the suite (285 / 4 shards).
    run = bazel("test", TARGET, "--test_filter=group sparse", "--nocache_test_results")
    assert run.returncode == 0, run.output
    per_shard = shard_cases(TARGET)
    assert sorted(per_shard) == [1, 2, 3, 4]
    assert all(len(cases) >= 15 for cases in per_shard.values()), {i: len(c) for i, c in per_shard.items()}
    names = [c.name for cases in per_shard.values() for c in cases]
    assert len(names) == len(set(names)) > 72
    assert all("group" in name or "sparse" in name for name in names)


def test_k_by_test_arg_selects_like_test_filter():
    run = bazel("test", TARGET, "--test_arg=-k", "--test_arg=test_all_reduce_sum", "--nocache_test_results")
    assert run.returncode == 0, run.output
    # Once, in one shard: not once per shard.
    assert [(c.name, c.outcome) for c in all_cases(TARGET)] == [("test_all_reduce_sum", "passed")]


def test_a_selection_whose_every_test_skips_does_not_pass():
    run = bazel("test", TARGET, "--test_filter=test_all_reduce_sum_cuda", "--nocache_test_results")
    assert run.returncode != 0
    log = shard_log(TARGET)
    assert "was skipped, so this run tested nothing" in log
    run = bazel("test", TARGET, "--test_filter=test_all_reduce_sum_cuda", "--test_env=DIST_TESTS_ALLOW_SKIP=1",
                "--nocache_test_results")
    assert run.returncode == 0, run.output


def test_a_filter_that_matches_nothing_fails():
    run = bazel("test", TARGET, "--test_filter=test_no_such_test_anywhere", "--nocache_test_results")
    assert run.returncode != 0
    log = shard_log(TARGET)
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
    zips = results(TARGET).output_zips()
    names = [n for z in zips for n in zipfile.ZipFile(z).namelist()]
    assert "rank_logs/test_all_reduce_sum/rank1.log" in names
    assert "rank_logs/test_all_reduce_sum/rank0.log" in names
