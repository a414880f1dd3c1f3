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

def host_python(rctx, lock):
    """The host interpreter the environment is built on, checked against the lock's Pythons.

    Args:
      rctx: the repository context.
      lock: the label of the lock whose `# python:` line the interpreter must match: the
        locked environment's, or the harness lock's range with the interpreter's own torch.

    Returns:
      A struct with `executable` (its real path) and `version` ("3.11").
    """
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
    executable, implementation, version = probe.stdout.strip().splitlines()[-3:]
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
