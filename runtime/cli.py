"""`ascend-run MODEL.asw --prompt TEXT`: stream a completion to stdout, stats to stderr (or one JSON object)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from . import format as fmt
from . import hub
from .chat import ChatTemplateError
from .cliutil import activations_option, fail, literal, note, open_model, stderr, version_option
from .generate import GenerationError, Sampling, Stats, unapplied_generation_config
from .model import BACKENDS, BackendUnavailable
from .native import NativeError

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def run(
    model: Optional[str] = typer.Argument(None, help="The .asw file: a path, or hf://OWNER/REPO/FILE.asw[@REVISION] "
                                                      "or ms://... (downloaded once into the hub's cache). "
                                                      "--selftest: default the golden model."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text, or '-' to read it from stdin."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, without the chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (chat template only)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default)."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    backend: str = typer.Option("auto", "--backend", help=f"One of {', '.join(BACKENDS)}."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
    device: int = typer.Option(0, "--device", help="aclnn: the NPU device id."),
    eager: bool = typer.Option(False, "--eager", help="aclnn: launch decode op by op instead of replaying a graph."),
    activations: str = activations_option(),
    context: Optional[int] = typer.Option(None, "--context", help="KV-cache length (default: the model's, at most "
                                                                  "4096)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
    version: bool = version_option(),
    selftest: bool = typer.Option(False, "--selftest", help="With --backend aclnn: check the device against the cpu "
                                  "backend and the golden tokens; exit 0 only if all pass."),
) -> None:
    """Generate text from a .asw model."""
    if selftest:
        run_selftest(model, backend, device)
        return
    if model is None or prompt is None:
        fail("need a model and --prompt (or --selftest)")
    try:
        if prompt == "-":
            prompt = read_stdin_prompt()
        try:
            prompt.encode("utf-8")  # an argument with bytes that are not UTF-8 (surrogateescape)
        except UnicodeEncodeError as exc:
            fail(f"the prompt is not valid UTF-8 (byte {exc.start})")
        if system is not None and raw:
            fail("--system needs the chat template; it cannot be combined with --raw")
        loaded = open_model(model, backend, threads, device, eager, activations)
    except (fmt.FormatError, BackendUnavailable, NativeError, GenerationError, hub.HubError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("nothing was generated", 130, "interrupted")
    trained = int(loaded.config["max_position_embeddings"])
    if context is not None and context > trained:
        stderr.print(literal(f"warning: --context {context} is beyond the {trained} positions the model was "
                             "trained for"))
    stats = Stats()
    prompt_ids: list[int] = []
    pieces: list[str] = []
    interrupted = False
    with loaded:
        try:
            prompt_ids = loaded.prompt_ids(prompt, raw, system)
            sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
            sampling.check()  # a bad flag is its own error, before any note about the file (generate checks again)
            unapplied = unapplied_generation_config(loaded.generation_config, sampling)
            if unapplied is not None:
                note(f"note: {unapplied}")
            tokens = loaded.generate_tokens(prompt_ids, sampling, context, stats)
            for piece in loaded.text_pieces(tokens):  # ids are taken from stats afterwards
                if as_json:
                    pieces.append(piece)  # a character cut by the token limit is left out, as when streaming
                else:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except (GenerationError, ChatTemplateError, NativeError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            stats.stop_reason = "interrupted"
            interrupted = True
    if as_json:
        typer.echo(json.dumps({
            "prompt_token_ids": prompt_ids,
            "generated_token_ids": stats.generated_token_ids,
            "text": "".join(pieces),
            "stop_reason": stats.stop_reason,
            "stats": stats.as_dict(),
        }, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        stderr.print(literal(stats.line()))
    if interrupted:
        raise typer.Exit(130)


def read_stdin_prompt() -> str:
    """The prompt from standard input: UTF-8 (checked), without a leading byte-order mark or one final line end."""
    if sys.stdin is None:
        fail("--prompt - reads standard input, which is closed")
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"the prompt is not valid UTF-8 (byte {exc.start})")
    text = text.removeprefix("\ufeff")
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def run_selftest(model: Optional[str], backend: str, device: int) -> None:
    """`--selftest`: the aclnn bring-up table (runtime/selftest.py); exit 1 if a check fails."""
    from . import selftest as checks

    if backend != "aclnn":
        fail("--selftest checks the aclnn backend: run it with --backend aclnn")
    from .busguard import exit_on_bus_error

    try:
        located = hub.locate(model, report=note) if model is not None else None
    except hub.HubError as exc:
        fail(str(exc))
    try:
        if located is not None:  # a hub download's first-use hash check, as a run does, before the checks load it
            hub.open_model_file(located, "aclnn", on_open=exit_on_bus_error).close()
        ok = checks.run(located.path if located is not None else None, device, typer.echo, exit_on_bus_error)
    except (fmt.FormatError, BackendUnavailable, NativeError, GenerationError) as exc:
        fail(str(exc))
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    app()
