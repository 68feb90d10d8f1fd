"""The runtime and the command lines under faults: fork, close, CPU affinity, a file truncated while mapped,
signals, full or closed stdout, FIFOs, hostile text from paths and manifests, and odd arguments. Each test is named
after what it guards."""

from __future__ import annotations

import os
import time
import warnings

import pytest

import ascend_super
from ascend_super.runtime.generate import GenerationError, Sampling

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


def _holds(path) -> tuple[bool, bool]:
    """(an open descriptor of `path`, a mapping of `path`) in this process."""
    target = os.path.realpath(path)
    fds = any(os.path.realpath(f"/proc/self/fd/{fd}") == target for fd in os.listdir("/proc/self/fd")
              if os.path.exists(f"/proc/self/fd/{fd}"))
    with open("/proc/self/maps") as maps:
        mapped = any(line.rstrip("\n").endswith(" " + target) for line in maps)
    return fds, mapped


def test_close_releases_the_descriptor_and_the_mapping(converted) -> None:
    path = converted(MODEL)
    with ascend_super.load(path, threads=1) as model:
        list(model.generate("hi", raw=True, max_new_tokens=2))
        assert _holds(path) == (True, True)
    assert _holds(path) == (False, False)
    model = ascend_super.load(path, threads=1)
    model.close()
    assert _holds(path) == (False, False)
    with pytest.raises(GenerationError, match="the model is closed"):
        model.session(16)
    from ascend_super.runtime import format as fmt

    with fmt.AswFile.open(path):
        pass
    assert _holds(path) == (False, False)


def test_session_racing_close_gets_an_error_not_a_crash(converted) -> None:
    import threading

    for _ in range(5):
        model = ascend_super.load(converted(MODEL), threads=1)
        errors: list[BaseException] = []

        def make() -> None:
            try:
                model.session(32).close()
            except GenerationError as exc:
                errors.append(exc)

        makers = [threading.Thread(target=make) for _ in range(4)]
        for maker in makers:
            maker.start()
        model.close()
        for maker in makers:
            maker.join(timeout=HANG_GUARD_S)
        assert not any(m.is_alive() for m in makers)
        assert all("the model is closed" in str(e) for e in errors)


def test_threads_are_checked_against_the_cpu_affinity(converted) -> None:
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        with pytest.raises(GenerationError, match="between 1 and the 1 cores this process may use"):
            ascend_super.load(converted(MODEL), threads=2)
    finally:
        os.sched_setaffinity(0, allowed)
