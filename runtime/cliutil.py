"""What every console script shares: one stderr console, the one-line error exit, literal printing of untrusted text
(paths, manifest strings), and the --version option."""

from __future__ import annotations

import unicodedata
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

stderr = Console(stderr=True, soft_wrap=True, highlight=False)

# bidirectional overrides and isolates reorder what a terminal shows ("Trojan source"); escaped like controls
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text` with every control character (C0, DEL, C1, bidi controls) written as a \\x / \\u escape, and every
    undecodable byte of a file name (a lone surrogate from surrogateescape) as \\xNN, so that it prints literally."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def literal(text: object) -> Text:
    """Untrusted text as a rich Text: no markup is interpreted, control characters are escaped."""
    return Text(printable(str(text)))


def fail(message: str, code: int = 2, label: str = "error") -> NoReturn:
    """Print `label: message` as one line on stderr (never wrapped, untrusted text literal) and exit with `code`."""
    line = Text.assemble((f"{label}:", "red"), " ", printable(message))
    stderr.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def version_option() -> bool:
    """The --version option every console script has: prints `ascend-super VERSION` and exits."""
    from ascend_super import __version__

    def show(value: bool) -> None:
        if value:
            typer.echo(f"ascend-super {__version__}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")
