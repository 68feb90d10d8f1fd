"""Helpers of the ascend-serve tests: start the real server (uvicorn in a subprocess, on a free loopback port),
and the tokens the model produces alone (the Python API), which the server must reproduce."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import ascend_super
from ascend_super.runtime.generate import Sampling

START_TIMEOUT_S = 120  # generous: CI runs on 2 shared cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) \
        -> tuple[int, dict[str, Any] | str]:
    """(status, parsed JSON or text) of one plain HTTP request (for what the openai client cannot send)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


class Server:
    """A running `ascend-serve` subprocess."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples as {'name{labels}': value} (no auth needed when the key is given)."""
        status, text = http("GET", f"{self.base}/metrics", headers=self.auth)
        assert status == 200, text
        samples = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    auth: dict[str, str] = {}

    def wait_for(self, condition: Callable[[dict[str, float]], bool], attempts: int = 600) -> dict[str, float]:
        """Poll the metrics until `condition` holds (bounded: fails after `attempts` polls 0.1 s apart)."""
        for _ in range(attempts):
            samples = self.metrics()
            if condition(samples):
                return samples
            time.sleep(0.1)
        raise AssertionError(f"condition never held; metrics: {self.metrics()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def serve(model: Path, *args: str, log_dir: Path, api_key: str | None = None) -> Iterator[Server]:
    """Start `ascend-serve MODEL --port P *args` and wait for /health; SIGTERM it afterwards."""
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    command = [sys.executable, "-c", "from ascend_super.runtime.serve.cli import main; main()", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args]
    if api_key is not None:
        command += ["--api-key", api_key]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    server = Server(process, port, log)
    if api_key is not None:
        server.auth = {"Authorization": f"Bearer {api_key}"}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"ascend-serve exited with {process.returncode}: {log.read_text()}"
            try:
                if http("GET", f"{server.base}/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, f"ascend-serve did not come up: {log.read_text()}"
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


class Reference:
    """What the model generates alone (greedy), through the Python API, for comparison with the server."""

    def __init__(self, path: Path, activations: str = "f32") -> None:
        self.model = ascend_super.load(path, backend="cpu", activations=activations)

    def chat_ids(self, text: str) -> list[int]:
        return self.model.prompt_ids(text)

    def raw_ids(self, text: str) -> list[int]:
        return self.model.prompt_ids(text, raw=True)

    def tokens(self, prompt_ids: Sequence[int], max_tokens: int) -> list[int]:
        return list(self.model.generate_tokens(prompt_ids, Sampling(max_new_tokens=max_tokens)))

    def text(self, prompt_ids: Sequence[int], max_tokens: int) -> str:
        return "".join(self.model.text_pieces(iter(self.tokens(prompt_ids, max_tokens))))

    def pieces(self, tokens: Sequence[int]) -> list[str]:
        """The text each token completes (as streamed)."""
        stream = self.model.tokenizer.stream()
        return [stream.step(t) for t in tokens]

    def logprobs(self, prompt_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """log-softmax rows [len(tokens), vocab] of the model's logits at each generated position."""
        with self.model.session(len(prompt_ids) + len(tokens) + 1) as session:
            logits, _ = session.prefill(list(prompt_ids) + list(tokens[:-1]), logits="all")
        rows = np.asarray(logits, dtype=np.float64)[len(prompt_ids) - 1:]
        peak = rows.max(axis=1, keepdims=True)
        return rows - peak - np.log(np.exp(rows - peak).sum(axis=1, keepdims=True))

    def close(self) -> None:
        self.model.close()
