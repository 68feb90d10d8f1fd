"""What every console script shares: one stderr console and the one-line error exit."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2, label: str = "error") -> NoReturn:
    """Print `label: message` as one line on stderr (never wrapped) and exit with `code`."""
    stderr.print(f"[red]{escape(label)}:[/red] {escape(message)}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(code)
