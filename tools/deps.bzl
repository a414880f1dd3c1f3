"""What a workspace needs to declare dist_tests targets: one macro for its WORKSPACE.

This workspace calls it, and so does a workspace of one's own that declares this one as a
repository named `dist_tests` (for example a vendor's, with its own backend's lines):

    local_repository(name = "dist_tests", path = "/path/to/dist_tests")
    # or: http_archive(name = "dist_tests", urls = [...], sha256 = "...", strip_prefix = "...")

    load("@dist_tests//tools:deps.bzl", "dist_tests_dependencies")

    dist_tests_dependencies()

Then any BUILD file of that workspace loads `dist_test_matrix` from
`@dist_tests//tools:dist_tests.bzl` and declares its own lines (docs/backends.md, "From your own
repository"). The repositories' names are the ones tools/dist_tests.bzl and the harness use, so
they are fixed; one that the workspace declared already (a real rules_python, say) is kept.
"""

load("//tools/gpu:host.bzl", "dist_tests_host")
load("//tools/gpu:scheduling.bzl", "gpu_scheduling")
load("//tools/python_env:common.bzl", "LOCKS")
load("//tools/python_env:interpreter.bzl", "python_interpreter")
load("//tools/python_env:packages.bzl", "python_packages")

# Offline stand-ins in third_party/ (each folder's README says why it exists): Bazel 4.2.3 would
# download the first three for any py_test; newer releases load the Python and shell rules from
# the last two.
_STAND_INS = ["rules_cc", "rules_java", "remote_coverage_tools", "rules_python", "rules_shell"]

def _third_party_folder_impl(rctx):
    folder = rctx.path(rctx.attr.workspace_file).dirname
    for entry in folder.readdir():
        rctx.symlink(entry, entry.basename)

_third_party_folder = repository_rule(
    implementation = _third_party_folder_impl,
    attrs = {"workspace_file": attr.label(mandatory = True, allow_single_file = True)},
    doc = "A repository whose files are those of a folder of dist_tests' third_party/ (linked).",
)

def _declare(name, rule, **kwargs):
    if name not in native.existing_rules():
        rule(name = name, **kwargs)

# A WORKSPACE macro: it declares repositories of fixed names, so it takes no `name`.
# buildifier: disable=unnamed-macro
def dist_tests_dependencies():
    """Declares the repositories dist_tests' targets use, and registers its Python toolchain.

    Call it in WORKSPACE before anything that loads from these repositories. It declares the
    offline stand-ins (rules_python and the rest), the tests' interpreter (@dist_python), one
    hash-locked package set per device class (@dist_python_cpu, @dist_python_gpu; a target
    fetches only its own class's), and what is read of this host when BUILD files load
    (@dist_tests_gpu_scheduling, @dist_tests_host).
    """
    for name in _STAND_INS:
        _declare(name, _third_party_folder, workspace_file = Label("//third_party/%s:WORKSPACE" % name))

    # GPU targets are exclusive locally and not under --config=remote (see the file).
    _declare("dist_tests_gpu_scheduling", gpu_scheduling)

    # //dist_tests:host, the targets this host can run: its GPU count and NVIDIA driver, asked the
    # way the harness asks when Bazel loads the matrix (see the file for when it asks again).
    _declare("dist_tests_host", dist_tests_host)

    # The tests' interpreter (a copy of the host's CPython, of a version with locks: 3.11, or another
    # of tools/python_env/update_lock's PYTHONS) and the one Python toolchain.
    _declare("dist_python", python_interpreter)
    native.register_toolchains("@dist_python//:toolchain")

    # One hash-locked package set per device class; each target carries its class's set
    # (tools/dist_tests.bzl). Each class has a lock per Python; the host's version picks its own
    # (LOCKS in tools/python_env/common.bzl). A class of one's own declares its own set, from its
    # own lock, after this call (docs/backends.md).
    for device in sorted(LOCKS):
        _declare("dist_python_" + device, python_packages, device = device)
