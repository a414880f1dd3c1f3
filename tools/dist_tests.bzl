"""The backend x world-size matrix of PyTorch's distributed spawn suite, one py_test per cell.

`DIST_TEST_MATRIX` is the single source of the matrix: one line per target. Adding a backend
or a world size is adding a line. `dist_test_matrix()` turns it into targets and suites, and
passes each target its whole line in its environment (DIST_TESTS_LINE), which the harness runs.
Run by hand, without a target, the harness reads this table (dist_tests/harness/matrix.py: the
backends it accepts, each backend's device class, target name and environment), so its lines
must stay literal `struct(...)` calls.
"""

load("@dist_tests_gpu_scheduling//:scheduling.bzl", "GPU_EXCLUSIVE")
load("@dist_tests_host//:host.bzl", "HOST")
load("@rules_python//python:defs.bzl", "py_test")

# The device classes a line can name ("gpu" ranks each need a GPU of their own), with the fewest
# ranks a line of each may have: the suite needs 2 ranks on CPU; on GPUs upstream also runs 1,
# on a 1-GPU host. The harness reads this literal too (dist_tests/harness/matrix.py).
LEAST_WORLD_SIZE = {"cpu": 2, "gpu": 1}

DEVICES = sorted(LEAST_WORLD_SIZE.keys())

# One line per target: backend, ranks, the device class its ranks need, shards, and Bazel's
# timeout for one shard. Shards are sized from measured times so that one shard takes a few
# minutes at most. Optional fields: `name`, the target's name when BACKEND_WORLDSIZE is taken
# (a backend on both device classes names its GPU lines); `env`, variables its ranks get
# (a user's --test_env wins); `plugin`, for a backend shipped as its own package (see
# dist_test_plugin_deps below and docs/backends.md); `exclude`, the label of a list of tests that
# never start on the line (dist_test_exclusions below), for example:
#   struct(backend = "example", world_size = 2, device = "cpu", shard_count = 4, timeout = "moderate",
#          plugin = {"module": "example_backend", "library": "//tests/plugin:example_backend",
#                    "features": ["ddp", "subgroup"], "init_method": "tcp"}),
DIST_TEST_MATRIX = [
    struct(backend = "gloo", world_size = 2, device = "cpu", shard_count = 4, timeout = "moderate"),
    struct(backend = "gloo", world_size = 3, device = "cpu", shard_count = 4, timeout = "moderate"),
    struct(backend = "gloo", world_size = 4, device = "cpu", shard_count = 4, timeout = "moderate"),
    # Upstream's GPU job: gloo with every GPU visible, exercising its CUDA-tensor paths. One
    # rank is what upstream runs on a 1-GPU host (WORLD_SIZE is the GPU count there).
    struct(backend = "gloo", world_size = 1, device = "gpu", name = "gloo_gpu_1", shard_count = 4, timeout = "long"),
    struct(backend = "gloo", world_size = 2, device = "gpu", name = "gloo_gpu_2", shard_count = 4, timeout = "long"),
    struct(backend = "gloo", world_size = 4, device = "gpu", name = "gloo_gpu_4", shard_count = 4, timeout = "long"),
    struct(backend = "nccl", world_size = 1, device = "gpu", shard_count = 2, timeout = "long"),
    struct(backend = "nccl", world_size = 2, device = "gpu", shard_count = 2, timeout = "long"),
    struct(backend = "nccl", world_size = 4, device = "gpu", shard_count = 2, timeout = "long"),
    # Upstream's last UCC settings (its CI stopped running UCC in late 2024).
    struct(backend = "ucc", world_size = 2, device = "gpu", shard_count = 2, timeout = "long", env = {
        "UCC_EC_CUDA_USE_COOPERATIVE_LAUNCH": "n",
        "UCC_TLS": "nccl,ucp,cuda",
        "UCC_TL_UCP_TUNE": "cuda:0",
        "UCX_TLS": "tcp,cuda",
    }),
]

def dist_test_line(backend, world_size, device, shard_count, timeout, name = None, env = None, plugin = None, exclude = None):
    """One matrix line, for a BUILD file of one's own (where `struct` is not available).

    The same fields as a line of DIST_TEST_MATRIX; an optional field left None is absent, as if
    the line had not named it. For example, in a workspace that declares this one (tools/deps.bzl):

        dist_test_matrix(name = "all", matrix = [
            dist_test_line("xccl", 2, "cpu", shard_count = 4, timeout = "moderate", plugin = {...}),
        ])

    Args:
      backend: the backend's name.
      world_size: the number of ranks.
      device: the device class its ranks need (a key of LEAST_WORLD_SIZE).
      shard_count: the target's shards.
      timeout: Bazel's timeout for one shard.
      name: the target's name when BACKEND_WORLDSIZE is taken.
      env: variables its ranks get.
      plugin: a backend shipped as its own package (dist_test_plugin_deps).
      exclude: the label of a list of tests that never start on the line (dist_test_exclusions).

    Returns:
      The line.
    """
    optional = {"env": env, "exclude": exclude, "name": name, "plugin": plugin}
    fields = {key: value for key, value in optional.items() if value != None}
    return struct(backend = backend, world_size = world_size, device = device, shard_count = shard_count, timeout = timeout, **fields)

def dist_test_name(cell):
    """The target name of one matrix line: its `name`, else BACKEND_WORLDSIZE.

    Args:
      cell: a line of DIST_TEST_MATRIX.

    Returns:
      The name, for example "gloo_2" or "gloo_gpu_2".
    """
    return getattr(cell, "name", "%s_%d" % (cell.backend, cell.world_size))

def dist_test_report_matrix():
    """The matrix as tools/results/report.py reads it: one NAME:BACKEND:WORLD_SIZE:DEVICE per line.

    Returns:
      The lines, comma-separated, for example "gloo_2:gloo:2:cpu,gloo_gpu_2:gloo:2:gpu".
    """
    return ",".join([
        "%s:%s:%d:%s" % (dist_test_name(c), c.backend, c.world_size, c.device)
        for c in DIST_TEST_MATRIX
    ])

# The keys of a line's `plugin`, and the init methods it may ask for (dist_tests/harness/plugins.py).
PLUGIN_KEYS = ["module", "library", "features", "init_method"]
PLUGIN_INIT_METHODS = ["file", "env", "tcp"]

def dist_test_plugin_deps(target, cell):
    """The libraries a line's `plugin` adds to its target, after checking the plugin's fields.

    A backend shipped as its own package names the Python module that registers it
    (`module`), the library that provides that module (`library`: a py_library of the
    workspace, or of a repository made from a hash-pinned wheel lock), the
    DistTestCases.backend_feature sets it joins (`features`), and optionally the rendezvous
    it needs (`init_method`: file, torch's default; env; or tcp). The harness imports the
    module in the parent, the forkserver and every rank.

    Args:
      target: the line's target name, for messages.
      cell: a line of DIST_TEST_MATRIX.

    Returns:
      A list of labels: [] for a backend torch registers itself.
    """
    plugin = getattr(cell, "plugin", None)
    if plugin == None:
        return []
    if type(plugin) != "dict":
        fail("%s: `plugin` must be a dict with the keys %s" % (target, PLUGIN_KEYS))
    for key in plugin:
        if key not in PLUGIN_KEYS:
            fail("%s: `plugin` has an unknown key %r: use %s" % (target, key, PLUGIN_KEYS))
    for key in ["module", "library"]:
        if type(plugin.get(key)) != "string" or not plugin[key]:
            fail("%s: `plugin` needs %r, a non-empty string" % (target, key))
    if type(plugin.get("features", [])) != "list":
        fail("%s: `plugin`'s features must be a list of DistTestCases.backend_feature names" % target)
    if plugin.get("init_method", "file") not in PLUGIN_INIT_METHODS:
        fail("%s: `plugin`'s init_method %r is not one of %s" % (target, plugin["init_method"], PLUGIN_INIT_METHODS))
    return [plugin["library"]]

def dist_test_tags(backend, world_size, device):
    """The tags of one matrix cell: its backend, its world size, and how Bazel must schedule it.

    GPU targets are `exclusive` locally, apart from the rest of the server's tests, and not
    under --config=remote (tools/gpu/scheduling.bzl); on any host, each GPU run leases its
    GPUs (dist_tests/harness/gpu_leases.py), so runs never share one. CPU targets run in parallel,
    each in its own network namespace (`block-network`), so fixed ports such as 29500 never
    collide; `cpu:N` keeps Bazel from running more ranks at once than there are cores.

    Args:
      backend: the backend's name.
      world_size: the number of ranks.
      device: "cpu" or "gpu".

    Returns:
      The list of tags.
    """
    tags = [backend, "world_size_%d" % world_size]
    if device == "gpu":
        tags += ["gpu", "exclusive"] if GPU_EXCLUSIVE else ["gpu"]
    else:
        tags += ["cpu", "block-network", "cpu:%d" % world_size]
    return tags

def dist_python_packages(device):
    """The Python packages that targets of a device class run on.

    Each device class has its own hash-locked set (WORKSPACE, //tools/python_env): the CPU
    build of torch for "cpu", PyPI's CUDA build for "gpu". A target names its set in `data`;
    the interpreter takes it from the runfiles by DIST_TESTS_DEVICE.

    Args:
      device: "cpu" or "gpu".

    Returns:
      The label of that set's files.
    """
    return "@dist_python_%s//:site_packages" % device

def dist_test_env(backend, world_size, device):
    """The environment of one matrix cell's test: what the harness reads to run it.

    DIST_TESTS_DEVICE is the line's device class. DIST_TESTS_CPUS is the number of cores the
    `cpu:N` tag reserves, so that each rank gets a fair share of them; GPU targets are
    `exclusive` and share the whole machine instead.

    Args:
      backend: the backend's name.
      world_size: the number of ranks.
      device: "cpu" or "gpu".

    Returns:
      A dict of environment variables.
    """
    env = {"BACKEND": backend, "DIST_TESTS_DEVICE": device, "WORLD_SIZE": str(world_size)}
    if device == "cpu":
        env["DIST_TESTS_CPUS"] = str(world_size)
    return env

def dist_test_line_json(target, cell):
    """One matrix line as its target carries it: JSON in DIST_TESTS_LINE, which the harness reads.

    The harness takes its run's line from its own target (dist_tests/harness/matrix.py), not by
    looking the backend up in a table: two lines of one backend each run their own settings and
    plugin, and lines declared in any package run the same way.

    Args:
      target: the line's target name.
      cell: a line of the matrix.

    Returns:
      The JSON text of its name, backend, world size, device class, and `env`, `plugin` and
      `exclude` if any (the exclusion list's label, and its path in the runfiles, which Bazel
      expands in the target's env).
    """
    line = {"backend": cell.backend, "device": cell.device, "name": target, "world_size": cell.world_size}
    if hasattr(cell, "env"):
        line["env"] = cell.env
    if getattr(cell, "plugin", None) != None:
        line["plugin"] = cell.plugin
    if hasattr(cell, "exclude"):
        line["exclude"] = {"label": cell.exclude, "path": "$(rootpath %s)" % cell.exclude}
    return json.encode(line)

def dist_test_exclusions(target, cell):
    """The data a line's `exclude` adds to its target: the list of tests that never start on it.

    Each of its lines is `test_name: reason` (or `test_name[3,4]: reason`, at those world
    sizes only), as in dist_tests/known_failures/. Those tests are reported as skipped,
    "excluded (LIST): reason", and counted apart; a name the suite does not have stops the run.

    Args:
      target: the line's target name, for messages.
      cell: a line of the matrix.

    Returns:
      A list of labels: [] for a line without `exclude`.
    """
    if not hasattr(cell, "exclude"):
        return []
    if type(cell.exclude) != "string" or not cell.exclude:
        fail("%s: `exclude` must be the label of a list file (test_name: reason, one a line)" % target)
    return [cell.exclude]

def dist_test_runs_here(cell, host = HOST):
    """Whether this host can run a matrix line, which makes it a test of the `host` suite.

    Every CPU line; a GPU line whose ranks each get a GPU of this host's (WORLD_SIZE at most its
    GPU count); no line of a backend the tests' torch lacks (ucc, unless
    --repo_env=DIST_TESTS_TORCH_HAS_UCC=1). A GPU line stays in on a driver too old for its torch:
    it fails before its first rank saying so, where leaving it out would hide that.

    Args:
      cell: a line of DIST_TEST_MATRIX.
      host: this host, as @dist_tests_host asked it (tools/gpu/host.bzl).

    Returns:
      True or False.
    """
    if cell.backend in host.missing_backends:
        return False
    return cell.device != "gpu" or cell.world_size <= host.gpus

# The fields every line gives (dist_test_line's positional ones).
_LINE_FIELDS = ["backend", "world_size", "device", "shard_count", "timeout"]

# The entry point and the harness it imports: this repository's own, whichever workspace's BUILD
# file calls the macro (Label() resolves them here, not in the caller's repository).
_ENTRY_POINT = Label("//dist_tests:spawn_test.py")
_HARNESS = Label("//dist_tests:harness")

def dist_test_matrix(name, matrix = DIST_TEST_MATRIX, main = _ENTRY_POINT, deps = [_HARNESS]):
    """Declares one py_test per matrix line, and test_suites per backend, for cpu, gpu, all and this host.

    Called in this repository's dist_tests/BUILD.bazel with the table above, or in any package of
    a workspace that declares this one as @dist_tests (tools/deps.bzl) with lines of its own.

    Args:
      name: the name of the suite of every target.
      matrix: the lines to declare; defaults to DIST_TEST_MATRIX.
      main: the entry point that runs the spawn suite; defaults to dist_tests/spawn_test.py.
      deps: libraries the entry point imports; defaults to the harness.
    """
    targets = []
    for cell in matrix:
        missing = [field for field in _LINE_FIELDS if not hasattr(cell, field)]
        if missing:
            fail("a line of the matrix has no %s: %s (each line needs %s)" % (", ".join(missing), cell, ", ".join(_LINE_FIELDS)))
        target = dist_test_name(cell)
        if cell.device not in DEVICES:
            fail("%s: device %r is not one of %s" % (target, cell.device, DEVICES))
        if type(cell.world_size) != "int" or cell.world_size < LEAST_WORLD_SIZE[cell.device]:
            fail("%s: world_size %r: a %s line needs an integer >= %d" % (
                target,
                cell.world_size,
                cell.device,
                LEAST_WORLD_SIZE[cell.device],
            ))
        if target in targets:
            fail("%s is the target of two lines of the matrix: give one of them a `name`" % target)
        env = dist_test_env(cell.backend, cell.world_size, cell.device)
        env["DIST_TESTS_LINE"] = dist_test_line_json(target, cell)
        line_env = getattr(cell, "env", {})
        for key in line_env:
            if key in env:
                fail("%s: its `env` sets %s, which the macro sets from the line's fields" % (target, key))
        env.update(line_env)
        py_test(
            name = target,
            srcs = [main],
            main = main,
            deps = deps + dist_test_plugin_deps(target, cell),
            data = [dist_python_packages(cell.device)] + dist_test_exclusions(target, cell),
            env = env,
            shard_count = cell.shard_count,
            timeout = cell.timeout,
            size = "large" if cell.timeout in ("long", "eternal") else "medium",
            tags = dist_test_tags(cell.backend, cell.world_size, cell.device),
            # Remote execution routes GPU targets to the GPU workers (tools/platforms).
            exec_properties = {"Pool": "gpu"} if cell.device == "gpu" else {},
            python_version = "PY3",
            srcs_version = "PY3",
        )
        targets.append(target)

    # Suites select by tag, as --test_tag_filters does: every target of the package tagged so.
    for backend in {cell.backend: None for cell in matrix}:
        native.test_suite(name = backend, tags = [backend])
    for device in DEVICES:
        native.test_suite(name = device, tags = [device])
    native.test_suite(name = name, tests = [":" + device for device in DEVICES])

    # The targets this host can run, chosen when Bazel loads this (tools/gpu/host.bzl). An empty
    # `tests` would mean every test of the package: with none here, a tag no target has selects none.
    here = [":" + dist_test_name(cell) for cell in matrix if dist_test_runs_here(cell)]
    native.test_suite(name = "host", tests = here, tags = [] if here else ["dist_tests_none_runs_here"])
