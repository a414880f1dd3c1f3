"""How ranks start and end: a forkserver for every backend that never touches CUDA (its proof
and the fallback to spawn: test_forkserver_proof.py), forked ranks that end like spawned ones,
each rank's share of the cores, and both start methods giving every test the same outcome."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, all_cases, bazel

sys.path.insert(0, str(ROOT))
from dist_tests.harness import settings as settings_lib  # noqa: E402

PROBE = str(ROOT / "tests" / "probes" / "rank_probe.py")


def probe_env(out_dir, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIST_TESTS", "TEST_", "TESTBRIDGE", "PROBE_"))}
    env.pop("OMP_NUM_THREADS", None)
    # With it, C's stdout would be unbuffered and a lost buffer could not be seen.
    env.pop("PYTHONUNBUFFERED", None)
    env.update(BACKEND="gloo", WORLD_SIZE="2", PROBE_OUT=str(out_dir), **extra)
    return env


def run_probe(python, out_dir, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, PROBE], env=probe_env(out_dir, **extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def rank_reports(out_dir) -> list[dict]:
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("backend", ["nccl", "ucc", "gloo"])
def test_every_backend_forks_its_ranks_from_the_forkserver_unless_told(tmp_path, backend):
    env = {"BACKEND": backend, "WORLD_SIZE": "2", "TEST_TMPDIR": str(tmp_path)}
    default = settings_lib.load(env)
    assert (default.start_method, default.start_method_given) == ("forkserver", False)
    given = settings_lib.load({**env, "DIST_TESTS_START_METHOD": "spawn"})
    assert (given.start_method, given.start_method_given) == ("spawn", True)


def test_the_forkserver_preload_calls_no_cuda_entry_point_even_on_a_cuda_build(python, tmp_path):
    # The preload runs in the real forkserver with a CPU torch made to look like a CUDA build
    # on a host with two GPUs; each rank reports the CUDA calls its server made before forking.
    # NUM_PARALLEL_PROCS would make torch's import ask CUDA for its memory: the server runs without it.
    with_harness = tmp_path / "harness"
    with_harness.mkdir()
    run = run_probe(python, with_harness, PROBE_FAKE_CUDA_BUILD="1", NUM_PARALLEL_PROCS="2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [r["preload_cuda_calls"] for r in rank_reports(with_harness)] == [[], []]
    # Control: without the NVML-based check the harness sets, the same preload runs cuInit.
    without = tmp_path / "without"
    without.mkdir()
    run = run_probe(python, without, PROBE_FAKE_CUDA_BUILD="1", PROBE_NVML="0")
    assert run.returncode == 0, run.stdout + run.stderr
    for report in rank_reports(without):
        assert "torch._C._cuda_getDeviceCount" in report["preload_cuda_calls"]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_ranks_end_like_spawned_ranks_and_get_their_share_of_the_cores(python, tmp_path, method):
    # The target reserved 4 cores for 2 ranks: 2 threads each.
    run = run_probe(python, tmp_path, DIST_TESTS_START_METHOD=method, DIST_TESTS_CPUS="4")
    assert run.returncode == 0, run.stdout + run.stderr
    for rank, report in enumerate(rank_reports(tmp_path)):
        assert (report["threads"], report["omp_num_threads"]) == (2, "2")
        assert (tmp_path / f"atexit.rank{rank}").read_text() == "ran\n", "the rank's atexit handler did not run"
        assert f"c-stdio-tail-rank{rank}" in run.stdout, "the rank's C stdio buffer was not flushed"


def test_a_users_omp_num_threads_wins(python, tmp_path):
    run = run_probe(python, tmp_path, DIST_TESTS_CPUS="4", OMP_NUM_THREADS="1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [(r["threads"], r["omp_num_threads"]) for r in rank_reports(tmp_path)] == [(1, "1"), (1, "1")]


def test_cpu_targets_pass_the_cores_they_reserve():
    gloo, nccl = (bazel("query", "--output=build", f"//dist_tests:{name}").output for name in ("gloo_4", "nccl_2"))
    assert '"DIST_TESTS_CPUS": "4"' in gloo and '"cpu:4"' in gloo
    assert "DIST_TESTS_CPUS" not in nccl


# A dozen representative tests: collectives, groups, objects, point-to-point, barriers with
# timeouts, subgroups, DDP, one that reads the environment, one whose rank crashes on purpose,
# and two that skip (CUDA).
PARITY_TESTS = (
    "test_all_reduce_sum test_broadcast_group test_all_gather_object_default_pg test_send_recv_any_source "
    "test_batch_isend_irecv_gloo test_barrier_timeout_global test_new_subgroups test_DistributedDataParallelCPU "
    "test_dump_DDP_relevant_env_vars test_ddp_has_finalized test_monitored_barrier_gloo test_all_reduce_sum_cuda "
    "test_broadcast_cuda"
)


def test_forkserver_and_spawn_give_every_test_the_same_outcome():
    outcomes = {}
    for method in ("spawn", "forkserver"):
        run = bazel("test", "//dist_tests:gloo_2", f"--test_filter={PARITY_TESTS}", "--nocache_test_results",
                    f"--test_env=DIST_TESTS_START_METHOD={method}")
        assert run.returncode == 0, run.output
        outcomes[method] = {c.name: (c.outcome, c.message) for c in all_cases("//dist_tests:gloo_2")}
    assert len(outcomes["spawn"]) == len(PARITY_TESTS.split())
    assert {o for o, _ in outcomes["spawn"].values()} == {"passed", "skipped"}
    assert outcomes["forkserver"] == outcomes["spawn"]


def test_a_parent_holding_every_preload_module_forks_itself_into_the_server(python, tmp_path):
    # As the entry point does: the server costs a fork, not a second import of torch and the suite.
    run = run_probe(python, tmp_path, PROBE_PARENT_PRELOADS="1", DIST_TESTS_CPUS="4")
    assert run.returncode == 0, run.stdout + run.stderr
    for rank, report in enumerate(rank_reports(tmp_path)):
        assert (report["from_forkserver"], report["server_is_parents_fork"]) == (True, True)
        # Forked ranks still end like spawned ones, with their share of the cores.
        assert (report["threads"], report["omp_num_threads"]) == (2, "2")
        assert (tmp_path / f"atexit.rank{rank}").read_text() == "ran\n"
        assert f"c-stdio-tail-rank{rank}" in run.stdout
    # Each rank inherited the parent's exit handlers; the one removing the work folder acted in the parent only.
    assert json.loads((tmp_path / "parent.json").read_text()) == {"work_dir": True}
    # Without the preloads the parent starts a fresh server (the probe's other tests use that one).
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run_probe(python, fresh).returncode == 0
    assert [(r["from_forkserver"], r["server_is_parents_fork"]) for r in rank_reports(fresh)] == [(True, False)] * 2


def test_a_parent_running_another_thread_starts_a_fresh_server(python, tmp_path):
    run = run_probe(python, tmp_path, PROBE_PARENT_PRELOADS="1", PROBE_PARENT_THREAD="1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [(r["from_forkserver"], r["server_is_parents_fork"]) for r in rank_reports(tmp_path)] == [(True, False)] * 2
