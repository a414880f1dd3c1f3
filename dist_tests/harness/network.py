"""Whether a test action shares the Bazel server's network namespace: `block-network` did nothing.

CPU targets are tagged `block-network` so that Bazel's Linux sandbox gives each action a network
namespace of its own, which keeps torch's fixed ports apart between parallel targets, shards and
runs. Where that sandbox cannot create namespaces (Ubuntu 24.04 restricts unprivileged user
namespaces through AppArmor), Bazel falls back, silently, to its process-wrapper sandbox, which
has none; so do --spawn_strategy=local and standalone. Only /proc is read here, before torch loads.

The test: walk up this process's parents to the Bazel server. The Linux sandbox runs the action in
a PID namespace of its own, so the server is not found there; a remote worker is no Bazel server.
Found, and in this process's network namespace, the action shares the host's network with every
other action. Anything unreadable means "cannot tell", never a warning.
"""

import os

# The server's jar, in every Bazel's install base; its process is also named "bazel(WORKSPACE)".
_SERVER_JAR = "A-server.jar"
_MAX_PARENTS = 64  # a cycle or a very deep tree: give up


def _net_namespace(pid: int | str, proc: str) -> str | None:
    try:
        return os.readlink(f"{proc}/{pid}/ns/net")
    except OSError:
        return None


def _parent(pid: int, proc: str) -> int:
    """The parent's pid, from /proc/PID/stat (the command may hold spaces and parentheses); 0: none or unreadable."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_bazel_server(pid: int, proc: str) -> bool:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return (args[0].startswith("bazel(") and args[0].endswith(")")) or any(
        arg.endswith("/" + _SERVER_JAR) for arg in args)


def bazel_server_sharing_network(proc: str = "/proc", pid: int | None = None) -> int | None:
    """The pid of the Bazel server above process `pid` (this one) when it is in that process's network namespace,
    else None."""
    own = _net_namespace("self" if pid is None else pid, proc)
    if own is None:
        return None
    pid = os.getppid() if pid is None else _parent(pid, proc)
    for _ in range(_MAX_PARENTS):
        if pid <= 1:
            return None
        if _is_bazel_server(pid, proc):
            return pid if _net_namespace(pid, proc) == own else None
        pid = _parent(pid, proc)
    return None


def shared_network_warning(target: str, proc: str = "/proc", pid: int | None = None) -> str | None:
    """The warning a CPU target's shard prints once when its action shares the server's network, else None."""
    try:
        server = bazel_server_sharing_network(proc, pid)
    except Exception:  # noqa: BLE001 - a check that only informs must never stop a run
        return None
    if server is None:
        return None
    return (f"{target} runs in the Bazel server's network namespace (pid {server}), not in one of its own: its "
            "block-network tag did nothing, as Bazel ran it outside its Linux sandbox (--spawn_strategy=local or "
            "standalone, or the fallback Bazel takes without a word when that sandbox cannot create namespaces: on "
            "Ubuntu 24.04 AppArmor restricts unprivileged user namespaces, and "
            "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or an AppArmor profile that lets "
            "Bazel's linux-sandbox create them, gives them back). So every CPU target, shard and run shares the "
            "host's network: tests that bind torch's fixed ports (29500, 29501) can fail with \"Address already in "
            "use\" when they overlap (--local_test_jobs=1 runs them one at a time). This warning fails or skips "
            "nothing (docs/isolation.md).")
