"""`ascend-serve MODEL.asw`: serve a model over the OpenAI HTTP API (uvicorn), with continuous batching."""

from __future__ import annotations

from typing import Optional

import typer

from ..cliutil import activations_option, fail, note, open_model
from ..generate import GenerationError, server_generation_note
from ..model import BACKENDS

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def serve(
    model: str = typer.Argument(..., help="The .asw file: a path, or hf://OWNER/REPO/FILE.asw[@REVISION] "
                                           "or ms://... (downloaded once into the hub's cache)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    backend: str = typer.Option("auto", "--backend", help=f"One of {', '.join(BACKENDS)}."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
    device: int = typer.Option(0, "--device", help="aclnn: the NPU device id."),
    eager: bool = typer.Option(False, "--eager", help="aclnn: launch decode op by op instead of replaying a graph."),
    activations: str = activations_option(),
    max_batch: int = typer.Option(8, "--max-batch", help="Requests decoded together (1 … 64); more wait in a queue."),
    context: Optional[int] = typer.Option(None, "--context",
                                          help="KV-cache length per request (default: the model's, at most 4096)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="ASCEND_SERVE_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every endpoint but /health."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="The model name clients send (default: the file's stem)."),
    drain: float = typer.Option(5.0, "--drain", help="Seconds Ctrl-C / SIGTERM waits for running requests."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (debug, info, warning, error)."),
) -> None:
    """Serve a .asw model over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics."""
    try:
        import uvicorn

        from .app import create_app
        from .engine import MAX_BATCH, Engine
    except ImportError as exc:
        fail(f"ascend-serve needs the serve extra ({exc.name} is not installed): pip install 'ascend-super[serve]'")
    if not 0 <= port <= 65535:
        fail(f"--port must be between 0 and 65535, got {port}")
    if not 1 <= max_batch <= MAX_BATCH:
        fail(f"--max-batch must be between 1 and {MAX_BATCH}, got {max_batch}")
    if not drain >= 0:
        fail(f"--drain must be >= 0 seconds, got {drain}")
    if api_key is not None and (not api_key or any(c.isspace() for c in api_key)):
        fail("--api-key must be a non-empty string without spaces")
    loaded = open_model(model, backend, threads, device, eager, activations)
    unapplied = server_generation_note(loaded.generation_config)
    if unapplied is not None:
        note(f"note: {unapplied}")
    with loaded:
        try:
            engine = Engine(loaded, max_batch, context)
        except GenerationError as exc:
            fail(str(exc))
        name = served_model_name or loaded.asw.path.stem
        server = uvicorn.Server(uvicorn.Config(create_app(loaded, engine, name, api_key), host=host, port=port,
                                               log_level=log_level, timeout_graceful_shutdown=drain,
                                               lifespan="on"))
        server.run()
    if not server.started:
        raise typer.Exit(1)


def main() -> None:
    app()
