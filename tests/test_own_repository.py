"""dist_tests from a workspace of one's own: a scratch workspace outside this checkout declares it as a repository
(tools/deps.bzl), declares lines of its own in its own package, with its own plugin library and exclusion list, and
runs them as this workspace runs its matrix (shards, --test_filter, JUnit XML, the report)."""

import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, bazel, results
from test_remote_execution import JOBS, start_cluster, stop_cluster

pytestmark = pytest.mark.own_workspace

SELECTION = "--test_filter=test_barrier test_broadcast test_all_reduce_sum test_get_backend"
GLOO, EXAMPLE, WRONG = "//vendor_tests:mygloo_2", "//vendor_tests:example_2", "//vendor_tests:example_wrong"

WORKSPACE = """workspace(name = "vendor")

local_repository(
    name = "dist_tests",
    path = "{root}",
)

load("@dist_tests//tools:deps.bzl", "dist_tests_dependencies")

dist_tests_dependencies()
"""

# Two lines of the backend "example", each with its own plugin module, and a gloo line named by the vendor.
BUILD = """load("@dist_tests//tools:dist_tests.bzl", "dist_test_line", "dist_test_matrix")

dist_test_matrix(
    name = "all",
    matrix = [
        dist_test_line("gloo", 2, "cpu", name = "mygloo_2", shard_count = 2, timeout = "moderate"),
        dist_test_line(
            "example", 2, "cpu", shard_count = 2, timeout = "moderate",
            exclude = "//vendor_tests:exclusions.txt",
            plugin = {{"features": ["subgroup"], "init_method": "tcp",
                       "library": "//vendor_backend:example_backend", "module": "example_backend"}},
        ),
        dist_test_line(
            "example", 2, "cpu", name = "example_wrong", shard_count = 2, timeout = "moderate",
            plugin = {{"library": "//vendor_backend:example_backend", "module": "no_such_module"}},
        ),
    ],
)
"""

BACKEND_BUILD = """load("@rules_python//python:defs.bzl", "py_library")

py_library(
    name = "example_backend",
    srcs = ["example_backend/__init__.py"],
    imports = ["."],
    visibility = ["//visibility:public"],
)
"""


# The workspace's .bazelrc: this repository's shared settings, and --config=remote naming its platforms by their
# labels in this repository (docs/backends.md shows the same lines).
BAZELRC = """import {root}/tools/dist_tests.bazelrc

build:remote --extra_execution_platforms=@dist_tests//tools/platforms:remote
build:remote --host_platform=@dist_tests//tools/platforms:remote_cpu
build:remote --platforms=@dist_tests//tools/platforms:remote_cpu
build:remote --jobs=64
build:remote --remote_timeout=3600
build:remote --repo_env=DIST_TESTS_GPU_EXCLUSIVE=0
build:remote --remote_retries=1
build:remote --remote_max_connections=4
"""


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    """The scratch workspace: its own WORKSPACE, .bazelrc, backend package and test package; nothing of this checkout's
    but the repository it declares."""
    folder = tmp_path_factory.mktemp("own_repository")
    workspace = folder / "vendor"
    (workspace / "vendor_tests").mkdir(parents=True)
    (workspace / "vendor_backend" / "example_backend").mkdir(parents=True)
    (workspace / "WORKSPACE").write_text(WORKSPACE.format(root=ROOT))
    # An output base of its own beside it, removed with it (this test's, not a user's setting).
    (workspace / ".bazelrc").write_text(f"startup --output_base={folder / 'output_base'}\n" + BAZELRC.format(root=ROOT))
    (workspace / "vendor_tests" / "BUILD.bazel").write_text(BUILD.format())
    (workspace / "vendor_tests" / "exclusions.txt").write_text("test_broadcast: hangs on this backend (its bug 7)\n")
    (workspace / "vendor_backend" / "BUILD.bazel").write_text(BACKEND_BUILD)
    shutil.copy2(ROOT / "tests" / "plugin" / "example_backend" / "__init__.py",
                 workspace / "vendor_backend" / "example_backend" / "__init__.py")
    yield workspace
    bazel("shutdown", workspace=workspace)
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def outcomes(workspace: pathlib.Path, target: str) -> dict[str, tuple[str, str]]:
    return {c.name: (c.outcome, c.message) for c in results(target, workspace).cases()}


def test_own_lines_run_with_their_plugin_and_exclusions_and_the_report_lists_them(vendor):
    run = bazel("test", GLOO, EXAMPLE, SELECTION, workspace=vendor)
    assert run.returncode == 0, run.output[-3000:]
    gloo, example = outcomes(vendor, GLOO), outcomes(vendor, EXAMPLE)
    assert {name: outcome for name, (outcome, _) in gloo.items()} == dict.fromkeys(
        ["test_all_reduce_sum", "test_barrier", "test_broadcast", "test_get_backend"], "passed")
    # The plugin's line ran the backend its own module registered, and its own exclusion list.
    assert example["test_broadcast"] == ("excluded", "excluded (//vendor_tests:exclusions.txt): hangs on this backend "
                                                    "(its bug 7)")
    assert example["test_all_reduce_sum"][0] == example["test_get_backend"][0] == "passed"
    # Both shards of each target ran, each with its JUnit XML, and the harness's closing line names the label.
    for target in (GLOO, EXAMPLE):
        attempts = results(target, vendor).final_attempts()
        assert sorted(a.shard for a in attempts) == [1, 2]
        assert all(a.xml and a.xml.exists() for a in attempts)
        assert f"{target}: " in "".join(a.log.read_text() for a in attempts)

    report = bazel("run", "@dist_tests//tools/results:report", workspace=vendor)
    assert report.returncode == 0, report.output[-3000:]
    rows = [line for line in report.output.splitlines() if line.startswith(("//", "gloo_", "nccl_", "ucc_"))]
    assert [row.split()[0] for row in rows] == [EXAMPLE, GLOO], report.output[-3000:]
    assert (vendor / "dist_tests_report" / "report.html").exists()


def test_own_lines_run_remotely_on_the_local_cluster(vendor, cluster_blobs):
    """A real cluster; the environment's upload is shared with the session's other clusters (cluster_blobs)."""
    cluster = start_cluster(cpu=2, gpu=0, blobs=cluster_blobs)
    try:
        run = bazel("test", GLOO, EXAMPLE, "--test_filter=test_barrier test_all_reduce_sum", "--nocache_test_results",
                    *cluster.flags, *JOBS, workspace=vendor)
        assert run.returncode == 0, run.output[-3000:]
        ran = {(a.target, a.pool) for a in cluster.actions()}
        assert {(GLOO, "cpu"), (EXAMPLE, "cpu")} <= ran, ran
        assert outcomes(vendor, EXAMPLE)["test_all_reduce_sum"][0] == "passed"
        assert outcomes(vendor, GLOO)["test_barrier"][0] == "passed"
    finally:
        stop_cluster(cluster)
        shutil.rmtree(cluster.state, ignore_errors=True)


def test_a_second_line_of_a_backend_runs_its_own_plugin(vendor):
    run = bazel("test", WRONG, "--test_filter=test_barrier", workspace=vendor)
    assert run.returncode != 0
    log = "".join(a.log.read_text() for a in results(WRONG, vendor).final_attempts() if a.log)
    assert "no_such_module" in log, log[-3000:]


@pytest.mark.parametrize("line, message", [
    ('dist_test_line("xccl", 2, "xpu", shard_count = 1, timeout = "short")',
     'xccl_2: device "xpu" is not one of ["cpu", "gpu"]'),
    ('dist_test_line("gloo", 1, "cpu", name = "bad_1", shard_count = 1, timeout = "short")',
     "bad_1: world_size 1: a cpu line needs an integer >= 2"),
    ('dist_test_line("gloo", 2, "cpu", shard_count = 1, timeout = "short"), '
     'dist_test_line("gloo", 2, "cpu", shard_count = 2, timeout = "short")',
     "gloo_2 is the target of two lines of the matrix: give one of them a `name`"),
    # A line of a .bzl file's own, where `struct` is at hand, without its shards and timeout.
    ('struct(backend = "gloo", world_size = 2, device = "cpu")',
     "a line of the matrix has no shard_count, timeout"),
])
def test_a_bad_line_of_ones_own_stops_the_build_when_it_loads_naming_it(vendor, line, message):
    package = vendor / "bad"
    package.mkdir(exist_ok=True)
    (package / "lines.bzl").write_text(
        'load("@dist_tests//tools:dist_tests.bzl", "dist_test_line")\n\n'
        f'LINES = [{line}]\n')
    (package / "BUILD.bazel").write_text(
        'load("@dist_tests//tools:dist_tests.bzl", "dist_test_matrix")\n'
        'load(":lines.bzl", "LINES")\n\n'
        'dist_test_matrix(name = "all", matrix = LINES)\n')
    try:
        run = bazel("query", "//bad:all", workspace=vendor, timeout=300)
    finally:
        shutil.rmtree(package)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]
