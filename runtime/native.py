"""ctypes binding of the native library (native/include/asw.h) — the only module that touches it.

The library is found through the environment variable ASW_NATIVE_LIB (a path), else as ``_asw<ext suffix>``
next to this file (built by ``python setup.py build_ext --inplace`` or ``pip install .``). It has no Python
module init; it is a plain C library loaded with ctypes.

    with NativeModel(data, config, "fp16", "nd", tensors) as model, model.session(max_len=2048) as s:
        logits, token = s.prefill(prompt_ids)          # logits of the last position [vocab], its argmax
        _, token = s.decode(token, logits="none")      # argmax only: no vocab-sized copy
        s.enqueue(); s.enqueue(); token = s.read()     # pipelined greedy steps fed by the kept argmax
        values, ids = s.decode_topk(token, k=40)       # the 40 largest logits for sampling

`tensors` rows are (name, offset, nbytes, layout, shape) of the manifest's tensor table.

Every error of the library is raised as NativeError with the library's own message (asw_last_error()).
No math happens here: each call is one ctypes call into the library.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib.machinery
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np

ABI_VERSION = 3
_DTYPES = {"fp16": 1, "bf16": 2}
_LAYOUTS = {"nd": 0, "nz": 1}
ACTIVATIONS = {"f32": 0, "bf16": 2}  # asw_open_options.activations: what each cpu matmul multiplies the weights by
_ROPE = {None: 0, "default": 0, "llama3": 1}
_LOGITS = {"none": 0, "last": 1, "all": 2}
_LOGITS_TOPK = 3
MAX_PENDING = 4  # ASW_MAX_PENDING: decode steps that may be queued at once
MAX_BATCH = 64  # ASW_MAX_BATCH: sessions in one batched decode step
_INT32_MAX = 2**31 - 1
_CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "attention_bias", "tie_word_embeddings", "rms_norm_eps",
                "rope_theta")


class NativeError(RuntimeError):
    """The native library refused a call (message from asw_last_error()) or could not be loaded."""


class _Owned(abc.ABC):
    """A native handle freed by close(), at the end of a `with` block, or when garbage-collected."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self: "_T") -> "_T":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass


_T = TypeVar("_T", bound=_Owned)


class _Config(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("layout", ctypes.c_int32),
        ("n_layers", ctypes.c_int32),
        ("hidden", ctypes.c_int32),
        ("n_heads", ctypes.c_int32),
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("ffn", ctypes.c_int32),
        ("vocab", ctypes.c_int32),
        ("attn_bias", ctypes.c_int32),
        ("tie_embeddings", ctypes.c_int32),
        ("rms_eps", ctypes.c_float),
        ("rope_theta", ctypes.c_float),
        ("rope_scaling", ctypes.c_int32),
        ("rope_factor", ctypes.c_float),
        ("rope_low_freq_factor", ctypes.c_float),
        ("rope_high_freq_factor", ctypes.c_float),
        ("rope_original_max_pos", ctypes.c_int32),
    ]


class _TensorRef(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_uint64), ("nbytes", ctypes.c_uint64),
                ("layout", ctypes.c_int32), ("ndim", ctypes.c_int32), ("shape", ctypes.c_int64 * 2)]


class _OpenOptions(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_int32), ("backend", ctypes.c_char_p), ("device_id", ctypes.c_int32),
                ("eager", ctypes.c_int32), ("soc_families", ctypes.c_char_p), ("activations", ctypes.c_int32)]


class _SessionOptions(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_int32), ("max_len", ctypes.c_int32), ("n_threads", ctypes.c_int32),
                ("kv_dtype", ctypes.c_int32)]


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library_path() -> Path:
    """Path of the library this process loads (ASW_NATIVE_LIB, else _asw*.so next to this file)."""
    env = os.environ.get("ASW_NATIVE_LIB")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_asw{suffix}"
        if candidate.is_file():
            return candidate
    raise NativeError(
        f"native library _asw*.so not found in {here}; build it with `make native` "
        "(python setup.py build_ext --inplace) or set ASW_NATIVE_LIB"
    )


def _load() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path = library_path()
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise NativeError(f"cannot load native library {path}: {exc}") from exc
        c_model, c_session = ctypes.c_void_p, ctypes.c_void_p
        i32p, f32p = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)
        signatures = {
            "asw_last_error": (ctypes.c_char_p, []),
            "asw_cpu_features": (ctypes.c_int32, []),
            "asw_kernel_name": (ctypes.c_char_p, []),
            "asw_model_open": (c_model, [ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(_Config),
                                         ctypes.POINTER(_TensorRef), ctypes.c_int32, ctypes.POINTER(_OpenOptions)]),
            "asw_model_free": (None, [c_model]),
            "asw_model_describe": (ctypes.c_char_p, [c_model]),
            "asw_model_lookahead": (ctypes.c_int32, [c_model]),
            "asw_model_prefill_block": (ctypes.c_int32, [c_model]),
            "asw_session_new": (c_session, [c_model, ctypes.POINTER(_SessionOptions)]),
            "asw_session_free": (None, [c_session]),
            "asw_session_reset": (ctypes.c_int32, [c_session]),
            "asw_session_pos": (ctypes.c_int32, [c_session]),
            "asw_forward": (ctypes.c_int32, [c_session, i32p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, f32p,
                                             i32p, i32p]),
            "asw_forward_batch": (ctypes.c_int32, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int32, i32p,
                                                   ctypes.c_int32, ctypes.c_int32, f32p, i32p, i32p]),
            "asw_decode_enqueue": (ctypes.c_int32, [c_session]),
            "asw_decode_read": (ctypes.c_int32, [c_session, i32p]),
            "asw_decode_discard": (ctypes.c_int32, [c_session]),
            "asw_exit_on_sigbus": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_int32]),
            "asw_cast": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                                          ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = lib
        return lib


def _error(what: str) -> NativeError:
    msg = (_load().asw_last_error() or b"").decode("utf-8", "replace")
    return NativeError(f"{what}: {msg}" if msg else what)


# bfloat16 values as their raw bits, without ml_dtypes (importing it costs about a second under numpy 2.4): a
# one-field structured dtype, so arithmetic on it fails instead of silently treating the bits as integers
BF16_BITS = np.dtype([("bfloat16", "<u2")])
_CAST_SOURCES = {"float32": 0, "float16": 1, "bfloat16": 2}


def cast_u16(values: np.ndarray, dtype: str, out: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """`values` (float32, float16, ml_dtypes bfloat16 or BF16_BITS) rounded to `dtype` ("fp16" | "bf16", nearest
    even) as uint16 bits of the same shape (written into `out` when given), how many finite values overflowed to
    +-inf (fp16), and how many source values were NaN or +-inf. The GIL is released during the call."""
    source = np.ascontiguousarray(values)
    src_type = _CAST_SOURCES["bfloat16"] if source.dtype == BF16_BITS else _CAST_SOURCES.get(source.dtype.name)
    if src_type is None:
        raise NativeError(f"cast: unsupported source dtype {source.dtype}")
    if out is None:
        out = np.empty(source.shape, dtype=np.uint16)
    elif out.dtype != np.uint16 or out.size != source.size or not out.flags.c_contiguous:
        raise NativeError("cast: `out` must be a contiguous uint16 array of the same size")
    nonfinite = ctypes.c_int64(0)
    overflow = _load().asw_cast(source.ctypes.data, src_type, out.ctypes.data, _DTYPES[dtype], source.size,
                                ctypes.byref(nonfinite))
    if overflow < 0:
        raise _error("cast")
    return out, int(overflow), int(nonfinite.value)


def exit_on_sigbus(begin: int, nbytes: int, message: bytes, exit_code: int) -> bool:
    """Process-wide: a bus error inside [begin, begin + nbytes) writes `message` to stderr and exits with
    `exit_code` (native/src/sigbus.c). False where the guard could not be installed."""
    return _load().asw_exit_on_sigbus(begin, nbytes, message, exit_code) == 0


def kernel_name() -> str:
    """The SIMD kernel set a model opened now would use ("avx512", "avx2", "neon", "portable")."""
    name = _load().asw_kernel_name().decode()
    if not name:
        raise _error("kernel selection")
    return name


def cpu_features() -> int:
    """Bit mask of kernel sets usable here: 1 = AVX2+F16C+FMA, 2 = AVX-512, 4 = NEON, 8 = AVX512_BF16 too."""
    return int(_load().asw_cpu_features())


def _int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if value is None or isinstance(value, bool) or int(value) != value or not -(2**31) <= int(value) <= _INT32_MAX:
        raise NativeError(f"config: {key} = {value!r} is not a 32-bit integer")
    return int(value)


def _float(config: Mapping[str, Any], key: str) -> float:
    value = config.get(key)
    if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
        raise NativeError(f"config: {key} = {value!r} is not a finite number")
    return float(value)


def make_config(config: Mapping[str, Any], dtype: str, layout: str) -> _Config:
    """asw_config from a manifest "config" map (HuggingFace key names). The rules on those values live in
    runtime/format.py (check_config, applied to every file) and the C guards in native/src/model.c; this only
    translates, refusing what would not fit the C struct. There are no defaults here: every key is required."""
    if dtype not in _DTYPES or layout not in _LAYOUTS:
        raise NativeError(f"dtype {dtype!r} / layout {layout!r} is not one of {sorted(_DTYPES)} / {sorted(_LAYOUTS)}")
    missing = [key for key in _CONFIG_KEYS if key not in config]
    if missing:
        raise NativeError(f"config lacks {', '.join(missing)}")
    c = _Config()
    c.abi_version = ABI_VERSION
    c.dtype = _DTYPES[dtype]
    c.layout = _LAYOUTS[layout]
    c.n_layers = _int(config, "num_hidden_layers")
    c.hidden = _int(config, "hidden_size")
    c.n_heads = _int(config, "num_attention_heads")
    c.n_kv_heads = _int(config, "num_key_value_heads")
    c.head_dim = _int(config, "head_dim")
    c.ffn = _int(config, "intermediate_size")
    c.vocab = _int(config, "vocab_size")
    c.attn_bias = int(bool(config["attention_bias"]))
    c.tie_embeddings = int(bool(config["tie_word_embeddings"]))
    c.rms_eps = _float(config, "rms_norm_eps")
    c.rope_theta = _float(config, "rope_theta")
    scaling = config.get("rope_scaling")
    rope_type = None if scaling is None else scaling.get("rope_type", scaling.get("type"))
    if rope_type not in _ROPE:
        raise NativeError(f"config: rope_scaling type {rope_type!r} is not supported (none or llama3)")
    c.rope_scaling = _ROPE[rope_type]
    if c.rope_scaling == 1:
        c.rope_factor = _float(scaling, "factor")
        c.rope_low_freq_factor = _float(scaling, "low_freq_factor")
        c.rope_high_freq_factor = _float(scaling, "high_freq_factor")
        c.rope_original_max_pos = _int(scaling, "original_max_position_embeddings")
    return c


class NativeModel(_Owned):
    """Weights of one .asw data region, opened by the native library: used in place on the cpu backend, copied
    once to the device on aclnn. Sessions keep the native model alive, so closing in any order is safe."""

    def __init__(self, data: np.ndarray, config: Mapping[str, Any], dtype: str, layout: str,
                 tensors: Sequence[tuple[str, int, int, str, Sequence[int]]], backend: str = "cpu",
                 device_id: int = 0, eager: bool = False, soc_families: str | None = None,
                 activations: str = "f32") -> None:
        self._handle: int | None = None
        lib = _load()
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
            raise NativeError("data must be a 1-D uint8 numpy array over the data region")
        if not data.flags["C_CONTIGUOUS"]:
            raise NativeError("data must be contiguous")
        self._data = data  # the mapping must outlive the model: the library reads the weights in place
        self.config = dict(config)
        self.dtype = dtype
        self.layout = layout
        self.backend = backend
        cfg = make_config(config, dtype, layout)
        refs = (_TensorRef * len(tensors))()
        names = []
        for i, (name, offset, nbytes, tensor_layout, shape) in enumerate(tensors):
            if not (0 <= int(offset) < 2**64 and 0 <= int(nbytes) < 2**64):
                raise NativeError(f"tensor {name!r}: offset {offset} / nbytes {nbytes} out of range")
            if tensor_layout not in _LAYOUTS or not 1 <= len(shape) <= 2 or \
                    not all(0 <= int(d) < 2**63 for d in shape):
                raise NativeError(f"tensor {name!r}: layout {tensor_layout!r} / shape {list(shape)} not supported")
            encoded = name.encode("utf-8")
            names.append(encoded)
            refs[i].name = encoded
            refs[i].offset = int(offset)
            refs[i].nbytes = int(nbytes)
            refs[i].layout = _LAYOUTS[tensor_layout]
            refs[i].ndim = len(shape)
            refs[i].shape[0] = int(shape[0])
            refs[i].shape[1] = int(shape[1]) if len(shape) == 2 else 0
        if not 0 <= int(device_id) <= _INT32_MAX:
            raise NativeError(f"device id {device_id} must be a non-negative 32-bit integer")
        # soc_families: the manifest's requires.soc of an nz file; the aclnn backend refuses another SoC in one
        # line before it uploads anything
        # activations: "f32" (the default) or "bf16" (each cpu matmul's input rounded to bf16; asw.h)
        if activations not in ACTIVATIONS:
            raise NativeError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
        options = _OpenOptions(ABI_VERSION, backend.encode(), int(device_id), int(bool(eager)),
                               soc_families.encode() if soc_families else None, ACTIVATIONS[activations])
        self._cfg = cfg
        handle = lib.asw_model_open(ctypes.c_void_p(data.ctypes.data if data.size else None), data.size,
                                    ctypes.byref(cfg), refs, len(tensors), ctypes.byref(options))
        if not handle:
            raise _error("cannot open model")
        self._handle = handle
        self._sessions: weakref.WeakSet[NativeSession] = weakref.WeakSet()

    @property
    def vocab(self) -> int:
        return int(self._cfg.vocab)

    def describe(self) -> str:
        """What the model runs on, e.g. "cpu avx512"."""
        return _load().asw_model_describe(self._check()).decode("utf-8", "replace")

    @property
    def lookahead(self) -> int:
        """Greedy steps worth queuing before reading one: 0 on cpu (a step runs inside enqueue), 1 on aclnn."""
        return int(_load().asw_model_lookahead(self._check()))

    @property
    def prefill_block(self) -> int:
        """Prompt positions per prefill pass (asw_model_prefill_block): prefill calls whose lengths are multiples of
        it, the last excepted, run the passes of one call over the whole prompt."""
        return int(_load().asw_model_prefill_block(self._check()))

    def _check(self) -> int:
        if self._handle is None:
            raise NativeError("model is closed")
        return self._handle

    def session(self, max_len: int, threads: int | None = None) -> "NativeSession":
        """A KV cache of `max_len` positions and a thread pool (threads None or <= 0: all cores)."""
        self._check()
        return NativeSession(self, max_len, threads)

    def forward_batch(self, sessions: Sequence["NativeSession"], tokens: Sequence[int], logits: str = "none",
                      k: int = 0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One decode step for several sessions of this model at once (continuous batching): sessions[i] takes
        tokens[i] at its own next position, and each weight row is read once for the whole batch. Returns
        (argmax [B] int32, values, ids): logits "none" -> (argmax, None, None); "topk" -> values [B, k] float32
        descending and ids [B, k] int32; "last" -> values = the full logits [B, vocab], ids None. The rows equal
        what B separate decode calls give."""
        self._check()
        count = len(sessions)
        if not 1 <= count <= MAX_BATCH or len(tokens) != count:
            raise NativeError(f"a batch needs 1 to {MAX_BATCH} sessions and one token each "
                              f"(got {count} sessions, {len(tokens)} tokens)")
        if any(s._model is not self for s in sessions):
            raise NativeError("every session of a batch must belong to this model")
        ids32 = np.array([_as_id(t) for t in tokens], dtype=np.int32)
        argmax = np.empty(count, dtype=np.int32)
        values = ids = None
        if logits == "topk":
            k = _top_k(k, self.vocab)
            mode = _LOGITS_TOPK
            values, ids = np.empty((count, k), dtype=np.float32), np.empty((count, k), dtype=np.int32)
        elif logits in ("none", "last"):
            mode = _LOGITS[logits]
            values = np.empty((count, self.vocab), dtype=np.float32) if logits == "last" else None
        else:
            raise NativeError(f"batch logits must be 'none', 'last' or 'topk', not {logits!r}")
        locks = sorted({id(s): s for s in sessions}.values(), key=id)  # one fixed order: no lock-order deadlock
        with contextlib.ExitStack() as stack:
            for session in locks:
                stack.enter_context(session._lock)
            handles = (ctypes.c_void_p * count)(*[s._check() for s in sessions])
            f32p, i32p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int32)
            rc = _load().asw_forward_batch(
                handles, count, ids32.ctypes.data_as(i32p), mode, int(k),
                values.ctypes.data_as(f32p) if values is not None else None,
                ids.ctypes.data_as(i32p) if ids is not None else None, argmax.ctypes.data_as(i32p))
        if rc != 0:
            raise _error("batched decode failed")
        return argmax, values, ids

    def close(self) -> None:
        if self._handle is not None:
            for s in list(self._sessions):
                s.close()
            _load().asw_model_free(self._handle)
            self._handle = None


def _as_ids(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids as a contiguous int32 array, refusing what is not a 32-bit integer."""
    raw = np.asarray(tokens)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        raise NativeError(f"token ids must be integers, got {raw.dtype}")
    ids = raw.astype(np.int64).reshape(-1)
    if ids.size == 0:
        raise NativeError("prefill needs at least one token")
    if ids.size > _INT32_MAX or ids.min() < -(2**31) or ids.max() > _INT32_MAX:
        raise NativeError("token ids must be 32-bit integers")
    return np.ascontiguousarray(ids, dtype=np.int32)


def _top_k(k: int, vocab: int) -> int:
    """`k` as the count of top logits to return, refusing what is not 1 .. vocab."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= vocab:
        raise NativeError(f"top-k needs 1 <= k <= {vocab}, got {k!r}")
    return int(k)


def _as_id(token: int) -> int:
    if not isinstance(token, (int, np.integer)) or isinstance(token, bool):
        raise NativeError(f"token id {token!r} is not an integer")
    if not -(2**31) <= int(token) <= _INT32_MAX:
        raise NativeError(f"token id {token} is not a 32-bit integer")
    return int(token)


class NativeSession(_Owned):
    """One sequence: a KV cache and the position in it. Calls from several threads are serialized (the native
    session and its thread pool serve one caller at a time); for parallel generation use one session per thread."""

    def __init__(self, model: NativeModel, max_len: int, threads: int | None = None) -> None:
        self._handle: int | None = None
        lib = _load()
        if not 1 <= int(max_len) <= _INT32_MAX:
            raise NativeError(f"max_len {max_len} must be a positive 32-bit integer")
        n_threads = 0 if threads is None else int(threads)
        options = _SessionOptions(ABI_VERSION, int(max_len), max(min(n_threads, _INT32_MAX), -1), 0)
        handle = lib.asw_session_new(model._handle, ctypes.byref(options))
        if not handle:
            raise _error("cannot create session")
        self._handle = handle
        self._model = model
        self._max_len = int(max_len)
        self._vocab = model.vocab
        self._argmax = ctypes.c_int32(0)
        self._token = ctypes.c_int32(0)
        self._lock = threading.Lock()
        model._sessions.add(self)

    @property
    def pos(self) -> int:
        """Positions in the KV cache, counting queued decode steps."""
        return int(_load().asw_session_pos(self._check()))

    @property
    def max_len(self) -> int:
        return self._max_len

    def _check(self) -> int:
        if self._handle is None:
            raise NativeError("session is closed")
        return self._handle

    def _forward(self, ids32: np.ndarray, logits: str, k: int = 0) -> tuple[np.ndarray | None, np.ndarray | None]:
        """One asw_forward call; returns (logits or top-k values, top-k ids)."""
        handle = self._check()
        ids_ptr = None
        if logits == "topk":
            mode, out = _LOGITS_TOPK, np.empty(k, dtype=np.float32)
            ids_out = np.empty(k, dtype=np.int32)
            ids_ptr = ids_out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        elif logits in _LOGITS:
            mode = _LOGITS[logits]
            out = None if logits == "none" else np.empty((ids32.size if logits == "all" else 1, self._vocab),
                                                          dtype=np.float32)
            ids_out = None
        else:
            raise NativeError(f"logits must be one of {sorted(_LOGITS)}, not {logits!r}")
        out_ptr = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if out is not None else None
        rc = _load().asw_forward(handle, ids32.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), ids32.size, mode, k,
                                 out_ptr, ids_ptr, ctypes.byref(self._argmax))
        if rc != 0:
            raise _error("prefill failed" if ids32.size > 1 else "decode failed")
        return out, ids_out

    def prefill(self, tokens: Sequence[int], logits: str = "last") -> tuple[np.ndarray | None, int]:
        """Run `tokens` at the next positions as one batch. Returns (logits, argmax of the last position):
        logits "last" -> [vocab], "all" -> [n, vocab], "none" -> None."""
        with self._lock:
            out, _ = self._forward(_as_ids(tokens), logits)
            if out is not None and logits == "last":
                out = out[0]
            return out, int(self._argmax.value)

    def decode(self, token: int, logits: str = "last") -> tuple[np.ndarray | None, int]:
        """One step for `token` at the next position. Returns (logits [vocab] or None, argmax)."""
        with self._lock:
            out, _ = self._forward(np.array([_as_id(token)], dtype=np.int32), logits)
            return (out[0] if out is not None else None), int(self._argmax.value)

    def forward_topk(self, tokens: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Run `tokens`; return the k largest logits of the last position (descending) and their token ids.
        This is what sampling reads: the full vocabulary never crosses the ABI."""
        k = _top_k(k, self._vocab)
        with self._lock:
            values, ids = self._forward(_as_ids(tokens), "topk", k)
            assert values is not None and ids is not None
            return values, ids

    def decode_topk(self, token: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """forward_topk for one token."""
        return self.forward_topk([_as_id(token)], k)

    def enqueue(self) -> None:
        """Queue one greedy step fed by the previous step's argmax (kept by the backend, on the device for aclnn).
        At most MAX_PENDING steps may be queued; read() returns their tokens in order."""
        with self._lock:
            if _load().asw_decode_enqueue(self._check()) != 0:
                raise _error("decode failed")

    def read(self) -> int:
        """The token of the oldest queued step (waits for it)."""
        with self._lock:
            if _load().asw_decode_read(self._check(), ctypes.byref(self._token)) != 0:
                raise _error("decode failed")
            return int(self._token.value)

    def discard(self) -> None:
        """Drop the queued steps (after a stop condition); their positions are given back."""
        with self._lock:
            if _load().asw_decode_discard(self._check()) != 0:
                raise _error("decode failed")

    def reset(self) -> None:
        """Forget all positions and queued steps (the KV cache memory is reused)."""
        with self._lock:
            if _load().asw_session_reset(self._check()) != 0:
                raise _error("reset failed")

    def close(self) -> None:
        lock = getattr(self, "_lock", None)  # absent when __init__ failed early
        with lock if lock is not None else contextlib.nullcontext():
            if self._handle is not None:
                _load().asw_session_free(self._handle)
                self._handle = None
                self._model._sessions.discard(self)
