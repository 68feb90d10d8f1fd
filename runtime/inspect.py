"""`ascend-inspect MODEL.asw [--json] [--verify]`: print what a .asw file holds (and what it needs to run) and
check its tensor hashes. MODEL may be hf://OWNER/REPO/FILE.asw[@REVISION] or ms://... (see hub.py)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from . import format as fmt
from . import hub
from .busguard import exit_on_bus_error
from .cliutil import fail, literal, note, version_option
from .cliutil import stderr as err_console

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(width=None if sys.stdout.isatty() else 160)  # pipes and files get whole tensor names


def describe(asw: fmt.AswFile) -> dict[str, Any]:
    """A JSON-ready summary of the file (everything but the tokenizer and chat template texts)."""
    manifest = asw.manifest
    return {
        "path": str(asw.path),
        "format_version": f"{asw.preamble.version_major}.{asw.preamble.version_minor}",
        "arch": manifest["arch"],
        "dtype": manifest["dtype"],
        "layout": manifest["layout"],
        "requires": asw.requires,
        "config": manifest["config"],
        "defaulted_config": manifest.get("defaulted_config", []),  # keys config.json lacked (format 1.1)
        "parameters": sum(int(_product(t.shape)) for t in asw.tensors),
        "file_nbytes": asw.preamble.data_offset + asw.preamble.data_nbytes,
        "data_offset": asw.preamble.data_offset,
        "data_nbytes": asw.preamble.data_nbytes,
        "data_alignment": asw.preamble.data_alignment,
        "manifest_nbytes": asw.preamble.manifest_nbytes,
        "tokenizer_nbytes": len(manifest["tokenizer"].encode()),
        "chat_template": manifest["chat_template"] is not None,
        "special_tokens": manifest["special_tokens"],
        "generation_config": manifest["generation_config"],
        "source": manifest["source"],
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "layout": t.layout,
             "offset": asw.preamble.data_offset + t.offset, "nbytes": t.nbytes, "xxh3_64": t.xxh3_64}
            for t in asw.tensors
        ],
    }


def describe_source(source: dict[str, Any]) -> str:
    """`kind id @ revision`, leaving out what the manifest does not record (a local folder has no revision)."""
    text = " ".join(str(source[key]) for key in ("kind", "id") if source.get(key) is not None) or "unknown"
    revision = source.get("revision")
    return f"{text} @ {revision}" if revision is not None else text


def _product(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _print_human(info: dict[str, Any]) -> None:
    """Tables of `info`; every string that comes from the file or its path is printed literally (no markup, control
    characters escaped)."""
    head = Table(show_header=False, box=None, title=literal(info["path"]), title_justify="left")
    for key in ("format_version", "arch", "dtype", "layout"):
        head.add_row(f"[bold]{key}[/bold]", literal(info[key]))
    needs = info["requires"]
    head.add_row("[bold]requires[/bold]", literal(f"format {needs['format_major']}.x, layout {needs['layout']}, "
                                                  f"backend {' or '.join(needs['backends'])}" +
                                                  (f", SoC {needs['soc']}" if needs["soc"] else "")))
    if info.get("origin"):
        origin = info["origin"]
        head.add_row("[bold]origin[/bold]", literal(f"{origin['uri']} @ {origin['revision']}"))
    head.add_row("[bold]parameters[/bold]", f"{info['parameters']:,}")
    head.add_row("[bold]file[/bold]", f"{info['file_nbytes']:,} bytes (data {info['data_nbytes']:,} at "
                                      f"{info['data_offset']:,}, aligned {info['data_alignment']:,})")
    for key, value in info["config"].items():
        head.add_row(literal(f"  {key}"), literal(json.dumps(value)))
    head.add_row("  defaulted (transformers' defaults)", literal(", ".join(info["defaulted_config"]) or "none"))
    head.add_row("[bold]source[/bold]", literal(describe_source(info["source"])))
    head.add_row("[bold]converter[/bold]", literal(info["source"].get("converter", "unknown")))
    head.add_row("[bold]chat template[/bold]", "yes" if info["chat_template"] else "no")
    console.print(head)
    table = Table()
    for column in ("name", "shape", "layout", "offset", "bytes", "xxh3_64"):
        table.add_column(column, no_wrap=True)
    for t in info["tensors"]:
        table.add_row(literal(t["name"]), "x".join(map(str, t["shape"])), literal(t["layout"]), f"{t['offset']:,}",
                      f"{t['nbytes']:,}", literal(t["xxh3_64"]))
    console.print(table)


@app.command()
def run(
    model: str = typer.Argument(..., help="The .asw file: a path, or hf://OWNER/REPO/FILE.asw[@REVISION] or ms://..."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every tensor hash; exit 1 on the first mismatch."),
    version: bool = version_option(),
) -> None:
    """Show a .asw file's architecture, requirements, hyper-parameters and tensors; optionally verify every hash."""
    try:
        located = hub.locate(model, report=note)
        # --verify checks below, every time; a file truncated under us: one line naming it, not "Bus error"
        asw = hub.open_model_file(located, verify_once=not verify, on_open=exit_on_bus_error)
    except hub.HubError as exc:
        fail(str(exc))
    except fmt.FormatError as exc:
        fail(str(exc), 1 if isinstance(exc, (fmt.HashMismatch, fmt.NonZeroPadding)) else 2)
    with asw:
        info = describe(asw)
        info["origin"] = located.describe()
        if as_json:  # --verify first: the JSON on stdout is only ever a checked file's ("verified": true)
            if verify:
                _verify(asw, located)
                info["verified"] = True
            typer.echo(json.dumps(info, indent=1))
        else:
            _print_human(info)
            if verify:
                _verify(asw, located)


def _verify(asw: fmt.AswFile, located: hub.Located) -> None:
    """--verify: every tensor hash and the padding, or exit 1 (130 when interrupted) with one line."""
    try:
        hub.verify(asw, located)
    except (fmt.HashMismatch, fmt.NonZeroPadding) as exc:
        fail(str(exc), 1, "verify failed")
    except KeyboardInterrupt:
        fail("the file was not fully verified", 130, "interrupted")
    err_console.print(f"verified: {len(asw.tensors)} tensors, all hashes match")


def main() -> None:
    app()
