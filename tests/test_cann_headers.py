"""Vendor-header conformance: our own CANN declarations (native/src/aclnn/cann_api.h) and the emulator's runtime
compiled against Huawei's AscendCL headers, as shipped in the torch-npu wheel on PyPI (never copied into the repo).

Every runtime function in cann_api.h must have the vendor's exact type (our `name_fn` typedef against
decltype(&name) of the vendor declaration), every enum value and constant must equal the vendor's, and every
runtime function the emulator defines must match the vendor's declaration (else a conflicting-declaration error).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TORCH_NPU = "2.14.0"
CACHE = Path(os.environ.get("ASW_CACHE_DIR", Path.home() / ".cache" / "ascend-super"))
CXX = os.environ.get("CXX", "g++")

CHECKS = r"""
#include <acl/acl.h>
#define ASW_CANN_VENDOR_RT_TYPES 1
#include "cann_api.h"
#include <type_traits>
#define CHECK_FN(ret, name, params) \
    static_assert(std::is_same<decltype(&::name), name##_fn>::value, "prototype differs from the vendor's: " #name);
CANN_ASCENDCL_FUNCS(CHECK_FN)
#define CHECK_VALUE(name, value) \
    static_assert((long long)(name) == (long long)(value), "value differs from the vendor's: " #name);
#define CHECK_ENUM(type, LIST) static_assert(sizeof(type) > 0, #type); LIST(CHECK_VALUE)
CANN_RT_ENUMS(CHECK_ENUM)
CANN_RT_INT_CONSTANTS(CHECK_VALUE)
"""


@pytest.fixture(scope="module")
def vendor_include() -> Path:
    """torch_npu/include/ of the torch-npu wheel: downloaded once with pip into the cache, only include/ unpacked."""
    root = CACHE / f"torch_npu_{TORCH_NPU}"
    include = root / "torch_npu" / "include"
    if (include / "acl" / "acl.h").is_file():
        return include
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_28_x86_64",
            f"torch-npu=={TORCH_NPU}",
            "-d",
            str(wheels),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    wheel = next(wheels.glob(f"torch_npu-{TORCH_NPU}-*.whl"), None)
    if got.returncode != 0 or wheel is None:
        if os.environ.get("CI"):
            pytest.fail(
                f"could not download torch-npu=={TORCH_NPU} for its AscendCL headers: {got.stderr.strip()[-500:]}"
            )
        pytest.skip(f"torch-npu=={TORCH_NPU} (the vendor headers) could not be downloaded: {got.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith("torch_npu/include/")]
        z.extractall(root, members)
    assert (include / "acl" / "acl.h").is_file(), f"{wheel.name} has no torch_npu/include/acl/acl.h"
    return include


def compile_check(source: str, include: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    src = tmp_path / "check.cpp"
    src.write_text(source)
    return subprocess.run(
        [
            CXX,
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{include}",
            f"-I{REPO / 'native' / 'src' / 'aclnn'}",
            *extra,
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cann_api_runtime_matches_vendor_headers(vendor_include, tmp_path):
    out = compile_check(CHECKS, vendor_include, tmp_path)
    assert out.returncode == 0, out.stderr


def test_emulator_runtime_compiles_against_vendor_headers(vendor_include, tmp_path):
    source = f'#include "{REPO / "native" / "emu" / "runtime.cpp"}"\n'
    out = compile_check(source, vendor_include, tmp_path, "-DASW_EMU_VENDOR_HEADERS")
    assert out.returncode == 0, out.stderr


def test_the_check_catches_a_wrong_prototype_and_a_wrong_value(vendor_include, tmp_path):
    wrong = (
        CHECKS
        + "\nCHECK_VALUE(ACL_FORMAT_FRACTAL_NZ, 30)\n"
        + "typedef aclError (*aclrtMalloc_wrong)(void **, size_t, int);\n"
        + 'static_assert(std::is_same<decltype(&::aclrtMalloc), aclrtMalloc_wrong>::value, "prototype differs");\n'
        + 'extern "C" aclError aclrtFree(const void *devPtr);\n'
    )
    out = compile_check(wrong, vendor_include, tmp_path)
    assert out.returncode != 0
    assert "value differs from the vendor's: ACL_FORMAT_FRACTAL_NZ" in out.stderr
    assert "prototype differs" in out.stderr
    assert "aclrtFree" in out.stderr
