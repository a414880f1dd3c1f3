"""What the harness shares with the tools outside it (tools/results, tools/remote): standard library only.

The harness writes these words into its messages and test.xml, and the build event reader
(tools/results/testlogs.py) reads them back; the repro command is printed by both the harness
(reporting.py) and the report (tools/results/report.py).
"""

import socket

# Message prefixes of tests that did not pass and did not plainly skip.
KNOWN_FAILURE_PREFIX = "known failure"
EXCLUDED_PREFIX = "excluded ("  # a test its line's exclusion list keeps from starting: "excluded (LIST): reason"
NOT_RUN_PREFIX = "did not run"
# The test.xml property (of <testsuites>) that says how ranks started, and the start of its value
# when they fell back from the forkserver to spawn.
START_METHOD_PROPERTY = "dist_tests_start_method"
FALLBACK_PREFIX = "spawn (fell back from the forkserver"
# The test.xml property that holds the --repo_env flags which chose the run's interpreter or torch
# (the interpreter's wrapper passes them in DIST_TESTS_TORCH_FLAGS); absent with the locked torch.
TORCH_FLAGS_PROPERTY = "dist_tests_torch_flags"
# The test.xml property present when a CPU target's action shared the Bazel server's network namespace
# (its block-network tag did nothing, dist_tests/harness/network.py), and its value.
NETWORK_PROPERTY = "dist_tests_network"
SHARED_NETWORK = "the Bazel server's (no network namespace of its own)"
# The test.xml property that names the run's cell, BACKEND:WORLD_SIZE:DEVICE: the report finds by it the
# targets of lines declared in any package or workspace, which its own table does not list.
CELL_PROPERTY = "dist_tests_cell"
# The line that says where every rank of a hung or failed test is (flight_records.py); the report shows it.
FLIGHT_RECORDER_PREFIX = "flight recorder:"


def repro_command(label: str, test_name: str, torch_flags: str = "") -> str:
    """The one command that reruns one test of a target alone, on the same torch as the run it repeats."""
    return f"tools/bazel test {label} --test_filter={test_name}" + (f" {torch_flags}" if torch_flags else "")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (a rank's rendezvous, a local server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
