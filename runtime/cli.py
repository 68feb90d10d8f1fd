"""`ascend-run MODEL.asw --prompt TEXT`: stream a completion to stdout, stats to stderr (or one JSON object)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from .chat import ChatTemplateError
from .cliutil import fail, open_model, stderr
from .generate import GenerationError, Sampling, Stats
from .model import BACKENDS
from .native import NativeError

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def run(
    model: str = typer.Argument(..., help="The .asw file: a path, or hf://OWNER/REPO/FILE.asw[@REVISION] "
                                           "or ms://... (downloaded once into the hub's cache)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt text, or '-' to read it from stdin."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, without the chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (chat template only)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default)."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    backend: str = typer.Option("auto", "--backend", help=f"One of {', '.join(BACKENDS)}."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads [default: all cores]."),
    device: int = typer.Option(0, "--device", help="aclnn: the NPU device id."),
    eager: bool = typer.Option(False, "--eager", help="aclnn: launch decode op by op instead of replaying a graph."),
    context: Optional[int] = typer.Option(None, "--context", help="KV-cache length [default: model's, max 4096]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Generate text from a .asw model."""
    if prompt == "-":
        prompt = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        fail(f"the prompt is not valid UTF-8 (byte {exc.start})")
    if system is not None and raw:
        fail("--system needs the chat template; it cannot be combined with --raw")
    loaded = open_model(model, backend, threads, device, eager)
    trained = int(loaded.config["max_position_embeddings"])
    if context is not None and context > trained:
        stderr.print(f"warning: --context {context} is beyond the {trained} positions the model was trained for",
                     markup=False, highlight=False)
    stats = Stats()
    prompt_ids: list[int] = []
    interrupted = False
    with loaded:
        try:
            prompt_ids = loaded.prompt_ids(prompt, raw, system)
            sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
            tokens = loaded.generate_tokens(prompt_ids, sampling, context, stats)
            if as_json:
                for _ in tokens:  # ids and text are taken from stats afterwards
                    pass
            else:
                for piece in loaded.text_pieces(tokens):
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
            "text": loaded.tokenizer.decode(stats.generated_token_ids),
            "stop_reason": stats.stop_reason,
            "stats": stats.as_dict(),
        }, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        stderr.print(stats.line(), highlight=False, markup=False)
    if interrupted:
        raise typer.Exit(130)


def main() -> None:
    app()
