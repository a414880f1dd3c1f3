"""The matrix as Bazel sees it: one py_test per backend and world size, env, tags, suites."""

import re

import pytest

from conftest import bazel

EXPECTED = {
    "gloo_2": ("gloo", 2, False),
    "gloo_3": ("gloo", 3, False),
    "gloo_4": ("gloo", 4, False),
    "nccl_2": ("nccl", 2, True),
    "nccl_4": ("nccl", 4, True),
    "ucc_2": ("ucc", 2, True),
}


@pytest.fixture(scope="module")
def rules():
    run = bazel("query", "--output=build", 'kind("py_test", //dist_tests:all)')
    assert run.returncode == 0, run.output
    blocks = {}
    for block in run.output.split("\npy_test(")[1:]:
        name = re.search(r'name = "(\w+)"', block).group(1)
        blocks[name] = block
    return blocks


def test_one_target_per_backend_and_world_size(rules):
    assert set(rules) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_env_and_tags(rules, name):
    backend, world_size, gpu = EXPECTED[name]
    block = rules[name]
    assert f'"BACKEND": "{backend}"' in block
    assert f'"WORLD_SIZE": "{world_size}"' in block
    tags = re.search(r"tags = \[(.*?)\]", block, re.S).group(1)
    assert f'"{backend}"' in tags
    assert f'"world_size_{world_size}"' in tags
    if gpu:
        assert '"gpu"' in tags and '"exclusive"' in tags
    else:
        assert '"gpu"' not in tags and '"exclusive"' not in tags
        assert '"block-network"' in tags and f'"cpu:{world_size}"' in tags
    assert re.search(r"shard_count = \d+", block)


@pytest.mark.parametrize(
    "suite, members",
    [("gloo", {"gloo_2", "gloo_3", "gloo_4"}), ("gpu", {"nccl_2", "nccl_4", "ucc_2"}), ("cpu", {"gloo_2", "gloo_3", "gloo_4"})],
)
def test_suites(suite, members):
    run = bazel("query", f"tests(//dist_tests:{suite})")
    assert run.returncode == 0, run.output
    found = {line.split(":")[1] for line in run.output.splitlines() if line.startswith("//dist_tests:")}
    assert found == members


def test_tag_filter_excludes_gpu_targets():
    run = bazel("query", 'attr("tags", "\\bgpu\\b", tests(//dist_tests:all))')
    found = {line.split(":")[1] for line in run.output.splitlines() if line.startswith("//dist_tests:")}
    assert found == {"nccl_2", "nccl_4", "ucc_2"}
