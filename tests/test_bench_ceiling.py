"""bench/gemv_ceiling.c, the roofline ceiling that bench/side_by_side.py reports (the decode GEMV alone against the
bandwidth probe): it builds from the library's sources, runs the kernel set the library picks, and reports one line
per pair; bad arguments exit 2 with a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import side_by_side

    return side_by_side.ceiling_build(tmp_path_factory.mktemp("ceiling"))


def test_gemv_ceiling_reports_each_pair(exe: Path) -> None:
    done = subprocess.run([str(exe), "2", "16", "3"], capture_output=True, text=True, check=True, timeout=120)
    lines = done.stdout.splitlines()
    assert lines[0].split()[0] == "kernels" and lines[0].split()[1] in ("avx512", "avx2", "neon", "portable")
    pairs = [line.split() for line in lines[1:]]
    assert [p[:2] for p in pairs] == [["pair", "0"], ["pair", "1"], ["pair", "2"]]
    assert all(float(p[2]) > 0 and float(p[3]) > 0 for p in pairs)
    forced = subprocess.run([str(exe), "1", "4", "1"], capture_output=True, text=True, check=True, timeout=120,
                            env={"ASW_KERNELS": "portable", "PATH": "/usr/bin:/bin"})
    assert forced.stdout.splitlines()[0] == "kernels portable"


def test_gemv_ceiling_rejects_bad_arguments(exe: Path) -> None:
    for args in ([], ["0", "16", "3"], ["2", "0", "3"], ["2", "16", "0"]):
        bad = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2, args
        assert "gemv_ceiling" in bad.stderr or "usage" in bad.stderr
