"""bench/fma_peak.c, the measurement behind the README's word on VDPBF16PS (issue 9's bf16 dot-product lead): it
builds warning-free, prints one rate per instruction the CPU has with the multiply-adds each one does, and rejects a
bad round count."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACS = {"fma-ymm-f32": 8, "fma-zmm-f32": 16, "vdpbf16ps-zmm": 32}

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instructions only")


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fma_peak") / "fma_peak"
    subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(ROOT / "bench" / "fma_peak.c")], check=True, timeout=120)
    return out


def test_fma_peak_reports_every_instruction(exe: Path) -> None:
    done = subprocess.run([str(exe), "1"], capture_output=True, text=True, check=True, timeout=120)
    for line in done.stdout.splitlines():
        name, rest = line.split(None, 1)
        if rest == "not supported by this CPU":
            continue
        words = rest.split()
        instructions, macs = float(words[0]), float(words[3])
        assert instructions > 0 and macs == pytest.approx(instructions * MACS[name], rel=0.01, abs=0.11)
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(MACS)  # each, measured or not


def test_fma_peak_rejects_a_bad_round_count(exe: Path) -> None:
    bad = subprocess.run([str(exe), "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr
