"""Build the native libraries into the package: native/src/*.c as ascend_super/runtime/_asw*.so, and on Linux the
aclnn backend plugin native/src/aclnn/*.cpp as ascend_super/runtime/libasw_aclnn.so next to it.

Project metadata lives in pyproject.toml; this file only declares the native builds. Neither library has a
Python module init: runtime/native.py loads the first with ctypes, and the first opens the plugin with dlopen only
when the aclnn backend is asked for. The plugin opens CANN itself with dlopen, so nothing here links CANN. SIMD
kernels are chosen at run time, so no -march flags here.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildNative(build_ext):
    """build_ext for a plain shared library loaded with ctypes (no PyInit_ symbol to export)."""

    def get_export_symbols(self, ext):
        return []

    def get_ext_filename(self, fullname):
        # the plugin keeps its plain name: model.c looks for libasw_aclnn.so next to the main library
        # (setuptools asks both with the full dotted name and with its last component)
        parts = fullname.split(".")
        if parts[-1] == ACLNN_PLUGIN.split(".")[-1]:
            return os.path.join(*parts[:-1], "libasw_aclnn.so")
        return super().get_ext_filename(fullname)


ACLNN_PLUGIN = "ascend_super.runtime.libasw_aclnn"
# -fno-trapping-math: nothing here reads FP exception flags, and it lets the exp/silu loops vectorize.
# -ffp-contract=off (gcc's default under -std=c11, said outright for other compilers): the greedy screen's bounds and
# its build loops, which every kernel set must compute alike, round each multiply and add as written.
extra_compile_args = ["-std=c11", "-O3", "-fno-trapping-math", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
                      "-fvisibility=hidden"]
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
    ]
    + (
        [
            Extension(
                ACLNN_PLUGIN,
                sources=sorted(glob.glob("native/src/aclnn/*.cpp")),
                include_dirs=["native/include", "native/src"],
                depends=sorted(glob.glob("native/src/aclnn/*.h"))
                + ["native/src/backend.h", "native/src/rope.h", "native/include/asw.h"],
                language="c++",
                extra_compile_args=["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"],
                extra_link_args=["-Wl,--no-undefined"],
                libraries=["dl"],
            )
        ]
        if sys.platform.startswith("linux")
        else []
    ),
    cmdclass={"build_ext": BuildNative},
)
