"""The CANN emulator's runtime is as strict as the device: device memory is not host memory, copies are checked
against their kind, streams run asynchronously, the two-phase executor convention is enforced, graph capture keeps
the host values it captured, and the counters file says what happened."""

from __future__ import annotations

import ctypes
import json
import threading

import numpy as np
import pytest

from emu_support import (
    ACLNN_ERR_PARAM_INVALID,
    D2H,
    FLOAT16,
    H2D,
    INT32,
    INT64,
    AclError,
    DevArray,
    Emu,
    fia_args,
    run_python,
)


@pytest.fixture(scope="module")
def emu() -> Emu:
    return Emu.get()


def test_soc_name_and_device_count(emu):
    assert emu.acl.aclrtGetSocName() == b"Ascend910_9391"
    n = ctypes.c_uint32()
    emu.check("aclrtGetDeviceCount", emu.acl.aclrtGetDeviceCount(ctypes.byref(n)))
    assert n.value == 1
    out = run_python(
        "from emu_support import Emu; import ctypes; e = Emu.get(); n = ctypes.c_uint32();"
        "e.acl.aclrtGetDeviceCount(ctypes.byref(n)); print(n.value, e.acl.aclrtSetDevice(3))",
        env={"ASW_EMU_DEVICES": "4"},
    )
    assert out.stdout.split() == ["4", "0"], out.stderr


def test_host_dereference_of_device_pointer_crashes():
    out = run_python(
        "from emu_support import Emu; import ctypes; e = Emu.get(); p = e.malloc(64);"
        "print('allocated', flush=True); ctypes.string_at(p, 4)"
    )
    assert "allocated" in out.stdout
    assert out.returncode == -11  # SIGSEGV: the caller's mapping of device memory is PROT_NONE


def test_device_memory_round_trip_and_bounds(emu):
    host = np.arange(10, dtype=np.float32)
    p = emu.upload(host)
    np.testing.assert_array_equal(emu.download(p, 40, np.float32), host)
    buf = np.zeros(11, np.float32)
    with pytest.raises(AclError, match="past the end"):
        emu.check("aclrtMemcpy", emu.acl.aclrtMemcpy(buf.ctypes.data, 44, p, 44, D2H))
    emu.check("aclrtFree", emu.acl.aclrtFree(p))
    with pytest.raises(AclError, match="freed"):
        emu.check("aclrtFree", emu.acl.aclrtFree(p))


def test_new_memory_is_not_zeroed(emu):
    p = emu.malloc(8)
    np.testing.assert_array_equal(emu.download(p, 8, np.uint8), [0xFF] * 8)  # NaN as fp16/bf16/fp32, -1 as ints
    assert np.isnan(emu.download(p, 8, np.float16)).all()


def test_wrong_memcpy_kind_refused(emu):
    host = np.zeros(4, np.float32)
    dev = emu.upload(host)
    rc = emu.acl.aclrtMemcpy(host.ctypes.data, 16, dev, 16, H2D)  # really device-to-host
    msg = emu.err()
    assert rc == 100000 and "kind host_to_device" in msg and "destination is pageable host memory" in msg
    rc = emu.acl.aclrtMemcpy(dev, 16, host.ctypes.data, 32, H2D)  # count > destMax
    assert rc == 100000 and "destMax" in emu.err()
    assert emu.err() == ""  # aclGetRecentErrMsg returns the message once, then clears it


def test_memcpy_async_completes_only_at_sync(emu):
    dev = emu.upload(np.full(4, 7, np.int32))
    pinned = emu.malloc_host(16)
    view = np.ctypeslib.as_array(ctypes.cast(pinned, ctypes.POINTER(ctypes.c_int32)), shape=(4,))
    view[:] = -1
    emu.check("aclrtMemcpyAsync", emu.acl.aclrtMemcpyAsync(pinned, 16, dev, 16, D2H, emu.stream))
    assert list(view) == [-1] * 4  # enqueued, not done: the host must wait for the stream
    emu.sync()
    assert list(view) == [7] * 4
    # pageable host memory: the call returns after the copy is done (CANN runtime docs)
    pageable = np.zeros(4, np.int32)
    emu.check("aclrtMemcpyAsync", emu.acl.aclrtMemcpyAsync(pageable.ctypes.data, 16, dev, 16, D2H, emu.stream))
    assert list(pageable) == [7] * 4


def test_event_sync_waits_only_for_work_before_the_record(emu):
    counter = DevArray(emu, np.array([0]), INT32)
    one = emu.scalar(1, INT32)
    ev = ctypes.c_void_p()
    emu.check("aclrtCreateEventWithFlag", emu.acl.aclrtCreateEventWithFlag(ctypes.byref(ev), 1))
    pinned = emu.malloc_host(4)
    cell = ctypes.c_int32.from_address(pinned)
    for _ in range(2):
        emu.phase2(
            "InplaceAdds",
            *emu.phase1("InplaceAdds", ctypes.c_void_p(counter.t), ctypes.c_void_p(one), ctypes.c_void_p(one)),
        )
    emu.check("aclrtMemcpyAsync", emu.acl.aclrtMemcpyAsync(pinned, 4, counter.ptr, 4, D2H, emu.stream))
    emu.check("aclrtRecordEvent", emu.acl.aclrtRecordEvent(ev, emu.stream))
    emu.phase2(
        "InplaceAdds",
        *emu.phase1("InplaceAdds", ctypes.c_void_p(counter.t), ctypes.c_void_p(one), ctypes.c_void_p(one)),
    )
    emu.check("aclrtSynchronizeEvent", emu.acl.aclrtSynchronizeEvent(ev))
    assert cell.value == 2
    assert counter.read()[0] == 2  # the launch after the record has not run yet
    emu.sync()
    assert counter.read()[0] == 3


def _mm_args(emu):
    a = DevArray(emu, np.ones((2, 3)), FLOAT16)
    b = DevArray(emu, np.ones((3, 4)), FLOAT16)
    out = DevArray(emu, np.zeros((2, 4)), FLOAT16)
    return out, (ctypes.c_void_p(a.t), ctypes.c_void_p(b.t), ctypes.c_void_p(out.t), ctypes.c_int8(0))


def test_too_small_or_host_workspace_refused(emu):
    out, args = _mm_args(emu)
    ws, ex = emu.phase1("Mm", *args)
    assert ws > 0
    with pytest.raises(AclError) as e:
        emu.phase2("Mm", ws - 1, ex, workspace=emu.malloc(ws))
    assert e.value.code == ACLNN_ERR_PARAM_INVALID and "smaller than" in e.value.msg
    small = emu.malloc(ws - 4)
    with pytest.raises(AclError, match="not .* bytes of device memory"):
        emu.phase2("Mm", ws, ex, workspace=small)
    host = np.zeros(ws, np.uint8)
    with pytest.raises(AclError, match="device memory"):
        emu.phase2("Mm", ws, ex, workspace=host.ctypes.data)
    emu.phase2("Mm", ws, ex)
    emu.sync()
    np.testing.assert_array_equal(out.read(), np.full((2, 4), 3.0))


def test_executor_reuse_refused_unless_repeatable(emu):
    out, args = _mm_args(emu)
    ws, ex = emu.phase1("Mm", *args)
    wsp = emu.phase2("Mm", ws, ex)
    with pytest.raises(AclError, match="already run once"):
        emu.phase2("Mm", ws, ex, workspace=wsp)
    ws, ex = emu.phase1("Mm", *args)
    emu.check("aclSetAclOpExecutorRepeatable", emu.nn.aclSetAclOpExecutorRepeatable(ex))
    for _ in range(3):
        emu.phase2("Mm", ws, ex, workspace=wsp)
    emu.sync()
    emu.check("aclDestroyAclOpExecutor", emu.nn.aclDestroyAclOpExecutor(ex))
    with pytest.raises(AclError, match="not made by"):
        emu.phase2("Mm", ws, ex, workspace=wsp)
    _, ex_other = emu.phase1("Mm", *args)
    with pytest.raises(AclError, match="belongs to aclnnMm"):
        emu.phase2("SwiGlu", ws, ex_other, workspace=wsp)


def test_host_pointer_as_tensor_data_fails_on_the_device(emu):
    host = np.ones((2, 2), np.float16)
    a = emu.tensor(host.ctypes.data, [2, 2], FLOAT16)
    out = DevArray(emu, np.zeros((2, 2)), FLOAT16)
    ws, ex = emu.phase1("Mm", ctypes.c_void_p(a), ctypes.c_void_p(a), ctypes.c_void_p(out.t), ctypes.c_int8(0))
    emu.phase2("Mm", ws, ex)
    with pytest.raises(AclError, match="not device memory"):
        emu.sync()
    emu.sync()  # the error was reported once


def test_default_stream_capture_refused(emu):
    assert emu.acl.aclmdlRICaptureBegin(None, 0) != 0
    assert "default stream" in emu.err()


def test_sync_copy_during_global_capture_invalidates_it(emu):
    s = emu.new_stream()
    dev = emu.upload(np.zeros(4, np.float32))
    host = np.zeros(4, np.float32)
    emu.check("aclmdlRICaptureBegin", emu.acl.aclmdlRICaptureBegin(s, 0))
    assert emu.acl.aclrtMemcpy(host.ctypes.data, 16, dev, 16, D2H) != 0
    model = ctypes.c_void_p()
    assert emu.acl.aclmdlRICaptureEnd(s, ctypes.byref(model)) == 507903
    assert "invalidated" in emu.err()


def _adds(emu, target: DevArray, value: int, stream):
    s = emu.scalar(value, INT32)
    ws, ex = emu.phase1(
        "InplaceAdds", ctypes.c_void_p(target.t), ctypes.c_void_p(s), ctypes.c_void_p(emu.scalar(1, INT32))
    )
    emu.check("aclDestroyScalar", emu.nn.aclDestroyScalar(s))  # the executor copied the value
    emu.phase2("InplaceAdds", ws, ex, stream=stream)


def test_captured_host_values_replay_as_captured(emu):
    s = emu.new_stream()
    pos = DevArray(emu, np.array([10]), INT64)
    staged = DevArray(emu, np.array([0]), INT32)
    pinned = emu.malloc_host(4)
    cell = ctypes.c_int32.from_address(pinned)
    cell.value = 100
    emu.check("aclmdlRICaptureBegin", emu.acl.aclmdlRICaptureBegin(s, 0))
    _adds(emu, pos, 1, s)
    # a copy from pinned memory is a DMA task: it reads the host bytes when it runs
    emu.check("aclrtMemcpyAsync", emu.acl.aclrtMemcpyAsync(staged.ptr, 4, pinned, 4, H2D, s))
    model = ctypes.c_void_p()
    emu.check("aclmdlRICaptureEnd", emu.acl.aclmdlRICaptureEnd(s, ctypes.byref(model)))
    assert pos.read()[0] == 10  # capture records, it does not run
    for i in range(3):
        cell.value = 200 + i
        emu.check("aclmdlRIExecuteAsync", emu.acl.aclmdlRIExecuteAsync(model, s))
        emu.sync(s)
    assert pos.read()[0] == 13  # the scalar 1 as captured, three times
    assert staged.read()[0] == 202
    emu.check("aclmdlRIDestroy", emu.acl.aclmdlRIDestroy(model))
    assert emu.acl.aclmdlRIExecuteAsync(model, s) != 0


def test_captured_attention_keeps_its_host_kv_length(emu):
    """actualSeqLengthsKv is a host aclIntArray: a captured FIA replays the length it was captured with, while the
    device memory it reads (the KV cache) is read at each replay."""
    rng = np.random.default_rng(1)
    n, d, s2 = 2, 8, 6
    q = DevArray(emu, rng.standard_normal((1, 1, n * d)), FLOAT16)
    k = DevArray(emu, rng.standard_normal((1, s2, n * d)), FLOAT16)
    out, eager = DevArray(emu, np.zeros((1, 1, n * d)), FLOAT16), DevArray(emu, np.zeros((1, 1, n * d)), FLOAT16)
    s = emu.new_stream()
    ws, ex = emu.phase1("FusedInferAttentionScoreV4", *fia_args(emu, q, [k], [k], n, n, 0.3, "BSH", out, kv_lens=[3]))
    wsp = emu.malloc(ws)
    emu.check("aclmdlRICaptureBegin", emu.acl.aclmdlRICaptureBegin(s, 0))
    emu.phase2("FusedInferAttentionScoreV4", ws, ex, stream=s, workspace=wsp)
    model = ctypes.c_void_p()
    emu.check("aclmdlRICaptureEnd", emu.acl.aclmdlRICaptureEnd(s, ctypes.byref(model)))

    def replay():
        emu.check("aclmdlRIExecuteAsync", emu.acl.aclmdlRIExecuteAsync(model, s))
        emu.sync(s)
        emu.run("FusedInferAttentionScoreV4", *fia_args(emu, q, [k], [k], n, n, 0.3, "BSH", eager, kv_lens=[3]))
        return out.read()

    first = replay()
    np.testing.assert_array_equal(first, eager.read())
    rows = k.host.copy()
    rows[0, 3:] = rng.standard_normal((s2 - 3, n * d)).astype(np.float16)  # beyond the captured length
    emu.check("aclrtMemcpy", emu.acl.aclrtMemcpy(k.ptr, rows.nbytes, rows.ctypes.data, rows.nbytes, H2D))
    np.testing.assert_array_equal(replay(), first)
    rows[0, :3] = rng.standard_normal((3, n * d)).astype(np.float16)  # inside it: read at replay
    emu.check("aclrtMemcpy", emu.acl.aclrtMemcpy(k.ptr, rows.nbytes, rows.ctypes.data, rows.nbytes, H2D))
    second = replay()
    assert not np.array_equal(second, first)
    np.testing.assert_array_equal(second, eager.read())


def test_task_update_changes_a_captured_group(emu):
    main, upd = emu.new_stream(), emu.new_stream()
    pos = DevArray(emu, np.array([0]), INT32)
    emu.check("aclmdlRICaptureBegin", emu.acl.aclmdlRICaptureBegin(main, 0))
    emu.check("aclmdlRICaptureTaskGrpBegin", emu.acl.aclmdlRICaptureTaskGrpBegin(main))
    _adds(emu, pos, 1, main)
    grp = ctypes.c_void_p()
    emu.check("aclmdlRICaptureTaskGrpEnd", emu.acl.aclmdlRICaptureTaskGrpEnd(main, ctypes.byref(grp)))
    model = ctypes.c_void_p()
    emu.check("aclmdlRICaptureEnd", emu.acl.aclmdlRICaptureEnd(main, ctypes.byref(model)))
    emu.check("aclmdlRIExecuteAsync", emu.acl.aclmdlRIExecuteAsync(model, main))
    emu.sync(main)
    assert pos.read()[0] == 1
    assert emu.acl.aclmdlRICaptureTaskUpdateBegin(main, grp) == 0  # main is not capturing any more
    _adds(emu, pos, 5, main)
    emu.check("aclmdlRICaptureTaskUpdateEnd", emu.acl.aclmdlRICaptureTaskUpdateEnd(main))
    emu.check("aclmdlRIExecuteAsync", emu.acl.aclmdlRIExecuteAsync(model, main))
    emu.sync(main)
    assert pos.read()[0] == 6
    # a group accepts only operator tasks
    emu.check("aclmdlRICaptureBegin", emu.acl.aclmdlRICaptureBegin(upd, 0))
    emu.check("aclmdlRICaptureTaskGrpBegin", emu.acl.aclmdlRICaptureTaskGrpBegin(upd))
    assert emu.acl.aclrtMemsetAsync(pos.ptr, 4, 0, 4, upd) == 507009
    assert emu.acl.aclmdlRICaptureEnd(upd, ctypes.byref(model)) != 0


def test_work_on_a_thread_without_a_context_refused(emu):
    ctx = ctypes.c_void_p()
    emu.check("aclrtGetCurrentContext", emu.acl.aclrtGetCurrentContext(ctypes.byref(ctx)))
    results = {}

    def worker():
        p = ctypes.c_void_p()
        results["before"] = emu.acl.aclrtMalloc(ctypes.byref(p), 64, 0)
        results["msg"] = emu.err()
        results["set"] = emu.acl.aclrtSetCurrentContext(ctx)
        results["after"] = emu.acl.aclrtMalloc(ctypes.byref(p), 64, 0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert results["before"] == 107002 and "no current context" in results["msg"]
    assert results["set"] == 0 and results["after"] == 0


def test_stream_of_another_context_refused(emu):
    ctx, orig = ctypes.c_void_p(), ctypes.c_void_p()
    emu.check("aclrtGetCurrentContext", emu.acl.aclrtGetCurrentContext(ctypes.byref(orig)))
    emu.check("aclrtCreateContext", emu.acl.aclrtCreateContext(ctypes.byref(ctx), 0))  # now current
    try:
        assert emu.acl.aclrtSynchronizeStream(emu.stream) == 107003
    finally:
        emu.check("aclrtSetCurrentContext", emu.acl.aclrtSetCurrentContext(orig))
    emu.check("aclrtDestroyContext", emu.acl.aclrtDestroyContext(ctx))


def test_counters_json(tmp_path):
    stats = tmp_path / "stats.json"
    code = """
import ctypes, numpy as np
from emu_support import Emu, DevArray, INT32, D2H
e = Emu.get()
pos = DevArray(e, np.array([0]), INT32)          # 1 allocation, 1 host-to-device copy of 4 bytes
one = e.scalar(1, INT32)
pinned = e.malloc_host(4)
ev = ctypes.c_void_p(); e.acl.aclrtCreateEventWithFlag(ctypes.byref(ev), 1)
e.acl.aclmdlRICaptureBegin(e.stream, 0)
args = [ctypes.c_void_p(x) for x in (pos.t, one, one)]
e.phase2("InplaceAdds", *e.phase1("InplaceAdds", *args), stream=e.stream)
m = ctypes.c_void_p(); e.check("end", e.acl.aclmdlRICaptureEnd(e.stream, ctypes.byref(m)))
e.acl.aswemu_mark_step()
for _ in range(3):
    e.check("replay", e.acl.aclmdlRIExecuteAsync(m, e.stream))
    e.check("d2h", e.acl.aclrtMemcpyAsync(pinned, 4, pos.ptr, 4, D2H, e.stream))
    e.acl.aclrtRecordEvent(ev, e.stream)
    e.check("sync", e.acl.aclrtSynchronizeEvent(ev))
    e.acl.aswemu_mark_step()
print(ctypes.c_int32.from_address(pinned).value)
"""
    out = run_python(code, env={"ASW_EMU_STATS": str(stats)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
    data = json.loads(stats.read_text())
    total = data["total"]
    assert total["device_allocs"] == 1 and total["host_allocs"] == 1
    assert total["copies"]["host_to_device"] == {"count": 1, "bytes": 4}
    assert total["copies"]["device_to_host"] == {"count": 3, "bytes": 12}
    assert total["graph_captures"] == 1 and total["graph_replays"] == 3
    assert total["ops"]["aclnnInplaceAdds"] == {"eager": 0, "captured": 1, "replayed": 3}
    assert total["event_syncs"] == 3 and total["launches"] == 0
    steps = data["steps"]
    assert len(steps) == 4
    for step in steps[1:]:  # one decode step: one replay, one small D2H copy, one sync, no H2D
        assert step["graph_replays"] == 1 and step["event_syncs"] == 1
        assert step["copies"]["host_to_device"]["count"] == 0
        assert step["copies"]["device_to_host"] == {"count": 1, "bytes": 4}
    assert len(data["syncs"]) == 3 and all(s["graph_replays"] == 1 for s in data["syncs"])


def test_object_api_argument_checks(emu):
    dims = (ctypes.c_int64 * 2)(2, 3)
    assert emu.nn.aclCreateTensor(None, 2, FLOAT16, None, 0, 2, dims, 2, None) is None
    assert "viewDims is null" in emu.err()
    neg = (ctypes.c_int64 * 2)(3, -1)
    assert emu.nn.aclCreateTensor(dims, 2, FLOAT16, neg, 0, 2, dims, 2, None) is None
    assert "negative stride" in emu.err()
    assert emu.nn.aclCreateScalar(None, INT32) is None
    assert emu.nn.aclCreateIntArray(None, 2) is None
    assert emu.nn.aclDestroyTensor(None) == 0 and emu.nn.aclDestroyTensorList(None) == 0  # destroying null is OK
    # a tensor list owns its members: destroying the list destroys them (opbase; llama.cpp relies on it)
    members = [emu.tensor(0, [2], INT32) for _ in range(3)]
    assert emu.nn.aclDestroyTensorList(emu.tensor_list(members)) == 0
