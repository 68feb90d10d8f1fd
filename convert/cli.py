"""`ascend-convert`: the command line over convert.pipeline (argument parsing, progress bar, summary, errors)."""

from __future__ import annotations

import signal
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
from .sources.hub import ALIASES, open_source

app = typer.Typer(add_completion=False, help=__doc__)


def _default_output(spec: str, dtype: str) -> Path:
    stem = Path(spec.rstrip("/")).name.removesuffix(".gguf") or "model"
    return Path(f"{stem}-{dtype}.asw")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def run(
    source: Optional[str] = typer.Argument(None, help="Local HF directory, .gguf file, alias, or HF repo id."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .asw file [default: <name>-<dtype>.asw]."),
    dtype: str = typer.Option("fp16", "--dtype", help="Weight dtype: fp16 (fastest on Ascend) or bf16."),
    layout: str = typer.Option("nd", "--layout", help="Matrix layout: nd (row-major) or nz (FRACTAL_NZ, aclnn only)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
    align: int = typer.Option(fmt.DEFAULT_DATA_ALIGNMENT, "--align",
                              help="Data-region alignment in bytes (power of two >= 512)."),
    list_aliases: bool = typer.Option(False, "--list-aliases", help="Print the model aliases and exit."),
) -> None:
    """Convert a Qwen2 / Llama checkpoint into one .asw file."""
    if list_aliases:
        for alias, repo in ALIASES.items():
            typer.echo(f"{alias:18} {repo}")
        return
    if source is None:
        raise typer.BadParameter("SOURCE is required (a directory, .gguf file, alias or repo id)")
    if dtype not in fmt.DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(fmt.DTYPES)}")
    if layout not in fmt.LAYOUTS:
        raise typer.BadParameter(f"--layout must be one of {', '.join(fmt.LAYOUTS)}")
    try:
        fmt.check_data_alignment(align)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    out_path = output or _default_output(source, dtype)
    if out_path.exists() and out_path.is_dir():
        raise typer.BadParameter(f"{out_path} is a directory")

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C: no partial file is left
    progress = Progress(TextColumn("[bold]converting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("convert", total=None)

    def on_plan(plan: Plan) -> None:
        progress.update(task, total=plan.source_nbytes)

    try:
        with console.status(f"opening {source} …"):
            opened = open_source(source, revision)
        with opened as src, progress:
            summary = convert(src, out_path, dtype, layout, align, on_plan=on_plan,
                              advance=lambda n: progress.advance(task, n))
    except SourceError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"nothing was written to {out_path}", 130, "interrupted")
    except OSError as exc:
        fail(str(exc), 1)

    table = Table(show_header=False, box=None)
    gb = summary.file_nbytes / 1e9
    rows = [("output", str(summary.out_path)), ("arch", summary.arch), ("dtype / layout", f"{summary.dtype} / {summary.layout}"),
            ("tensors", str(summary.tensors)), ("parameters", f"{summary.parameters:,}"),
            ("file size", f"{summary.file_nbytes:,} bytes"), ("time", f"{summary.seconds:.2f} s"),
            ("throughput", f"{gb / max(summary.seconds, 1e-9):.2f} GB/s written")]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    console.print(table)


def main() -> None:
    app()
