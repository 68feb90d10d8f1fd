"""The runtime and the command lines under faults: fork, close, CPU affinity, a file truncated while mapped,
signals, full or closed stdout, FIFOs, hostile text from paths and manifests, and odd arguments. Each test is named
after what it guards."""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import select
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import ascend_super
from ascend_super.runtime.tempfiles import host_tag
from ascend_super.runtime import format as fmt
from ascend_super.runtime.generate import GenerationError, Sampling
from conftest import script_code

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


# ------------------------------------------------------------------------------------------------ command lines
def _run(script: str, *args: str, stdin: bytes | None = None, patch: str = "", shell_redirect: str = "",
         **popen: object) -> subprocess.CompletedProcess:
    """Run console script `script` (as installed) in a subprocess, after Python code `patch` (which may stub a
    function to reach a fault on purpose); `shell_redirect` (e.g. '>/dev/full') runs it under bash with that."""
    code = (patch + "\n" if patch else "") + script_code(script)
    command = [sys.executable, "-c", code, *args]
    if shell_redirect:
        command = ["bash", "-c", " ".join(shlex.quote(part) for part in command) + " " + shell_redirect]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=HANG_GUARD_S, **popen)


def _one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    assert result.returncode == code, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    for word in words:
        assert word in err, err
    return err


READY_THEN_WAIT = """
import sys, time
def _ready_then_wait(*args, **kwargs):
    print("READY", flush=True)
    time.sleep(600)
"""


def _signal_when_ready(patch: str, script: str, *args: str, signum: int) -> subprocess.CompletedProcess:
    """Start `script` with `patch`, which prints READY where the signal must land; send `signum` then."""
    code = READY_THEN_WAIT + patch + "\n" + script_code(script)
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.communicate(timeout=HANG_GUARD_S)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_signal_during_conversion_removes_the_temporary_file(signum: int, tmp_path: Path, checkpoint_dir) -> None:
    out = tmp_path / "out.asw"
    patch = "from ascend_super.convert.writer import AswWriter\nAswWriter.begin_tensor = _ready_then_wait"
    result = _signal_when_ready(patch, "ascend-convert", str(checkpoint_dir(MODEL)), "-o", str(out), signum=signum)
    expected = 130 if signum == signal.SIGINT else 128 + signum
    _one_line_error(result, expected, f"nothing was written to {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_while_opening_a_gguf_is_not_called_corrupt(tmp_path: Path) -> None:
    from test_gguf import write_gguf

    source = tmp_path / "tiny.gguf"
    write_gguf(source, "qwen2")
    patch = "from ascend_super.convert.sources import gguf\ngguf.GGUFReader = _ready_then_wait"
    result = _signal_when_ready(patch, "ascend-convert", str(source), "-o", str(tmp_path / "o.asw"),
                                signum=signal.SIGTERM)
    err = _one_line_error(result, 143, "terminated", "SIGTERM")
    assert "corrupt" not in err and "truncated" not in err


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path, checkpoint_dir) -> None:
    out = tmp_path / "out.asw"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid belongs to no process now
    host = host_tag()
    stale = tmp_path / f"out.asw.tmp-{host}-{dead.pid}"
    stale_old_name = tmp_path / f"out.asw.tmp-{dead.pid}"  # named by an earlier version: local too
    alive = tmp_path / f"out.asw.tmp-{host}-{os.getpid()}"  # a conversion still running (this process): kept
    elsewhere = tmp_path / f"out.asw.tmp-{host}x-{dead.pid}"  # another host's (a shared folder): kept
    other = tmp_path / f"other.asw.tmp-{host}-{dead.pid}"  # another output's: not ours to touch
    card = tmp_path / f"out.README.md.tmp-{host}-{dead.pid}"  # --card's file beside OUT is written the same way
    for path in (stale, stale_old_name, alive, elsewhere, other, card):
        path.write_bytes(b"partial")
    result = _run("ascend-convert", str(checkpoint_dir(MODEL)), "-o", str(out), "--align", "4096", "--card")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and not stale_old_name.exists() and not card.exists()
    assert alive.exists() and elsewhere.exists() and other.exists() and out.is_file()
    assert (tmp_path / "out.README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == sorted(
        p.name for p in (alive, elsewhere, other))  # the conversion's own temporary is gone too


def test_replace_text_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The small files written by rename (a card, a verification record): a dead writer's temporary is removed, and
    a failed write leaves neither a temporary nor a changed target."""
    from ascend_super.runtime import tempfiles

    target = tmp_path / "record.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"record.json.tmp-{host_tag()}-{dead.pid}"
    stale.write_text("partial")
    tempfiles.replace_text(target, "one")
    assert target.read_text() == "one" and not stale.exists()

    # a dead writer's leftover that cannot be removed (another user's, in a sticky folder) is skipped, not fatal
    stale.write_text("partial")
    unlink = Path.unlink

    def refuse_stale(path: Path, missing_ok: bool = False) -> None:
        if path == stale:
            raise PermissionError(1, "Operation not permitted", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_stale)
    tempfiles.replace_text(target, "one")
    assert target.read_text() == "one" and stale.exists()
    monkeypatch.setattr(Path, "unlink", unlink)
    stale.unlink()

    def full_disk(path: Path, text: str, encoding: str) -> None:
        Path.write_bytes(path, text[:1].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        tempfiles.replace_text(target, "two")
    assert target.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "model.asw"
    os.mkfifo(fifo)
    for script, args in (("ascend-inspect", ()), ("ascend-run", ("--prompt", "hi"))):
        _one_line_error(_run(script, str(fifo), *args), 2, "not a regular file")


@pytest.mark.parametrize("script", ["ascend-run", "ascend-inspect", "ascend-convert"])
@pytest.mark.parametrize(("redirect", "code", "message"), [
    (">/dev/full", 2, "cannot write to standard output: No space left on device"),
    (">&-", 2, "standard output is closed"),
])
def test_full_or_closed_stdout_is_one_line(script: str, redirect: str, code: int, message: str,
                                           converted) -> None:
    args = {"ascend-run": (str(converted(MODEL)), "--prompt", "hi", "-n", "4"),
            "ascend-inspect": (str(converted(MODEL)),), "ascend-convert": ("--list-aliases",)}[script]
    _one_line_error(_run(script, *args, shell_redirect=redirect), code, message)


def test_stdout_closed_by_the_reader_exits_quietly(converted) -> None:
    # The reader's end is closed before the command starts, so its first write meets EPIPE every time; with a
    # live reader (`| head -c 1`) a report that fits the pipe buffer could be written before head exited.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        command = [sys.executable, "-c", script_code("ascend-inspect"), str(converted(MODEL))]
        result = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, timeout=HANG_GUARD_S)
    finally:
        os.close(write_end)
    _one_line_error(result, 1)
    assert result.stderr == b""


def test_chat_template_sandbox_limit_is_one_line(tmp_path: Path, converted) -> None:
    from test_format import read_parts, rebuild

    path = tmp_path / "looping.asw"
    _, manifest, data = read_parts(converted(MODEL))
    manifest["chat_template"] = "{% for i in range(10 ** 9) %}x{% endfor %}"
    rebuild(path, manifest, data)
    _one_line_error(_run("ascend-run", str(path), "--prompt", "hi"), 2, "chat template")


def test_a_failing_filter_in_the_chat_template_is_one_line(tmp_path: Path, converted) -> None:
    """A template failure that is no Jinja error (truncate's assertion here, on the system message only, so the
    converter's probe does not see it) is one line, not a traceback."""
    from test_format import read_parts, rebuild

    path = tmp_path / "truncating.asw"
    _, manifest, data = read_parts(converted(MODEL))
    manifest["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] | truncate(2) }}"
                                 "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    rebuild(path, manifest, data)
    _one_line_error(_run("ascend-run", str(path), "--prompt", "hi", "--system", "be brief please"), 2,
                    "chat template: AssertionError")


def test_ctrl_c_while_importing_is_one_line(converted) -> None:
    patch = """
import builtins, os, signal
_import = builtins.__import__
def _interrupting_import(name, *args, **kwargs):
    if name == "numpy":
        builtins.__import__ = _import
        os.kill(os.getpid(), signal.SIGINT)
    return _import(name, *args, **kwargs)
builtins.__import__ = _interrupting_import
"""
    err = _one_line_error(_run("ascend-run", str(converted(MODEL)), "--prompt", "hi", patch=patch), 130)
    assert err.strip() == "interrupted"


def test_ctrl_c_while_loading_is_one_line(converted) -> None:
    patch = """
from ascend_super.runtime import format as fmt
def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt
fmt.AswFile.open = _interrupted
"""
    _one_line_error(_run("ascend-run", str(converted(MODEL)), "--prompt", "hi", patch=patch), 130, "interrupted")


def test_ctrl_c_during_prefill_reports_no_ttft(converted) -> None:
    patch = """
from ascend_super.runtime import native
def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt
native.NativeSession.prefill = _interrupted
"""
    err = _one_line_error(_run("ascend-run", str(converted(MODEL)), "--prompt", "hi", patch=patch), 130,
                          "TTFT - |", "(interrupted)")
    assert "TTFT 0 ms" not in err


def test_paths_print_literally(tmp_path: Path, checkpoint_dir) -> None:
    out = tmp_path / "model[v2]\x1b[31m.asw"
    result = _run("ascend-convert", str(checkpoint_dir(MODEL)), "-o", str(out), "--align", "4096")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "model[v2]\\x1b[31m.asw" in err and "\x1b" not in err
    inspected = _run("ascend-inspect", str(out)).stdout.decode()
    assert "model[v2]\\x1b[31m.asw" in inspected and "\x1b" not in inspected


def test_manifest_strings_print_literally(tmp_path: Path, converted) -> None:
    from test_format import read_parts, rebuild

    path = tmp_path / "hostile.asw"
    _, manifest, data = read_parts(converted(MODEL))
    manifest["source"]["id"] = "evil\x1b]0;pwned\x07 [red]x[/red] \u202eabc"
    manifest["source"]["converter"] = "[bold]conv[/bold]\x9b2J"
    rebuild(path, manifest, data)
    result = _run("ascend-inspect", str(path))
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert "evil\\x1b]0;pwned\\x07 [red]x[/red] \\u202eabc" in out and "[bold]conv[/bold]\\x9b2J" in out
    assert not any(char in out for char in "\x1b\x07\x9b\u202e")


def test_output_inside_a_file_is_a_clear_error(tmp_path: Path, checkpoint_dir) -> None:
    (tmp_path / "ll.asw").write_bytes(b"x")
    err = _one_line_error(_run("ascend-convert", str(checkpoint_dir(MODEL)), "-o", str(tmp_path / "ll.asw/x.asw")),
                          2, "is a file, not a folder")
    assert "Errno" not in err


def test_empty_output_name_is_an_error(tmp_path: Path, checkpoint_dir) -> None:
    result = _run("ascend-convert", str(checkpoint_dir(MODEL)), "-o", "", cwd=tmp_path)
    _one_line_error(result, 2, "is empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("way", ["tmpfs", "file-size-limit"])
def test_full_disk_during_conversion_names_the_path(way: str, tmp_path: Path, checkpoint_dir) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    limit = {}
    if way == "tmpfs":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                 capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    else:
        def small_files() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))

        limit = {"preexec_fn": small_files}
    try:
        out = folder / "out.asw"
        result = _run("ascend-convert", str(checkpoint_dir(MODEL)), "-o", str(out), "--align", "4096", **limit)
        _one_line_error(result, 2, str(folder), f"nothing was written to {out}")
        assert list(folder.iterdir()) == []
    finally:
        if way == "tmpfs":
            subprocess.run(["umount", str(folder)], check=True)


def test_huge_context_names_no_internal_variable(converted) -> None:
    err = _one_line_error(_run("ascend-run", str(converted(MODEL)), "--prompt", "hi", "--context", "9999999999"), 2,
                          "context must be at most 16777216 positions")
    assert "max_len" not in err


def test_stdin_prompt_drops_final_newline_and_bom(converted) -> None:
    ids = []
    for stdin in ("Hello".encode(), "\ufeffHello\n".encode(), b"Hello\r\n"):
        result = _run("ascend-run", str(converted(MODEL)), "--prompt", "-", "--raw", "--json", "-n", "1",
                      stdin=stdin)
        assert result.returncode == 0, result.stderr
        ids.append(json.loads(result.stdout)["prompt_token_ids"])
    assert ids[0] == ids[1] == ids[2]


@pytest.mark.parametrize(("setting", "value"), [("max_new_tokens", 2.5), ("top_k", 1.5), ("seed", True),
                                                ("max_new_tokens", "3"), ("temperature", "0.5")])
def test_api_refuses_non_numbers(setting: str, value: object, converted) -> None:
    with ascend_super.load(converted(MODEL), threads=1) as model:
        settings = {"temperature": 1.0} if setting in ("top_k", "seed") else {}
        settings[setting] = value
        with pytest.raises(GenerationError, match=f"{setting} must be a"):
            list(model.generate("hi", raw=True, **settings))


@pytest.mark.parametrize("script", ["ascend-run", "ascend-inspect", "ascend-convert"])
def test_version_and_help(script: str) -> None:
    version = _run(script, "--version")
    assert version.returncode == 0 and version.stdout.decode() == f"ascend-super {ascend_super.__version__}\n"
    helped = _run(script, "--help", env={**os.environ, "COLUMNS": "300"})
    text = helped.stdout.decode()
    assert helped.returncode == 0 and "--version" in text
    assert not re.search(r" \.(\s|$)", text), text  # rich markup swallowing "[default: …]" leaves " ."


def test_inspect_source_without_revision_has_no_none(converted) -> None:
    out = _run("ascend-inspect", str(converted(MODEL))).stdout.decode()
    source = next(line for line in out.splitlines() if line.strip().startswith("source"))
    assert "None" not in source and "@" not in source


def test_truncated_while_running_exits_with_one_line_naming_the_file(tmp_path: Path, converted) -> None:
    path = tmp_path / "shrinking.asw"
    path.write_bytes(converted(MODEL).read_bytes())
    keep = fmt.AswFile.open(path)
    data_offset = keep.preamble.data_offset
    keep.close()
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: the child blocks on a full pipe until we read
    command = [sys.executable, "-c", script_code("ascend-run"), str(path), "--prompt", "hello", "--raw",
               "-n", "4000", "--context", "4100", "--threads", "1"]
    proc = subprocess.Popen(command, stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    try:
        select.select([read_end], [], [], HANG_GUARD_S)  # generation has started: the file is mapped
        os.truncate(path, data_offset)  # the weights vanish under the running process
        with os.fdopen(read_end, "rb") as pipe:
            pipe.read()
        err = proc.stderr.read().decode()
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert f"error: {path}: the file was truncated or overwritten while in use" in err
    assert "Traceback" not in err and "Fatal Python error" not in err


def test_a_source_truncated_under_the_converter_exits_with_one_line(tmp_path: Path) -> None:
    """The converter reads sources through mappings; its console script's guard turns the SIGBUS of a source that
    shrank under it into one line and status 2 (here: a mapped file truncated, then read, as numpy would)."""
    source = tmp_path / "shrinking.safetensors"
    source.write_bytes(b"\1" * (1 << 20))
    code = ("import mmap, os, sys\n"
            "from pathlib import Path\n"
            "from ascend_super.convert.cli import guard_source_mappings\n"
            "assert guard_source_mappings(Path(sys.argv[2]))\n"
            "f = open(sys.argv[1], 'rb')\n"
            "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
            "os.truncate(sys.argv[1], 0)\n"
            "print(sum(m[4096 * 100:4096 * 101]))\n")
    result = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "out.asw")],
                            capture_output=True, timeout=HANG_GUARD_S)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err == (f"error: a source file was truncated or overwritten while being converted (bus error reading "
                   f"its mapping); nothing was written to {tmp_path / 'out.asw'}\n")
