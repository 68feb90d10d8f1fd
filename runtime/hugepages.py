"""2 MiB pages for the weights the cpu backend reads in place (Linux): asking for them, checking, and getting them.

A decode step streams every weight once. Where the mapping of the .asw file uses 4 KiB pages, the CPU's hardware
prefetchers stop at every page boundary and each page costs a TLB entry; where it uses 2 MiB pages (page-cache
folios of 2 MiB mapped by one page-table entry, "FilePmdMapped" in /proc/self/smaps), the decode GEMV read the same
weights about 30 % faster on a 2-core AVX-512 Xeon (one thread: 10.3–11.0 → 13.8–14.1 GB/s), and the Qwen2-0.5B
shape decoded at 22.8–23.9 tok/s with 2 threads against 20.7–21.0 from small folios (interleaved pairs).

The kernel maps a file with 2 MiB pages only where its page cache holds the file in 2 MiB folios, and readahead
allocates those for a mapping marked MADV_HUGEPAGE. A file already cached in small folios (just written by the
converter, copied, or read by another program first) stays in them until its cache is dropped. So at load:
  1. mark the mapping MADV_HUGEPAGE and fault the data region in (MADV_POPULATE_READ);
  2. read from /proc/self/smaps how much of it is mapped with 2 MiB pages;
  3. under 90 %: zap this process's page-table entries of the region, drop the file's cached pages
     (POSIX_FADV_DONTNEED; pages another process has mapped stay) and fault it in again, now read from disk into
     2 MiB folios; then measure again.
Step 3 reads the file from disk once; its cache then stays in 2 MiB folios for later loads. It is skipped off Linux,
where transparent huge pages are off ("never"), for data regions under MIN_BYTES, and with ASW_HUGE_PAGES=0.
It is also skipped when the data region is larger than MEMORY_SHARE of MemAvailable: faulting in a model that does
not fit in memory would read the whole file (twice, with the re-read) for pages evicted before they are used. Every
step is a hint: a failure leaves the mapping as it was, never an error.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

HUGE = 2 * 1024 * 1024
MIN_BYTES = 2 * HUGE  # smaller data regions have at most one whole 2 MiB page: nothing worth a re-read
REREAD_BELOW = 0.9  # share of the region in 2 MiB pages under which the cache is dropped and read again
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; Python 3.11's mmap does not name it
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SMAPS = Path("/proc/self/smaps")
MEMINFO = Path("/proc/meminfo")
MEMORY_SHARE = 0.8  # fault the region in only when it fits this share of MemAvailable
ENV = "ASW_HUGE_PAGES"


@dataclass(frozen=True)
class HugePages:
    """What load did about 2 MiB pages: the share of the data region mapped with them, before and after."""

    before: float
    after: float
    reread: bool  # the file's cache was dropped and the region read again from disk
    seconds: float

    def line(self) -> str:
        if self.reread:
            return f"{self.seconds:.1f} s re-reading the weights for 2 MiB pages, {self.after * 100:.0f} % got them"
        return f"weights {self.after * 100:.0f} % in 2 MiB pages"


def wanted() -> bool:
    """Whether to try at all: Linux with transparent huge pages not "never", and ASW_HUGE_PAGES not "0"."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    try:
        setting = THP_SETTING.read_text(encoding="ascii")
    except OSError:
        return False
    return "[never]" not in setting


def fits_in_memory(nbytes: int) -> bool:
    """Whether `nbytes` is at most MEMORY_SHARE of the MemAvailable in /proc/meminfo (False when unreadable)."""
    try:
        with MEMINFO.open(encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return nbytes <= MEMORY_SHARE * int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return False


def mapping_address(mapping: mmap.mmap) -> int:
    """Where `mapping` starts in this process's address space."""
    view = np.frombuffer(mapping, dtype=np.uint8)
    try:
        return int(view.ctypes.data)
    finally:
        del view  # a live view would keep the mapping from being closed


def _smaps() -> Iterator[tuple[int, int, str, dict[str, int]]]:
    """Each mapping of this process in /proc/self/smaps: (start, end, path or "", its "Key: N kB" fields in bytes)."""
    mapping: tuple[int, int, str] | None = None
    fields: dict[str, int] = {}
    with SMAPS.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            parts = line.split(None, 5)
            head = parts[0] if parts else ""
            if "-" in head and ":" not in head:  # a mapping's header: "start-end perms offset dev inode [path]"
                if mapping is not None:
                    yield (*mapping, fields)
                start, _, end = head.partition("-")
                path = parts[5].rstrip("\n") if len(parts) == 6 else ""
                try:
                    mapping, fields = (int(start, 16), int(end, 16), path), {}
                except ValueError:
                    mapping = None
            elif mapping is not None and head.endswith(":") and len(parts) == 3 and parts[2] == "kB":
                fields[head[:-1]] = int(parts[1]) * 1024
    if mapping is not None:
        yield (*mapping, fields)


def pmd_mapped_bytes(address: int, length: int) -> int:
    """Bytes of [address, address + length) in this process mapped with 2 MiB pages, from /proc/self/smaps (the
    FilePmdMapped of every mapping inside that range; a mapping the range only partly covers counts in full, so
    callers pass whole mappings)."""
    return sum(fields.get("FilePmdMapped", 0) for lo, hi, _, fields in _smaps()
               if lo < address + length and hi > address)


def advise(mapping: mmap.mmap, advice: int | None, start: int, length: int) -> bool:
    """madvise a byte range of a mapping (start rounded down to a page). A hint: False, and nothing else, where the
    platform or kernel lacks it (advice None) or refuses it."""
    if advice is None or length <= 0:
        return False
    aligned = start - start % mmap.PAGESIZE
    try:
        mapping.madvise(advice, aligned, length + start - aligned)
    except (OSError, ValueError):
        return False
    return True


def map_with_huge_pages(path: Path, mapping: mmap.mmap, data_offset: int, data_nbytes: int) -> HugePages | None:
    """Get the data region [data_offset, data_offset + data_nbytes) of `mapping` (the whole file `path`) mapped with
    2 MiB pages, as the module docstring says. None when not tried."""
    if data_nbytes < MIN_BYTES or not wanted() or not hasattr(os, "posix_fadvise"):
        return None
    if not fits_in_memory(data_nbytes):
        return None
    started = time.perf_counter()
    address = mapping_address(mapping)
    start = data_offset - data_offset % mmap.PAGESIZE
    length = data_offset + data_nbytes - start
    whole = (data_nbytes // HUGE) * HUGE  # what can be in 2 MiB pages (data_offset is 2 MiB-aligned by default)
    if not advise(mapping, mmap.MADV_HUGEPAGE, 0, len(mapping)):  # the whole mapping: one VMA, not split in three
        return None
    if not advise(mapping, MADV_POPULATE_READ, start, length):
        return None
    before = min(1.0, pmd_mapped_bytes(address, len(mapping)) / whole)
    if before >= REREAD_BELOW:
        return HugePages(before, before, False, time.perf_counter() - started)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return HugePages(before, before, False, time.perf_counter() - started)
    try:
        if not advise(mapping, mmap.MADV_DONTNEED, start, length):  # our own mappings would keep the pages cached
            return HugePages(before, before, False, time.perf_counter() - started)
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
    advise(mapping, MADV_POPULATE_READ, start, length)
    after = min(1.0, pmd_mapped_bytes(address, len(mapping)) / whole)
    return HugePages(before, after, True, time.perf_counter() - started)


def file_pmd_share(path: Path) -> float | None:
    """The share of this process's mappings of `path` that uses 2 MiB pages, from /proc/self/smaps; None when the
    file is not mapped here or smaps cannot be read (how the benchmark checks another engine's mapping)."""
    target = str(Path(path).resolve())
    try:
        mine = [fields for _, _, name, fields in _smaps() if name == target]
    except OSError:
        return None
    size = sum(fields.get("Size", 0) for fields in mine)
    return sum(fields.get("FilePmdMapped", 0) for fields in mine) / size if size else None


def cache_in_huge_pages(path: Path) -> HugePages | None:
    """Leave the page cache of the whole file `path` in 2 MiB folios (map it, map_with_huge_pages, unmap), so that a
    program mapping it next gets 2 MiB pages: what the benchmark does for another engine's model file, so that both
    engines read their weights from the same kind of pages."""
    with Path(path).open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return None
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return map_with_huge_pages(Path(path), mapping, 0, size)
    finally:
        mapping.close()
