"""Whether GPU test targets are `exclusive`: on a workstation yes, under --config=remote no.

Locally `exclusive` keeps a Bazel server's GPU tests apart from everything else it runs. Under
remote execution it would do harm: Bazel 4.2.3 runs exclusive tests one at a time, so a gpu pool
of N workers would get one GPU action at a time. There each GPU run's lease on its GPUs
(dist_tests/harness/gpu_leases.py) is what keeps the actions on one host apart.

Tags are read when BUILD files load, where no build flag reaches a macro, so a repository rule
carries the choice: `--repo_env=DIST_TESTS_GPU_EXCLUSIVE=0` (which --config=remote sets) writes
`GPU_EXCLUSIVE = False` into @dist_tests_gpu_scheduling//:scheduling.bzl.
"""

def _gpu_scheduling_impl(repository_ctx):
    value = repository_ctx.os.environ.get("DIST_TESTS_GPU_EXCLUSIVE", "1")
    if value not in ("0", "1"):
        fail("DIST_TESTS_GPU_EXCLUSIVE=%r: use 1 (GPU targets exclusive, the default) or 0 (under remote execution)" % value)
    repository_ctx.file("BUILD.bazel", "")
    repository_ctx.file("scheduling.bzl", "GPU_EXCLUSIVE = %s\n" % (value == "1"))

gpu_scheduling = repository_rule(
    implementation = _gpu_scheduling_impl,
    environ = ["DIST_TESTS_GPU_EXCLUSIVE"],
    local = True,
    doc = "Writes GPU_EXCLUSIVE, from DIST_TESTS_GPU_EXCLUSIVE (--repo_env), for dist_test_tags().",
)
