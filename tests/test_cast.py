"""The converter's bulk cast (asw_cast in the native library) agrees bit for bit with numpy (fp16) and ml_dtypes
(bf16) round-to-nearest-even on every kernel set, edge cases included, and counts fp16 overflow."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ascend_super.runtime.native import cast_u16, cpu_features

KERNEL_SETS = ["portable"] + [name for bit, name in ((1, "avx2"), (2, "avx512"), (4, "neon")) if cpu_features() & bit]


def edge_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e-8, -3e-8, 6.1e-5, 5.96e-8,
                        2.98e-8, 2.99e-8, np.inf, -np.inf, np.nan, 1 + 2**-11, 1 + 3 * 2**-11, 3.4e38, 1.17e-38],
                       dtype=np.float32)
    halfway = (np.arange(1, 2000, dtype=np.float32) * 2**-11 + 1).astype(np.float32)  # fp16 ties and near-ties
    tiny = rng.standard_normal(5000).astype(np.float32) * 1e-5  # fp16 subnormals
    bulk = rng.standard_normal(100_003).astype(np.float32) * 10
    bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)  # every pattern
    return np.concatenate([special, halfway, tiny, bulk, bits])


@pytest.mark.parametrize("kernels", KERNEL_SETS)
def test_cast_matches_numpy_and_ml_dtypes(kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASW_KERNELS", kernels)
    values = edge_values()
    finite = np.isfinite(values)
    with np.errstate(over="ignore"):
        want_f16 = values.astype(np.float16)
    got, overflow, nonfinite = cast_u16(values, "fp16")
    assert nonfinite == int((~finite).sum()) > 0
    nan = np.isnan(values)
    assert np.array_equal(got[~nan], want_f16.view(np.uint16)[~nan])
    assert np.all((got[nan] & 0x7C00) == 0x7C00) and np.all(got[nan] & 0x3FF)  # NaN stays NaN
    assert overflow == int((np.isinf(want_f16) & finite).sum()) > 0

    got_bf16, overflow, _ = cast_u16(values, "bf16")
    with np.errstate(invalid="ignore"):
        want_bf16 = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(got_bf16[~nan], want_bf16[~nan]) and overflow == 0
    assert np.all(np.isnan(got_bf16[nan].view(ml_dtypes.bfloat16)))

    half = want_f16[finite & ~np.isinf(want_f16)]
    got, _, _ = cast_u16(half, "bf16")  # fp16 source
    assert np.array_equal(got, half.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))
    brain = values[finite].astype(ml_dtypes.bfloat16)
    got, overflow, _ = cast_u16(brain, "fp16")  # bf16 source
    with np.errstate(over="ignore"):
        want = brain.astype(np.float32).astype(np.float16)
    finite_source = np.isfinite(brain.astype(np.float32))  # 3.4e38 is already inf in bf16: not an overflow
    assert np.array_equal(got, want.view(np.uint16)) and overflow == int((np.isinf(want) & finite_source).sum())


@pytest.mark.parametrize("kernels", KERNEL_SETS)
def test_same_dtype_round_trip_is_exact(kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASW_KERNELS", kernels)
    bits = np.arange(0, 2**16, dtype=np.uint16)
    for dtype, view in (("fp16", np.float16), ("bf16", ml_dtypes.bfloat16)):
        values = bits.view(view)
        finite = np.isfinite(values.astype(np.float32))
        got, _, nonfinite = cast_u16(values[finite], dtype)
        assert np.array_equal(got, bits[finite]) and nonfinite == 0


def test_cast_rejects_other_dtypes() -> None:
    from ascend_super.runtime.native import NativeError

    with pytest.raises(NativeError, match="unsupported source dtype int32"):
        cast_u16(np.zeros(4, dtype=np.int32), "fp16")
