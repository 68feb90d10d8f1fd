"""Casting source arrays to the file's u16 dtype (fp16 with overflow detection, bf16 round-to-nearest-even) and
re-laying matrices out as FRACTAL_NZ."""

from __future__ import annotations

import numpy as np

from ascend_super.runtime import format as fmt
from ascend_super.runtime.native import BF16_BITS, cast_u16

from .sources.base import SourceError

FP16_MAX = float(np.finfo(np.float16).max)


def to_u16(array: np.ndarray, dtype: str, what: str, scratch: np.ndarray | None = None) -> np.ndarray:
    """`array` (float32/float16/float64, or bfloat16 as ml_dtypes' type or BF16_BITS) cast to fp16 or bf16,
    returned as uint16 bits (round to nearest even, in the native library's SIMD kernels). fp16: values that round
    beyond ±65504 raise SourceError naming `what`, and so do NaN or infinite source values (a model holding them
    is broken). A source already in the target dtype comes out bit for bit (the f32 round trip is exact). `scratch`
    (uint16, at least array.size elements) is reused for the result when given: fresh memory costs a page fault
    per 4 KiB."""
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype not in (np.float32, np.float16, BF16_BITS) and array.dtype.name != "bfloat16":
        raise SourceError(f"{what}: unsupported source dtype {array.dtype}")
    out = scratch[: array.size].reshape(array.shape) if scratch is not None and scratch.size >= array.size else None
    bits, overflow, nonfinite = cast_u16(array, dtype, out)
    if nonfinite:
        raise SourceError(f"{what}: {nonfinite} value(s) are NaN or infinite; the source weights are corrupt")
    if overflow:
        wide = _widen(array)
        worst = float(np.abs(wide[np.isfinite(wide)]).max())
        raise SourceError(f"{what}: {overflow} value(s) exceed the fp16 range (largest |x| = {worst:.6g} > "
                          f"{FP16_MAX:g}); convert with --dtype bf16")
    return bits


def _widen(array: np.ndarray) -> np.ndarray:
    """The source values as float32 (exact), for error messages."""
    if array.dtype == BF16_BITS:
        return (np.ascontiguousarray(array).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def to_nz(matrix: np.ndarray) -> np.ndarray:
    """[out, in] u16 → FRACTAL_NZ storage [ceil(in/16), ceil(out/16), 16, 16], zero-padded; element (n, k) lands at
    ((k/16)·(out/16) + n/16)·256 + (n%16)·16 + k%16."""
    out_dim, in_dim = matrix.shape
    k1, n1, block, _ = fmt.nz_storage_shape((out_dim, in_dim))
    padded = np.zeros((n1 * block, k1 * block), dtype=matrix.dtype)
    padded[:out_dim, :in_dim] = matrix
    return np.ascontiguousarray(padded.reshape(n1, block, k1, block).transpose(2, 0, 1, 3))
