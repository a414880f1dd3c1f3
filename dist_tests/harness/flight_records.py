"""Reading what the ranks of a failed test leave: their flight recorder dumps, compared, and their stacks.

Standard library only (no torch): the parent reads the pickles torch's
`_dump_fr_trace` wrote (one per rank), repairs what torch's analyzer
(torch.distributed.flight_recorder) needs and gloo leaves out, and writes one line that
says where every rank is. The analyzer itself stops on what it calls an unknown group, and
logs pages per collective, so the line is this module's own reading of the same fields:
each entry's group, `collective_seq_id`, `profiling_name`, sizes and dtypes, and each
group's `last_enqueued_collective` / `last_completed_collective` (`pg_status`).
"""

import math
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

from dist_tests.harness.shared import FLIGHT_RECORDER_PREFIX

# Off when 0; on (the default) otherwise. Torch's own variables, set by the user, win over ours.
ENABLE_VARIABLE = "DIST_TESTS_FLIGHT_RECORDER"
# Torch reads the first; the second is its older name, still read.
BUFFER_VARIABLES = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")
# Entries kept per rank: a hang needs the last few collectives, and a small ring costs little.
DEFAULT_BUFFER_SIZE = 32
FOLDER = "flight_recorder"
ANALYZER = "python -m torch.distributed.flight_recorder.fr_trace"


class RecorderSettingError(ValueError):
    """DIST_TESTS_FLIGHT_RECORDER or a user's buffer size is malformed."""


def recorder_environment(env: Mapping[str, str]) -> dict[str, str] | None:
    """The variables that turn the recorder on for the ranks; {} when the user set them; None when off.

    Raises RecorderSettingError for a value torch would misread or the harness cannot use.
    """
    enable = env.get(ENABLE_VARIABLE, "").strip()
    if enable not in ("", "0", "1"):
        raise RecorderSettingError(f"{ENABLE_VARIABLE}={enable!r}: use 0 (off) or 1 (on, the default).")
    if enable == "0":
        return None
    for name in BUFFER_VARIABLES:
        value = env.get(name)
        if value is None:
            continue
        if not value.strip().isdigit():
            raise RecorderSettingError(
                f"{name}={value!r} must be a non-negative integer: the entries torch's flight recorder keeps "
                f"per rank (unset, the harness uses {DEFAULT_BUFFER_SIZE}; --test_env={ENABLE_VARIABLE}=0 "
                "turns the recorder off).")
        # The user's size wins, 0 included (torch then records nothing).
        return {} if int(value) > 0 else None
    return {BUFFER_VARIABLES[0]: str(DEFAULT_BUFFER_SIZE)}


def dump_folder(base: str, test: str, attempt: int) -> str:
    """Where a test's ranks write their dumps, rankN each (the file names torch's analyzer reads)."""
    folder = os.path.join(base, FOLDER, test)
    return folder if attempt <= 1 else os.path.join(folder, f"attempt{attempt}")


def rank_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"rank{rank}")


# --- reading dumps


def load(path: str) -> dict:
    """One rank's dump; raises OSError or ValueError when unreadable."""
    with open(path, "rb") as f:
        try:
            dump = pickle.load(f)
        except Exception as error:  # a truncated or foreign file: any unpickling error
            raise ValueError(f"not a flight recorder dump ({type(error).__name__}: {error})") from None
    if not isinstance(dump, dict) or not isinstance(dump.get("entries"), list):
        raise ValueError("not a flight recorder dump (no entries)")
    return dump


def repair(dump: dict, world_size: int) -> bool:
    """Fills pg_config as torch's analyzer needs it; returns whether anything changed.

    Gloo's dumps key the groups' configuration by an empty name while their entries name the
    group ('0', 'default_pg'): the analyzer then fails on a KeyError. Each group an entry
    names gets a configuration, with the ranks of the blank one (or all ranks for the default).
    """
    config = dump.setdefault("pg_config", {})
    blank = config.get("")
    changed = False
    for entry in dump["entries"]:
        group = entry.get("process_group")
        if not (isinstance(group, (tuple, list)) and len(group) == 2) or group[0] in config:
            continue
        name, desc = str(group[0]), str(group[1])
        if desc == "default_pg" or blank is None:
            ranks = str(list(range(world_size)))
        else:
            ranks = str(blank.get("ranks", list(range(world_size))))
        config[name] = {"name": name, "desc": desc, "ranks": ranks}
        changed = True
    if changed and blank is not None and not blank.get("name"):
        del config[""]
    return changed


def load_and_repair(path: str, world_size: int) -> dict:
    """Reads a dump and rewrites it repaired in place, so that the kept file is one the analyzer reads."""
    dump = load(path)
    if repair(dump, world_size):
        try:
            with open(path, "wb") as f:
                pickle.dump(dump, f)
        except OSError:
            pass  # the diagnosis still comes from what was read
    return dump


_DTYPE_WORDS = {"Float": "float", "Double": "double", "Half": "half", "BFloat16": "bfloat16", "Long": "int64",
                "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool"}


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe_tensors(sizes: Any, dtypes: Any) -> str:
    """'1 tensor of 4 floats', '2 tensors of 4 floats each', '2 tensors (4 floats, 8 floats)'."""
    if not isinstance(sizes, list) or not sizes:
        return "no tensor"
    dtypes = dtypes if isinstance(dtypes, list) else []
    parts = []
    for i, shape in enumerate(sizes):
        n = math.prod(shape) if isinstance(shape, list) else 0
        word = _DTYPE_WORDS.get(dtypes[i], f"{dtypes[i]} element") if i < len(dtypes) else "element"
        parts.append(_count(n, word))
    if len(set(parts)) == 1:
        return f"{_count(len(parts), 'tensor')} of {parts[0]}{' each' if len(parts) > 1 else ''}"
    return f"{_count(len(parts), 'tensor')} ({', '.join(parts)})"


def _op(entry: Mapping[str, Any]) -> str:
    return str(entry.get("profiling_name", "?"))


def _short_op(entry: Mapping[str, Any]) -> str:
    """'all_gather' for 'gloo:all_gather', as a user calls it."""
    return _op(entry).split(":", 1)[-1]


def _what(entry: Mapping[str, Any]) -> str:
    return f"{_op(entry)}, {describe_tensors(entry.get('input_sizes'), entry.get('input_dtypes'))}"


def _group_name(group: tuple[str, str]) -> str:
    name, desc = group
    if desc == "default_pg" or (name == "0" and not desc):
        return "the default group"
    return f"group {name}" + (f" ({desc})" if desc and desc != "undefined" else "")


def _ranks_text(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks[:-1]) + f" and {ranks[-1]}"


def _verb(ranks: list[int], one: str, many: str) -> str:
    return one if len(ranks) == 1 else many


def _collectives(dump: Mapping[str, Any]) -> dict[tuple[str, str], dict[int, dict]]:
    """{group: {collective sequence number: entry}}, point-to-point entries left out."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for entry in dump.get("entries", []):
        if entry.get("is_p2p"):
            continue
        group = entry.get("process_group") or ("?", "")
        seq = entry.get("collective_seq_id")
        if isinstance(seq, int) and seq > 0:
            groups.setdefault((str(group[0]), str(group[1])), {})[seq] = entry
    return groups


def _completed(dump: Mapping[str, Any], group: tuple[str, str]) -> int | None:
    status = (dump.get("pg_status") or {}).get(group[0])
    value = status.get("last_completed_collective") if isinstance(status, Mapping) else None
    return value if isinstance(value, int) else None


def diagnose(dumps: Mapping[int, Mapping[str, Any]], world_size: int, missing: Mapping[int, str]) -> str:
    """One line, FLIGHT_RECORDER_PREFIX first: where each rank is, a mismatch between ranks first.

    `dumps` holds the ranks that left a record; `missing` says why each other rank did not.
    """
    notes = [f"rank {r} left no record ({why})" for r, why in sorted(missing.items())]
    if not dumps:
        return f"{FLIGHT_RECORDER_PREFIX} no rank left a record" + (f"; {'; '.join(notes)}" if notes else "")
    by_rank = {rank: _collectives(dump) for rank, dump in dumps.items()}
    groups = sorted({g for per in by_rank.values() for g in per}, key=lambda g: (g[1] != "default_pg", g))
    findings: list[str] = []
    mismatched: dict[tuple[str, str], int] = {}
    for group in groups:
        found = _first_mismatch(group, by_rank)
        if found:
            mismatched[group] = found[0]
            findings.append(found[1])
    for group in groups:
        stuck = _where_ranks_are(group, by_rank, dumps, mismatched.get(group))
        if stuck:
            findings.append(stuck)
    if not findings:
        last = {r: max(per.get(groups[0], {}) or [0]) for r, per in by_rank.items()} if groups else {}
        if groups and last:
            findings.append(f"{_ranks_text(sorted(last))} completed collective {max(last.values())} of "
                            f"{_group_name(groups[0])}; none is inside a collective")
        else:
            findings.append(f"{_ranks_text(sorted(dumps))} recorded no collective")
    return f"{FLIGHT_RECORDER_PREFIX} " + "; ".join(findings + notes)


def _first_mismatch(group: tuple[str, str], by_rank: Mapping[int, Mapping]) -> tuple[int, str] | None:
    """The lowest sequence number at which two ranks recorded different ops, or the same op on other sizes."""
    entries = {rank: per.get(group, {}) for rank, per in by_rank.items()}
    shared = sorted(set.union(*(set(e) for e in entries.values())))
    for seq in shared:
        at = {rank: e[seq] for rank, e in sorted(entries.items()) if seq in e}
        if len(at) < 2:
            continue
        first_rank, first = next(iter(at.items()))
        for rank, entry in at.items():
            if _op(entry) != _op(first):
                return seq, (f"at collective {seq} of {_group_name(group)} rank {rank} called {_short_op(entry)} where "
                        f"rank {first_rank} called {_short_op(first)} ({_what(entry)} against {_what(first)})")
            if (entry.get("input_sizes"), entry.get("input_dtypes")) != (first.get("input_sizes"),
                                                                           first.get("input_dtypes")):
                return seq, (f"at collective {seq} of {_group_name(group)} ({_op(first)}) rank {rank} passed "
                        f"{describe_tensors(entry.get('input_sizes'), entry.get('input_dtypes'))} where rank "
                        f"{first_rank} passed {describe_tensors(first.get('input_sizes'), first.get('input_dtypes'))}")
    return None


def _where_ranks_are(group: tuple[str, str], by_rank: Mapping[int, Mapping], dumps: Mapping[int, Mapping],
                     mismatched_at: int | None = None) -> str:
    """'ranks 0 and 1 are in collective 3 (...) of the default group; rank 2 never reached it (...)'; "" when
    every rank recorded the same last collective and none is known to be inside it."""
    last = {rank: max(per.get(group, {}) or [0]) for rank, per in by_rank.items()}
    top = max(last.values())
    ahead = sorted(r for r, seq in last.items() if seq == top)
    behind = sorted(r for r, seq in last.items() if seq < top)
    completed = {r: _completed(dumps[r], group) for r in ahead}
    pending = [r for r in ahead if completed[r] is not None and completed[r] < top]
    if not behind and not pending:
        return ""
    entry = next(by_rank[r][group][top] for r in ahead)
    verb = _verb(ahead, "is", "are") if (pending or behind) else _verb(ahead, "reached", "reached")
    what = "" if mismatched_at == top else f" ({_what(entry)})"  # ranks disagree on what it is: said above
    text = f"{_ranks_text(ahead)} {verb} in collective {top}{what} of {_group_name(group)}"
    for rank in behind:
        seq = last[rank]
        before = (f"its last collective is {seq}, {_op(by_rank[rank][group][seq])}" if seq
                  else "it recorded no collective in that group")
        text += f"; rank {rank} never reached it ({before})"
    return text


# --- stacks


_SITE = re.compile(r"(/[^\s\"']*?/)(site-packages/)")
_STDLIB = re.compile(r"(/[^\s\"']*?/lib/)(python3\.\d+/)")


def shorten_paths(text: str, workspace: str) -> str:
    """Frames with paths from site-packages/, pythonX.Y/ or the workspace on; each prefix named once on top."""
    prefixes: dict[str, str] = {}

    def cut(kind: str) -> Any:
        def replace(match: re.Match) -> str:
            prefixes.setdefault(kind, match.group(1))
            return match.group(2)
        return replace

    workspace = workspace.rstrip("/") + "/"
    if workspace != "/" and workspace in text:
        prefixes["the workspace's files"] = workspace
        text = text.replace(workspace, "")
    text = _SITE.sub(cut("site-packages/"), text)
    text = _STDLIB.sub(cut("the standard library"), text)
    if not prefixes:
        return text
    header = "paths in the stacks below are shortened: " + "; ".join(
        f"{kind} under {prefix}" for kind, prefix in prefixes.items())
    return f"{header}\n{text}"


def analyzer_command(folder: str) -> str:
    return f"{ANALYZER} {folder}"


def read_rank_files(folder: str, world_size: int) -> tuple[dict[int, dict], dict[int, str]]:
    """The dumps in a test's folder, repaired for the analyzer, and why each other rank has none."""
    dumps: dict[int, dict] = {}
    unread: dict[int, str] = {}
    for rank in range(world_size):
        path = rank_file(folder, rank)
        if not os.path.exists(path):
            continue
        try:
            dumps[rank] = load_and_repair(path, world_size)
        except (OSError, ValueError) as error:
            unread[rank] = f"its dump is unreadable: {error}"
    return dumps, unread

