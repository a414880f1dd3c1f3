"""What the interpreter rule and the package rules share: finding the host Python, reading locks.

Both rules run the same host interpreter (`DIST_TESTS_PYTHON`, or `python3` on PATH): the
interpreter rule copies it, the package rules run pip with it, so the packages are installed
for exactly the interpreter the tests run.
"""

# Settings that change what an environment holds; a change re-runs the rules (`environ`).
SETTINGS = [
    "DIST_TESTS_PYTHON",
    "DIST_TESTS_TORCH_WHEEL",
    "DIST_TESTS_TORCH_WHEEL_SHA256",
    "DIST_TESTS_USE_INTERPRETER_TORCH",
]

# The locks of the tests' environment, one per device class and Python ({python}: "3.12"), written by
# tools/python_env/update_lock for each Python of its PYTHONS; the host's version picks its own.
LOCKS = {
    "cpu": "//third_party/python:requirements_cpu_py{python}_lock.txt",
    "gpu": "//third_party/python:requirements_gpu_py{python}_lock.txt",
}

# pip's own configuration: where wheels come from (a mirror, a folder of wheels).
PIP_ENV = [
    "PIP_CONFIG_FILE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_TRUSTED_HOST",
]

def fail_with(message):
    """Stops the build with a message of the project's own, not a Starlark trace.

    Args:
      message: what went wrong and what to do.
    """
    fail("\n\npython_env: " + message + "\n")

def run(rctx, args, what, timeout = 3600, environment = {}, ok_codes = [0]):
    """Runs a command; stops the build with its output when it fails.

    Args:
      rctx: the repository context.
      args: the command.
      what: what it does, for the message.
      timeout: seconds.
      environment: extra environment variables.
      ok_codes: exit codes that are not failures.

    Returns:
      The exec result.
    """
    result = rctx.execute(args, timeout = timeout, environment = environment, quiet = True)
    if result.return_code not in ok_codes:
        fail_with("%s failed (exit %d):\n%s\n%s" % (what, result.return_code, result.stdout, result.stderr))
    return result

def lock_python_versions(rctx, lock):
    """The Pythons a lock is for: its `# python: X.Y` line, or `# python: X.Y-X.Z` for a range.

    Args:
      rctx: the repository context.
      lock: the lock's label.

    Returns:
      The lowest and highest version, for example ("3.11", "3.11") or ("3.10", "3.13").
    """
    for line in rctx.read(lock).splitlines():
        if line.startswith("# python:"):
            versions = line[len("# python:"):].strip().split("-")
            return versions[0], versions[-1]
    fail_with("%s has no '# python: X.Y' line. Regenerate it with tools/python_env/update_lock." % lock)
    return None

def _version_tuple(version):
    return [int(part) for part in version.split(".")]

def _probe(rctx):
    """The host interpreter (`DIST_TESTS_PYTHON`, or python3 on PATH): its real path, implementation, X.Y."""
    requested = rctx.os.environ.get("DIST_TESTS_PYTHON", "")
    if requested:
        python = rctx.path(requested)
        if not python.exists:
            fail_with("DIST_TESTS_PYTHON=%s does not exist. Point it at a CPython interpreter." % requested)
    else:
        python = rctx.which("python3")
        if not python:
            fail_with("no python3 on PATH. Install CPython, or pass --repo_env=DIST_TESTS_PYTHON=/path/to/python3.")
    probe = run(rctx, [python, "-E", "-c", "import sys; print(sys.executable); print(sys.implementation.name); print('%d.%d' % sys.version_info[:2])"], "Probing %s" % python)
    return probe.stdout.strip().splitlines()[-3:]

def locked_versions(rctx, pattern):
    """The Pythons that have a lock of the pattern: the files there are, by name.

    Args:
      rctx: the repository context.
      pattern: a lock's label with `{python}` for the version, as `LOCKS` holds them.

    Returns:
      The versions, oldest first, for example ["3.10", "3.11"].
    """
    package, _, name = pattern.partition(":")
    prefix, _, suffix = name.partition("{python}")
    folder = rctx.path(Label(package + ":BUILD.bazel")).dirname
    versions = []
    for entry in folder.readdir():
        if entry.basename.startswith(prefix) and entry.basename.endswith(suffix) and len(entry.basename) > len(prefix + suffix):
            versions.append(entry.basename[len(prefix):len(entry.basename) - len(suffix)])
    return sorted(versions, key = _version_tuple)

def locked_python(rctx, patterns, what):
    """The host interpreter and, of each pattern, the lock of its Python; refused when none has one.

    The locks are one per Python (tools/python_env/update_lock's PYTHONS): the host's version
    picks its own. A version without a lock of any pattern stops the build here, before any test
    starts, naming the versions there are and how to point at one of them.

    Args:
      rctx: the repository context.
      patterns: lock labels with `{python}` for the version (LOCKS); the host's version must have
        a lock of at least one (the interpreter, shared by the device classes) or of the only one.
      what: what the locks are for, for the message ("the cpu targets' packages").

    Returns:
      A struct with `executable` (its real path), `version` ("3.12") and `lock`: the Label of the
      first pattern's lock that exists for this version.
    """
    executable, implementation, version = _probe(rctx)
    found = "%s is %s %s" % (executable, "Python" if implementation == "cpython" else implementation, version)
    have = {}
    for pattern in patterns:
        for locked in locked_versions(rctx, pattern):
            have.setdefault(locked, [])
            have[locked].append(pattern)
    if implementation == "cpython" and version in have:
        lock = Label(have[version][0].format(python = version))
        lowest, highest = lock_python_versions(rctx, lock)
        if lowest != version or highest != version:
            fail_with("%s is named for Python %s but says '# python: %s'. Regenerate it: tools/python_env/update_lock --python %s" %
                      (lock, version, lowest if lowest == highest else lowest + "-" + highest, version))
        return struct(executable = executable, version = version, lock = lock)
    versions = sorted(have.keys(), key = _version_tuple)
    fail_with(("%s are locked for CPython %s (%s), but %s: there is no lock for %s.\n" +
               "Either point DIST_TESTS_PYTHON at a CPython of one of those versions (apt-get install python3.X; on\n" +
               "Ubuntu 24.04, whose python3 is 3.12, the deadsnakes PPA for another; or pyenv install 3.X; or uv python install 3.X):\n" +
               "  --repo_env=DIST_TESTS_PYTHON=/path/to/python3.X\n" +
               "or test the torch installed for this interpreter, on any CPython 3.10 to 3.13:\n" +
               "  --repo_env=DIST_TESTS_PYTHON=%s --repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1\n" +
               "(docs/torch.md). A lock for another Python: docs/locks.md.") %
              (what, ", ".join(versions) or "no version", ", ".join(patterns), found, version, executable))
    return None

def host_python(rctx, lock):
    """The host interpreter the environment is built on, checked against the lock's Pythons.

    Args:
      rctx: the repository context.
      lock: the label of the lock whose `# python:` line the interpreter must match: the harness
        lock's range with the interpreter's own torch, or a plugin's lock (the tests' own locks,
        one per Python, are picked by locked_python).

    Returns:
      A struct with `executable` (its real path) and `version` ("3.11").
    """
    executable, implementation, version = _probe(rctx)
    lowest, highest = lock_python_versions(rctx, lock)
    if implementation == "cpython" and _version_tuple(lowest) <= _version_tuple(version) and _version_tuple(version) <= _version_tuple(highest):
        return struct(executable = executable, version = version)
    found = "%s is %s %s" % (executable, "Python" if implementation == "cpython" else implementation, version)
    if uses_interpreter_torch(rctx):
        fail_with(("DIST_TESTS_USE_INTERPRETER_TORCH=1 runs the tests on the interpreter's own torch with CPython %s to %s\n" +
                   "(the harness packages of %s are locked for those), but %s.\n" +
                   "Point DIST_TESTS_PYTHON at a CPython %s to %s that has your torch installed.") %
                  (lowest, highest, lock, found, lowest, highest))
    fail_with(("the tests' environment is locked for CPython %s (%s), but %s.\n" +
               "Either install CPython %s (apt-get install python%s; on Ubuntu 24.04 from the deadsnakes PPA;\n" +
               "or pyenv install %s; or uv python install %s) and pass --repo_env=DIST_TESTS_PYTHON=/path/to/python%s,\n" +
               "or test the torch installed for this interpreter, on any CPython 3.10 to 3.13:\n" +
               "  --repo_env=DIST_TESTS_PYTHON=%s --repo_env=DIST_TESTS_USE_INTERPRETER_TORCH=1\n" +
               "(docs/torch.md).") % (lowest, lock, found, lowest, lowest, lowest, lowest, lowest, executable))
    return None

def uses_interpreter_torch(rctx):
    """Whether `DIST_TESTS_USE_INTERPRETER_TORCH=1` asks for the interpreter's own torch.

    Args:
      rctx: the repository context.

    Returns:
      True or False.
    """
    interpreter_torch = rctx.os.environ.get("DIST_TESTS_USE_INTERPRETER_TORCH", "") == "1"
    if interpreter_torch and rctx.os.environ.get("DIST_TESTS_TORCH_WHEEL", ""):
        fail_with("set DIST_TESTS_TORCH_WHEEL or DIST_TESTS_USE_INTERPRETER_TORCH, not both.")
    return interpreter_torch
