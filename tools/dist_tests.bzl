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

# The device classes a line can name, each a declaration (dist_test_device_class below has the
# fields): the fewest ranks of its lines (the suite needs 2 ranks on CPU; on GPUs upstream also
# runs 1, on a 1-GPU host), the package set its lines run, how a host's devices are counted before
# any rank starts (None: its ranks need no device of their own), the variable that shows each rank
# its leased devices, the variables torch's suite needs, the torch module that counts devices once
# torch has loaded, the forkserver proof its runtime has (None: ranks start by spawn), and the
# remote-execution pool of its targets. The harness reads this literal too, for runs by hand
# (dist_tests/harness/matrix.py), so its values stay literal.
DEVICE_CLASSES = {
    # CPU lines test the CPU suite on any host: with GPUs visible but fewer than ranks, torch's
    # ranks would skip even gloo tests, so the class hides them.
    "cpu": struct(
        least_world_size = 2,
        packages = "@dist_python_cpu//:site_packages",
        env = {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""},
        forkserver_proof = "cuda",
    ),
    # CUDA GPUs, counted by the NVIDIA driver (whose version is checked against torch's CUDA),
    # numbered as nvidia-smi numbers them.
    "gpu": struct(
        least_world_size = 1,
        packages = "@dist_python_gpu//:site_packages",
        count = "nvidia-driver",
        visible_devices = "CUDA_VISIBLE_DEVICES",
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        torch_module = "cuda",
        forkserver_proof = "cuda",
        pool = "gpu",
    ),
}

DEVICES = sorted(DEVICE_CLASSES.keys())

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

def _given(optional):
    """The optional fields that were given: one left None is absent, as if never named."""
    return {key: value for key, value in optional.items() if value != None}

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
      device: the device class its ranks need (a key of DEVICE_CLASSES, or of the macro's `devices`).
      shard_count: the target's shards.
      timeout: Bazel's timeout for one shard.
      name: the target's name when BACKEND_WORLDSIZE is taken.
      env: variables its ranks get.
      plugin: a backend shipped as its own package (dist_test_plugin_deps).
      exclude: the label of a list of tests that never start on the line (dist_test_exclusions).

    Returns:
      The line.
    """
    fields = _given({"env": env, "exclude": exclude, "name": name, "plugin": plugin})
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

def dist_test_device_class(least_world_size, packages, count = None, visible_devices = None, env = None, torch_module = None, forkserver_proof = None, pool = None):
    """A device class of one's own, for dist_test_matrix's `devices` (BUILD files have no `struct`).

    For example a stand-in accelerator whose devices a command counts:

        dist_test_device_class(
            least_world_size = 1,
            packages = "@vendor_python_xpu//:site_packages",
            count = "//vendor_tests:count_xpus.sh",
            visible_devices = "ZE_AFFINITY_MASK",
            env = {"CUDA_VISIBLE_DEVICES": ""},
            torch_module = "xpu",
        )

    Args:
      least_world_size: the fewest ranks a line of the class may have.
      packages: the `:site_packages` of the python_packages repository its lines run
        (tools/python_env/packages.bzl; a lock of one's own gives it a torch build of one's own).
      count: how a host's devices are counted before any rank starts: "nvidia-driver" (the NVIDIA
        driver's GPU list, whose version is checked against torch's CUDA), or the label of an
        executable that prints the number of devices; None when its ranks need no device.
      visible_devices: the variable that shows each rank the devices its run leased (needed with
        `count`): CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, ZE_AFFINITY_MASK, ...
      env: variables every process of its runs gets (the switches torch's suite needs).
      torch_module: the torch module whose device_count() must show the ranks' devices once torch
        has loaded ("cuda", "xpu"); None: the count above is taken as it is.
      forkserver_proof: "cuda" when the forkserver can be proven not to have initialised the class's
        runtime (dist_tests/harness/cuda_driver.py); None: its ranks start by spawn, said once.
      pool: the remote-execution pool of its targets (exec_properties Pool); None: the default.

    Returns:
      The class.
    """
    fields = _given({
        "count": count,
        "env": env,
        "forkserver_proof": forkserver_proof,
        "pool": pool,
        "torch_module": torch_module,
        "visible_devices": visible_devices,
    })
    return struct(least_world_size = least_world_size, packages = packages, **fields)

# What a device class's fields must be: (name, type, required).
_CLASS_FIELDS = [
    ("least_world_size", "int", True),
    ("packages", "string", True),
    ("count", "string", False),
    ("visible_devices", "string", False),
    ("env", "dict", False),
    ("torch_module", "string", False),
    ("forkserver_proof", "string", False),
    ("pool", "string", False),
]
_FORKSERVER_PROOFS = ["cuda"]
_NVIDIA_DRIVER = "nvidia-driver"

def _check_device_class(name, device_class):
    """Stops the load at a device class's first bad field, naming the class and the field."""
    what = "device class %r" % name
    for field, kind, required in _CLASS_FIELDS:
        if not hasattr(device_class, field):
            if required:
                fail("%s has no %s (dist_test_device_class in tools/dist_tests.bzl lists the fields)" % (what, field))
            continue
        value = getattr(device_class, field)
        if type(value) != kind or (kind == "string" and not value):
            fail("%s: its %s must be a non-empty %s, not %r" % (what, field, kind, value))
    if device_class.least_world_size < 1:
        fail("%s: its least_world_size must be at least 1, not %d" % (what, device_class.least_world_size))
    if not device_class.packages.startswith("@") or not device_class.packages.endswith("//:site_packages"):
        fail("%s: its packages must be a python_packages repository's files, \"@NAME//:site_packages\", not %r" % (what, device_class.packages))
    if hasattr(device_class, "count") != hasattr(device_class, "visible_devices"):
        fail("%s: count and visible_devices go together: how its devices are counted, and the variable that shows each rank its own" % what)
    if getattr(device_class, "forkserver_proof", _FORKSERVER_PROOFS[0]) not in _FORKSERVER_PROOFS:
        fail("%s: its forkserver_proof %r is not one of %s (or leave it out: ranks start by spawn)" % (what, device_class.forkserver_proof, _FORKSERVER_PROOFS))

def _device_classes(devices):
    """This repository's device classes and a caller's own, each checked."""
    classes = dict(DEVICE_CLASSES)
    for name, device_class in devices.items():
        if name in classes:
            fail("device class %r is one of dist_tests' own (%s): give yours another name" % (name, ", ".join(DEVICES)))
        classes[name] = device_class
    for name, device_class in classes.items():
        _check_device_class(name, device_class)
    return classes

def _has_devices(device_class):
    return hasattr(device_class, "count")

def _count_command(device_class):
    """The label of the command that counts a class's devices, or None (none, or the NVIDIA driver)."""
    count = getattr(device_class, "count", None)
    return None if count in (None, _NVIDIA_DRIVER) else count

def dist_test_tags(backend, world_size, device, device_class = None):
    """The tags of one matrix cell: its backend, its world size, its device class, and how Bazel must schedule it.

    Targets of a class with devices of their own (gpu) are `exclusive` locally, apart from the rest
    of the server's tests, and not under --config=remote (tools/gpu/scheduling.bzl); on any host,
    each such run leases its devices (dist_tests/harness/gpu_leases.py), so runs never share one.
    The others run in parallel, each in its own network namespace (`block-network`), so fixed ports
    such as 29500 never collide; `cpu:N` keeps Bazel from running more ranks at once than there are
    cores.

    Args:
      backend: the backend's name.
      world_size: the number of ranks.
      device: the device class's name.
      device_class: its declaration; None: DEVICE_CLASSES[device].

    Returns:
      The list of tags.
    """
    device_class = device_class or DEVICE_CLASSES[device]
    tags = [backend, "world_size_%d" % world_size, device]
    if _has_devices(device_class):
        tags += ["exclusive"] if GPU_EXCLUSIVE else []
    else:
        tags += ["block-network", "cpu:%d" % world_size]
    return tags

def dist_python_packages(device):
    """The Python packages that targets of one of this repository's device classes run on.

    Each device class has its own hash-locked set (WORKSPACE, //tools/python_env): the CPU
    build of torch for "cpu", PyPI's CUDA build for "gpu". A target names its set in `data`;
    the interpreter takes it from the runfiles by DIST_TESTS_PACKAGES (else DIST_TESTS_DEVICE).

    Args:
      device: "cpu" or "gpu".

    Returns:
      The label of that set's files.
    """
    return DEVICE_CLASSES[device].packages

def dist_test_env(backend, world_size, device, device_class = None):
    """The environment of one matrix cell's test: what the harness reads to run it.

    DIST_TESTS_DEVICE is the line's device class, and DIST_TESTS_PACKAGES the repository of its
    packages, which the interpreter puts on the path. DIST_TESTS_CPUS, for a class without devices
    of its own, is the number of cores the `cpu:N` tag reserves, so that each rank gets a fair
    share of them; `exclusive` targets share the whole machine instead.

    Args:
      backend: the backend's name.
      world_size: the number of ranks.
      device: the device class's name.
      device_class: its declaration; None: DEVICE_CLASSES[device].

    Returns:
      A dict of environment variables.
    """
    device_class = device_class or DEVICE_CLASSES[device]
    env = {
        "BACKEND": backend,
        "DIST_TESTS_DEVICE": device,
        "DIST_TESTS_PACKAGES": device_class.packages[1:].split("//")[0],
        "WORLD_SIZE": str(world_size),
    }
    if not _has_devices(device_class):
        env["DIST_TESTS_CPUS"] = str(world_size)
    return env

def _class_json(device, device_class):
    """A device class as the harness reads it from a line (the count command by its runfiles path)."""
    fields = {
        "count": getattr(device_class, "count", None),
        "env": getattr(device_class, "env", {}),
        "forkserver_proof": getattr(device_class, "forkserver_proof", None),
        "least_world_size": device_class.least_world_size,
        "name": device,
        "torch_module": getattr(device_class, "torch_module", None),
        "visible_devices": getattr(device_class, "visible_devices", None),
    }
    command = _count_command(device_class)
    if command:
        fields["count"] = {"label": command, "path": "$(rootpath %s)" % command}
    return fields

def dist_test_line_json(target, cell, device_class = None):
    """One matrix line as its target carries it: JSON in DIST_TESTS_LINE, which the harness reads.

    The harness takes its run's line from its own target (dist_tests/harness/matrix.py), not by
    looking the backend up in a table: two lines of one backend each run their own settings and
    plugin, and lines declared in any package, on device classes of their own, run the same way.

    Args:
      target: the line's target name.
      cell: a line of the matrix.
      device_class: the declaration of its device class; None: DEVICE_CLASSES[cell.device].

    Returns:
      The JSON text of its name, backend, world size, device class (its declaration), and `env`,
      `plugin` and `exclude` if any (the exclusion list's label, and its path in the runfiles,
      which Bazel expands in the target's env).
    """
    line = {
        "backend": cell.backend,
        "device": cell.device,
        "device_class": _class_json(cell.device, device_class or DEVICE_CLASSES[cell.device]),
        "name": target,
        "world_size": cell.world_size,
    }
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

def dist_test_runs_here(cell, host = HOST, device_class = None):
    """Whether this host can run a matrix line, which makes it a test of the `host` suite.

    Every line of a class without devices; a line of a class the NVIDIA driver counts whose ranks
    each get a GPU of this host's (WORLD_SIZE at most its GPU count); no line of a class counted
    by a command (Bazel cannot run it when BUILD files load: run those by their class's suite);
    no line of a backend the tests' torch lacks (ucc, unless
    --repo_env=DIST_TESTS_TORCH_HAS_UCC=1). A GPU line stays in on a driver too old for its torch:
    it fails before its first rank saying so, where leaving it out would hide that.

    Args:
      cell: a line of the matrix.
      host: this host, as @dist_tests_host asked it (tools/gpu/host.bzl).
      device_class: the declaration of its device class; None: DEVICE_CLASSES[cell.device].

    Returns:
      True or False.
    """
    device_class = device_class or DEVICE_CLASSES[cell.device]
    if cell.backend in host.missing_backends:
        return False
    count = getattr(device_class, "count", None)
    if count == None:
        return True
    return count == _NVIDIA_DRIVER and cell.world_size <= host.gpus

# The fields every line gives (dist_test_line's positional ones).
_LINE_FIELDS = ["backend", "world_size", "device", "shard_count", "timeout"]

# The entry point and the harness it imports: this repository's own, whichever workspace's BUILD
# file calls the macro (Label() resolves them here, not in the caller's repository).
_ENTRY_POINT = Label("//dist_tests:spawn_test.py")
_HARNESS = Label("//dist_tests:harness")

def dist_test_matrix(name, matrix = DIST_TEST_MATRIX, devices = {}, main = _ENTRY_POINT, deps = [_HARNESS]):
    """Declares one py_test per matrix line, and test_suites per backend, per device class, for all and this host.

    Called in this repository's dist_tests/BUILD.bazel with the table above, or in any package of
    a workspace that declares this one as @dist_tests (tools/deps.bzl) with lines of its own.

    Args:
      name: the name of the suite of every target.
      matrix: the lines to declare; defaults to DIST_TEST_MATRIX.
      devices: device classes of one's own, {name: dist_test_device_class(...)}, beside cpu and gpu.
      main: the entry point that runs the spawn suite; defaults to dist_tests/spawn_test.py.
      deps: libraries the entry point imports; defaults to the harness.
    """
    classes = _device_classes(devices)
    targets = []
    for cell in matrix:
        missing = [field for field in _LINE_FIELDS if not hasattr(cell, field)]
        if missing:
            fail("a line of the matrix has no %s: %s (each line needs %s)" % (", ".join(missing), cell, ", ".join(_LINE_FIELDS)))
        target = dist_test_name(cell)
        if cell.device not in classes:
            fail("%s: device %r is not one of %s: declare it in the macro's `devices` (dist_test_device_class)" % (target, cell.device, sorted(classes.keys())))
        device_class = classes[cell.device]
        if type(cell.world_size) != "int" or cell.world_size < device_class.least_world_size:
            fail("%s: world_size %r: a %s line needs an integer >= %d" % (
                target,
                cell.world_size,
                cell.device,
                device_class.least_world_size,
            ))
        if target in targets:
            fail("%s is the target of two lines of the matrix: give one of them a `name`" % target)
        env = dist_test_env(cell.backend, cell.world_size, cell.device, device_class)
        env["DIST_TESTS_LINE"] = dist_test_line_json(target, cell, device_class)
        line_env = getattr(cell, "env", {})
        for key in line_env:
            if key in env:
                fail("%s: its `env` sets %s, which the macro sets from the line's fields" % (target, key))
        env.update(line_env)
        command = _count_command(device_class)
        pool = getattr(device_class, "pool", None)
        py_test(
            name = target,
            srcs = [main],
            main = main,
            deps = deps + dist_test_plugin_deps(target, cell),
            data = [device_class.packages] + dist_test_exclusions(target, cell) + ([command] if command else []),
            env = env,
            shard_count = cell.shard_count,
            timeout = cell.timeout,
            size = "large" if cell.timeout in ("long", "eternal") else "medium",
            tags = dist_test_tags(cell.backend, cell.world_size, cell.device, device_class),
            # Remote execution routes a class's targets to its pool (tools/platforms).
            exec_properties = {"Pool": pool} if pool else {},
            python_version = "PY3",
            srcs_version = "PY3",
        )
        targets.append(target)

    # Suites select by tag, as --test_tag_filters does: every target of the package tagged so.
    for backend in {cell.backend: None for cell in matrix}:
        native.test_suite(name = backend, tags = [backend])
    for device in sorted(classes.keys()):
        native.test_suite(name = device, tags = [device])
    native.test_suite(name = name, tests = [":" + device for device in sorted(classes.keys())])

    # The targets this host can run, chosen when Bazel loads this (tools/gpu/host.bzl). An empty
    # `tests` would mean every test of the package: with none here, a tag no target has selects none.
    here = [":" + dist_test_name(cell) for cell in matrix if dist_test_runs_here(cell, device_class = classes[cell.device])]
    native.test_suite(name = "host", tests = here, tags = [] if here else ["dist_tests_none_runs_here"])
