"""Folders a process removes when it ends, and only that process.

A fork inherits its parent's atexit handlers and signal handlers. The forkserver may be a fork
of the runner (forkserver.py), and every rank a fork of it: a rank that ran the runner's
handlers at its end would remove the runner's work folder, or the socket folder its server
listens in. So these handlers act in the process that registered them, and do nothing in a fork.
"""

import atexit
import os
import shutil
import signal
from typing import Any


def remove_at_exit(folder: str) -> None:
    """Removes `folder` when this process exits normally (not in its forks)."""
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)


def remove_on_sigterm(folder: str) -> None:
    """Bazel ends a timed-out test with SIGTERM, which skips atexit: remove the folder, then die of it as before.

    A fork that gets SIGTERM (a rank stopped by its parent) dies of it without removing anything.
    """
    owner = os.getpid()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if os.getpid() == owner:
            shutil.rmtree(folder, ignore_errors=True)
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
