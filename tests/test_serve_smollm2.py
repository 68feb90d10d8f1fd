"""ascend-serve on a real model (SmolLM2-135M-Instruct, converted from its GGUF): sensible answers, stop strings,
batched greedy requests equal to the same requests run alone, a client that disconnects mid-stream freeing its
slot at once, and SIGTERM draining a running stream. The model decodes slowly enough here that a request which kept
running after its client left would be seen in the token counts."""

from __future__ import annotations

import json
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from serving import Reference, Server, serve

NAME = "smollm2"
THREADS = str(min(2, os.cpu_count() or 1))
QUESTION = "What is the capital of France?"
PROMPTS = [QUESTION, "Write a Python function that returns the square of a number.",
           "List three colours of the rainbow.", "Say hello.", "Count from one to ten.",
           "What is 2 + 2?", "Name a fruit that is yellow.",
           "Summarise this text in one sentence: " + "The quick brown fox jumps over the lazy dog. " * 25]


@pytest.fixture(scope="module")
def ref(smollm2_asw: Path):
    reference = Reference(smollm2_asw)
    yield reference
    reference.close()


@pytest.fixture(scope="module")
def server(smollm2_asw: Path, tmp_path_factory: pytest.TempPathFactory):
    with serve(smollm2_asw, "--threads", THREADS, "--max-batch", "8", "--context", "1024", "--served-model-name",
               NAME, log_dir=tmp_path_factory.mktemp("serve")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, prompt: str, **kwargs) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}], temperature=0,
                                          **kwargs)


def test_answer_and_stop_string(client: openai.OpenAI, ref: Reference) -> None:
    expected = ref.text(ref.chat_ids(QUESTION), 40)
    assert "Paris" in expected
    reply = ask(client, QUESTION, max_tokens=40)
    assert reply.choices[0].message.content == expected
    cut = ask(client, QUESTION, max_tokens=40, stop=["Paris"])
    assert cut.choices[0].message.content == expected[:expected.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"


def test_batched_requests_produce_the_tokens_they_produce_alone(client: openai.OpenAI, ref: Reference) -> None:
    lengths = [32, 8, 27, 16, 30, 5, 20, 12]
    expected = [ref.text(ref.chat_ids(p), n) for p, n in zip(PROMPTS, lengths)]

    def run(i: int) -> str:
        if i % 2:
            return ask(client, PROMPTS[i], max_tokens=lengths[i]).choices[0].message.content
        chunks = ask(client, PROMPTS[i], max_tokens=lengths[i], stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # all at once; the first failure is raised here
        got = list(pool.map(run, range(len(PROMPTS))))
    for prompt, want, have in zip(PROMPTS, expected, got):
        assert have == want, prompt


def test_disconnect_mid_stream_cancels_and_frees_the_slot(server: Server, client: openai.OpenAI,
                                                          ref: Reference) -> None:
    cancelled = 'ascend_requests_total{endpoint="chat",outcome="cancelled"}'
    before = server.metrics()
    long_tokens = 600
    streams = [ask(client, f"Write a very long essay about the number {i}.", max_tokens=long_tokens, stream=True)
               for i in range(8)]  # every slot of --max-batch 8
    for stream in streams:
        chunks = iter(stream)
        next(chunks)
        next(chunks)
        stream.close()
    after = server.wait_for(lambda m: m.get(cancelled, 0) - before.get(cancelled, 0) == 8
                            and m["ascend_batch_occupancy"] == 0)
    generated = after["ascend_generation_tokens_total"] - before["ascend_generation_tokens_total"]
    assert generated < 8 * long_tokens / 4, "requests kept generating after their clients left"
    assert ask(client, "Say hello.", max_tokens=5).choices[0].message.content == \
        ref.text(ref.chat_ids("Say hello."), 5)  # the slots are free again


def test_disconnect_while_waiting_for_a_whole_response_cancels(server: Server) -> None:
    cancelled = 'ascend_requests_total{endpoint="completions",outcome="cancelled"}'
    before = server.metrics()
    body = json.dumps({"model": NAME, "prompt": "Once upon a time", "max_tokens": 600, "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        server.wait_for(lambda m: m["ascend_batch_occupancy"] == 1)
    after = server.wait_for(lambda m: m.get(cancelled, 0) - before.get(cancelled, 0) == 1
                            and m["ascend_batch_occupancy"] == 0)
    assert after["ascend_generation_tokens_total"] - before["ascend_generation_tokens_total"] < 600 / 4


def test_sigterm_drains_a_running_stream(smollm2_asw: Path, tmp_path: Path, ref: Reference) -> None:
    with serve(smollm2_asw, "--threads", THREADS, "--drain", "120", log_dir=tmp_path) as server:
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=300)
        stream = client.completions.create(model=smollm2_asw.stem, prompt="Once upon a time", max_tokens=24,
                                           temperature=0, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        server.process.send_signal(signal.SIGTERM)
        rest = list(chunks)
        text = first.choices[0].text + "".join(c.choices[0].text for c in rest)
        assert text == ref.text(ref.raw_ids("Once upon a time"), 24)
        assert rest[-1].choices[0].finish_reason == "length"
        assert server.process.wait(120) == -signal.SIGTERM  # uvicorn re-raises the signal once drained
