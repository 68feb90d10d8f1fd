"""Drive the CANN emulator (native/emu, built into build/emu by `make emu`) from Python through ctypes.

`build_emulator()` builds the libraries once per session; `Emu` loads them into this process (aclInit, device 0,
one stream) and offers what the operator and runtime tests need: device buffers from numpy arrays, aclTensor
descriptors with any view/strides/offset/storage/format, and `run()` for the two-phase aclnnXxx convention.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EMU_DIR = REPO / "build" / "emu"

# aclDataType values (CANN acl_base_rt.h)
FLOAT, FLOAT16, INT8, INT32, UINT8, INT16, INT64, DOUBLE, BOOL, BF16 = 0, 1, 2, 3, 4, 6, 9, 11, 12, 27
FORMAT_ND, FORMAT_NZ = 2, 29
H2H, H2D, D2H, D2D = 0, 1, 2, 3
NP_DTYPES = {
    FLOAT: np.float32,
    FLOAT16: np.float16,
    INT8: np.int8,
    INT32: np.int32,
    UINT8: np.uint8,
    INT16: np.int16,
    INT64: np.int64,
    DOUBLE: np.float64,
    BOOL: np.bool_,
    BF16: np.uint16,
}
ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_PARAM_INVALID = 161001, 161002

_built = False


def build_emulator() -> Path:
    """Build build/emu/*.so with `make emu` (once per process); returns the directory."""
    global _built
    if not _built:
        subprocess.run(["make", "-s", "-j2", "emu"], cwd=REPO, check=True)
        _built = True
    return EMU_DIR


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def as_float(arr: np.ndarray, dtype: int) -> np.ndarray:
    """Host array of an emulator dtype read as float32 (bf16 bits decoded)."""
    return from_bf16(arr) if dtype == BF16 else arr.astype(np.float32)


def round_to(x: np.ndarray, dtype: int) -> np.ndarray:
    """float32 values after a store to `dtype` and a load back."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == FLOAT16:
        return x.astype(np.float16).astype(np.float32)
    if dtype == BF16:
        return from_bf16(to_bf16(x))
    return x


def encode(x: np.ndarray, dtype: int) -> np.ndarray:
    """Host values -> the emulator dtype's host representation."""
    return to_bf16(x) if dtype == BF16 else np.asarray(x).astype(NP_DTYPES[dtype])


class AclError(RuntimeError):
    def __init__(self, api: str, code: int, msg: str | None):
        super().__init__(f"{api} returned {code}: {msg}")
        self.code, self.msg = code, msg or ""


class Emu:
    """The emulator loaded in this process: aclInit, device 0, one non-default stream."""

    _instance: "Emu | None" = None

    @classmethod
    def get(cls) -> "Emu":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        d = build_emulator()
        mode = os.RTLD_GLOBAL | os.RTLD_NOW
        self.acl = ctypes.CDLL(str(d / "libascendcl.so"), mode=mode)
        self.nn = ctypes.CDLL(str(d / "libnnopbase.so"), mode=mode)
        self.ops = {
            name: ctypes.CDLL(str(d / f"libopapi_{name}.so"), mode=mode) for name in ("math", "nn", "transformer")
        }
        self.acl.aclGetRecentErrMsg.restype = ctypes.c_char_p
        self.acl.aclrtGetSocName.restype = ctypes.c_char_p
        self.nn.aclCreateTensor.restype = ctypes.c_void_p
        self.nn.aclCreateTensor.argtypes = [
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_uint64,
            ctypes.c_void_p,
        ]
        for fn in ("aclCreateScalar", "aclCreateIntArray", "aclCreateTensorList", "aclCreateBoolArray"):
            getattr(self.nn, fn).restype = ctypes.c_void_p
        self.nn.aclCreateScalar.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.nn.aclCreateIntArray.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_uint64]
        self.nn.aclCreateTensorList.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint64]
        for fn in (
            "aclDestroyTensor",
            "aclDestroyScalar",
            "aclDestroyIntArray",
            "aclDestroyTensorList",
            "aclSetAclOpExecutorRepeatable",
            "aclDestroyAclOpExecutor",
        ):
            getattr(self.nn, fn).argtypes = [ctypes.c_void_p]
        self.acl.aclrtMemcpy.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
        ]
        self.acl.aclrtMemcpyAsync.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self.acl.aclrtMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_int]
        for fn in (
            "aclrtFree",
            "aclrtFreeHost",
            "aclrtSynchronizeStream",
            "aclrtDestroyStream",
            "aclmdlRIDestroy",
            "aclrtSynchronizeEvent",
            "aclrtDestroyEvent",
            "aclrtSetCurrentContext",
            "aclmdlRICaptureTaskGrpBegin",
            "aclmdlRICaptureTaskUpdateEnd",
        ):
            getattr(self.acl, fn).argtypes = [ctypes.c_void_p]
        self.acl.aclmdlRIExecuteAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.acl.aclmdlRICaptureBegin.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.acl.aclmdlRICaptureEnd.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self.acl.aclmdlRICaptureTaskGrpEnd.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self.acl.aclmdlRICaptureTaskUpdateBegin.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.acl.aclrtRecordEvent.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.acl.aclrtStreamWaitEvent.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.acl.aclrtResetEvent.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.acl.aclrtMemsetAsync.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int32,
            ctypes.c_size_t,
            ctypes.c_void_p,
        ]
        rc = self.acl.aclInit(None)
        assert rc in (0, 100002), rc
        self.check("aclrtSetDevice", self.acl.aclrtSetDevice(0))
        self.stream = self.new_stream()

    # ---- runtime helpers
    def err(self) -> str:
        msg = self.acl.aclGetRecentErrMsg()
        return msg.decode() if msg else ""

    def check(self, api: str, rc: int) -> None:
        if rc != 0:
            raise AclError(api, rc, self.err())

    def new_stream(self) -> ctypes.c_void_p:
        s = ctypes.c_void_p()
        self.check("aclrtCreateStream", self.acl.aclrtCreateStream(ctypes.byref(s)))
        return s

    def malloc(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self.check("aclrtMalloc", self.acl.aclrtMalloc(ctypes.byref(p), max(nbytes, 1), 0))
        return p.value

    def malloc_host(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self.check("aclrtMallocHost", self.acl.aclrtMallocHost(ctypes.byref(p), ctypes.c_size_t(nbytes)))
        return p.value

    def upload(self, host: np.ndarray) -> int:
        host = np.ascontiguousarray(host)
        ptr = self.malloc(host.nbytes)
        self.check("aclrtMemcpy", self.acl.aclrtMemcpy(ptr, host.nbytes, host.ctypes.data, host.nbytes, H2D))
        return ptr

    def download(self, ptr: int, nbytes: int, dtype, shape=None) -> np.ndarray:
        out = np.empty(nbytes // np.dtype(dtype).itemsize, dtype=dtype)
        self.check("aclrtMemcpy", self.acl.aclrtMemcpy(out.ctypes.data, out.nbytes, ptr, out.nbytes, D2H))
        return out.reshape(shape) if shape is not None else out

    def sync(self, stream=None) -> None:
        self.check("aclrtSynchronizeStream", self.acl.aclrtSynchronizeStream(stream or self.stream))

    # ---- nnopbase objects
    def tensor(
        self, ptr: int, shape, dtype: int, strides=None, offset: int = 0, fmt: int = FORMAT_ND, storage=None
    ) -> int:
        shape = list(shape)
        if strides is None:
            strides = [int(np.prod(shape[i + 1 :], dtype=np.int64)) for i in range(len(shape))]
        if storage is None:
            storage = [offset + 1 + sum((d - 1) * s for d, s in zip(shape, strides))] if shape else [1]
        arr = lambda v: (ctypes.c_int64 * max(len(v), 1))(*v)  # noqa: E731
        t = self.nn.aclCreateTensor(
            arr(shape), len(shape), dtype, arr(strides), offset, fmt, arr(storage), len(storage), ptr
        )
        assert t, self.err()
        return t

    def scalar(self, value, dtype: int) -> int:
        host = np.array([value], dtype=NP_DTYPES[dtype]) if dtype != BF16 else to_bf16(np.array([value]))
        s = self.nn.aclCreateScalar(host.ctypes.data, dtype)
        assert s
        return s

    def int_array(self, values) -> int:
        arr = (ctypes.c_int64 * max(len(values), 1))(*values)
        return self.nn.aclCreateIntArray(arr, len(values))

    def tensor_list(self, tensors) -> int:
        arr = (ctypes.c_void_p * len(tensors))(*tensors)
        return self.nn.aclCreateTensorList(arr, len(tensors))

    # ---- operators
    def op(self, name: str):
        for lib in self.ops.values():
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_int
                return fn
        raise AttributeError(name)

    def phase1(self, name: str, *args) -> tuple[int, ctypes.c_void_p]:
        """aclnn<name>GetWorkspaceSize(*args, &ws, &exec); returns (workspace bytes, executor)."""
        ws, ex = ctypes.c_uint64(), ctypes.c_void_p()
        rc = self.op(f"aclnn{name}GetWorkspaceSize")(*args, ctypes.byref(ws), ctypes.byref(ex))
        self.check(f"aclnn{name}GetWorkspaceSize", rc)
        return ws.value, ex

    def phase2(self, name: str, ws_size: int, ex, stream=None, workspace: int | None = None) -> int | None:
        if workspace is None and ws_size:
            workspace = self.malloc(ws_size)
        rc = self.op(f"aclnn{name}")(ctypes.c_void_p(workspace), ctypes.c_uint64(ws_size), ex, stream or self.stream)
        self.check(f"aclnn{name}", rc)
        return workspace

    def run(self, name: str, *args) -> None:
        """Both phases on the test stream, then a stream sync."""
        ws, ex = self.phase1(name, *args)
        self.phase2(name, ws, ex)
        self.sync()


class DevArray:
    """A numpy array copied to device memory, with its aclTensor (contiguous ND unless told otherwise)."""

    def __init__(self, emu: Emu, host: np.ndarray, dtype: int, **view) -> None:
        self.emu, self.dtype = emu, dtype
        self.host = np.ascontiguousarray(encode(host, dtype))
        self.shape = view.pop("shape", self.host.shape)
        self.ptr = emu.upload(self.host)
        if "storage" not in view and "strides" not in view and view.get("fmt", FORMAT_ND) == FORMAT_ND:
            view["storage"] = list(self.host.shape) or [1]
        self.t = emu.tensor(self.ptr, self.shape, dtype, **view)

    def read(self) -> np.ndarray:
        """The whole device buffer, as float32 for float dtypes."""
        raw = self.emu.download(self.ptr, self.host.nbytes, self.host.dtype, self.host.shape)
        return as_float(raw, self.dtype) if self.dtype in (FLOAT, FLOAT16, BF16, DOUBLE) else raw


def fia_args(
    emu: Emu,
    q: DevArray,
    keys,
    values,
    n: int,
    nkv: int,
    scale: float,
    layout: str,
    out: DevArray,
    mask=None,
    kv_lens=None,
    sparse: int = 0,
    lse=None,
    pre: int = 2147483647,
    nxt: int = 2147483647,
) -> list:
    """Phase-1 arguments of aclnnFusedInferAttentionScoreV4 (all quantisation/paging inputs null)."""
    kl, vl = emu.tensor_list([k.t for k in keys]), emu.tensor_list([v.t for v in values])
    args = [
        ctypes.c_void_p(q.t),
        ctypes.c_void_p(kl),
        ctypes.c_void_p(vl),
        None,
        ctypes.c_void_p(mask.t) if mask else None,
        None,
        ctypes.c_void_p(emu.int_array(kv_lens)) if kv_lens else None,
    ] + [None] * 22
    args += [
        ctypes.c_int64(n),
        ctypes.c_double(scale),
        ctypes.c_int64(pre),
        ctypes.c_int64(nxt),
        ctypes.c_char_p(layout.encode()),
        ctypes.c_int64(nkv),
        ctypes.c_int64(sparse),
        ctypes.c_int64(0),
        ctypes.c_int64(0),
        ctypes.c_int64(0),
        ctypes.c_bool(lse is not None),
        ctypes.c_int64(0),
        ctypes.c_int64(0),
        ctypes.c_int64(0),
        ctypes.c_void_p(out.t),
        ctypes.c_void_p(lse.t) if lse else None,
    ]
    return args


def run_python(code: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with tests/ on sys.path (for crashing and per-process checks)."""
    prelude = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, env=full_env
    )
