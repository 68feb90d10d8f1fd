"""2 MiB pages for the cpu backend's weights (runtime/hugepages.py): the smaps reading, that asking for them never
changes a byte or fails a load, and that it can be turned off."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from ascend_super.runtime import hugepages

SMAPS = """\
7f0000000000-7f0000400000 r--s 00000000 fd:01 123 /models/a.asw
Size:               4096 kB
FilePmdMapped:      2048 kB
7f0000400000-7f0000800000 r--s 00400000 fd:01 123 /models/a.asw
Size:               4096 kB
FilePmdMapped:      4096 kB
7f0000800000-7f0000a00000 rw-p 00000000 00:00 0
Size:               2048 kB
FilePmdMapped:      2048 kB
VmFlags: rd sh mr mw me ms hg
"""


def test_pmd_mapped_bytes_sums_the_mappings_inside_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "smaps"
    fake.write_text(SMAPS, encoding="ascii")
    monkeypatch.setattr(hugepages, "SMAPS", fake)
    start = 0x7F0000000000
    assert hugepages.pmd_mapped_bytes(start, 0x800000) == 6 * 1024 * 1024  # the two file mappings, not the third
    assert hugepages.pmd_mapped_bytes(start + 0x400000, 0x400000) == 4 * 1024 * 1024
    assert hugepages.pmd_mapped_bytes(start + 0xA00000, 0x1000) == 0
    assert hugepages.file_pmd_share(Path("/models/a.asw")) == 0.75  # 6 of its 8 MiB
    assert hugepages.file_pmd_share(Path("/models/other.asw")) is None  # not mapped here


def _mapped(path: Path) -> mmap.mmap:
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def test_asking_for_huge_pages_keeps_every_byte(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 3 * hugepages.HUGE + 4096, dtype=np.uint8).tobytes()
    path = tmp_path / "region.bin"
    path.write_bytes(b"\0" * hugepages.HUGE + data)
    mapping = _mapped(path)
    try:
        got = hugepages.map_with_huge_pages(path, mapping, hugepages.HUGE, len(data))
        if got is not None:  # None: not tried here (no THP, not Linux)
            assert 0.0 <= got.before <= 1.0 and 0.0 <= got.after <= 1.0
            assert got.reread == (got.before < hugepages.REREAD_BELOW)
            assert "2 MiB pages" in got.line()
        assert mapping[hugepages.HUGE:] == data  # dropped and re-read pages come back from the file, unchanged
    finally:
        mapping.close()


def test_small_regions_big_ones_and_the_switch_skip_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.bin"
    path.write_bytes(b"\1" * (hugepages.MIN_BYTES + 4096))
    mapping = _mapped(path)
    try:
        assert hugepages.map_with_huge_pages(path, mapping, 0, hugepages.MIN_BYTES - 1) is None
        meminfo = tmp_path / "meminfo"  # a region larger than the memory there is: faulting it in would thrash
        meminfo.write_text("MemTotal:        8192 kB\nMemAvailable:    4096 kB\n", encoding="ascii")
        monkeypatch.setattr(hugepages, "MEMINFO", meminfo)
        assert not hugepages.fits_in_memory(hugepages.MIN_BYTES + 4096)
        assert hugepages.fits_in_memory(3000 * 1024)
        assert hugepages.map_with_huge_pages(path, mapping, 0, hugepages.MIN_BYTES + 4096) is None
        monkeypatch.undo()
        monkeypatch.setenv(hugepages.ENV, "0")
        assert not hugepages.wanted()
        assert hugepages.map_with_huge_pages(path, mapping, 0, hugepages.MIN_BYTES + 4096) is None
    finally:
        mapping.close()


def test_the_cpu_backend_asks_for_them_at_load(smollm2_asw: Path) -> None:
    from ascend_super.runtime.model import Model

    with Model(smollm2_asw, backend="cpu") as model:
        if hugepages.wanted():
            assert model.huge_pages is not None
            assert 0.0 <= model.huge_pages.after <= 1.0
        else:  # transparent huge pages off here: nothing asked
            assert model.huge_pages is None
