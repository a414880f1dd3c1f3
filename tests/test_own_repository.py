"""dist_tests from a workspace of one's own: a scratch workspace outside this checkout declares it as a repository
(tools/deps.bzl), declares lines of its own in its own package, with its own plugin library, exclusion list and device
class (a stand-in accelerator with its own count command, visible-devices variable and lock), and runs them as this
workspace runs its matrix (shards, --test_filter, JUnit XML, leases, the report, a remote cluster, a remote cache)."""

import pathlib
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, bazel, results
from test_remote_execution import JOBS, start_cluster, stop_cluster

pytestmark = pytest.mark.own_workspace

SELECTION = "--test_filter=test_barrier test_broadcast test_all_reduce_sum test_get_backend"
GLOO, EXAMPLE, WRONG = "//vendor_tests:mygloo_2", "//vendor_tests:example_2", "//vendor_tests:example_wrong"
# gloo on the stand-in accelerator, and on a class whose command counts one device too few.
ACCEL, SHORT = "//vendor_tests:accel_2", "//vendor_tests:accel_short"

WORKSPACE = """workspace(name = "vendor")

local_repository(
    name = "dist_tests",
    path = "{root}",
)

load("@dist_tests//tools:deps.bzl", "dist_tests_dependencies")

dist_tests_dependencies()

load("@dist_tests//tools/python_env:packages.bzl", "python_packages")

# The stand-in accelerator's packages, from its own lock (here a copy of dist_tests' CPU lock).
python_packages(
    name = "vendor_python_accel",
    device = "accel",
    lock = "//vendor_tests:requirements_accel_lock.txt",
)
"""

# Two lines of the backend "example", each with its own plugin module, a gloo line named by the vendor, and gloo
# on two device classes of its own: a stand-in accelerator whose command counts 2 devices, and one counted 1.
BUILD = """load("@dist_tests//tools:dist_tests.bzl", "dist_test_device_class", "dist_test_line", "dist_test_matrix")

dist_test_matrix(
    name = "all",
    devices = {{
        "accel": dist_test_device_class(
            least_world_size = 2,
            packages = "@vendor_python_accel//:site_packages",
            count = "//vendor_tests:count_accel.sh",
            visible_devices = "ACCEL_VISIBLE_DEVICES",
            env = {{"CUDA_VISIBLE_DEVICES": ""}},
        ),
        "accel_one": dist_test_device_class(
            least_world_size = 2,
            packages = "@vendor_python_accel//:site_packages",
            count = "//vendor_tests:count_one.sh",
            visible_devices = "ACCEL_VISIBLE_DEVICES",
        ),
    }},
    matrix = [
        dist_test_line("gloo", 2, "accel", name = "accel_2", shard_count = 2, timeout = "moderate"),
        dist_test_line("gloo", 2, "accel_one", name = "accel_short", shard_count = 1, timeout = "short"),
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
    shutil.copy2(ROOT / "third_party" / "python" / "requirements_cpu_py3.11_lock.txt",
                 workspace / "vendor_tests" / "requirements_accel_lock.txt")
    for script, count in (("count_accel.sh", 2), ("count_one.sh", 1)):
        (workspace / "vendor_tests" / script).write_text(f"#!/bin/sh\n# The stand-in's devices.\necho {count}\n")
        (workspace / "vendor_tests" / script).chmod(0o755)
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


def test_a_device_class_of_ones_own_leases_its_devices_and_runs_its_own_packages(vendor):
    run = bazel("test", GLOO, ACCEL, SELECTION, workspace=vendor)
    assert run.returncode == 0, run.output[-3000:]
    # The same per-test outcomes as the same gloo line on cpu.
    accel = {name: outcome for name, (outcome, _) in outcomes(vendor, ACCEL).items()}
    assert accel == {name: outcome for name, (outcome, _) in outcomes(vendor, GLOO).items()}
    assert set(accel.values()) == {"passed"}, accel
    logs = [a.log.read_text() for a in results(ACCEL, vendor).final_attempts()]
    assert len(logs) == 2
    # A small filtered selection runs whole in shard 1 (the other ends before it leases anything).
    for log in [log for log in logs if "has nothing to run" not in log]:
        # Its command counted the devices; the run leased two and showed them through the class's own variable.
        assert ("leased accel devices 0,1 of accel devices 0,1 (the accel devices //vendor_tests:count_accel.sh "
                "counts)") in log, log[-3000:]
        assert "shown to the ranks as ACCEL_VISIBLE_DEVICES=0,1" in log
        # No forkserver proof declared: its ranks start by spawn, said once.
        assert log.count("the forkserver cannot be used: device class 'accel' declares no forkserver proof") == 1
        assert "4 passed, 0 failed, 0 skipped, 0 known failures, 0 did not run, 0 flaky, on leased accel devices 0,1" \
            in log
    # Its packages are its own lock's, and its target carries no others.
    environment = (vendor.parent / "output_base" / "external" / "vendor_python_accel" / "environment.txt").read_text()
    assert "device: accel" in environment and "requirements_accel_lock.txt" in environment, environment
    deps = bazel("query", f"deps({ACCEL})", "--output=label", workspace=vendor)
    assert "@vendor_python_accel//:site_packages" in deps.output and "@dist_python_cpu//" not in deps.output


def test_a_class_whose_command_counts_too_few_devices_stops_before_any_rank_naming_the_count(vendor):
    run = bazel("test", SHORT, "--test_filter=test_barrier", workspace=vendor)
    assert run.returncode != 0
    log = "".join(a.log.read_text() for a in results(SHORT, vendor).final_attempts() if a.log)
    assert ("gloo with WORLD_SIZE=2 needs 2 accel_one devices, and this host has 1 (the accel_one devices "
            "//vendor_tests:count_one.sh counts)") in log, log[-3000:]
    assert "Exclude accel_one targets with --test_tag_filters=-accel_one" in log
    assert "Started process" not in log


def test_own_lines_run_remotely_on_the_local_cluster(vendor, cluster_blobs):
    """A real cluster; the environment's upload is shared with the session's other clusters (cluster_blobs)."""
    cluster = start_cluster(cpu=2, gpu=0, blobs=cluster_blobs)
    try:
        run = bazel("test", GLOO, EXAMPLE, ACCEL, "--test_filter=test_barrier test_all_reduce_sum",
                    "--nocache_test_results", *cluster.flags, *JOBS, workspace=vendor)
        assert run.returncode == 0, run.output[-3000:]
        ran = {(a.target, a.pool) for a in cluster.actions()}
        # The accelerator's class names no pool: its targets run on the default one.
        assert {(GLOO, "cpu"), (EXAMPLE, "cpu"), (ACCEL, "cpu")} <= ran, ran
        assert outcomes(vendor, EXAMPLE)["test_all_reduce_sum"][0] == "passed"
        assert outcomes(vendor, GLOO)["test_barrier"][0] == "passed"
        assert {outcome for outcome, _ in outcomes(vendor, ACCEL).values()} == {"passed"}
    finally:
        stop_cluster(cluster)
        shutil.rmtree(cluster.state, ignore_errors=True)


def test_a_second_line_of_a_backend_runs_its_own_plugin(vendor):
    run = bazel("test", WRONG, "--test_filter=test_barrier", workspace=vendor)
    assert run.returncode != 0
    log = "".join(a.log.read_text() for a in results(WRONG, vendor).final_attempts() if a.log)
    assert "no_such_module" in log, log[-3000:]


@pytest.mark.parametrize("line, devices, message", [
    ('dist_test_line("xccl", 2, "xpu", shard_count = 1, timeout = "short")', "{}",
     'xccl_2: device "xpu" is not one of ["cpu", "gpu"]: declare it in the macro\'s `devices`'),
    ('dist_test_line("gloo", 1, "cpu", name = "bad_1", shard_count = 1, timeout = "short")', "{}",
     "bad_1: world_size 1: a cpu line needs an integer >= 2"),
    ('dist_test_line("gloo", 2, "cpu", shard_count = 1, timeout = "short"), '
     'dist_test_line("gloo", 2, "cpu", shard_count = 2, timeout = "short")', "{}",
     "gloo_2 is the target of two lines of the matrix: give one of them a `name`"),
    # A line of a .bzl file's own, where `struct` is at hand, without its shards and timeout.
    ('struct(backend = "gloo", world_size = 2, device = "cpu")', "{}",
     "a line of the matrix has no shard_count, timeout"),
    # Device classes of one's own: a field missing, a count without its variable, a name of dist_tests' own.
    ('dist_test_line("gloo", 2, "accel", shard_count = 1, timeout = "short")',
     '{"accel": struct(least_world_size = 2)}', 'device class "accel" has no packages'),
    ('dist_test_line("gloo", 2, "accel", shard_count = 1, timeout = "short")',
     '{"accel": struct(least_world_size = 2, packages = "@vendor_python_accel//:site_packages", '
     'count = "//vendor_tests:count_accel.sh")}',
     'device class "accel": count and visible_devices go together'),
    ('dist_test_line("gloo", 2, "cpu", shard_count = 1, timeout = "short")',
     '{"cpu": struct(least_world_size = 2, packages = "@vendor_python_accel//:site_packages")}',
     'device class "cpu" is one of dist_tests\' own (cpu, gpu): give yours another name'),
])
def test_a_bad_line_of_ones_own_stops_the_build_when_it_loads_naming_it(vendor, line, devices, message):
    package = vendor / "bad"
    package.mkdir(exist_ok=True)
    (package / "lines.bzl").write_text(
        'load("@dist_tests//tools:dist_tests.bzl", "dist_test_line")\n\n'
        f'LINES = [{line}]\n\nDEVICES = {devices}\n')
    (package / "BUILD.bazel").write_text(
        'load("@dist_tests//tools:dist_tests.bzl", "dist_test_matrix")\n'
        'load(":lines.bzl", "DEVICES", "LINES")\n\n'
        'dist_test_matrix(name = "all", devices = DEVICES, matrix = LINES)\n')
    try:
        run = bazel("query", "//bad:all", workspace=vendor, timeout=300)
    finally:
        shutil.rmtree(package)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]


def test_a_second_clone_of_the_workspace_at_another_path_gets_its_results_from_the_remote_cache(vendor, tmp_path):
    """A real remote cache (tools/remote/cache); the copy has its own path and output base, as a second machine has."""
    url = subprocess.run([str(ROOT / "tools/remote/cache"), "start", str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True).stdout.strip()
    # Not exclusive: Bazel keeps exclusive tests off remote services (as under --config=remote). A selection no
    # other test of the module runs, so the first run executes and uploads (--nocache_test_results would not upload).
    flags = ("--test_filter=test_get_backend test_barrier", f"--remote_cache={url}",
             "--repo_env=DIST_TESTS_GPU_EXCLUSIVE=0")
    second = tmp_path / "elsewhere" / "vendor-copy"
    try:
        first = bazel("test", GLOO, EXAMPLE, ACCEL, *flags, workspace=vendor)
        assert first.returncode == 0, first.output[-3000:]
        shutil.copytree(vendor, second, symlinks=True,
                        ignore=shutil.ignore_patterns("bazel-*", "dist_tests_report", "bazel-test-events.json"))
        (second / ".bazelrc").write_text((vendor / ".bazelrc").read_text().replace(
            str(vendor.parent / "output_base"), str(tmp_path / "second_output_base")))
        run = bazel("test", GLOO, EXAMPLE, ACCEL, *flags, workspace=second)
        assert run.returncode == 0, run.output[-3000:]
        processes = [line for line in run.output.splitlines() if re.match(r"INFO: \d+ process", line)][-1]
        # Two shards of each of the three targets, all served by the cache, none executed here.
        assert re.search(r"\b6 remote cache hit", processes), processes
        assert "linux-sandbox" not in processes, processes
    finally:
        if second.exists():
            bazel("shutdown", workspace=second)
        subprocess.run([str(ROOT / "tools/remote/cache"), "stop", str(tmp_path / "cache")], check=False)
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path)], check=False)
        shutil.rmtree(tmp_path / "second_output_base", ignore_errors=True)
