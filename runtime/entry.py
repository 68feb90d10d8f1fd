"""Console-script entry points. Each imports its command line only once guarded, so that what happens around it
gives one line and an exit status instead of a traceback: Ctrl-C while the libraries load (exit 130), a closed
standard output (refused before any file is opened, which would otherwise take descriptor 1), and a full or failing
one (`>/dev/full`: exit 2; a closed pipe such as `| head`: exit 1 quietly, as click does).

Only the standard library is imported here, so the guard is in place within milliseconds of start-up.
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import sys
from typing import NoReturn


class StdoutFailed(BaseException):
    """Writing standard output failed (a BaseException so that no `except Exception` on the way swallows it)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _GuardedStdout(io.TextIOWrapper):
    """sys.stdout whose write and flush failures raise StdoutFailed."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError as exc:
            raise StdoutFailed(exc) from None

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise StdoutFailed(exc) from None


def _exit(message: str | None, code: int) -> NoReturn:
    if message is not None and sys.stderr is not None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    os._exit(code)  # no interpreter shutdown: it would flush the failed stdout again and print a second error


def _guard_stdout() -> None:
    current = sys.stdout
    if not isinstance(current, io.TextIOWrapper) or isinstance(current, _GuardedStdout):
        return
    current.flush()
    guarded = _GuardedStdout(current.detach(), encoding=current.encoding, errors=current.errors,
                             line_buffering=current.line_buffering, write_through=current.write_through)
    sys.stdout = sys.__stdout__ = guarded


def run_console_script(module: str) -> None:
    """Import `module` and call its main() (a typer app: ends in SystemExit), with the guards above."""
    if sys.stdout is None:
        _exit("error: standard output is closed; redirect it to a file or /dev/null instead", 2)
    code: int | str | None = 0
    try:
        _guard_stdout()
        try:
            importlib.import_module(module).main()
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
    except KeyboardInterrupt:
        _exit("interrupted", 130)
    except StdoutFailed as failed:
        if failed.error.errno == errno.EPIPE:
            _exit(None, 1)
        _exit(f"error: cannot write to standard output: {failed.error.strerror or failed.error}", 2)
    sys.exit(code)  # stdout is flushed: a normal shutdown is safe


def run() -> None:
    run_console_script("ascend_super.runtime.cli")


def inspect() -> None:
    run_console_script("ascend_super.runtime.inspect")


def serve() -> None:
    run_console_script("ascend_super.runtime.serve.cli")
