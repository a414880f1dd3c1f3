"""A backend shipped as its own package is one line of DIST_TEST_MATRIX.

In a copy of the workspace, one line names the plugin package that tests/plugin/ carries
(`example_backend` registers "example", whose process group is gloo's): the suite runs on it
through real Bazel runs, under both start methods and on the local remote-execution cluster,
and its per-test outcomes equal gloo_2's on the same selection except where the line's
declared features leave a test out, which then skips naming what the backend lacks. The
same package from a hash-pinned wheel lock runs too, and a wheel whose hash differs stops the
build. Bad plugins stop the run before any rank starts, naming the line and the module.
"""

import base64
import hashlib
import os
import pathlib
import shutil
import subprocess
import zipfile

import pytest

from conftest import ROOT, bazel, results, shard_log
from test_remote_cache import copy_workspace
from test_remote_execution import JOBS, start_cluster, stop_cluster
from test_start_methods import PARITY_TESTS

# Its Bazel runs are in workspace copies with output bases of their own: tools/selftest runs it beside the others.
pytestmark = pytest.mark.own_workspace

GLOO, EXAMPLE, FROM_WHEEL = "//dist_tests:gloo_2", "//dist_tests:example_2", "//dist_tests:example_from_wheel"
# gloo_2's parity selection and a few more that use the backend by name or need its features.
SELECTION = PARITY_TESTS + (" test_get_backend test_destroy_group test_all_gather test_scatter"
                            " test_DistributedDataParallel_requires_grad test_post_localSGD_optimizer_parity")
ANCHOR = '    struct(backend = "gloo", world_size = 4, device = "cpu", shard_count = 4, timeout = "moderate"),\n'
# Declared: subgroups, not DDP; a TCP rendezvous instead of torch's FileStore.
PLUGIN = ('{"features": ["subgroup"], "init_method": "tcp", "library": "//tests/plugin:example_backend", '
          '"module": "example_backend"}')
LINE = (f'    struct(backend = "example", world_size = 2, device = "cpu", shard_count = 4, timeout = "moderate", '
        f'plugin = {PLUGIN}),\n')
WHEEL_LINE = ('    struct(backend = "example", world_size = 2, device = "cpu", name = "example_from_wheel", '
              'shard_count = 4, timeout = "moderate", plugin = {"features": ["subgroup"], "init_method": "tcp", '
              '"library": "@example_plugin//:library", "module": "example_backend"}),\n')
# A second line of the backend whose own plugin module does not exist: its target must say so, not run example_2's.
WRONG = "//dist_tests:example_wrong"
WRONG_LINE = ('    struct(backend = "example", world_size = 2, device = "cpu", name = "example_wrong", '
              'shard_count = 4, timeout = "moderate", plugin = {"library": "//tests/plugin:example_backend", '
              '"module": "no_such_module"}),\n')
# A line with an exclusion list: a second gloo line at 2 ranks, whose test_broadcast never starts.
EXCLUDING = "//dist_tests:gloo_excluding"
EXCLUSIONS = "//third_party/plugins/example:exclusions.txt"
EXCLUDING_LINE = ('    struct(backend = "gloo", world_size = 2, device = "cpu", name = "gloo_excluding", '
                  f'shard_count = 4, timeout = "moderate", exclude = "{EXCLUSIONS}"),\n')
# Why a test may skip on a backend of gloo's code where gloo's does not: a feature the line did
# not declare (DDP), or the suite's own gate on a backend's name ("Only gloo ...", "one of {...}").
NOT_DECLARED = ("the example backend does not support distributeddataparallel", "gloo",
                "test requires backend example to be one of")


def table(workspace: pathlib.Path) -> pathlib.Path:
    return workspace / "tools" / "dist_tests.bzl"


def example_wheel(folder: pathlib.Path) -> pathlib.Path:
    """tests/plugin/example_backend as a wheel, the way a vendor ships it."""
    name, version = "example_backend", "0.1"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": (ROOT / "tests" / "plugin" / name / "__init__.py").read_bytes(),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def write_wheel_lock(workspace: pathlib.Path, sha256: str | None = None) -> None:
    folder = workspace / "third_party" / "plugins" / "example"
    (folder / "wheels").mkdir(parents=True, exist_ok=True)
    wheel = example_wheel(folder / "wheels")
    digest = sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest()
    (folder / "BUILD.bazel").write_text('exports_files(["requirements_lock.txt", "exclusions.txt"])\n')
    (folder / "exclusions.txt").write_text("test_broadcast: hangs on this line (its bug 12)\n")
    (folder / "requirements_lock.txt").write_text(
        f"# python: 3.11\n--no-index\n--find-links wheels\nexample-backend==0.1 --hash=sha256:{digest}\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the workspace with the plugin's line (and the same package from a wheel lock) added."""
    copy = copy_workspace(tmp_path_factory.mktemp("plugin") / "workspace")
    text = table(copy).read_text()
    assert ANCHOR in text
    table(copy).write_text(text.replace(ANCHOR, ANCHOR + LINE + WHEEL_LINE + WRONG_LINE + EXCLUDING_LINE))
    write_wheel_lock(copy)
    with open(copy / "WORKSPACE", "a") as f:
        f.write('\nload("//tools/python_env:plugin_packages.bzl", "plugin_packages")\n\n'
                'plugin_packages(\n    name = "example_plugin",\n'
                '    lock = "//third_party/plugins/example:requirements_lock.txt",\n'
                '    module = "example_backend",\n)\n')
    yield copy
    bazel("shutdown", workspace=copy)
    subprocess.run(["chmod", "-R", "u+w", str(copy)], check=False)


def outcomes(workspace: pathlib.Path, target: str) -> dict[str, tuple[str, str]]:
    return {c.name: (c.outcome, c.message) for c in results(target, workspace).cases() if c.name != "runTest"}


def check_against_gloo(example: dict, gloo: dict) -> None:
    assert set(example) == set(gloo) == set(SELECTION.split())
    differ = {name: (example[name], gloo[name]) for name in gloo if example[name][0] != gloo[name][0]}
    for name, ((outcome, message), _) in differ.items():
        assert outcome == "skipped" and any(words in message.lower() for words in NOT_DECLARED), (name, differ[name])
    # Same code, same outcome: most of the selection, the DDP tests apart, which the line did not declare.
    assert sum(1 for o, _ in example.values() if o == "passed") >= 8, example
    assert example["test_DistributedDataParallel_requires_grad"] == (
        "skipped", "The example backend does not support DistributedDataParallel")
    assert gloo["test_DistributedDataParallel_requires_grad"][0] == "passed"
    for name in ("test_get_backend", "test_destroy_group", "test_DistributedDataParallelCPU", "test_all_reduce_sum"):
        assert example[name][0] == gloo[name][0] == "passed", name


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_plugin_line_runs_the_suite_with_gloos_outcomes_where_its_features_match(workspace, method):
    """Up to a few minutes: the plugin's line runs a selection of the real suite under each start method (spawn costs a
    fresh interpreter per rank), and every outcome is compared with gloo's. gloo runs the selection the default way
    (test_start_methods.py shows that both ways give every test the same outcome), so its result may come from the
    cache; the plugin's never does."""
    gloo = bazel("test", GLOO, f"--test_filter={SELECTION}", workspace=workspace)
    assert gloo.returncode == 0, gloo.output
    gloos = outcomes(workspace, GLOO)  # read now: results come from the latest invocation's events
    run = bazel("test", EXAMPLE, f"--test_filter={SELECTION}", "--nocache_test_results",
                f"--test_env=DIST_TESTS_START_METHOD={method}", workspace=workspace)
    assert run.returncode == 0, run.output
    check_against_gloo(outcomes(workspace, EXAMPLE), gloos)
    assert "//dist_tests:example_2: " in shard_log(EXAMPLE, workspace=workspace)
    xml = (workspace / "bazel-testlogs" / "dist_tests" / "example_2" / "shard_1_of_4" / "test.xml").read_text()
    assert f'name="dist_tests_start_method" value="{method}"' in xml


def test_a_plugin_line_runs_remotely_on_the_local_cluster(workspace, cluster_blobs):
    """Over 2 minutes: a real cluster, and the plugin's and gloo's selections run on it to compare outcomes."""
    cluster = start_cluster(cpu=2, gpu=0, blobs=cluster_blobs)
    try:
        run = bazel("test", EXAMPLE, GLOO, f"--test_filter={SELECTION}", "--nocache_test_results", *cluster.flags,
                    *JOBS, workspace=workspace)
        assert run.returncode == 0, run.output
        check_against_gloo(outcomes(workspace, EXAMPLE), outcomes(workspace, GLOO))
        ran = {(a.target, a.pool) for a in cluster.actions()}
        assert (EXAMPLE, "cpu") in ran, ran
    finally:
        stop_cluster(cluster)
        shutil.rmtree(cluster.state, ignore_errors=True)


def test_a_plugin_from_a_hash_pinned_wheel_lock_runs_and_a_changed_wheel_stops_the_build(workspace):
    run = bazel("test", FROM_WHEEL, "--test_filter=test_all_reduce_sum test_get_backend", "--nocache_test_results",
                workspace=workspace)
    assert run.returncode == 0, run.output
    assert {name: o for name, (o, _) in outcomes(workspace, FROM_WHEEL).items()} == {
        "test_all_reduce_sum": "passed", "test_get_backend": "passed"}
    write_wheel_lock(workspace, sha256="0" * 64)
    try:
        bad = bazel("test", FROM_WHEEL, "--test_filter=test_all_reduce_sum", workspace=workspace)
        assert bad.returncode != 0
        assert ("the plugin packages of module example_backend could not be installed from "
                "//third_party/plugins/example:requirements_lock.txt (exit 1)") in bad.output
        assert "DO NOT MATCH THE HASHES" in bad.output
        assert "Started process" not in bad.output
    finally:
        write_wheel_lock(workspace)


def test_two_lines_of_one_backend_each_run_their_own_plugin(workspace):
    # Each target reads its own line (DIST_TESTS_LINE), not its backend's first line in the table (example_2's).
    run = bazel("test", WRONG, "--test_filter=test_get_backend", workspace=workspace)
    assert run.returncode != 0
    assert ("dist_tests: error: //dist_tests:example_wrong: its plugin module 'no_such_module' cannot be found"
            in shard_log(WRONG, workspace=workspace))
    assert "Started process" not in shard_log(WRONG, workspace=workspace)


def test_a_lines_exclusion_list_keeps_its_tests_from_starting(workspace):
    run = bazel("test", EXCLUDING, "--test_filter=test_all_reduce_sum test_broadcast", "--nocache_test_results",
                workspace=workspace)
    assert run.returncode == 0, run.output
    assert outcomes(workspace, EXCLUDING) == {
        "test_all_reduce_sum": ("passed", ""),
        "test_broadcast": ("excluded", f"excluded ({EXCLUSIONS}): hangs on this line (its bug 12)")}
    assert ("//dist_tests:gloo_excluding: 1 passed, 0 failed, 0 skipped, 0 known failures, 1 excluded,"
            in shard_log(EXCLUDING, workspace=workspace))


def test_a_malformed_plugin_field_fails_at_load_naming_the_line(workspace):
    good = table(workspace).read_text()
    bad = good.replace('"init_method": "tcp", "library": "//tests', '"init": "tcp", "library": "//tests', 1)
    table(workspace).write_text(bad)
    try:
        run = bazel("query", "//dist_tests:all", workspace=workspace)
        assert run.returncode != 0
        assert "example_2: `plugin` has an unknown key \"init\"" in run.output
    finally:
        table(workspace).write_text(good)


BAD_PLUGINS = {
    "broken": ("broken_backend", '["subgroup"]', "raise RuntimeError('no device driver found')\n",
               "its plugin module 'broken_backend' failed to import: RuntimeError: no device driver found"),
    "silent": ("silent_backend", '["subgroup"]', "VERSION = 1\n",
               "importing its plugin module 'silent_backend' did not register the backend 'example'"),
    "unknown-feature": ("example_backend", '["teleport"]', None,
                        "its plugin declares feature(s) teleport, which torch's suite does not know"),
    "not-found": ("no_such_backend", '["subgroup"]', None, "its plugin module 'no_such_backend' cannot be found"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_a_bad_plugin_stops_the_run_before_any_rank_naming_the_line_and_module(python, tmp_path, case):
    module, features, source, expected = BAD_PLUGINS[case]
    scratch = tmp_path / "workspace"
    shutil.copytree(ROOT / "dist_tests", scratch / "dist_tests")
    (scratch / "tools").mkdir()
    plugin = f'{{"features": {features}, "library": "//plugins:{module}", "module": "{module}"}}'
    text = (ROOT / "tools" / "dist_tests.bzl").read_text()
    (scratch / "tools" / "dist_tests.bzl").write_text(text.replace(
        ANCHOR, ANCHOR + f'    struct(backend = "example", world_size = 2, device = "cpu", shard_count = 4, '
                         f'timeout = "moderate", plugin = {plugin}),\n'))
    modules = tmp_path / "modules"
    shutil.copytree(ROOT / "tests" / "plugin" / "example_backend", modules / "example_backend")
    if source:
        (modules / f"{module}.py").write_text(source)
    # A torch that leaves a mark when imported: a plugin that cannot be found stops the run before.
    fake = tmp_path / "fake_torch"
    (fake / "torch").mkdir(parents=True)
    marker = tmp_path / "torch_was_imported"
    (fake / "torch" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(99)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DIST_TESTS_", "BACKEND", "WORLD_SIZE"))}
    env.update(BACKEND="example", WORLD_SIZE="2", TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(fake)] * (case == "not-found") + [str(modules)]))
    run = subprocess.run([python, str(scratch / "dist_tests" / "spawn_test.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"dist_tests: error: //dist_tests:example_2: {expected}" in run.stderr
    assert "Started process" not in run.stderr
    if case == "not-found":
        assert not marker.exists(), "the missing plugin must stop the run before torch is imported"
