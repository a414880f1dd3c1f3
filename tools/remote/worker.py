"""A remote-execution worker for BuildGrid (Remote Workers API v1test2), one action at a time.

Started by tools/remote/execution; a real deployment uses a stock worker instead,
so nothing else in the project relies on this file. Each action:
  - gets a fresh folder; its inputs are hard links into a local content-addressed cache, so the
    ~10k files of the Python environment are fetched once per host, not once per action;
  - runs in its own network namespace (loopback only: fixed ports never collide between actions)
    and its own PID namespace and session: when it ends, or times out, or this worker dies,
    every process it started dies with it;
  - sees a /tmp of its own (a tmpfs in its mount namespace), which goes with the last of those
    processes even when this worker is killed: nothing an action leaves in /tmp outlives it;
  - has its outputs, stdout and stderr uploaded, then its folder removed.
The log has one line per action: digest, pool, worker, target and shard, and the time spent
fetching inputs, executing and uploading.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from buildgrid._protos.google.rpc import code_pb2, status_pb2
from buildgrid.server.client.cas import download, upload

LOG = logging.getLogger("worker")
POLL_S = 10  # long-poll deadline while idle; the server answers at ~80% of it
HEARTBEAT_EVERY_S = 3  # while an action runs (the server's keepalive timeout is 20 s)
HEARTBEAT_S = 2  # deadline of each such UpdateBotSession: short, as it delays noticing the end
BATCH_BYTES = 2 << 20  # blobs fetched together in one BatchReadBlobs
# The REAPI platform lexicon's values for this host.
PLATFORM = {"OSFamily": "linux", "ISA": "x86-64"}
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
# Forking this process (grpc's threads) to run Python code in the child is unsafe: setpriv sets
# the action's parent-death signal instead of a preexec function.
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
IP = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/usr/sbin/ip"
MOUNT = shutil.which("mount", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/mount"
# Runs inside the action's namespaces, before its command ("$1": the action's folder). Loopback
# up; then a tmpfs over /tmp, and the action's folder bound back at its own path, since that
# path may lie under /tmp (fd 3 still reaches the folder that the tmpfs covers).
ACTION_PRELUDE = f"""
{IP} link set lo up || exit 125
exec 3<"$1" && {MOUNT} -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp && mkdir -p "$1" &&
  {MOUNT} --no-canonicalize --bind /proc/self/fd/3 "$1" && exec 3<&- && cd "$PWD" || exit 125
shift
exec "$@"
"""


def output_paths(command: re_pb2.Command) -> list[str]:
    """The paths the command declares as outputs (REAPI v2.1's output_paths, or the older two lists)."""
    return list(command.output_paths) or [*command.output_files, *command.output_directories]


class InputCache:
    """Blobs by digest on local disk, shared by the workers of one host; files are hard-linked out."""

    def __init__(self, root: pathlib.Path, downloader):
        self.root = root
        self.downloader = downloader
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: re_pb2.Digest, executable: bool = False) -> pathlib.Path:
        return self.root / digest.hash[:2] / f"{digest.hash}_{digest.size_bytes}{'_x' if executable else ''}"

    def _store(self, digest: re_pb2.Digest, data: bytes, executable: bool) -> None:
        target = self.path(digest, executable)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o555 if executable else 0o444)
        os.replace(tmp, target)  # atomic: concurrent workers never see half a file

    def fetch(self, digests: list[re_pb2.Digest]) -> dict[str, bytes]:
        """Blobs by hash: small ones in batches, large ones streamed."""
        found: dict[str, bytes] = {}
        batch: list[re_pb2.Digest] = []
        size = 0
        for digest in {d.hash: d for d in digests}.values():
            if digest.size_bytes > BATCH_BYTES // 2:
                data = self.downloader.get_blob(digest)
                if data is not None:
                    found[digest.hash] = data
                continue
            if size + digest.size_bytes > BATCH_BYTES:
                found.update((d.hash, data) for data, d in self.downloader.get_available_blobs(batch))
                batch, size = [], 0
            batch.append(digest)
            size += digest.size_bytes
        if batch:
            found.update((d.hash, data) for data, d in self.downloader.get_available_blobs(batch))
        absent = [d for d in digests if d.hash not in found]
        if absent:
            raise FileNotFoundError(f"{len(absent)} input blobs missing from the CAS, "
                                    f"for example {absent[0].hash}/{absent[0].size_bytes}")
        return found

    def ensure(self, wanted: list[tuple[re_pb2.Digest, bool]]) -> int:
        """Fetches the blobs that are not cached yet; returns how many were fetched."""
        missing = [(d, x) for d, x in wanted if not self.path(d, x).exists()]
        if not missing:
            return 0
        # One fetch per host: a worker that starts cold next to another waits for its blobs.
        with open(self.root / ".fetching", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            missing = [(d, x) for d, x in missing if not self.path(d, x).exists()]
            found = self.fetch([d for d, _ in missing])
            for digest, executable in missing:
                self._store(digest, found[digest.hash], executable)
        return len(missing)

    def directory(self, digest: re_pb2.Digest) -> re_pb2.Directory:
        return re_pb2.Directory.FromString(self.path(digest).read_bytes())

    def materialize(self, root_digest: re_pb2.Digest, dest: pathlib.Path) -> tuple[int, int]:
        """Lays the input tree out under dest as hard links; returns (files, fetched)."""
        files: list[tuple[pathlib.Path, re_pb2.Digest, bool]] = []
        links: list[tuple[pathlib.Path, str]] = []
        level = [(dest, root_digest)]
        while level:  # breadth first: one batch of Directory messages per depth
            self.ensure([(d, False) for _, d in level])
            next_level = []
            for path, digest in level:
                directory = self.directory(digest)
                path.mkdir(parents=True, exist_ok=True)
                files += [(path / f.name, f.digest, f.is_executable) for f in directory.files]
                links += [(path / s.name, s.target) for s in directory.symlinks]
                next_level += [(path / d.name, d.digest) for d in directory.directories]
            level = next_level
        unique = {(d.hash, x): (d, x) for _, d, x in files}
        fetched = self.ensure(list(unique.values()))
        for path, digest, executable in files:
            source = self.path(digest, executable)
            try:
                os.link(source, path)
            except OSError as error:  # too many links to one inode: copy that one
                if error.errno != errno.EMLINK:
                    raise
                shutil.copy2(source, path)
        for path, target in links:
            os.symlink(target, path)
        return len(files), fetched


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.channel = grpc.insecure_channel(args.endpoint.removeprefix("grpc://"))
        self.bots = bots_pb2_grpc.BotsStub(self.channel)
        self.stopping = threading.Event()
        self.current: subprocess.Popen | None = None
        self.finished: set[str] = set()  # lease ids done here, never run twice

    def properties(self) -> dict[str, str]:
        return {**PLATFORM, "Pool": self.args.pool}

    def session(self) -> bots_pb2.BotSession:
        device = worker_pb2.Device(handle=self.args.name, properties=[
            worker_pb2.Device.Property(key=k, value=v) for k, v in self.properties().items()])
        return bots_pb2.BotSession(bot_id=self.args.name, status=bots_pb2.OK,
                                   worker=worker_pb2.Worker(devices=[device]))

    def serve(self) -> None:
        session = self.call(lambda: self.bots.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent=self.args.instance, bot_session=self.session()), timeout=30))
        LOG.info("registered as %s: %s", session.name, self.properties())
        if self.args.ready:
            pathlib.Path(self.args.ready).write_text(session.name + "\n")
        while not self.stopping.is_set():
            lease = next((x for x in session.leases if x.state in (bots_pb2.PENDING, bots_pb2.ACTIVE)
                          and x.id not in self.finished), None)
            if lease is None:
                session = self.update(session, POLL_S)
            else:
                session = self.work(session, lease)

    def call(self, rpc):
        """Retries an RPC while the server is unreachable (it may restart), until asked to stop."""
        delay = 1.0
        while True:
            try:
                return rpc()
            except grpc.RpcError as error:
                if self.stopping.is_set() or error.code() not in (
                        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                LOG.warning("server: %s; retrying in %.0fs", error.code().name, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10)

    def update(self, session: bots_pb2.BotSession, deadline_s: float) -> bots_pb2.BotSession:
        return self.call(lambda: self.bots.UpdateBotSession(
            bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=deadline_s))

    def work(self, session: bots_pb2.BotSession, lease: bots_pb2.Lease) -> bots_pb2.BotSession:
        lease.state = bots_pb2.ACTIVE
        done = threading.Event()
        outcome: dict = {}
        thread = threading.Thread(target=lambda: (outcome.update(self.execute(lease)), done.set()), daemon=True)
        thread.start()
        while not done.wait(HEARTBEAT_EVERY_S):  # each update tells the server this bot is alive
            session = self.update(session, HEARTBEAT_S)
            mine = [x for x in session.leases if x.id == lease.id]
            if not mine or mine[0].state == bots_pb2.CANCELLED:
                LOG.info("lease %s cancelled by the server", lease.id)
                self.kill_current()
                thread.join()
                self.finished.add(lease.id)
                return session
        self.finished.add(lease.id)
        for x in session.leases:
            if x.id == lease.id:
                x.state = bots_pb2.COMPLETED
                x.status.CopyFrom(outcome["status"])
                if "result" in outcome:
                    x.result.Pack(outcome["result"])
        return self.update(session, HEARTBEAT_S)

    def kill_current(self) -> None:
        proc = self.current
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    def execute(self, lease: bots_pb2.Lease) -> dict:
        """Runs one action; returns the lease's status and ActionResult."""
        action = re_pb2.Action()
        lease.payload.Unpack(action)
        digest = f"{hashlib.sha256(lease.payload.value).hexdigest()}/{len(lease.payload.value)}"
        work = pathlib.Path(tempfile.mkdtemp(prefix="action-", dir=self.args.work))
        meta = re_pb2.ExecutedActionMetadata(worker=self.args.name)
        meta.worker_start_timestamp.GetCurrentTime()
        try:
            with download(self.channel, instance=self.args.instance) as downloader:
                cache = InputCache(pathlib.Path(self.args.cache), downloader)
                command = downloader.get_message(action.command_digest, re_pb2.Command())
                env = {v.name: v.value for v in command.environment_variables}
                LOG.info("action %s started pool=%s worker=%s target=%s shard=%s platform=%s", digest,
                         self.args.pool, self.args.name, env.get("TEST_TARGET", "-"), env.get("TEST_SHARD_INDEX", "-"),
                         ",".join(f"{p.name}={p.value}"
                                  for p in (action.platform.properties or command.platform.properties)))
                meta.input_fetch_start_timestamp.GetCurrentTime()
                started = time.monotonic()
                files, fetched = cache.materialize(action.input_root_digest, work / "root")
                fetch_s = time.monotonic() - started
                meta.input_fetch_completed_timestamp.GetCurrentTime()
            cwd = work / "root" / command.working_directory
            for out in output_paths(command):
                (cwd / out).parent.mkdir(parents=True, exist_ok=True)
            timeout = action.timeout.seconds or None
            meta.execution_start_timestamp.GetCurrentTime()
            started = time.monotonic()
            exit_code, timed_out = self.run(command, env, cwd, work, timeout)
            exec_s = time.monotonic() - started
            meta.execution_completed_timestamp.GetCurrentTime()
            meta.output_upload_start_timestamp.GetCurrentTime()
            started = time.monotonic()
            result = self.upload(command, cwd, work, exit_code)
            upload_s = time.monotonic() - started
            meta.output_upload_completed_timestamp.GetCurrentTime()
            meta.worker_completed_timestamp.GetCurrentTime()
            result.execution_metadata.CopyFrom(meta)
            LOG.info("action %s done pool=%s worker=%s target=%s shard=%s exit=%s%s inputs=%d fetched=%d "
                     "fetch_s=%.2f exec_s=%.2f upload_s=%.2f", digest, self.args.pool, self.args.name,
                     env.get("TEST_TARGET", "-"), env.get("TEST_SHARD_INDEX", "-"), exit_code,
                     " timed_out" if timed_out else "", files, fetched, fetch_s, exec_s, upload_s)
            code = code_pb2.DEADLINE_EXCEEDED if timed_out else code_pb2.OK
            message = f"timed out after {timeout}s" if timed_out else ""
            return {"status": status_pb2.Status(code=code, message=message), "result": result}
        except FileNotFoundError as error:
            LOG.error("action %s: %s", digest, error)
            return {"status": status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(error))}
        except Exception as error:  # noqa: BLE001 - any failure of ours: the server retries elsewhere
            LOG.exception("action %s failed in the worker", digest)
            return {"status": status_pb2.Status(code=code_pb2.INTERNAL, message=f"worker {self.args.name}: {error}")}
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def run(self, command: re_pb2.Command, env: dict, cwd: pathlib.Path, work: pathlib.Path,
            timeout: int | None) -> tuple[int, bool]:
        """Runs the command in fresh network, PID and mount namespaces, with a /proc (Bazel's
        test-setup.sh watches its own pid there: pid 1) and a /tmp of its own; stdout and stderr
        go to files (helpers of test-setup.sh may keep pipes open)."""
        wrapper = [SETPRIV, "--pdeathsig", "KILL", "--",  # no action outlives this worker
                   UNSHARE, "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
                   "/bin/sh", "-c", ACTION_PRELUDE, "sh", str(work), *command.arguments]
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            self.current = subprocess.Popen(wrapper, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err, start_new_session=True)
            try:
                return self.current.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                self.kill_current()
                return self.current.wait(), True
            finally:
                self.current = None

    def upload(self, command: re_pb2.Command, cwd: pathlib.Path, work: pathlib.Path,
               exit_code: int) -> re_pb2.ActionResult:
        result = re_pb2.ActionResult(exit_code=exit_code)
        with upload(self.channel, instance=self.args.instance) as uploader:
            result.stdout_digest.CopyFrom(uploader.upload_file(str(work / "stdout")))
            result.stderr_digest.CopyFrom(uploader.upload_file(str(work / "stderr")))
            for name in output_paths(command):
                path = cwd / name
                if path.is_dir() and not path.is_symlink():
                    tree = uploader.upload_tree(str(path))
                    result.output_directories.add(path=name, tree_digest=tree)
                elif path.is_file():
                    result.output_files.add(path=name, digest=uploader.upload_file(str(path)),
                                            is_executable=os.access(path, os.X_OK))
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True, help="grpc://HOST:PORT of the BuildGrid server")
    parser.add_argument("--instance", default="")
    parser.add_argument("--pool", required=True, help="the Pool this worker serves (cpu, gpu)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--work", required=True, help="folder for the actions' folders")
    parser.add_argument("--cache", required=True, help="the input cache folder (shared per host)")
    parser.add_argument("--ready", help="file written once registered with the server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    # Folders of actions a killed predecessor left behind.
    shutil.rmtree(args.work, ignore_errors=True)
    pathlib.Path(args.work).mkdir(parents=True)
    if args.pool == "gpu" and not (pathlib.Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi")):
        LOG.warning("this host has no GPU: Pool=gpu actions are accepted (for routing) "
                    "but find no GPU; their GPU tests fail or skip")
    worker = Worker(args)

    def on_term(signum, frame):
        worker.stopping.set()
        worker.kill_current()
        os._exit(0)  # now: the main thread may be inside a long-poll

    signal.signal(signal.SIGTERM, on_term)
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
