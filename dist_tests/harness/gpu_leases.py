"""Device leases: a run of a class with devices (gpu, or a class of one's own) holds the devices its
ranks use, so runs that share a host never share one.

Bazel 4.2.3 has no GPU resource, and `exclusive` orders the tests of one Bazel server only.
So each run takes, before any rank starts, a `flock` on one lock file per device in a host-wide
folder (gpu0.lock, or CLASS0.lock for a class of one's own), and shows its ranks only those
devices through its class's variable (CUDA_VISIBLE_DEVICES for gpu). The kernel drops a flock
when its holder dies, even by SIGKILL: a killed run never leaves a device taken. How a host's
devices are counted is the class's too: the NVIDIA driver's list for gpu, or a command that
prints the count (count_devices).

GPU indices are the driver's (nvidia-smi's, PCI bus order); the ranks get CUDA_DEVICE_ORDER=
PCI_BUS_ID so CUDA numbers them the same way. Runs no pid namespace or private /tmp can split:
the folder is /dev/shm/dist_tests_gpu_leases (DIST_TESTS_GPU_LOCK_DIR moves it), which Bazel's
sandbox may write (.bazelrc) and which a remote worker's private /tmp does not cover.
"""

import dataclasses
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from dist_tests.harness import environment
from dist_tests.harness.matrix import NVIDIA_DRIVER, DeviceClass
from dist_tests.harness.settings import count_of, unwritable_reason

DEFAULT_LOCK_DIR = "/dev/shm/dist_tests_gpu_leases"
_DRIVER_GPUS = "/proc/driver/nvidia/gpus"  # one folder per GPU the driver shows, named by PCI address
_POLL_S = 0.5
_REMIND_S = 60.0
_COUNT_TIMEOUT_S = 60.0  # a count command that takes longer is stuck: the run stops, naming it


class LeaseError(Exception):
    """GPUs cannot be leased as configured; the message says what to change."""


@dataclasses.dataclass
class Lease:
    """GPUs held by this process: each lock stays held until release() or this process's end."""

    gpus: tuple[int, ...]
    lock_dir: str
    waited_s: float  # 0 when the GPUs were free at once
    _fds: list[int]

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def names(self) -> str:
        return ",".join(map(str, self.gpus))

    def fds(self) -> tuple[int, ...]:
        """The held locks' descriptors: a fork of this process must not keep them (forkserver.fork_early)."""
        return tuple(self._fds)


def driver_gpus() -> list[int] | None:
    """The GPU indices the NVIDIA driver shows (0..N-1), or None on a host without the driver."""
    try:
        return list(range(len(os.listdir(_DRIVER_GPUS))))
    except OSError:
        return None


def unit(device_class: DeviceClass) -> str:
    """What one device of the class is called in messages: a GPU, or an XPU device."""
    return "GPU" if device_class.count == NVIDIA_DRIVER else f"{device_class.name} device"


def count_devices(device_class: DeviceClass, env: Mapping[str, str]) -> tuple[list[int] | None, str]:
    """The device indices (0..N-1) a host shows for the class, and who counted them; None: nothing to ask.

    gpu's are the NVIDIA driver's; a class of one's own is counted by its command, which prints the
    number. A command that fails, hangs or prints something else stops the run, naming it.
    """
    if device_class.count == NVIDIA_DRIVER:
        return driver_gpus(), "the GPUs this host's driver shows"
    label, path = device_class.count, device_class.count_path
    if not path:
        raise LeaseError(f"device class {device_class.name!r} is counted by {label}, which only its targets carry: "
                         "run a target of the class")
    fix = f"Fix {label}: it must print the number of {unit(device_class)}s on this host, and exit 0"
    try:
        # A session of its own: a hung command is ended with whatever it started, which could hold its output open.
        command = subprocess.Popen([os.path.abspath(path)], env=dict(env), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    except OSError as error:
        raise LeaseError(f"{label}, which counts the {unit(device_class)}s, cannot run ({error.strerror}). {fix}.") \
            from None
    try:
        stdout, stderr = command.communicate(timeout=_COUNT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(command.pid, signal.SIGKILL)
        command.communicate()
        raise LeaseError(f"{label}, which counts the {unit(device_class)}s, did not finish within "
                         f"{_COUNT_TIMEOUT_S:.0f} s. {fix}.") from None
    printed = stdout.strip()
    if command.returncode != 0 or not printed.isdigit():
        said = (stderr.strip() or printed)[-300:]
        raise LeaseError(f"{label}, which counts the {unit(device_class)}s, exited {command.returncode} and printed "
                         f"{printed[:100]!r}{f' ({said})' if said and said != printed else ''}. {fix}.")
    return list(range(int(printed))), f"the {unit(device_class)}s {label} counts"


def parse_indices(name: str, text: str) -> list[int]:
    """A comma-separated list of distinct device indices, as DIST_TESTS_GPUS or CUDA_VISIBLE_DEVICES give it."""
    words = [word.strip() for word in text.split(",")]
    if not all(word.isdigit() for word in words):
        raise LeaseError(f"{name}={text!r} is not a list of GPU indices: give indices as nvidia-smi numbers them, "
                         "separated by commas, for example 4,5,6,7.")
    indices = [int(word) for word in words]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        raise LeaseError(f"{name}={text!r} names GPU {', '.join(map(str, twice))} more than once: name each GPU once.")
    return indices


def gpu_pool(env: Mapping[str, str], shown: list[int] | None, visible: str = "CUDA_VISIBLE_DEVICES",
             source: str = "the GPUs this host's driver shows") -> tuple[list[int], str]:
    """The devices tests may use, and where that choice came from (for messages).

    DIST_TESTS_GPUS when given; else every device counted (`shown`, from `source`), within the user's
    own `visible` variable (CUDA_VISIBLE_DEVICES for GPUs). Without a count (shown is None)
    DIST_TESTS_GPUS is taken as given: stand-in indices lease like real ones.
    """
    named = env.get("DIST_TESTS_GPUS", "").strip()
    if named:
        pool = parse_indices("DIST_TESTS_GPUS", named)
        absent = [i for i in pool if shown is not None and i not in shown]
        if absent:
            raise LeaseError(f"DIST_TESTS_GPUS={named!r} names GPU {', '.join(map(str, absent))}, which this host's "
                             f"driver does not show (it shows {_listing(shown)}): name GPUs of this host.")
        return pool, f"DIST_TESTS_GPUS={named}"
    pool = shown or []
    within = env.get(visible)
    if within is not None and shown is not None:
        allowed = parse_indices(visible, within) if within.strip() else []
        pool = [i for i in pool if i in allowed]
        return pool, f"{source} within {visible}={within}"
    return pool, source


def gpu_count(env: Mapping[str, str], shown: list[int] | None) -> tuple[int, str]:
    """How many GPUs gpu_pool gives, and where that number comes from: 0 on a host whose driver shows
    none, unless DIST_TESTS_GPUS names stand-ins."""
    if shown is None and not env.get("DIST_TESTS_GPUS", "").strip():
        return 0, f"no NVIDIA driver lists GPUs in {_DRIVER_GPUS}"
    pool, source = gpu_pool(env, shown)
    return len(pool), source


def devices_before_torch(env: Mapping[str, str], device_class: DeviceClass) -> tuple[int, str] | None:
    """The devices a run's ranks could have, as counted before torch loads, and where that number
    comes from; None when only the lease and torch can tell.

    CUDA sees no more GPUs than the driver shows within CUDA_VISIBLE_DEVICES, so fewer than the
    ranks here is what torch would find too. Stand-ins (DIST_TESTS_GPUS) lease like GPUs; a host
    with AMD's compute device (/dev/kfd) and no NVIDIA driver may have GPUs this cannot count.
    A class of one's own is counted by its command.
    """
    if env.get("DIST_TESTS_GPUS", "").strip():
        return None
    try:
        shown, source = count_devices(device_class, env)
        if shown is None:  # no NVIDIA driver
            return None if os.path.exists("/dev/kfd") else gpu_count(env, shown)
        pool, source = gpu_pool(env, shown, device_class.visible_devices or "", source)
        return len(pool), source
    except LeaseError:
        return None  # the lease says what is wrong, with the run's target


def _listing(gpus: list[int], word: str = "GPU") -> str:
    return f"{word}s " + ",".join(map(str, gpus)) if gpus else f"no {word}"


def lock_folder(env: Mapping[str, str]) -> str:
    """The host-wide lock folder, created open to every user (the devices are the host's); checked writable."""
    path = env.get("DIST_TESTS_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR
    fix = ("set DIST_TESTS_GPU_LOCK_DIR to a folder that every run on this host can write, and under Bazel "
           "make it writable in the sandbox (--sandbox_writable_path=DIR in user.bazelrc)")
    if not os.path.isabs(path):
        raise LeaseError(f"DIST_TESTS_GPU_LOCK_DIR={path!r} is not an absolute path: {fix}.")
    try:
        os.mkdir(path)
        os.chmod(path, 0o1777)  # sticky and open: every user's runs lease from one folder
    except FileExistsError:
        pass
    except OSError as error:
        raise LeaseError(f"the GPU lock folder {path} cannot be created ({error.strerror}): {fix}.") from None
    why = unwritable_reason(path)
    if why:
        raise LeaseError(f"the GPU lock folder {path} is not writable ({why}): {fix}.")
    return path


def _lock_path(lock_dir: str, device: int, prefix: str) -> str:
    return os.path.join(lock_dir, f"{prefix}{device}.lock")


def _open_lock(path: str) -> int:
    """Opens (or creates, open to every user) one device's lock file."""
    while True:
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)  # past the umask: another user's run must be able to open it too
            return fd
        except FileExistsError:
            continue  # another run created it in between: open that one


def holder(path: str) -> str:
    """Who holds a lock, as its holder wrote it; stale text once it is free."""
    try:
        with open(path) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def _try_take(pool: list[int], count: int, lock_dir: str,
              prefix: str) -> tuple[list[tuple[int, int]] | None, list[int]]:
    """Locks `count` free devices of the pool, or none (a partial set is released, so waiters never
    deadlock); returns the locks taken and the devices found held."""
    taken: list[tuple[int, int]] = []
    busy: list[int] = []
    for gpu in pool:
        fd = _open_lock(_lock_path(lock_dir, gpu, prefix))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            busy.append(gpu)
            continue
        taken.append((gpu, fd))
        if len(taken) == count:
            return taken, busy
    for _, fd in taken:
        os.close(fd)
    return None, busy


def acquire(pool: list[int], count: int, lock_dir: str, me: str, give_up_at: float | None,
            say: Callable[[str], None], why_give_up: str = "", prefix: str = "gpu", word: str = "GPU") -> Lease:
    """Waits until `count` devices of the pool are free and locks them; raises LeaseError at give_up_at."""
    started = time.monotonic()
    last_busy: dict[int, str] | None = None
    last_said = 0.0
    while True:
        taken, held = _try_take(pool, count, lock_dir, prefix)
        if taken is not None:
            for _, fd in taken:  # the holder's record, for runs that wait on these devices
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{me}\n".encode(), 0)
            waited_s = 0.0 if last_busy is None else time.monotonic() - started
            return Lease(tuple(gpu for gpu, _ in taken), lock_dir, waited_s, [fd for _, fd in taken])
        now = time.monotonic()
        busy = {gpu: holder(_lock_path(lock_dir, gpu, prefix)) for gpu in held}
        if give_up_at is not None and now >= give_up_at:
            raise LeaseError(f"waited {now - started:.0f} s for {count} free {word}s of {_listing(pool, word)} and "
                             f"gave up{why_give_up}; still held: {_holders(busy, word)}")
        if busy != last_busy or now - last_said >= _REMIND_S:
            say(f"waiting for {count} free {word}s of {_listing(pool, word)} ({len(pool) - len(busy)} free) "
                f"in {lock_dir}, after {now - started:.0f} s; held: {_holders(busy, word)}")
            last_busy, last_said = busy, now
        time.sleep(_POLL_S)


def _holders(busy: dict[int, str], word: str) -> str:
    return "; ".join(f"{word} {gpu} by {who}" for gpu, who in sorted(busy.items())) or "none (they were just freed)"


def describe_me(env: Mapping[str, str]) -> str:
    """This run, as a waiting run sees it in a lock file."""
    target = env.get("TEST_TARGET") or f"{env.get('BACKEND', '?')}_{env.get('WORLD_SIZE', '?')} by hand"
    shard = ""
    if env.get("TEST_TOTAL_SHARDS"):
        shard = f" shard {int(env.get('TEST_SHARD_INDEX', '0')) + 1} of {env['TEST_TOTAL_SHARDS']}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{target}{shard}, pid {os.getpid()} on {socket.gethostname()}, uid {os.getuid()}, since {since}"


def lease_gpus(world_size: int, env: Mapping[str, str], give_up_at: float | None, why_give_up: str,
               allow_skip: bool, device_class: DeviceClass) -> tuple[Lease | None, tuple[int, str] | None]:
    """Leases world_size devices of the class for a run and shows its ranks only those (the class's
    visible-devices variable); returns the lease (None when the pool is too small) and the pool's size and
    where it came from (None where nothing counted it).

    A pool smaller than the ranks is the missing-hardware case that the run reports (or skips)
    after torch loads; only a DIST_TESTS_GPUS too short for the ranks is an error here.
    """
    def say(message: str) -> None:
        print(f"dist_tests: {message}", file=sys.stderr, flush=True)

    visible, word = device_class.visible_devices or "", unit(device_class)
    shown, source = count_devices(device_class, env)
    if shown is None and not env.get("DIST_TESTS_GPUS", "").strip():
        # No driver to ask (no GPU here, or one this check cannot see): the ranks see what they see.
        say(f"no NVIDIA driver shows GPUs here ({_DRIVER_GPUS}), so none were leased; "
            "DIST_TESTS_GPUS names GPUs to lease")
        return None, None
    pool, source = gpu_pool(env, shown, visible, source)
    if len(pool) < world_size:
        if env.get("DIST_TESTS_GPUS", "").strip() and not allow_skip:
            raise LeaseError(f"WORLD_SIZE={world_size} needs {count_of(world_size, word)}, and {source} names "
                             f"{len(pool)}: name at least {world_size}.")
        environment.show_devices(visible, ",".join(map(str, pool)))
        return None, (len(pool), source)
    folder = lock_folder(env)
    lease = acquire(pool, world_size, folder, describe_me(env), give_up_at, say, why_give_up,
                    prefix=device_class.name, word=word)
    environment.show_devices(visible, lease.names())
    waited = f" after waiting {lease.waited_s:.1f} s" if lease.waited_s else ""
    say(f"leased {word}s {lease.names()} of {_listing(pool, word)} ({source}){waited}; locks in {folder}, "
        f"shown to the ranks as {visible}={lease.names()}")
    return lease, (len(pool), source)
