"""llama.cpp's side of the benchmark: its sdist, its converter, and the F16 / BF16 GGUF files it runs.

- `pinned_version()`: the llama-cpp-python version pinned by pyproject.toml's `bench` extra (the one pin).
- `ensure_sdist()`: that version's sdist in .cache/bench/sdist/ (`pip download --no-binary :all:`, once). The
  Makefile installs llama-cpp-python from this same file (built from source with this machine's CMAKE_ARGS), and
  the benchmark takes llama.cpp's own convert_hf_to_gguf.py from it, so converter and engine are one llama.cpp.
- `ensure_gguf_from_hf(checkpoint, outtype)`: a HuggingFace checkpoint written as an F16 / BF16 GGUF by that
  convert_hf_to_gguf.py (run by bench/hf_to_gguf.py in a child process).
- `ensure_gguf_retyped(gguf, outtype)`: a quantized GGUF re-typed to F16 / BF16 by llama.cpp itself
  (llama_model_quantize with allow_requantize and pure: every matrix dequantized and stored as F16 / BF16, norms
  stay F32) — the same dequantized values our converter writes to a .asw from that GGUF.

- `ensure_llama_server()`: llama.cpp's own C++ HTTP server (`llama-server`, continuous batching over `--parallel`
  slots) built once from that sdist's vendor/llama.cpp with cmake, static, with the same native flags as the
  Python package (GGML_NATIVE=ON, no curl/openssl, no tests/examples) — the peer of bench/serve.py, since
  llama-cpp-python's own `llama_cpp.server` serves one request at a time.
- `ensure_avx2_library()`: the same llama.cpp built as shared libraries for AVX2 + FMA + F16C only (no AVX-512),
  which llama-cpp-python loads instead of its own when LLAMA_CPP_LIB_PATH names their folder: the peer of our AVX2
  kernel set (`side_by_side.py --kernels avx2`), for what machines without AVX-512 get, measured on one that has it.

    python bench/_llama.py sdist      # prints the path of the pinned sdist (downloading it if needed)
    python bench/_llama.py check      # exit status 0 when the pinned version is the one installed
    python bench/_llama.py server     # prints the path of llama-server (building it if needed: ~15 min on 2 cores)
    python bench/_llama.py avx2       # prints the folder of an AVX2-only libllama (building it if needed: ~5 min)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

PACKAGE = "llama-cpp-python"
SDIST_DIR = C.CACHE / "sdist"
CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def pinned_version() -> str:
    """The exact version `llama-cpp-python==X` in pyproject.toml's bench extra."""
    extras = tomllib.loads((C.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in extras.get("bench", []):
        name, sep, version = requirement.partition("==")
        if name.strip().lower().replace("_", "-") == PACKAGE and sep:
            return version.strip()
    raise SystemExit(f"pyproject.toml: the bench extra has no '{PACKAGE}==<version>' pin")


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


def ensure_sdist(version: str | None = None) -> Path:
    version = version or pinned_version()
    name = f"{PACKAGE.replace('-', '_')}-{version}.tar.gz"
    path = SDIST_DIR / name
    if path.is_file():
        return path
    SDIST_DIR.mkdir(parents=True, exist_ok=True)
    C.log(f"downloading the {PACKAGE} {version} sdist (llama.cpp's converter and sources) ...")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "--dest",
           str(SDIST_DIR), f"{PACKAGE}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"pip download {PACKAGE}=={version} failed: {tail[0]}")
    return path


def _vendor_tree(version: str, target: Path, wanted: Callable[[str], bool], required: str) -> Path:
    """The files of the sdist's vendor/llama.cpp/ whose path inside it passes `wanted`, extracted once into `target`
    (a `.complete` stamp marks a finished extraction); `required` must be among them."""
    stamp = target / ".complete"
    if stamp.is_file():
        return target
    sdist = ensure_sdist(version)
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            rel = member.name[len(prefix):]
            if member.name.startswith(prefix) and rel and wanted(rel):
                member.name = rel
                members.append(member)
        if not any(m.name == required for m in members):
            raise SystemExit(f"{sdist}: no vendor/llama.cpp/{required} inside")
        archive.extractall(target, members=members, filter="data")
    stamp.write_text(time.strftime("%Y-%m-%d %H:%M:%S"), encoding="utf-8")
    return target


def converter_dir(version: str) -> Path:
    """vendor/llama.cpp's converter files of the sdist, extracted once under .cache/bench/."""
    return _vendor_tree(version, C.CACHE / f"llama.cpp-{version}",
                        lambda rel: any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in CONVERTER_MEMBERS),
                        "convert_hf_to_gguf.py")


SERVER_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
                     "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                     "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON")


# llama.cpp's CPU kernels for AVX2 + FMA + F16C machines, whatever this CPU has: the peer of our AVX2 kernel set
# (side_by_side.py --kernels avx2), built as shared libraries that llama-cpp-python loads instead of its own
# (LLAMA_CPP_LIB_PATH); the flags ggml's own CMake offers for a build without GGML_NATIVE
AVX2_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON",
                   "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF",
                   "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                   "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF")


def _cmake_build(version: str, name: str, args: tuple[str, ...], target: str, product: str, what: str) -> Path:
    """`target` of the pinned sdist's vendor/llama.cpp built once with cmake (ninja if present) into
    .cache/bench/`name`-`version`/; returns bin/`product` there."""
    build = C.CACHE / f"{name}-{version}"
    built = build / "bin" / product
    if (build / ".complete").is_file() and built.is_file():
        return built
    source = _vendor_tree(version, C.CACHE / f"llama.cpp-src-{version}", lambda rel: True, "CMakeLists.txt")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = str(max(1, len(os.sched_getaffinity(0))))
    log = C.CACHE / f"{name}-{version}-build.log"
    C.log(f"building {what} {version} from the sdist (once; ~5-15 min on 2 cores; log {log}) ...")
    with open(log, "wb") as out:
        for step in (["cmake", "-S", str(source), "-B", str(build), *generator, *args],
                     ["cmake", "--build", str(build), "--target", target, "-j", jobs]):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"building {what} failed at `{' '.join(step[:3])} …`; see {log}")
    if not built.is_file():
        raise SystemExit(f"the {what} build finished without {built}; see {log}")
    (build / ".complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S"), encoding="utf-8")
    return built


def ensure_llama_server(version: str | None = None) -> Path:
    """llama.cpp's `llama-server` of the pinned sdist, built once under .cache/bench/."""
    return _cmake_build(version or pinned_version(), "llama-server", SERVER_CMAKE_ARGS, "llama-server",
                        "llama-server", "llama.cpp's llama-server")


def ensure_avx2_library(version: str | None = None) -> Path:
    """The folder of an AVX2-only libllama (and its ggml libraries) of the pinned sdist, built once under
    .cache/bench/: what LLAMA_CPP_LIB_PATH names for llama-cpp-python (the libraries find each other by RUNPATH)."""
    return _cmake_build(version or pinned_version(), "llama.cpp-avx2", AVX2_CMAKE_ARGS, "llama", "libllama.so",
                        "llama.cpp's library for AVX2 (no AVX-512)").parent


def _require_installed() -> str:
    version = installed_version()
    if version is None:
        raise SystemExit(f"{PACKAGE} is not installed: `make bench` installs it (the bench extra, built from source)")
    return version


def ensure_gguf_from_hf(checkpoint: Path, outtype: str, no_vocab: bool, byte_vocab: bool = False) -> Path:
    """`checkpoint` converted by llama.cpp's convert_hf_to_gguf.py to `outtype` (f16 | bf16), cached; no_vocab /
    byte_vocab: the vocabulary written instead of the checkpoint's (see bench/hf_to_gguf.py)."""
    version = _require_installed()
    out = C.CACHE / f"{checkpoint.name}-{outtype}-llamacpp{version}{'-bytevocab' if byte_vocab else ''}.gguf"
    if out.is_file():
        return out
    tools = converter_dir(version)
    C.log(f"llama.cpp convert_hf_to_gguf.py -> {out.name} ...")
    tmp = out.with_name(out.name + ".tmp")
    cmd = [sys.executable, str(Path(__file__).with_name("hf_to_gguf.py")), str(tools), str(checkpoint),
           "--outfile", str(tmp), "--outtype", outtype] + (["--no-vocab"] if no_vocab else []) + (["--byte-vocab"] if byte_vocab else [])
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not tmp.is_file():
        tail = "\n".join(done.stdout.decode(errors="replace").splitlines()[-15:])
        raise SystemExit(f"convert_hf_to_gguf.py failed (exit {done.returncode}):\n{tail}")
    tmp.rename(out)
    return out


def ensure_gguf_retyped(gguf: Path, outtype: str) -> Path:
    """`gguf` (any type llama.cpp can dequantize) rewritten by llama.cpp as `outtype` (f16 | bf16), cached."""
    import llama_cpp as L

    version = _require_installed()
    out = C.CACHE / f"{gguf.stem}-{outtype}-llamacpp{version}.gguf"
    if out.is_file():
        return out
    C.log(f"llama.cpp llama_model_quantize {gguf.name} -> {out.name} ...")
    params = L.llama_model_quantize_default_params()
    params.ftype = {"f16": L.LLAMA_FTYPE_MOSTLY_F16, "bf16": L.LLAMA_FTYPE_MOSTLY_BF16}[outtype]
    params.allow_requantize = True
    params.pure = True
    tmp = out.with_name(out.name + ".tmp")
    rc = L.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.is_file():
        raise SystemExit(f"llama_model_quantize {gguf} -> {outtype} failed ({rc})")
    tmp.rename(out)
    return out


def main() -> None:
    command = sys.argv[1:]
    if command == ["sdist"]:
        print(ensure_sdist())
    elif command == ["server"]:
        print(ensure_llama_server())
    elif command == ["avx2"]:
        print(ensure_avx2_library())
    elif command == ["check"]:
        installed, pinned = installed_version(), pinned_version()
        if installed != pinned:
            print(f"{PACKAGE}: installed {installed or 'nothing'}, the bench extra pins {pinned}")
            raise SystemExit(1)
    else:
        raise SystemExit("usage: python bench/_llama.py sdist | check | server | avx2")


if __name__ == "__main__":
    main()
