"""The runtime and the command lines under faults: fork, close, CPU affinity, a file truncated while mapped,
signals, full or closed stdout, FIFOs, hostile text from paths and manifests, and odd arguments. Each test is named
after what it guards."""

from __future__ import annotations

import os
import time
import warnings

import pytest

import ascend_super
from ascend_super.runtime.generate import Sampling

MODEL = "qwen2-gqa-hd64"
HANG_GUARD_S = 120  # a deadlock shows as a child still running after this long (not a speed check)


def _wait_or_kill(pid: int) -> int | None:
    """The child's exit status, or None (after killing it) if it is still running after HANG_GUARD_S."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def test_generation_in_a_forked_child_does_not_deadlock(converted) -> None:
    threads = min(2, len(os.sched_getaffinity(0)))
    with ascend_super.load(converted(MODEL), threads=threads) as model:
        ids = model.prompt_ids("fork me")
        expected = list(model.generate_tokens(ids, Sampling(max_new_tokens=8)))  # the pool's workers now exist
        unused = model.session(64)  # a session whose pool the child frees without running it
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork() may deadlock": the guard
            pid = os.fork()
        if pid == 0:  # child: generate again on the inherited session pool, report the ids, never return
            code = 1
            try:
                os.close(read_end)
                got = list(model.generate_tokens(ids, Sampling(max_new_tokens=8)))
                unused.close()
                model.close()  # frees the pools the child restarted and the one it never used
                os.write(write_end, " ".join(map(str, got)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        status = _wait_or_kill(pid)
        with os.fdopen(read_end, "rb") as pipe:
            reported = pipe.read().decode()
        assert status is not None, "the forked child deadlocked in its first generation"
        assert status == 0 and reported.split() == [str(t) for t in expected]
        assert list(model.generate_tokens(ids, Sampling(max_new_tokens=8))) == expected  # the parent still works
