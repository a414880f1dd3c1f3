"""This host as //dist_tests:host sees it: its GPU count, its NVIDIA driver, the backends its torch lacks.

Which targets a host can run is known only on that host, and a test_suite's members are fixed
when BUILD files load, where no build flag reaches a macro. So a repository rule asks, the way the
harness asks (tools/gpu/host_gpus.py runs the harness's own code on the host's Python:
DIST_TESTS_PYTHON, else python3, whichever is 3.10 or newer), and writes the answer into
@dist_tests_host//:host.bzl as HOST, which dist_test_matrix() reads (tools/dist_tests.bzl).

Settings, with --repo_env (or in the shell that runs Bazel):
  DIST_TESTS_HOST_GPUS=N      choose the suite for N GPUs instead of counting this host's: a CI that
                              builds here for GPU hosts elsewhere, the project's tests (stand-in GPUs)
  DIST_TESTS_GPUS=4,5         the GPUs the tests may lease, as the harness takes it (gpu_leases.py)
  DIST_TESTS_TORCH_HAS_UCC=1  the tests' torch has UCC (PyPI's has not; see host_gpus.py)
  DIST_TESTS_DRIVER_VERSION   a stand-in for the driver's version, recorded in HOST
The shell's CUDA_VISIBLE_DEVICES is not read: a test sees it only through --test_env.

When it asks again: the rule is `local` and `configure`, so it reruns on each Bazel server's first
command (a reboot, as a new driver needs, starts a new server), when a setting above or
DIST_TESTS_PYTHON changes (Bazel 4.2.3 reruns a local rule on any change of --repo_env), and on
`tools/bazel sync --configure`. Nothing tells a running server that GPUs came or went: after such
a change, run `tools/bazel sync --configure` (or `tools/bazel shutdown`).
"""

# The settings the rule reads and hands to host_gpus.py, which reads nothing else.
HOST_SETTINGS = [
    "DIST_TESTS_HOST_GPUS",
    "DIST_TESTS_GPUS",
    "DIST_TESTS_TORCH_HAS_UCC",
    "DIST_TESTS_DRIVER_VERSION",
]

# host_gpus.py's exit code for a bad setting, whose message stops the build; any other failure means
# that interpreter cannot answer (too old, or not a Python at all), and the next one is asked.
_BAD_SETTING = 3
_ANSWER = ["gpus", "gpus_from", "driver", "driver_from", "missing_backends"]

def _pythons(rctx):
    """The interpreters to ask, in order: DIST_TESTS_PYTHON when given, then python3 on PATH."""
    found = []
    requested = rctx.os.environ.get("DIST_TESTS_PYTHON", "")
    if requested and rctx.path(requested).exists:
        found.append(("DIST_TESTS_PYTHON=%s" % requested, rctx.path(requested)))
    python3 = rctx.which("python3")
    if python3:
        found.append(("python3 (%s)" % python3, python3))
    return found

def _answer(stdout):
    """host_gpus.py's NAME=VALUE lines as a dict, or None when they are not its answer."""
    answer = {}
    for line in stdout.splitlines():
        name, _, value = line.partition("=")
        answer[name] = value
    for name in _ANSWER:
        if name not in answer:
            return None
    if not answer["gpus"].isdigit():
        return None
    return answer

def _ask(rctx):
    """Runs host_gpus.py on the first interpreter that can; stops the build on a bad setting."""
    script = rctx.path(Label("//tools/gpu:host_gpus.py"))
    given = ["%s=%s" % (name, rctx.os.environ[name]) for name in HOST_SETTINGS if name in rctx.os.environ]
    tried = []
    for name, python in _pythons(rctx):
        # -E -s -B: the caller's PYTHON* variables and user site do not reach it, and it writes no bytecode.
        result = rctx.execute([python, "-E", "-s", "-B", script] + given, timeout = 60, quiet = True)
        if result.return_code == _BAD_SETTING:
            fail("\n\n//dist_tests:host: %s\n" % result.stderr.strip())
        answer = _answer(result.stdout) if result.return_code == 0 else None
        if answer != None:
            return answer
        tried.append("%s: exit %d, %s" % (name, result.return_code, (result.stderr.strip() or result.stdout.strip())[-300:]))
    fail(("\n\n//dist_tests:host: no Python 3.10 or newer could count this host's GPUs (%s runs the harness's code).\n" +
          "Put a CPython 3.11 first on PATH as python3, or pass --repo_env=DIST_TESTS_PYTHON=/path/to/python3.11.\n%s\n") %
         (script, "\n".join(tried) if tried else "Neither DIST_TESTS_PYTHON nor a python3 on PATH was found."))

def _dist_tests_host_impl(rctx):
    answer = _ask(rctx)
    backends = [backend for backend in answer["missing_backends"].split(",") if backend]
    rctx.file("BUILD.bazel", "# HOST in host.bzl: what //dist_tests:host is chosen from (tools/gpu/host.bzl).\n")
    rctx.file("host.bzl", "\n".join([
        '"""This host as //dist_tests:host sees it, written by tools/gpu/host.bzl: do not edit."""',
        "",
        "HOST = struct(",
        "    gpus = %d," % int(answer["gpus"]),
        "    gpus_from = %r," % answer["gpus_from"],
        "    driver = %r," % answer["driver"],
        "    driver_from = %r," % answer["driver_from"],
        "    missing_backends = %r," % backends,
        ")",
        "",
    ]))

dist_tests_host = repository_rule(
    implementation = _dist_tests_host_impl,
    environ = HOST_SETTINGS + ["DIST_TESTS_PYTHON"],
    local = True,
    configure = True,
    doc = "Writes HOST (GPU count, NVIDIA driver, backends the torch lacks) for //dist_tests:host.",
)
