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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from ascend_super.runtime import format as fmt
from ascend_super.runtime.tempfiles import remove_stale_temporaries, temporary_name


class WriterStateError(RuntimeError):
    """The writer was driven out of order (a bug in the caller)."""


class AswWriter:
    def __init__(self, out_path: Path, data_alignment: int = fmt.DEFAULT_DATA_ALIGNMENT) -> None:
        fmt.check_data_alignment(data_alignment)
        self.out_path = out_path
        remove_stale_temporaries(out_path)
        self.tmp_path = temporary_name(out_path)
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
