"""The backend x world-size matrix of PyTorch's distributed spawn suite, one py_test per cell.

`DIST_TEST_MATRIX` is the single source of the matrix: one line per target. Adding a backend
or a world size is adding a line. `dist_test_matrix()` turns it into targets and suites, and
passes each target's backend, world size and device class to the harness in its environment.
The harness reads this table too (dist_tests/harness/matrix.py: the backends it accepts and,
run by hand, each backend's device class), so its lines must stay literal `struct(...)` calls.
"""

load("@dist_tests_gpu_scheduling//:scheduling.bzl", "GPU_EXCLUSIVE")
load("@rules_python//python:defs.bzl", "py_test")

# The device classes a line can name: "gpu" ranks each need a GPU of their own.
DEVICES = ["cpu", "gpu"]

# One line per target: backend, ranks, the device class its ranks need, shards, and Bazel's
# timeout for one shard. Shards are sized from measured times so that one shard takes a few
# minutes at most.
DIST_TEST_MATRIX = [
    struct(backend = "gloo", world_size = 2, device = "cpu", shard_count = 4, timeout = "moderate"),
    struct(backend = "gloo", world_size = 3, device = "cpu", shard_count = 4, timeout = "moderate"),
    struct(backend = "gloo", world_size = 4, device = "cpu", shard_count = 4, timeout = "moderate"),
    struct(backend = "nccl", world_size = 2, device = "gpu", shard_count = 2, timeout = "long"),
    struct(backend = "nccl", world_size = 4, device = "gpu", shard_count = 2, timeout = "long"),
    struct(backend = "ucc", world_size = 2, device = "gpu", shard_count = 2, timeout = "long"),
]

def dist_test_name(backend, world_size):
    """The target name of one matrix cell.

    Args:
      backend: the backend's name, for example "gloo".
      world_size: the number of ranks.

    Returns:
      The name, for example "gloo_2".
    """
    return "%s_%d" % (backend, world_size)

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

def dist_test_matrix(name, main, deps = [], matrix = DIST_TEST_MATRIX):
    """Declares one py_test per matrix line, and test_suites per backend, for cpu, gpu and all.

    Args:
      name: the name of the suite of every target.
      main: the entry point that runs the spawn suite.
      deps: libraries the entry point imports.
      matrix: the lines to declare; defaults to DIST_TEST_MATRIX.
    """
    by_backend = {}
    by_device = {device: [] for device in DEVICES}
    device_of_backend = {}
    for cell in matrix:
        if cell.device not in DEVICES:
            fail("%s_%d: device %r is not one of %s" % (cell.backend, cell.world_size, cell.device, DEVICES))
        if device_of_backend.setdefault(cell.backend, cell.device) != cell.device:
            fail("backend %r is on lines with different devices; give all its lines one device" % cell.backend)
        target = dist_test_name(cell.backend, cell.world_size)
        py_test(
            name = target,
            srcs = [main],
            main = main,
            deps = deps,
            data = [dist_python_packages(cell.device)],
            env = dist_test_env(cell.backend, cell.world_size, cell.device),
            shard_count = cell.shard_count,
            timeout = cell.timeout,
            size = "large" if cell.timeout in ("long", "eternal") else "medium",
            tags = dist_test_tags(cell.backend, cell.world_size, cell.device),
            # Remote execution routes GPU targets to the GPU workers (tools/platforms).
            exec_properties = {"Pool": "gpu"} if cell.device == "gpu" else {},
            python_version = "PY3",
            srcs_version = "PY3",
        )
        by_backend.setdefault(cell.backend, []).append(":" + target)
        by_device[cell.device].append(":" + target)

    for backend, tests in by_backend.items():
        native.test_suite(name = backend, tests = tests)
    for device, tests in by_device.items():
        native.test_suite(name = device, tests = tests)
    native.test_suite(name = name, tests = [":" + d for d in by_device])
