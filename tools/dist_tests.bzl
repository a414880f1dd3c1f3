"""The backend x world-size matrix of PyTorch's distributed spawn suite, one py_test per cell.

`DIST_TEST_MATRIX` is the single source of the matrix: one line per target. Adding a backend
or a world size is adding a line. `dist_test_matrix()` turns it into targets and suites.
"""

# Backends whose ranks each need a GPU of their own.
GPU_BACKENDS = ["nccl", "ucc"]

# One line per target: backend, ranks, shards, and Bazel's timeout for one shard.
# Shards are sized from measured times so that one shard takes a few minutes at most.
DIST_TEST_MATRIX = [
    struct(backend = "gloo", world_size = 2, shard_count = 4, timeout = "moderate"),
    struct(backend = "gloo", world_size = 3, shard_count = 4, timeout = "moderate"),
    struct(backend = "gloo", world_size = 4, shard_count = 4, timeout = "moderate"),
    struct(backend = "nccl", world_size = 2, shard_count = 2, timeout = "long"),
    struct(backend = "nccl", world_size = 4, shard_count = 2, timeout = "long"),
    struct(backend = "ucc", world_size = 2, shard_count = 2, timeout = "long"),
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

def dist_test_tags(backend, world_size):
    """The tags of one matrix cell: its backend, its world size, and how Bazel must schedule it.

    GPU targets are `exclusive`: they share the host's GPUs. CPU targets run in parallel,
    each in its own network namespace (`block-network`), so fixed ports such as 29500 never
    collide; `cpu:N` keeps Bazel from running more ranks at once than there are cores.

    Args:
      backend: the backend's name.
      world_size: the number of ranks.

    Returns:
      The list of tags.
    """
    tags = [backend, "world_size_%d" % world_size]
    if backend in GPU_BACKENDS:
        tags += ["gpu", "exclusive"]
    else:
        tags += ["cpu", "block-network", "cpu:%d" % world_size]
    return tags

def dist_test_env(backend, world_size):
    """The environment of one matrix cell's test: what the harness reads to run it.

    DIST_TESTS_CPUS is the number of cores the `cpu:N` tag reserves, so that each rank gets
    a fair share of them; GPU targets are `exclusive` and share the whole machine instead.

    Args:
      backend: the backend's name.
      world_size: the number of ranks.

    Returns:
      A dict of environment variables.
    """
    env = {"BACKEND": backend, "WORLD_SIZE": str(world_size)}
    if backend not in GPU_BACKENDS:
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
    by_device = {"cpu": [], "gpu": []}
    for cell in matrix:
        target = dist_test_name(cell.backend, cell.world_size)
        native.py_test(
            name = target,
            srcs = [main],
            main = main,
            deps = deps,
            env = dist_test_env(cell.backend, cell.world_size),
            shard_count = cell.shard_count,
            timeout = cell.timeout,
            size = "large" if cell.timeout in ("long", "eternal") else "medium",
            tags = dist_test_tags(cell.backend, cell.world_size),
            # Remote execution routes GPU targets to the GPU workers (tools/platforms).
            exec_properties = {"Pool": "gpu"} if cell.backend in GPU_BACKENDS else {},
            python_version = "PY3",
            srcs_version = "PY3",
        )
        by_backend.setdefault(cell.backend, []).append(":" + target)
        by_device["gpu" if cell.backend in GPU_BACKENDS else "cpu"].append(":" + target)

    for backend, tests in by_backend.items():
        native.test_suite(name = backend, tests = tests)
    for device, tests in by_device.items():
        native.test_suite(name = device, tests = tests)
    native.test_suite(name = name, tests = [":" + d for d in by_device])
