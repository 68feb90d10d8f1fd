"""What every console script shares: one stderr console, the one-line error exit, and opening a model file (a path
or a hub URI) for the runtime's CLIs with every failure as that one line."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from .model import Model

stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2, label: str = "error") -> NoReturn:
    """Print `label: message` as one line on stderr (never wrapped) and exit with `code`."""
    stderr.print(f"[red]{escape(label)}:[/red] {escape(message)}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """One plain line on stderr (no markup)."""
    stderr.print(message, markup=False, highlight=False)


def open_model(spec: str, backend: str, threads: int | None, device: int, eager: bool) -> "Model":
    """The Model of a .asw path or hf:// / ms:// URI (downloaded once, reported on stderr), or a one-line exit."""
    from . import format as fmt
    from . import hub
    from .generate import GenerationError
    from .model import BackendUnavailable, Model
    from .native import NativeError

    try:
        located = hub.locate(spec, report=note)
    except hub.HubError as exc:
        fail(str(exc))
    try:
        return Model(located, backend, threads, device, eager)
    except (fmt.FormatError, BackendUnavailable, NativeError, GenerationError) as exc:
        fail(str(exc))
