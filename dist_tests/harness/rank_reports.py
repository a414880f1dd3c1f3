"""What the ranks of a failing test are asked before they are stopped: their flight recorder dumps and stacks.

Each rank serves a pipe of its own from a thread (serve()): asked, it writes torch's flight
recorder dump to a file, or sends its Python stacks. A thread answers while the main thread
is blocked in a collective, which releases the GIL; one that holds the GIL in native code
answers nothing, so every rank also has faulthandler registered on STACKS_SIGNAL, which
writes all its threads' stacks to a file without the GIL. The parent (ask()) asks every live
rank at once, waits a few seconds, and signals those whose stacks did not come.

No torch here at import: the parent's side runs without it, and a rank imports it when asked.
"""

import dataclasses
import faulthandler
import os
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

STACKS_SIGNAL = signal.SIGUSR2
ANSWER_WAIT_S = 5.0  # for the pipe's answers, all ranks together
SIGNAL_WAIT_S = 2.0  # for faulthandler's file after the signal


@dataclasses.dataclass(frozen=True)
class RankLine:
    """What a rank gets to serve the parent: its end of the pipe, its stacks file, its dump file (None: off)."""

    conn: Any
    stacks_path: str
    dump_path: str | None


# --- in the rank


def dump_record(path: str) -> str | None:
    """Writes torch's flight recorder dump of this process to `path`; returns None, or why it was not kept."""
    try:
        import torch

        data = torch._C._distributed_c10d._dump_fr_trace(True, True, False)
    except Exception as error:  # torch's own error, whatever its type: said, never raised in the rank
        return f"torch could not dump it ({type(error).__name__}: {error})"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.partial"
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)  # a rank that dies while writing leaves no half file under the analyzer's name
    except OSError as error:
        return f"it could not be written to {path} ({error.strerror or error})"
    return None


def _stacks_now() -> str:
    with tempfile.TemporaryFile(mode="w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.flush()
        f.seek(0)
        return f.read()


def _serve(conn: Any) -> None:
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(request, tuple) or not request:
            continue
        if request[0] == "stacks":
            answer: tuple = ("stacks", _stacks_now())
        elif request[0] == "dump":
            answer = ("dump", dump_record(request[1]))
        else:
            continue
        try:
            conn.send(answer)
        except (OSError, ValueError):
            return


def serve(line: RankLine) -> None:
    """In a rank before its test: answers the parent's requests from a thread, and its stacks on STACKS_SIGNAL."""
    stacks = open(line.stacks_path, "w")  # kept open: faulthandler writes to its descriptor
    faulthandler.register(STACKS_SIGNAL, file=stacks, all_threads=True, chain=False)
    threading.Thread(target=_serve, args=(line.conn,), name="dist_tests-rank-reports", daemon=True).start()


# --- in the parent


@dataclasses.dataclass
class Answer:
    """What one rank gave: its stacks (and how), and its dump's fate."""

    stacks: str | None = None
    stacks_by_signal: bool = False
    dump_asked: bool = False
    dump_error: str | None = None  # why the dump was not kept; None when it was, or not asked
    dump_done: bool = False
    died: bool = False  # its pipe closed while a request was open


@dataclasses.dataclass(frozen=True)
class Asked:
    """A live rank as the parent knows it."""

    pid: int
    conn: Any
    stacks_path: str
    dump_path: str | None  # None: no dump asked (the recorder is off)


def ask(ranks: Mapping[int, Asked], wait_s: float = ANSWER_WAIT_S, signal_wait_s: float = SIGNAL_WAIT_S
        ) -> dict[int, Answer]:
    """Asks every rank for its stacks, then its dump; signals those whose stacks did not come in wait_s."""
    answers = {rank: Answer() for rank in ranks}
    open_requests: dict[int, set[str]] = {}
    for rank, asked in ranks.items():
        wanted = {"stacks"}
        try:
            asked.conn.send(("stacks",))
            if asked.dump_path:
                asked.conn.send(("dump", asked.dump_path))
                answers[rank].dump_asked = True
                wanted.add("dump")
        except (OSError, ValueError):
            answers[rank].died = True
            continue
        open_requests[rank] = wanted
    deadline = time.monotonic() + wait_s
    while open_requests and time.monotonic() < deadline:
        for rank in list(open_requests):
            conn = ranks[rank].conn
            try:
                if not conn.poll(0.02):
                    continue
                kind, value = conn.recv()
            except (EOFError, OSError, ValueError, TypeError):
                answers[rank].died = True
                del open_requests[rank]
                continue
            if kind == "stacks":
                answers[rank].stacks = value
            elif kind == "dump":
                answers[rank].dump_error, answers[rank].dump_done = value, True
            open_requests[rank].discard(kind)
            if not open_requests[rank]:
                del open_requests[rank]
    for rank, asked in ranks.items():
        if answers[rank].stacks is None:
            answers[rank].stacks = _stacks_by_signal(asked, signal_wait_s)
            answers[rank].stacks_by_signal = answers[rank].stacks is not None
    return answers


def _stacks_by_signal(asked: Asked, wait_s: float) -> str | None:
    """faulthandler's stacks from a rank that did not answer on its pipe (it may hold the GIL)."""
    try:
        before = os.path.getsize(asked.stacks_path)
        os.kill(asked.pid, STACKS_SIGNAL)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now = os.path.getsize(asked.stacks_path)
        except OSError:
            return None
        if now > before and now == size:  # written, and no longer growing
            with open(asked.stacks_path, "rb") as f:
                f.seek(before)
                return f.read().decode(errors="replace")
        size = now
    return None
