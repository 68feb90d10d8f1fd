"""Writes one .asw file safely: a small state machine over a temporary file in the target folder.

    writer = AswWriter(out_path, data_alignment)        # opens OUT.asw.tmp-<host>-<pid> next to OUT (and removes
                                                         # this host's such files whose process no longer exists)
    writer.reserve_manifest(nbytes)                      # size of the final manifest (hashes are fixed-length)
    writer.begin_tensor(name, offset); writer.write(chunk)...; writer.end_tensor() -> Future of the xxh3 hex
                                                         # (in file order)
    writer.finish(manifest)                              # preamble + manifest, fsync, rename over OUT
    writer.abort()                                       # on any error: the temporary file is removed

Writing and hashing run on one background thread, in call order, so the caller reads and casts the next block
while this one goes to the page cache (a write can block for seconds when the kernel throttles dirty pages). A
chunk given to write() must stay unchanged until the next write() returns: callers alternate two buffers. An error
of the background thread (a full disk) is raised by the next call. Out-of-order calls raise; nothing ever appears
at OUT unless finish() succeeded. Byte layout comes from runtime/format.py.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from ascend_super.runtime import format as fmt


class WriterStateError(RuntimeError):
    """The writer was driven out of order (a bug in the caller)."""


TMP_INFIX = ".tmp-"  # OUT.asw.tmp-<host>-<pid>: the file being written, renamed over OUT when complete


def host_tag() -> str:
    """This machine's name as it goes into a temporary file's name: letters, digits, '.' and '_' only."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._") else "_" for c in socket.gethostname())
    return name or "localhost"


def _temporary_name(out_path: Path, pid: int) -> Path:
    return out_path.with_name(f"{out_path.name}{TMP_INFIX}{host_tag()}-{pid}")


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
    """The pid of a temporary file's suffix (what follows OUT.asw.tmp-) when the file is host `host`'s (this one's):
    <host>-<pid>, or a bare <pid> (the names of earlier versions, which were always local); else None. An
    output folder can be shared (NFS, a volume mounted into several containers): another host's pids say nothing
    about its processes here, so its files are left alone."""
    owner, _, digits = suffix.rpartition("-")
    if owner and owner != host:
        return None
    if not (digits.isascii() and digits.isdigit()) or int(digits) <= 0:
        return None
    return int(digits)


def remove_stale_temporaries(out_path: Path) -> list[Path]:
    """Remove the OUT.tmp-HOST-PID files that conversions to `out_path` on this machine left behind when killed
    outright (SIGKILL, a crash, power loss): those whose process no longer exists. Returns what was removed."""
    prefix = out_path.name + TMP_INFIX
    try:
        candidates = [entry for entry in out_path.parent.iterdir() if entry.name.startswith(prefix)]
    except OSError:  # the folder does not exist yet, or cannot be listed: nothing to clean
        return []
    removed, host = [], host_tag()
    for entry in candidates:
        pid = _local_pid(entry.name[len(prefix):], host)
        if pid is None or pid == os.getpid() or _process_exists(pid) or entry.is_symlink() or not entry.is_file():
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


class AswWriter:
    def __init__(self, out_path: Path, data_alignment: int = fmt.DEFAULT_DATA_ALIGNMENT) -> None:
        fmt.check_data_alignment(data_alignment)
        self.out_path = out_path
        remove_stale_temporaries(out_path)
        self.tmp_path = _temporary_name(out_path, os.getpid())
        self.data_alignment = data_alignment
        self._file: BinaryIO | None = open(self.tmp_path, "wb")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asw-writer")
        self._in_flight: deque[Future[None]] = deque()  # writes submitted and perhaps not done yet
        self._state = "new"
        self._manifest_nbytes = 0
        self._data_offset = 0
        self._cursor = 0  # bytes of the data region written so far
        self._hasher: Any = None
        self._tensor_name = ""

    def _expect(self, *states: str) -> BinaryIO:
        if self._state not in states or self._file is None:
            raise WriterStateError(f"writer is in state {self._state!r}, expected one of {states}")
        return self._file

    def reserve_manifest(self, nbytes: int) -> None:
        handle = self._expect("new")
        self._manifest_nbytes = nbytes
        self._data_offset = fmt.layout_file(nbytes, self.data_alignment)
        handle.seek(self._data_offset)
        self._state = "data"

    def begin_tensor(self, name: str, offset: int) -> None:
        handle = self._expect("data")
        if offset < self._cursor:
            raise WriterStateError(f"tensor {name} at {offset} precedes the write cursor {self._cursor}")
        if offset > self._cursor:
            self._submit(handle.write, b"\0" * (offset - self._cursor))
        self._cursor = offset
        self._hasher = xxhash.xxh3_64()
        self._tensor_name = name
        self._state = "tensor"

    def _submit(self, job: Any, chunk: bytes | memoryview) -> None:
        """Queue job(chunk) on the writer thread; return once every job before it is done (raising its error)."""
        self._in_flight.append(self._worker.submit(job, chunk))
        while len(self._in_flight) > 1:
            self._in_flight.popleft().result()

    def write(self, chunk: bytes | memoryview) -> None:
        handle, hasher = self._expect("tensor"), self._hasher

        def write_and_hash(data: bytes | memoryview) -> None:
            handle.write(data)
            hasher.update(data)

        self._submit(write_and_hash, chunk)
        self._cursor += len(chunk)

    def end_tensor(self) -> Future[str]:
        """The tensor's xxh3_64 hex digest, once the writer thread has hashed every chunk of it."""
        self._expect("tensor")
        self._state = "data"
        return self._worker.submit(self._hasher.hexdigest)

    def finish(self, manifest: dict[str, Any]) -> None:
        handle = self._expect("data")
        self._worker.submit(lambda: None).result()  # every write before it is done
        for done in self._in_flight:
            done.result()  # raises what a write raised
        self._in_flight.clear()
        self._worker.shutdown()
        packed = fmt.pack_manifest(manifest)
        if len(packed) != self._manifest_nbytes:
            raise WriterStateError(f"manifest is {len(packed)} bytes, {self._manifest_nbytes} were reserved")
        preamble = fmt.Preamble(fmt.VERSION_MAJOR, fmt.VERSION_MINOR, 0, fmt.PREAMBLE_NBYTES, len(packed),
                                xxhash.xxh3_64_intdigest(packed), self._data_offset, self._cursor, self.data_alignment)
        handle.seek(0)
        handle.write(preamble.pack())
        handle.write(packed)
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        self._file = None
        os.replace(self.tmp_path, self.out_path)
        directory = os.open(self.out_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._state = "done"

    def abort(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)  # at most the write in progress completes
        self._in_flight.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tmp_path.unlink(missing_ok=True)
        self._state = "aborted"
