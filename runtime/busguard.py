"""What the command lines do when a mapped .asw file is truncated (or rewritten in place) under them.

The next read of a page that no longer exists raises SIGBUS inside numpy or the native library, where Python
cannot catch it: the process would die with "Bus error (core dumped)". `exit_on_bus_error` installs the native
library's guard (native/src/sigbus.c): a bus error inside this file's mapping prints one line naming the file and
exits with status 2. It is process-wide, so only the console scripts install it; the Python API leaves signals to
the program that embeds it.
"""

from __future__ import annotations

from . import format as fmt
from .cliutil import printable

BUS_ERROR_EXIT = 2


def exit_on_bus_error(asw: fmt.AswFile) -> bool:
    """Guard `asw`'s mapping; False where the guard is unavailable (no native library, no POSIX signals)."""
    from .native import NativeError, exit_on_sigbus

    begin, nbytes = asw.mapped_range()
    message = (f"error: {printable(str(asw.path))}: the file was truncated or overwritten while in use "
               "(bus error reading its mapping); nothing after this point was computed\n")
    encoded = message.encode("utf-8", "replace")[:1000]
    try:
        return exit_on_sigbus(begin, nbytes, encoded, BUS_ERROR_EXIT)
    except NativeError:  # no native library here: the default action stays
        return False
