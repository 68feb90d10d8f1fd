"""What every console script shares: one stderr console, the one-line error exit, literal printing of untrusted text
(paths, manifest strings), the --version option, and opening a model file (a path or a hub URI) for the runtime's
CLIs with every failure as that one line."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from .model import Model

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


def note(message: str) -> None:
    """One line on stderr, printed literally (no markup, control characters escaped)."""
    stderr.print(literal(message))


def activations_option() -> Any:
    """--activations of the commands that open a model (asw.h: asw_open_options.activations)."""
    return typer.Option("f32", "--activations", help="cpu: f32 (default; matches transformers' f32 reference) or "
                        "bf16 (bf16 files: every matmul input rounded to bf16, so prefill runs on VDPBF16PS where "
                        "the CPU has AVX512_BF16 on AMD; logits move by up to ~1.5 %).")


def open_model(spec: str, backend: str, threads: int | None, device: int, eager: bool,
               activations: str = "f32") -> "Model":
    """The Model of a .asw path or hf:// / ms:// URI (downloaded once, reported on stderr), or a one-line exit.
    The file's mapping is guarded from the moment it is validated (before a first hub download's hash check): a
    bus error in it (the file truncated or rewritten under us, while it is checked, loaded or run) exits with one
    line naming the file."""
    from . import format as fmt
    from . import hub
    from .busguard import exit_on_bus_error
    from .generate import GenerationError
    from .model import BackendUnavailable, Model
    from .native import NativeError

    try:
        located = hub.locate(spec, report=note)
    except hub.HubError as exc:
        fail(str(exc))
    try:
        return Model(located, backend, threads, device, eager, activations, on_open=exit_on_bus_error)
    except (fmt.FormatError, BackendUnavailable, NativeError, GenerationError) as exc:
        fail(str(exc))
