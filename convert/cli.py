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
from rich.text import Text

from ascend_super.runtime import format as fmt
from ascend_super.runtime.cliutil import fail, literal, version_option
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
    if not output:
        fail("-o/--output is empty; give a file or folder name, or leave -o out for the default name")
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        out_path = Path(output) / _default_name(spec, dtype)
    else:
        out_path = Path(output)
    for folder in out_path.parents:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                fail(f"-o/--output: {folder} is a file, not a folder, so {out_path} cannot be created inside it")
            break
    return out_path


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: clean up like Ctrl-C, exit 128 + the signal number. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (e.g. around a source reader) mistakes it for a
    damaged source."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # `kill`, and a dropped ssh session
SOURCE_BUS_ERROR_EXIT = 2


def guard_source_mappings(out_path: Path) -> bool:
    """The sources are read through mappings (convert/sources): a source file truncated or rewritten while it is
    read raises SIGBUS inside numpy, where Python cannot catch it ("Bus error (core dumped)"). Process-wide, so only
    the console script installs it: any bus error then prints one line and exits with status 2; the unfinished
    output stays a temporary file that the next conversion removes. False where the guard is unavailable."""
    from ascend_super.runtime.native import NativeError, exit_on_sigbus

    message = (f"error: a source file was truncated or overwritten while being converted (bus error reading its "
               f"mapping); nothing was written to {out_path}\n")
    try:
        return exit_on_sigbus(1, 2**64 - 2, message.encode("utf-8", "replace")[:1000], SOURCE_BUS_ERROR_EXIT)
    except NativeError:  # no native library here: the default action stays
        return False


@app.command()
def run(
    source: Optional[str] = typer.Argument(None, help="Local HF directory, .gguf file, alias, or hub repo id."),
    output: Optional[str] = typer.Option(None, "-o", "--output",
                                         help="Output .asw file, or a folder for <name>-<dtype>.asw (created if "
                                              "missing); default: <name>-<dtype>.asw here."),
    dtype: str = typer.Option("fp16", "--dtype", help="Weight dtype: fp16 (fastest on Ascend) or bf16."),
    layout: str = typer.Option("nd", "--layout", help="Matrix layout: nd (row-major) or nz (FRACTAL_NZ, aclnn only)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
    hub_name: Optional[str] = typer.Option(None, "--hub",
                                           help="Where repo ids and aliases come from: huggingface or modelscope "
                                                f"(default: huggingface; modelscope when {USE_MODELSCOPE_ENV}=1)."),
    card: bool = typer.Option(False, "--card", help="Also write a model-card README snippet beside the output "
                                                    "(<name>.README.md) for publishing it on a hub."),
    align: int = typer.Option(fmt.DEFAULT_DATA_ALIGNMENT, "--align",
                              help="Data-region alignment in bytes (power of two, 512 to 1 GiB)."),
    list_aliases: bool = typer.Option(False, "--list-aliases", help="Print the model aliases and exit."),
    version: bool = version_option(),
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

    for signum in TERMINATING_SIGNALS:  # clean up like Ctrl-C: no partial file is left
        signal.signal(signum, _terminate)
    guard_source_mappings(out_path)
    progress = Progress(TextColumn("[bold]converting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not console.is_terminal)
    task = progress.add_task("convert", total=None)

    def on_plan(plan: Plan) -> None:
        progress.update(task, total=plan.source_nbytes)

    started = time.perf_counter()
    try:
        status = console.status(literal(f"opening {source} …")) if console.is_terminal else contextlib.nullcontext()
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
    except Terminated as stop:
        fail(f"{signal.Signals(stop.signum).name}: nothing was written to {out_path}", 128 + stop.signum,
             "terminated")
    except OSError as exc:  # e.g. the disk filled up: the temporary file is gone, the output untouched
        where = exc.filename if exc.filename is not None else out_path
        fail(f"{where}: {exc.strerror or exc}; nothing was written to {out_path}")

    seconds = time.perf_counter() - started  # opening the source included (GGUF metadata takes seconds)
    rows = [("output", str(summary.out_path)), ("arch", summary.arch),
            ("dtype / layout", f"{summary.dtype} / {summary.layout}"),
            ("tensors", str(summary.tensors)), ("parameters", f"{summary.parameters:,}"),
            ("file size", f"{summary.file_nbytes:,} bytes"), ("time", f"{seconds:.2f} s"),
            ("throughput", f"{summary.tensor_nbytes / 1e9 / max(seconds, 1e-9):.2f} GB/s of tensors written")]
    if card_file is not None:
        rows.append(("model card", str(card_file)))
    for key, value in rows:  # one unwrapped line each: a long output path stays whole and copyable
        console.print(Text.assemble((f"{key:<15}", "bold"), literal(value)))

def main() -> None:
    app()
