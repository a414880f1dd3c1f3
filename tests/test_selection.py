"""What a --test_filter selects (dist_tests/harness/selection.py), in pure Python: no Bazel, no torch.

The real runs of a filter are in tests/test_protocol.py.
"""

import unittest

import pytest

from dist_tests.harness import runner, selection

CLASS = selection.SUITE_CLASS
NAMES = {
    "test_all_reduce_sum", "test_all_reduce_sum_cuda", "test_all_reduce_sum_cuda_async", "test_all_reduce_max",
    "test_barrier", "test_barrier_timeout", "test_broadcast", "test_send_recv",
}


def selected(test_filter: str) -> set[str]:
    patterns = selection.exact_patterns(test_filter, NAMES, CLASS)
    return {n for n in NAMES if selection.count_selected(patterns, {n}, "__main__", CLASS)}


def test_words_are_or_ed_and_a_test_name_selects_that_test_only():
    assert selected("test_barrier test_broadcast") == {"test_barrier", "test_broadcast"}
    assert selected("barrier") == {"test_barrier", "test_barrier_timeout"}


def test_a_minus_word_excludes_the_tests_it_matches():
    assert selected("*all_reduce* -cuda") == {"test_all_reduce_sum", "test_all_reduce_max"}


def test_excluding_a_test_name_removes_that_test_only():
    assert selected("*all_reduce* -test_all_reduce_sum_cuda") == {
        "test_all_reduce_sum", "test_all_reduce_sum_cuda_async", "test_all_reduce_max"}
    assert selected(f"barrier -{CLASS}.test_barrier") == {"test_barrier_timeout"}


def test_a_filter_of_exclusions_only_selects_every_other_test():
    assert selected("-test_barrier -*send*") == NAMES - {"test_barrier", "test_send_recv"}
    assert selection.exact_patterns("-test_barrier", NAMES, CLASS).include == []


def test_a_filter_that_excludes_everything_it_selects_selects_nothing():
    patterns = selection.exact_patterns("*all_reduce* -all_reduce", NAMES, CLASS)
    assert selection.count_selected(patterns, NAMES, "__main__", CLASS) == 0


@pytest.mark.parametrize("test_filter", ["-", "*all_reduce* -", "- test_barrier"])
def test_a_bare_minus_is_refused_with_what_to_write(test_filter):
    with pytest.raises(selection.FilterError) as error:
        selection.check_filter(test_filter)
    assert repr(test_filter) in str(error.value) and "-PATTERN" in str(error.value)
    with pytest.raises(selection.FilterError):
        selection.exact_patterns(test_filter, NAMES, CLASS)


def test_the_shard_decision_counts_the_selection_after_exclusions(monkeypatch):
    monkeypatch.setattr(selection, "suite_names_from_source", lambda: NAMES)
    # 8 tests in 4 shards: a share is 2. `test` selects all 8; less the excluded, 2 are left.
    assert not selection.runs_in_first_shard("test", 4)
    assert selection.runs_in_first_shard("test -all_reduce -barrier -send", 4)


def test_the_runs_loader_does_not_load_excluded_tests():
    class Case(unittest.TestCase):
        def test_all_reduce_sum(self):
            pass

        def test_all_reduce_sum_cuda(self):
            pass

        def test_barrier(self):
            pass

    loader = runner._loader(selection.exact_patterns("-test_all_reduce_sum_cuda", set(dir(Case)), "Case"))
    assert list(loader.getTestCaseNames(Case)) == ["test_all_reduce_sum", "test_barrier"]
    loader.testNamePatterns = ["*all_reduce*"]  # the included words reach unittest as -k patterns
    assert list(loader.getTestCaseNames(Case)) == ["test_all_reduce_sum"]
