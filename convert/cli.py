"""`ascend-convert`: the command line over convert.pipeline (argument parsing, progress bar, summary, errors)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ascend_super.runtime import format as fmt
from ascend_super.runtime.cliutil import fail
from ascend_super.runtime.cliutil import stderr as console

from .pipeline import convert
from .plan import Plan
from .sources.base import SourceError
from .card import write_card
from .sources.hub import ALIASES, HUBS, USE_MODELSCOPE_ENV, open_source

app = typer.Typer(add_completion=False, help=__doc__)


def _default_name(spec: str, dtype: str) -> str:
    name = Path(spec.rstrip("/")).name or "model"
    stem = name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    return f"{stem}-{dtype}.asw"


def _output_path(output: str | None, spec: str, dtype: str) -> Path:
    """-o FILE, or -o FOLDER/ (or an existing folder) for the default name inside it."""
    if output is None:
        return Path(_default_name(spec, dtype))
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return Path(output) / _default_name(spec, dtype)
    return Path(output)


class Terminated(Exception):
    """SIGTERM arrived: clean up like Ctrl-C, exit 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@app.command()
def run(
    source: Optional[str] = typer.Argument(None, help="Local HF directory, .gguf file, alias, or hub repo id."),
    output: Optional[str] = typer.Option(None, "-o", "--output",
                                         help="Output .asw file, or a folder for <name>-<dtype>.asw (created if "
                                              "missing) [default: <name>-<dtype>.asw here]."),
    dtype: str = typer.Option("fp16", "--dtype", help="Weight dtype: fp16 (fastest on Ascend) or bf16."),
    layout: str = typer.Option("nd", "--layout", help="Matrix layout: nd (row-major) or nz (FRACTAL_NZ, aclnn only)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
    hub_name: Optional[str] = typer.Option(None, "--hub",
                                           help="Where repo ids and aliases come from: huggingface or modelscope "
                                                f"[default: huggingface; modelscope when {USE_MODELSCOPE_ENV}=1]."),
    card: bool = typer.Option(False, "--card", help="Also write a model-card README snippet beside the output "
                                                    "(<name>.README.md) for publishing it on a hub."),
    align: int = typer.Option(fmt.DEFAULT_DATA_ALIGNMENT, "--align",
                              help="Data-region alignment in bytes (power of two, 512 to 1 GiB)."),
    list_aliases: bool = typer.Option(False, "--list-aliases", help="Print the model aliases and exit."),
) -> None:
    """Convert a Qwen2 / Llama checkpoint into one .asw file."""
    if list_aliases:
        if source is not None:
            raise typer.BadParameter("--list-aliases takes no SOURCE")
        for alias, repo in ALIASES.items():
            typer.echo(f"{alias:18} {repo}")
        return
    if source is None:
        raise typer.BadParameter("SOURCE is required (a directory, .gguf file, alias or repo id)")
    if hub_name is not None and hub_name not in HUBS:
        raise typer.BadParameter(f"--hub must be one of {', '.join(HUBS)}")
    if dtype not in fmt.DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(fmt.DTYPES)}")
    if layout not in fmt.LAYOUTS:
        raise typer.BadParameter(f"--layout must be one of {', '.join(fmt.LAYOUTS)}")
    try:
        fmt.check_data_alignment(align)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    out_path = _output_path(output, source, dtype)

    signal.signal(signal.SIGTERM, _terminate)  # `kill` cleans up like Ctrl-C: no partial file is left
    progress = Progress(TextColumn("[bold]converting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not console.is_terminal)
    task = progress.add_task("convert", total=None)

    def on_plan(plan: Plan) -> None:
        progress.update(task, total=plan.source_nbytes)

    started = time.perf_counter()
    try:
        status = console.status(f"opening {source} …") if console.is_terminal else contextlib.nullcontext()
        with status:
            opened = open_source(source, revision, hub_name)
        with opened as src, progress:
            summary = convert(src, out_path, dtype, layout, align, on_plan=on_plan,
                              advance=lambda n: progress.advance(task, n))
        card_file = write_card(out_path) if card else None
    except SourceError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"nothing was written to {out_path}", 130, "interrupted")
    except Terminated:
        fail(f"nothing was written to {out_path}", 143, "terminated")
    except OSError as exc:
        fail(str(exc), 1)

    table = Table(show_header=False, box=None)
    seconds = time.perf_counter() - started  # opening the source included (GGUF metadata takes seconds)
    rows = [("output", str(summary.out_path)), ("arch", summary.arch), ("dtype / layout", f"{summary.dtype} / {summary.layout}"),
            ("tensors", str(summary.tensors)), ("parameters", f"{summary.parameters:,}"),
            ("file size", f"{summary.file_nbytes:,} bytes"), ("time", f"{seconds:.2f} s"),
            ("throughput", f"{summary.tensor_nbytes / 1e9 / max(seconds, 1e-9):.2f} GB/s of tensors written")]
    if card_file is not None:
        rows.append(("model card", str(card_file)))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    console.print(table)


def main() -> None:
    app()
