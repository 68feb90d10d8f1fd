"""Build the native library (native/src/*.c) into the package as ascend_super/runtime/_asw*.so.

Project metadata lives in pyproject.toml; this file only declares the one C extension. The library has no
Python module init: runtime/native.py loads it with ctypes. SIMD kernels are chosen at run time, so no
-march flags here.
"""

import glob
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildNative(build_ext):
    """build_ext for a plain shared library loaded with ctypes (no PyInit_ symbol to export)."""

    def get_export_symbols(self, ext):
        return []


# -fno-trapping-math: nothing here reads FP exception flags, and it lets the exp/silu loops vectorize
extra_compile_args = ["-std=c11", "-O3", "-fno-trapping-math", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
libraries = [] if sys.platform == "win32" else ["m", "dl"]

setup(
    ext_modules=[
        Extension(
            "ascend_super.runtime._asw",
            sources=sorted(glob.glob("native/src/*.c")),
            include_dirs=["native/include"],
            depends=sorted(glob.glob("native/src/*.h")) + ["native/include/asw.h"],
            extra_compile_args=extra_compile_args,
            extra_link_args=["-pthread"],
            libraries=libraries,
        )
    ],
    cmdclass={"build_ext": BuildNative},
)
