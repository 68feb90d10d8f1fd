"""bench/side_by_side.py --kernels avx2: every engine it starts is told to use AVX2 kernels only, and llama.cpp's
AVX2 libraries are built once (bench/_llama.py); no compiler or llama.cpp source is needed here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import _llama  # noqa: E402
import side_by_side  # noqa: E402

AVX2_ENV = ("ASW_KERNELS", "ATEN_CPU_CAPABILITY", "LLAMA_CPP_LIB_PATH")


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AVX2_ENV:  # set, then deleted: both recorded, so whatever the test sets is undone after it
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_avx2_everywhere_sets_each_engines_switch(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_build() -> Path:
        raise AssertionError("built llama.cpp without a llama.cpp engine")

    clean_env.setattr(_llama, "ensure_avx2_library", no_build)
    side_by_side.avx2_everywhere(["ours fp16", "transformers bf16"])
    assert os.environ["ASW_KERNELS"] == "avx2" and os.environ["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "LLAMA_CPP_LIB_PATH" not in os.environ
    clean_env.setattr(_llama, "ensure_avx2_library", lambda: tmp_path)
    side_by_side.avx2_everywhere(["ours fp16", "llama.cpp F16"])
    assert os.environ["LLAMA_CPP_LIB_PATH"] == str(tmp_path)


@pytest.fixture()
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """_llama's cache in tmp_path, an empty vendored source tree, and a cmake that only records its commands."""
    monkeypatch.setattr(_llama.C, "CACHE", tmp_path)
    monkeypatch.setattr(_llama, "_vendor_tree", lambda *args: tmp_path / "src")
    monkeypatch.setattr(_llama.C, "log", lambda *args: None)
    return tmp_path


def test_avx2_library_is_built_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[list[str]] = []

    def cmake(step: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        steps.append(step)
        if "--build" in step:  # the build leaves the library where cmake puts it
            (cache / "llama.cpp-avx2-9.9" / "bin").mkdir(parents=True)
            (cache / "llama.cpp-avx2-9.9" / "bin" / "libllama.so").write_bytes(b"")
        return subprocess.CompletedProcess(step, 0)

    monkeypatch.setattr(_llama.subprocess, "run", cmake)
    folder = _llama.ensure_avx2_library("9.9")
    assert folder == cache / "llama.cpp-avx2-9.9" / "bin"
    assert len(steps) == 2 and "-DGGML_AVX512=OFF" in steps[0] and "-DGGML_NATIVE=OFF" in steps[0]
    assert steps[1][steps[1].index("--target") + 1] == "llama"
    assert _llama.ensure_avx2_library("9.9") == folder and len(steps) == 2  # cached: cmake not run again


def test_avx2_library_build_failure_names_the_log(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_llama.subprocess, "run", lambda step, **kwargs: subprocess.CompletedProcess(step, 1))
    with pytest.raises(SystemExit, match=r"llama.cpp-avx2-9\.9-build\.log"):
        _llama.ensure_avx2_library("9.9")
    assert not (cache / "llama.cpp-avx2-9.9" / ".complete").exists()
