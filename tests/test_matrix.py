"""The matrix as Bazel sees it: one py_test per backend and world size, env, tags, suites."""

import os
import re
import subprocess

import pytest

from conftest import ROOT, bazel, shard_log

EXPECTED = {
    "gloo_2": ("gloo", 2, False),
    "gloo_3": ("gloo", 3, False),
    "gloo_4": ("gloo", 4, False),
    "gloo_gpu_1": ("gloo", 1, True),
    "gloo_gpu_2": ("gloo", 2, True),
    "gloo_gpu_4": ("gloo", 4, True),
    "nccl_1": ("nccl", 1, True),
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
    assert f'"DIST_TESTS_DEVICE": "{"gpu" if gpu else "cpu"}"' in block
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
    [
        ("gloo", {"gloo_2", "gloo_3", "gloo_4", "gloo_gpu_1", "gloo_gpu_2", "gloo_gpu_4"}),
        ("nccl", {"nccl_1", "nccl_2", "nccl_4"}),
        ("gpu", {"gloo_gpu_1", "gloo_gpu_2", "gloo_gpu_4", "nccl_1", "nccl_2", "nccl_4", "ucc_2"}),
        ("cpu", {"gloo_2", "gloo_3", "gloo_4"}),
    ],
)
def test_suites(suite, members):
    run = bazel("query", f"tests(//dist_tests:{suite})")
    assert run.returncode == 0, run.output
    found = {line.split(":")[1] for line in run.output.splitlines() if line.startswith("//dist_tests:")}
    assert found == members


def test_tag_filter_excludes_gpu_targets():
    run = bazel("query", 'attr("tags", "\\bgpu\\b", tests(//dist_tests:all))')
    found = {line.split(":")[1] for line in run.output.splitlines() if line.startswith("//dist_tests:")}
    assert found == {"gloo_gpu_1", "gloo_gpu_2", "gloo_gpu_4", "nccl_1", "nccl_2", "nccl_4", "ucc_2"}


# --- //dist_tests:host: the targets this host can run, chosen when Bazel loads (tools/gpu/host.bzl) ---

def host_suite(*flags: str) -> tuple[int, set[str], str]:
    """`bazel query` of the host suite's tests with flags (--repo_env=...): exit code, target names, output."""
    run = bazel("query", *flags, "tests(//dist_tests:host)")
    found = {line.split(":")[1] for line in run.output.splitlines() if line.startswith("//dist_tests:")}
    return run.returncode, found, run.output


def runs_on(gpus: int, ucc: bool = False) -> set[str]:
    """The matrix's targets a host of that many GPUs can run: every CPU one, GPU ones of at most that many ranks."""
    return {name for name, (backend, world_size, gpu) in EXPECTED.items()
            if (not gpu or world_size <= gpus) and (ucc or backend != "ucc")}


def test_host_suite_here_holds_what_this_hosts_gpus_can_run():
    # This host's GPUs as the harness counts them: on a host without the NVIDIA driver, none, so the CPU targets.
    from dist_tests.harness import gpu_leases

    code, found, output = host_suite()
    assert code == 0, output
    assert found == runs_on(len(gpu_leases.driver_gpus() or []))
    assert {"gloo_2", "gloo_3", "gloo_4"} <= found and "ucc_2" not in found


@pytest.mark.parametrize("gpus, gpu_targets", [
    (1, {"gloo_gpu_1", "nccl_1"}),
    (2, {"gloo_gpu_1", "nccl_1", "gloo_gpu_2", "nccl_2"}),
    (4, {"gloo_gpu_1", "nccl_1", "gloo_gpu_2", "nccl_2", "gloo_gpu_4", "nccl_4"}),
])
def test_host_suite_on_stand_in_gpus_holds_the_gpu_targets_of_at_most_that_many_ranks_and_never_ucc(gpus, gpu_targets):
    code, found, output = host_suite(f"--repo_env=DIST_TESTS_HOST_GPUS={gpus}")
    assert code == 0, output
    assert found == {"gloo_2", "gloo_3", "gloo_4"} | gpu_targets == runs_on(gpus)


def test_host_suite_holds_ucc_when_told_the_torch_has_it():
    code, found, output = host_suite("--repo_env=DIST_TESTS_HOST_GPUS=2", "--repo_env=DIST_TESTS_TORCH_HAS_UCC=1")
    assert code == 0, output
    assert found == runs_on(2, ucc=True) and "ucc_2" in found


def test_host_suite_counts_the_gpus_a_run_would_lease():
    # DIST_TESTS_GPUS, as the harness takes it: on a host without the driver, stand-ins taken as given.
    from dist_tests.harness import gpu_leases

    if gpu_leases.driver_gpus() is not None:
        pytest.skip("this host's driver shows GPUs: DIST_TESTS_GPUS must name some of them")
    code, found, output = host_suite("--repo_env=DIST_TESTS_GPUS=4,5")
    assert code == 0, output
    assert found == runs_on(2)


@pytest.mark.parametrize("setting, message", [
    ("DIST_TESTS_HOST_GPUS=two", "DIST_TESTS_HOST_GPUS='two' is not a number of GPUs: give a count"),
    ("DIST_TESTS_TORCH_HAS_UCC=yes", "DIST_TESTS_TORCH_HAS_UCC='yes': use 1"),
    ("DIST_TESTS_GPUS=all", "DIST_TESTS_GPUS='all' is not a list of GPU indices"),
])
def test_host_suite_refuses_a_bad_setting_saying_what_to_give(setting, message):
    code, _, output = host_suite(f"--repo_env={setting}")
    assert code != 0
    assert f"//dist_tests:host: {message}" in output


UCC_SETTINGS = {"UCX_TLS": "tcp,cuda", "UCC_TLS": "nccl,ucp,cuda", "UCC_TL_UCP_TUNE": "cuda:0",
                "UCC_EC_CUDA_USE_COOPERATIVE_LAUNCH": "n"}


def test_ucc_runs_with_upstreams_last_ucc_settings(rules):
    for name, value in UCC_SETTINGS.items():
        assert f'"{name}": "{value}"' in rules["ucc_2"]
    assert "UCX_TLS" not in rules["nccl_2"] + rules["gloo_2"]


def harness_settings(python, changes: dict[str, str], table: str | None = None) -> subprocess.CompletedProcess:
    """Loads the harness's settings by hand (no Bazel), printing backend, device and the backends it knows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_", "BACKEND", "WORLD_SIZE"))}
    env.update({"WORLD_SIZE": "2", "PYTHONPATH": str(ROOT), **changes})
    code = (
        "from dist_tests.harness import matrix, settings\n"
        + (f"matrix.TABLE = {table!r}\n" if table else "")
        + "s = settings.load()\nprint(s.backend, s.device, ','.join(matrix.device_of_backends(matrix.TABLE)), s.target)"
    )
    return subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend, device", [("gloo", "cpu"), ("nccl", "gpu"), ("ucc", "gpu")])
def test_by_hand_the_device_comes_from_the_matrix_table(python, backend, device):
    run = harness_settings(python, {"BACKEND": backend})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == [backend, device]


@pytest.fixture(scope="module")
def gpu_packages():
    """The gpu class's packages in this checkout's output base, which a by-hand run as gpu needs (the interpreter's
    wrapper takes them from there): fetched here, so that the test does not depend on an earlier module's build
    (from the environment cache, or a download of several GB on a machine that never made them)."""
    fetch = bazel("fetch", "@dist_python_gpu//:site_packages", timeout=1800)
    assert fetch.returncode == 0, fetch.output[-3000:]


@pytest.mark.parametrize("world_size, target", [("2", "gloo_gpu_2"), ("4", "gloo_gpu_4")])
def test_by_hand_a_backend_on_both_device_classes_runs_as_its_first_line_unless_told(python, gpu_packages, world_size,
                                                                                      target):
    run = harness_settings(python, {"BACKEND": "gloo", "WORLD_SIZE": world_size})
    assert run.stdout.split()[:2] == ["gloo", "cpu"], run.stderr
    assert run.stdout.split()[3] == f"//dist_tests:gloo_{world_size}"
    run = harness_settings(python, {"BACKEND": "gloo", "WORLD_SIZE": world_size, "DIST_TESTS_DEVICE": "gpu"})
    assert run.stdout.split()[:2] == ["gloo", "gpu"], run.stderr
    assert run.stdout.split()[3] == f"//dist_tests:{target}"


def test_by_hand_ucc_gets_its_lines_settings_and_a_users_value_wins(python):
    code = ("from dist_tests.harness import runner; import os; runner.configure(); "
            f"print(' '.join(os.environ[n] for n in {sorted(UCC_SETTINGS)!r}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_", "UCC_", "UCX_"))}
    env.update(BACKEND="ucc", WORLD_SIZE="2", PYTHONPATH=str(ROOT), UCC_TLS="ucp")
    run = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [UCC_SETTINGS[n] if n != "UCC_TLS" else "ucp" for n in sorted(UCC_SETTINGS)]
    assert "UCC_TLS=ucp (given)" in run.stderr


def test_by_hand_the_device_can_be_given(python):
    run = harness_settings(python, {"BACKEND": "nccl", "DIST_TESTS_DEVICE": "cpu"})
    assert run.stdout.split()[:2] == ["nccl", "cpu"], run.stderr


def test_a_new_backend_is_one_line_in_the_table(python, tmp_path):
    table = tmp_path / "dist_tests.bzl"
    text = (ROOT / "tools" / "dist_tests.bzl").read_text()
    line = '    struct(backend = "nccl", world_size = 4, device = "gpu", shard_count = 2, timeout = "long"),\n'
    assert line in text
    new = '    struct(backend = "xccl", world_size = 2, device = "gpu", shard_count = 2, timeout = "long"),\n'
    table.write_text(text.replace(line, line + new))
    run = harness_settings(python, {"BACKEND": "xccl"}, table=str(table))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["xccl", "gpu", "gloo,nccl,xccl,ucc", "//dist_tests:xccl_2"]


def test_a_table_the_harness_cannot_read_is_a_clear_error(python, tmp_path):
    table = tmp_path / "dist_tests.bzl"
    table.write_text("DIST_TEST_MATRIX = _lines_from_elsewhere()\n")
    run = harness_settings(python, {"BACKEND": "gloo"}, table=str(table))
    assert run.returncode != 0
    assert f"cannot read the target matrix in {table}" in run.stderr


def test_ucc_2_under_bazel_says_its_settings_and_a_users_test_env_wins():
    # This torch has no UCC, so the target stops at once; what it says before that is the point.
    run = bazel("test", "//dist_tests:ucc_2", "--test_filter=test_all_reduce_sum", "--nocache_test_results",
                "--test_env=UCC_TLS=ucp")
    assert run.returncode != 0
    log = shard_log("//dist_tests:ucc_2")
    assert ("//dist_tests:ucc_2 runs with its matrix line's settings: UCC_EC_CUDA_USE_COOPERATIVE_LAUNCH=n "
            "UCC_TLS=ucp (given) UCC_TL_UCP_TUNE=cuda:0 UCX_TLS=tcp,cuda") in log
    assert "has no ucc backend" in log


def test_a_target_name_finds_its_line_not_a_split_at_its_last_underscore():
    # What tools/upstream/benchmark and tools/results/report.py look a --target or bare --matrix name up with.
    from dist_tests.harness import matrix

    line = matrix.line_named("gloo_gpu_2")
    assert (line["backend"], line["world_size"], line["device"]) == ("gloo", 2, "gpu")
    assert matrix.line_named("gloo_2")["device"] == "cpu"
    assert matrix.line_named("gloo_gpu_3") is None
