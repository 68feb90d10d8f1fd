"""ascend-serve on the golden model: the real server (uvicorn, subprocess, loopback), talked to with the official
openai client. Greedy answers must be the tokens the model produces alone (ascend_super's Python API), whether a
request runs alone or in a batch with others."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from http import client as http_client
from pathlib import Path

import numpy as np
import openai
import pytest

from ascend_super.runtime.serve.engine import StopMatcher
from conftest import run_cli
from serving import Reference, Server, http, serve

GOLDEN = Path(__file__).resolve().parent.parent / "artifacts" / "golden-qwen2.asw"
NAME = "golden"
KEY = "test-key-123"
CONTEXT = 256
PROMPTS = ["Why is the sky blue?", "hello", "Write a very long story about a dragon and a knight, please.",
           "1 2 3 4", "What is the capital of France?", "a"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with serve(GOLDEN, "--threads", "1", "--max-batch", "4", "--context", str(CONTEXT), "--served-model-name", NAME,
               log_dir=tmp_path_factory.mktemp("serve"), api_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ref():
    reference = Reference(GOLDEN)
    yield reference
    reference.close()


def test_text_parts_of_a_message_are_joined_by_newlines() -> None:
    from ascend_super.runtime.serve.protocol import ChatMessage

    message = ChatMessage(role="user", content=[{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}])
    assert message.text() == "Hello\nworld"  # as vLLM joins them ("Helloworld" before)


def test_stop_matcher_holds_back_partial_matches_and_cuts_the_earliest() -> None:
    matcher = StopMatcher(["END", "xy"])
    assert matcher.feed("abcE") == ("abc", False)  # "E" may start "END"
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("Dzzz") == ("", True)  # "END" completed across three pieces: cut, nothing after it
    other = StopMatcher(["xy", "bxyz"])
    assert other.feed("abxyz") == ("a", True)  # the earliest start wins ("bxyz" at 1, not "xy" at 2)
    assert StopMatcher(["zz"]).feed("az") == ("a", False)
    plain = StopMatcher([])
    assert plain.feed("text") == ("text", False)


@pytest.mark.parametrize("args, message", [
    (["missing.asw"], "missing.asw"),
    ([str(GOLDEN), "--max-batch", "0"], "--max-batch must be between 1 and 64"),
    ([str(GOLDEN), "--port", "70000"], "--port must be between 0 and 65535"),
    ([str(GOLDEN), "--api-key", ""], "--api-key must be a non-empty string"),
    ([str(GOLDEN), "--backend", "tpu"], "unknown backend"),
    ([str(GOLDEN), "--activations", "fp8"], "activations must be one of f32, bf16, got 'fp8'"),
])
def test_bad_command_lines_are_one_line_errors(args: list[str], message: str) -> None:
    result = run_cli("ascend-serve", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_models_health_and_auth(server: Server, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    assert http("GET", f"{server.base}/health") == (200, {"status": "ok"})  # exempt from the key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, body = http("GET", f"{server.base}/v1/models", headers=headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body
    assert http("GET", f"{server.base}/metrics")[0] == 401
    bad = openai.OpenAI(base_url=f"{server.base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_chat_matches_generation_alone_streamed_or_not(client: openai.OpenAI, ref: Reference) -> None:
    ids = ref.chat_ids(PROMPTS[0])
    tokens = ref.tokens(ids, 24)
    expected = ref.text(ids, 24)
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPTS[0]}],
                                           max_tokens=24, temperature=0)
    assert reply.object == "chat.completion" and reply.model == NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == ("length" if len(tokens) == 24 else "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(tokens))
    assert reply.usage.total_tokens == len(ids) + len(tokens)

    chunks = list(client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [reply.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == len(tokens)
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPTS[0]}],
                                                max_tokens=3, temperature=0, stream=True))
    assert all(c.usage is None and c.choices for c in plain)  # no usage chunk unless asked for


def test_completions_match_generation_alone(client: openai.OpenAI, ref: Reference) -> None:
    ids = ref.raw_ids(PROMPTS[3])
    expected = ref.text(ids, 16)
    reply = client.completions.create(model=NAME, prompt=PROMPTS[3], max_tokens=16, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text == expected
    assert reply.usage.prompt_tokens == len(ids)
    streamed = list(client.completions.create(model=NAME, prompt=PROMPTS[3], max_tokens=16, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
    assert streamed[-1].usage.prompt_tokens == len(ids)
    by_ids = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0)  # token-id prompt
    assert by_ids.choices[0].text == expected


def test_output_cut_inside_a_character_keeps_its_text(client: openai.OpenAI, ref: Reference) -> None:
    """max_tokens ending on a token the streaming detokenizer holds back (the start of a character, maybe with a
    whole character decoded alongside it): the reply still ends with that text, as the decode of its tokens."""
    ids = ref.raw_ids(PROMPTS[0])
    tokens = ref.tokens(ids, 48)
    decode = ref.model.tokenizer.decode
    held = [n for n in range(1, len(tokens) + 1) if "".join(ref.pieces(tokens[:n])) != decode(tokens[:n])]
    assert held, "no cut inside a character in this output: pick another prompt"
    n = held[0]
    reply = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=n, temperature=0)
    assert reply.choices[0].text == decode(tokens[:n]) and reply.choices[0].finish_reason == "length"
    streamed = list(client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=n, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == decode(tokens[:n])


def test_stop_strings_across_token_boundaries_are_cut(client: openai.OpenAI, ref: Reference) -> None:
    ids = ref.raw_ids(PROMPTS[1])
    tokens = ref.tokens(ids, 40)
    pieces = ref.pieces(tokens)
    text = "".join(pieces)
    # a stop string made of the end of one token's text and the start of the next one's, first seen there
    boundaries = [len("".join(pieces[:i + 1])) for i in range(len(pieces) - 1)]
    stop, cut = next((text[b - 1:b + 1], b - 1) for b in boundaries[3:] if 0 < b < len(text) and
                     text.find(text[b - 1:b + 1]) == b - 1)
    expected = text[:cut]
    reply = client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=40, temperature=0,
                                      stop=[stop, "never-in-the-text"])
    assert reply.choices[0].text == expected and reply.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=40, temperature=0, stop=stop,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_a_stop_string_spelled_like_a_special_token_stops_there(client: openai.OpenAI, ref: Reference) -> None:
    """The streamed text leaves special tokens out, so a stop string spelled like one is matched by its id."""
    ids = ref.raw_ids(PROMPTS[5])
    tokens = ref.tokens(ids, 40)
    special = ref.model.tokenizer.special_token_ids("<|endoftext|>")
    at = next(i for i, t in enumerate(tokens) if t in special)  # the golden model says it 6 tokens in
    expected = "".join(ref.pieces(tokens[:at]))
    for stream in (False, True):
        reply = client.completions.create(model=NAME, prompt=PROMPTS[5], max_tokens=40, temperature=0,
                                          stop=["<|endoftext|>"], stream=stream,
                                          **({"stream_options": {"include_usage": True}} if stream else {}))
        chunks = list(reply) if stream else [reply]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens == at + 1


def test_logprobs_are_the_models_log_softmax(client: openai.OpenAI, ref: Reference) -> None:
    ids = ref.chat_ids(PROMPTS[4])
    tokens = ref.tokens(ids, 8)
    want = ref.logprobs(ids, tokens)
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPTS[4]}],
                                           max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
    content = reply.choices[0].logprobs.content
    assert len(content) == len(tokens)
    for step, (entry, token) in enumerate(zip(content, tokens)):
        assert entry.logprob == pytest.approx(want[step, token], abs=2e-3)
        assert len(entry.top_logprobs) == 5
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert tops == pytest.approx(sorted(want[step])[::-1][:5], abs=2e-3)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-6)  # greedy: the chosen token is the most likely
        assert entry.token == bytes(entry.bytes).decode("utf-8", "replace") or \
            entry.token == "bytes:" + "".join(f"\\x{b:02x}" for b in entry.bytes)
    assert bytes(b for entry in content for b in entry.bytes).decode("utf-8", "replace") == \
        reply.choices[0].message.content
    streamed = list(client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": PROMPTS[4]}], max_tokens=8, temperature=0, logprobs=True,
        stream=True))
    entries = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in content], abs=1e-6)
    assert all(e.top_logprobs == [] for e in entries)

    raw_ids = ref.raw_ids(PROMPTS[1])
    raw_tokens = ref.tokens(raw_ids, 6)
    raw_want = ref.logprobs(raw_ids, raw_tokens)
    completion = client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=6, temperature=0, logprobs=3)
    lp = completion.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([raw_want[i, t] for i, t in enumerate(raw_tokens)], abs=2e-3)
    assert all(len(top) == 3 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)

    # a longer reply, with tokens that carry parts of characters: each keeps its own spelling and its own value,
    # and a token's text_offset is where its text starts in the reply, streamed or not
    long_ids = ref.raw_ids(PROMPTS[0])
    long_tokens = ref.tokens(long_ids, 40)
    assert any(ref.model.tokenizer.token_bytes(t).decode("utf-8", "replace") != ref.model.tokenizer.token_bytes(t)
               .decode("utf-8", "ignore") for t in long_tokens)  # some token is part of a character
    whole = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=40, temperature=0, logprobs=5)
    lp = whole.choices[0].logprobs
    assert all(len(top) == 5 for top in lp.top_logprobs)
    assert all(top[token] == pytest.approx(value, abs=1e-6) and value == max(top.values())
               for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs))
    assert lp.text_offset[-1] <= len(whole.choices[0].text)
    streamed = [c.choices[0] for c in client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=40,
                                                                temperature=0, logprobs=5, stream=True)
                if c.choices and c.choices[0].logprobs]
    assert [o for c in streamed for o in c.logprobs.text_offset] == lp.text_offset
    # a stop string the text never completes holds text back at its first character: the offsets stay the same
    pieces = ref.pieces(long_tokens)
    ending = next(p[-1] for p in pieces[1:-1] if p)  # the last character of a step's text, held back there
    held = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=40, temperature=0, logprobs=5,
                                     stop=[ending + "\x00"])
    assert held.choices[0].text == whole.choices[0].text and held.choices[0].logprobs.text_offset == lp.text_offset


def test_bf16_activations_reach_the_model(tmp_path: Path, converted) -> None:
    """`--activations bf16` opens the model with bf16 activations: the served log-probabilities are the Python API's
    with them (to the tolerance above), and differ from those without by more (measured: up to ~8e-3 here)."""
    path = converted("qwen2-gqa-hd64", "bf16")
    plain = Reference(path)
    rounded = Reference(path, activations="bf16")
    try:
        ids = rounded.raw_ids(PROMPTS[1])
        tokens = rounded.tokens(ids, 8)
        want, other = rounded.logprobs(ids, tokens), plain.logprobs(ids, tokens)
    finally:
        plain.close()
        rounded.close()
    with serve(path, "--threads", "1", "--activations", "bf16", log_dir=tmp_path) as running:
        status, reply = http("POST", f"{running.base}/v1/completions", json.dumps(
            {"model": path.stem, "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "logprobs": 1}).encode(),
            {"Content-Type": "application/json"})
    assert status == 200, reply
    got = reply["choices"][0]["logprobs"]["token_logprobs"]
    assert got == pytest.approx([want[i, t] for i, t in enumerate(tokens)], abs=2e-3)
    assert max(abs(g - other[i, t]) for i, (g, t) in enumerate(zip(got, tokens))) > 4e-3


def test_generation_config_it_does_not_implement_is_named_at_start(tmp_path: Path) -> None:
    """A file whose generation_config sets a repetition penalty: the server says once, at start, that it does not
    apply it (requests bring their own sampling settings)."""
    from checkpoints import convert_checkpoint, make_checkpoint
    from conftest import SPECS

    directory = make_checkpoint(tmp_path / "src", SPECS["qwen2-gqa-hd64"])
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2], "do_sample": True, "temperature": 0.7, "repetition_penalty": 1.05}))
    convert_checkpoint(directory, tmp_path / "m.asw")
    with serve(tmp_path / "m.asw", "--threads", "1", log_dir=tmp_path) as running:
        log = running.log.read_text()
    notes = [line for line in log.splitlines() if line.startswith("note: ")]
    assert notes == ["note: the model file's generation_config asks for repetition_penalty=1.05, which this server "
                     "does not implement: transformers' generate() would pick other tokens"], log


def test_a_messages_name_reaches_the_chat_template(tmp_path: Path) -> None:
    """`name` of a chat message is passed to the template, as transformers passes the whole message."""
    from checkpoints import convert_checkpoint, make_checkpoint
    from conftest import SPECS

    directory = make_checkpoint(tmp_path / "src", SPECS["qwen2-gqa-hd64"])
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    settings["chat_template"] = "{% for m in messages %}{{ m.name | default('') }}: {{ m.content }}\n{% endfor %}"
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    convert_checkpoint(directory, tmp_path / "m.asw")
    named = [{"role": "user", "content": "hi", "name": "a much longer speaker name"}]
    reference = Reference(tmp_path / "m.asw")
    try:
        want = len(reference.model.prompt_ids(named))
        assert want > len(reference.model.prompt_ids([{"role": "user", "content": "hi"}]))
    finally:
        reference.close()
    with serve(tmp_path / "m.asw", "--threads", "1", log_dir=tmp_path) as running:
        status, reply = http("POST", f"{running.base}/v1/chat/completions", json.dumps(
            {"model": "m", "messages": named, "max_tokens": 1}).encode(), {"Content-Type": "application/json"})
    assert status == 200 and reply["usage"]["prompt_tokens"] == want, reply


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def once(seed: int) -> str:
        return client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=20, temperature=0.9, top_p=0.95,
                                         seed=seed, extra_body={"top_k": 50}).choices[0].text

    first = once(7)
    assert once(7) == first
    assert any(once(seed) != first for seed in (8, 9, 10))


@pytest.mark.parametrize("kwargs, status, param", [
    (dict(model="nope"), 404, "model"),
    (dict(n=2), 400, "n"),
    (dict(temperature=2.5), 400, "temperature"),
    (dict(top_p=0), 400, "top_p"),
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (dict(presence_penalty=0.5), 400, "presence_penalty"),
    (dict(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    (dict(top_logprobs=2), 400, "top_logprobs"),
    (dict(extra_body={"max_tokens": "5"}), 400, "max_tokens"),
    (dict(extra_body={"tools_please": True}), 400, "tools_please"),
    (dict(max_tokens=CONTEXT), 400, "messages"),
    (dict(messages=[{"role": "user", "content": "x " * (CONTEXT + 10)}]), 400, "messages"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), 400, "messages"),
    (dict(messages=[]), 400, "messages"),
])
def test_bad_chat_requests_get_openai_errors(client: openai.OpenAI, kwargs: dict, status: int, param: str) -> None:
    request = dict(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    request.update(kwargs)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status
    error = caught.value.body
    assert error["param"] == param and error["message"], error
    assert error["type"] == "invalid_request_error"


def test_bad_bodies_and_routes(server: Server) -> None:
    headers = {**server.auth, "Content-Type": "application/json"}
    status, body = http("POST", f"{server.base}/v1/completions", b"{not json", headers)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = http("POST", f"{server.base}/v1/completions",
                        json.dumps({"model": NAME, "prompt": [10**6], "max_tokens": 2}).encode(), headers)
    assert status == 400 and "outside the vocabulary" in body["error"]["message"]
    status, body = http("POST", f"{server.base}/v1/completions",
                        json.dumps({"model": NAME, "prompt": "hi", "echo": True}).encode(), headers)
    assert status == 400 and body["error"]["param"] == "echo"
    nulls = {"model": NAME, "prompt": "hi", "max_tokens": 2, "n": None, "stream": None, "presence_penalty": None,
             "temperature": None, "logprobs": None, "echo": None, "stop": None}  # what some clients send: defaults
    status, body = http("POST", f"{server.base}/v1/completions", json.dumps(nulls).encode(), headers)
    assert status == 200 and body["usage"]["completion_tokens"] <= 2, body
    lone = "a\ud800b"  # JSON's \ud800 escape (json.dumps writes it so) decodes to a lone surrogate
    for path, fields in (("completions", {"prompt": lone}),
                         ("chat/completions", {"messages": [{"role": "user", "content": lone}]})):
        status, body = http("POST", f"{server.base}/v1/{path}",
                            json.dumps({"model": NAME, "max_tokens": 2, **fields}).encode(), headers)
        assert status == 400 and body["error"]["message"].endswith("lone surrogate U+D800 at character 1"), body
    for path, fields, says in (
            ("completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "'stop': at most 4 stop strings, got 5"),
            ("completions", {"prompt": [[1], [2]]}, "'prompt': only one prompt per request is supported, got 2"),
            ("chat/completions", {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "x"}}]}]},
             "only text content parts are supported, not 'image_url'"),
            ("chat/completions", {"messages": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": None}]},
             "a message needs content: a string or a list of text parts")):
        status, body = http("POST", f"{server.base}/v1/{path}",
                            json.dumps({"model": NAME, "max_tokens": 2, **fields}).encode(), headers)
        assert status == 400 and says in body["error"]["message"], body  # not the union's first branch
    status, body = http("GET", f"{server.base}/v1/nothing", headers=server.auth)
    assert status == 404 and "error" in body
    status, body = http("GET", f"{server.base}/v1/chat/completions", headers=server.auth)
    assert status == 405 and "error" in body


def test_sixteen_concurrent_clients_get_their_own_tokens(server: Server, client: openai.OpenAI,
                                                         ref: Reference) -> None:
    cases: list[tuple[str, bool, bool, int, str, int, int]] = []
    for i in range(16):
        prompt = PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))
        if i % 5 == 4:  # longer than a prefill chunk: prefilled in slices between the others' decode steps
            prompt = " ".join(PROMPTS)
        chat = i % 2 == 0
        ids = ref.chat_ids(prompt) if chat else ref.raw_ids(prompt)
        max_tokens = 4 + (i * 7) % 40
        cases.append((prompt, chat, i % 3 == 0, max_tokens, ref.text(ids, max_tokens), len(ids),
                      len(ref.tokens(ids, max_tokens))))
    before = server.metrics()

    def run(index: int) -> tuple[str, int, int]:
        prompt, chat, stream, max_tokens, _, _, _ = cases[index]
        if chat:
            kwargs = dict(model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                          temperature=0)
            if stream:
                chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                             stream_options={"include_usage": True}))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                usage = chunks[-1].usage
            else:
                reply = client.chat.completions.create(**kwargs)
                text, usage = reply.choices[0].message.content, reply.usage
        else:
            kwargs = dict(model=NAME, prompt=prompt, max_tokens=max_tokens, temperature=0)
            if stream:
                chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                usage = chunks[-1].usage
            else:
                reply = client.completions.create(**kwargs)
                text, usage = reply.choices[0].text, reply.usage
        return text, usage.prompt_tokens, usage.completion_tokens

    with ThreadPoolExecutor(len(cases)) as pool:  # all 16 at once; the first failure is raised here
        results = list(pool.map(run, range(len(cases))))
    for case, result in zip(cases, results):
        assert result == (case[4], case[5], case[6]), f"request {case[:4]}"
    assert max(case[5] for case in cases) > 64  # the cpu backend's prefill block: some prompts take several steps

    after = server.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    finished = sum(delta(f'ascend_requests_total{{endpoint="{e}",outcome="{o}"}}')
                   for e in ("chat", "completions") for o in ("stop", "length"))
    assert finished == 16
    assert delta("ascend_prompt_tokens_total") == sum(c[5] for c in cases)
    assert delta("ascend_generation_tokens_total") == sum(c[6] for c in cases)
    assert delta("ascend_time_to_first_token_seconds_count") == 16
    assert delta("ascend_inter_token_latency_seconds_count") == sum(c[6] for c in cases) - 16 + \
        sum(1 for c in cases if c[6] < c[3])  # a stop at eos is one more step after the last token
    assert delta("ascend_decode_batch_size_sum") == delta("ascend_inter_token_latency_seconds_count")
    assert after["ascend_queue_length"] == 0 and after["ascend_batch_occupancy"] == 0
    assert np.isfinite(after["ascend_time_to_first_token_seconds_sum"])


def test_model_file_truncated_under_the_server_exits_with_one_line(tmp_path: Path) -> None:
    """The weights vanish under a running server: it exits with status 2 and one line naming the file (the bus-error
    guard runtime/busguard.py), not with a bare SIGBUS."""
    from ascend_super.runtime import format as fmt

    path = tmp_path / "shrinking.asw"
    path.write_bytes(GOLDEN.read_bytes())
    with fmt.AswFile.open(path) as asw:
        data_offset = asw.preamble.data_offset
    with serve(path, "--threads", "1", log_dir=tmp_path) as running:
        os.truncate(path, data_offset)
        try:
            http("POST", f"{running.base}/v1/completions", json.dumps(
                {"model": path.stem, "prompt": PROMPTS[0], "max_tokens": 8}).encode(),
                {"Content-Type": "application/json"})
        except (OSError, http_client.HTTPException):  # the server died mid-request
            pass
        returncode = running.process.wait(timeout=60)
        log = running.log.read_text()
    assert returncode == 2, log
    assert f"error: {path}: the file was truncated or overwritten while in use" in log
    assert "Traceback" not in log


def test_prompts_sharing_a_step_get_the_logits_they_get_alone() -> None:
    """Two prompts queued together while another request decodes share each step's prefill budget: the second is cut
    only at multiples of the backend's prefill block (NativeModel.prefill_block), so the backend sees the blocks of
    tokens it sees alone, and its logprobs are
    bit for bit those of the prompt alone (a 4-token first piece took another kernel: ~1e-6 apart)."""
    import asyncio

    import ascend_super
    from ascend_super.runtime.generate import Sampling
    from ascend_super.runtime.serve.engine import Engine, Params

    with ascend_super.load(GOLDEN, backend="cpu", threads=1) as model:
        block = model.native.prefill_block
        assert block == 64

        def last_logits(ids: list[int], pieces: list[int]) -> np.ndarray:
            with model.session(512) as session:
                start = 0
                for piece in pieces:
                    logits, _ = session.prefill(ids[start:start + piece], logits="last")
                    start += piece
            return logits

        rng = np.random.default_rng(11)
        first = [int(x) for x in rng.integers(3, 320, block - 4)]
        # a prompt whose logits move when it is cut after 4 tokens (as the shared budget used to cut it)
        second = next(ids for ids in ([int(x) for x in rng.integers(3, 320, 150)] for _ in range(200))
                      if not np.array_equal(last_logits(ids, [150]), last_logits(ids, [4, 64, 64, 18])))

        async def scenario() -> tuple[list, list]:
            engine = Engine(model, max_batch=4, context=512)
            engine.start()
            try:
                async def entries(handle) -> list:
                    return [e for out in [o async for o in handle] for e in out.logprobs]

                alone = await entries(engine.submit(second, Params(Sampling(8), (), 0)))
                decoding = engine.submit(model.prompt_ids("hello", raw=True), Params(Sampling(200)))
                await decoding.__aiter__().__anext__()  # it decodes now: the prefill budget is one block
                queued = engine.submit(first, Params(Sampling(4)))
                batched = await entries(engine.submit(second, Params(Sampling(8), (), 0)))
                await entries(queued)
                decoding.cancel()
                return alone, batched
            finally:
                engine.stop()

        alone, batched = asyncio.run(scenario())
    assert [(e.token, e.logprob) for e in batched] == [(e.token, e.logprob) for e in alone]


def test_an_unexpected_failure_is_an_openai_error_and_counted() -> None:
    """A failure no handler expects (here the engine's submit raising a RuntimeError) answers 500 with the OpenAI
    error JSON, not Starlette's plain-text page, and /metrics counts the request as an error."""
    import asyncio

    import ascend_super
    from ascend_super.runtime.serve.app import create_app
    from ascend_super.runtime.serve.metrics import Metrics

    class BrokenEngine:
        metrics, context, alive = Metrics(), CONTEXT, True

        def submit(self, *_: object) -> None:
            raise RuntimeError("boom")

    async def call(app, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        sent: list[dict] = []
        received = False

        async def receive() -> dict:
            nonlocal received
            if received:
                await asyncio.sleep(3600)
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        try:
            await app(scope, receive, send)
        except RuntimeError as exc:  # Starlette re-raises after the handler answered, for the server to log
            assert str(exc) == "boom"
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    with ascend_super.load(GOLDEN, backend="cpu", threads=1) as model:
        app = create_app(model, BrokenEngine(), NAME)  # type: ignore[arg-type]
        status, body = asyncio.run(call(app, "POST", "/v1/completions",
                                        json.dumps({"model": NAME, "prompt": "hi", "max_tokens": 2}).encode()))
        assert status == 500
        assert json.loads(body)["error"] == {"message": "internal error: RuntimeError: boom", "type": "server_error",
                                             "param": None, "code": None}
        status, text = asyncio.run(call(app, "GET", "/metrics"))
        assert status == 200
        assert 'ascend_requests_total{endpoint="completions",outcome="error"} 1.0' in text.decode()

        # a failure after the request finished (building its response): counted once, by its finish reason
        from ascend_super.runtime.serve import app as app_module
        from ascend_super.runtime.serve.engine import Output

        class FinishedHandle:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True

            async def __aiter__(self):
                yield Output("hi", (5,), (), "length", 1, 1)

        class FinishingEngine(BrokenEngine):
            metrics = Metrics()

            def submit(self, *_: object) -> FinishedHandle:  # type: ignore[override]
                return FinishedHandle()

        def late(_: object) -> None:
            raise RuntimeError("boom")

        app = create_app(model, FinishingEngine(), NAME)  # type: ignore[arg-type]
        original = app_module._usage
        app_module._usage = late
        try:
            status, body = asyncio.run(call(app, "POST", "/v1/completions",
                                            json.dumps({"model": NAME, "prompt": "hi", "max_tokens": 2}).encode()))
        finally:
            app_module._usage = original
        assert status == 500
        text = asyncio.run(call(app, "GET", "/metrics"))[1].decode()
    assert 'ascend_requests_total{endpoint="completions",outcome="length"} 1.0' in text
    assert 'outcome="error"' not in text
