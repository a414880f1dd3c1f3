"""A shard whose Bazel timeout runs out never passes for the tests it did not run, and a
per-test timeout cut below torch's own says so in that test's failure."""

from conftest import all_cases, bazel, results, shard_log

TARGET = "//dist_tests:gloo_2"


def test_tests_left_without_time_fail_the_shard_and_say_what_to_raise():
    # The first test hangs: its timeout is cut to what is left of the shard's 60 s, so once
    # it has timed out too little is left for the second one, whatever the machine's load.
    run = bazel(
        "test", TARGET, "--test_filter=test_all_reduce_sum test_broadcast", "--test_sharding_strategy=disabled",
        "--nocache_test_results", "--test_timeout=60", "--test_env=DIST_TESTS_FAULT=hang:1:test_all_reduce_sum",
    )
    assert run.returncode != 0
    assert results(TARGET).status == "FAILED"
    cases = {c.name: c for c in all_cases(TARGET)}

    hung = cases["test_all_reduce_sum"]
    assert hung.outcome == "failed"
    assert "torch allows this test 300 s; its timeout was cut" in hung.message, hung.message
    assert "raise shard_count or timeout for //dist_tests:gloo_2" in hung.message

    not_run = cases["test_broadcast"]
    assert not_run.outcome == "not run", not_run
    assert "raise shard_count or timeout for //dist_tests:gloo_2" in not_run.message

    log = shard_log(TARGET)
    assert "1 test(s) did not run: this shard's Bazel timeout ran out" in log
    assert "//dist_tests:gloo_2: 0 passed, 1 failed, 0 skipped, 0 known failures, 1 did not run" in log
