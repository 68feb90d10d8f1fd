"""Files written beside their target and renamed over it when complete (a .asw, its card, a verification record):
the temporary's name, TARGET.tmp-HOST-PID, and the removal of those that a killed process of this host left.

    remove_stale_temporaries(target)   # this host's TARGET.tmp-* files whose process no longer exists
    tmp = temporary_name(target)       # write it, then os.replace(tmp, target); unlink tmp on failure
    replace_text(target, text)         # both, for a small text file
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

TMP_INFIX = ".tmp-"  # TARGET.tmp-<host>-<pid>: the file being written, renamed over TARGET when complete


def host_tag() -> str:
    """This machine's name as it goes into a temporary file's name: letters, digits, '.' and '_' only."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._") else "_" for c in socket.gethostname())
    return name or "localhost"


def temporary_name(target: Path) -> Path:
    """Where this process writes `target` before renaming it there: TARGET.tmp-HOST-PID beside it."""
    return target.with_name(f"{target.name}{TMP_INFIX}{host_tag()}-{os.getpid()}")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    except OverflowError:
        return False
    return True


def _local_pid(suffix: str, host: str) -> int | None:
    """The pid of a temporary file's suffix (what follows TARGET.tmp-) when the file is host `host`'s (this one's):
    <host>-<pid>, or a bare <pid> (the names of earlier versions, which were always local); else None. An
    output folder can be shared (NFS, a volume mounted into several containers): another host's pids say nothing
    about its processes here, so its files are left alone."""
    owner, _, digits = suffix.rpartition("-")
    if owner and owner != host:
        return None
    if not (digits.isascii() and digits.isdigit()) or int(digits) <= 0:
        return None
    return int(digits)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the TARGET.tmp-HOST-PID files that writers of `target` on this machine left behind when killed
    outright (SIGKILL, a crash, power loss): those whose process no longer exists. Returns what was removed."""
    prefix = target.name + TMP_INFIX
    try:
        candidates = [entry for entry in target.parent.iterdir() if entry.name.startswith(prefix)]
    except OSError:  # the folder does not exist yet, or cannot be listed: nothing to clean
        return []
    removed, host = [], host_tag()
    for entry in candidates:
        pid = _local_pid(entry.name[len(prefix):], host)
        if pid is None or pid == os.getpid() or _process_exists(pid) or entry.is_symlink() or not entry.is_file():
            continue
        try:
            entry.unlink(missing_ok=True)
        except OSError:  # another user's leftover in a sticky folder, say: not ours to remove, and no reason to fail
            continue
        removed.append(entry)
    return removed


def replace_text(target: Path, text: str) -> None:
    """Write `text` to `target` atomically: into this process's temporary beside it, then renamed over it (after
    removing the temporaries of dead writers). Raises OSError; the temporary never outlives a failure."""
    remove_stale_temporaries(target)
    tmp = temporary_name(target)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
