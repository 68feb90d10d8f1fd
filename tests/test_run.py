"""ascend-run and the Python API: chat templates as transformers renders them, streaming UTF-8, JSON output,
stdin prompts, sampling controls, stop reasons, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ascend_super
from ascend_super.runtime.generate import GenerationError, Sampling, Stats, generate_ids, sample
from ascend_super.runtime.tokenizer import TextTokenizer
from checkpoints import tokenizer_json
from conftest import run_cli

MODEL = "qwen2-gqa-hd64"


def test_chat_template_matches_transformers(checkpoint_dir, converted) -> None:
    import transformers

    reference = transformers.AutoTokenizer.from_pretrained(checkpoint_dir(MODEL))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好, what is 2+2?"}]
    expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(expected, dict) or hasattr(expected, "input_ids"):
        expected = expected["input_ids"]
    with ascend_super.load(converted(MODEL)) as model:
        assert model.prompt_ids(messages) == list(expected)
        assert model.prompt_ids("hi", system="Be brief.") == model.prompt_ids(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        assert model.prompt_ids("plain text", raw=True) == reference("plain text")["input_ids"]


# a template that sees what transformers passes it and what it does not: an unset bos_token, tools and documents,
# a message's reasoning under another name, and the tokenizer's add_bos_token flag (no template variable)
VARIABLES_TEMPLATE = (
    "[{{ bos_token }}][{{ eos_token }}][{{ pad_token }}]{% if tools is not none %}TOOLS{% endif %}"
    "{% if documents is defined %}DOCS{% endif %}{% if add_bos_token is defined %}FLAG{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.reasoning_content %}"
    "(think {{ m.reasoning_content }}|{{ m.thinking }}){% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_chat_template_variables_match_transformers(checkpoint_dir, converted) -> None:
    import transformers

    from ascend_super.runtime.chat import render

    reference = transformers.AutoTokenizer.from_pretrained(checkpoint_dir(MODEL))
    assert reference.bos_token is None  # the case where a template saw "None"
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning": "add them"},
                {"role": "tool", "content": None},  # transformers drops None-valued keys: no "None" either
                {"role": "user", "content": "and 3+3?"}]
    expected = reference.apply_chat_template(messages, chat_template=VARIABLES_TEMPLATE,
                                             add_generation_prompt=True, tokenize=False)
    with ascend_super.load(converted(MODEL)) as model:
        got = render(VARIABLES_TEMPLATE, messages, model.special_tokens, add_generation_prompt=True)
    assert got == expected
    assert "None" not in got and "think add them|add them" in got


def test_template_globals_dict_and_namespace_as_in_transformers(checkpoint_dir) -> None:
    """transformers' dict (calls and fromkeys) and namespace (no underscore-prefixed attribute) globals."""
    import transformers

    from ascend_super.runtime.chat import ChatTemplateError, render

    reference = transformers.AutoTokenizer.from_pretrained(checkpoint_dir(MODEL))
    messages = [{"role": "user", "content": "hi"}]
    fine = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
            "{{ dict(a=1) | tojson }}{{ dict.fromkeys(['x', 'y'], 0) | tojson }}")
    assert render(fine, messages, {}) == reference.apply_chat_template(messages, chat_template=fine, tokenize=False)
    for refused in ("{% set ns = namespace(_x=1) %}{{ ns._x }}", "{% set ns = namespace() %}{% set ns._y = 2 %}"):
        with pytest.raises(Exception, match="underscore-prefixed"):
            reference.apply_chat_template(messages, chat_template=refused, tokenize=False)
        with pytest.raises(ChatTemplateError, match="underscore-prefixed"):
            render(refused, messages, {})


def test_special_tokens_map_counts_as_transformers_reads_it(checkpoint_dir, tmp_path: Path) -> None:
    """A checkpoint whose tokenizer_config.json has no added_tokens_decoder: transformers reads
    special_tokens_map.json too, and its tokens win; the chat template sees the same bos_token."""
    import shutil

    import transformers

    from ascend_super.runtime.chat import render
    from checkpoints import convert_checkpoint

    directory = tmp_path / "src"
    shutil.copytree(checkpoint_dir(MODEL), directory)
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|im_start|>", "lstrip": False}, "eos_token": "<|im_end|>"}))
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "user", "content": "2+2?"}]
    expected = reference.apply_chat_template(messages, chat_template=VARIABLES_TEMPLATE,
                                             add_generation_prompt=True, tokenize=False)
    assert expected.startswith("[<|im_start|>]")
    with ascend_super.load(convert_checkpoint(directory, tmp_path / "m.asw")) as model:
        assert render(VARIABLES_TEMPLATE, messages, model.special_tokens, add_generation_prompt=True) == expected


def test_every_named_special_token_reaches_the_template_as_in_transformers(checkpoint_dir, tmp_path: Path) -> None:
    """transformers hands a chat template all its named special tokens, sep, cls and mask included, and model-specific
    ones (other *_token keys of tokenizer_config.json, an extra_special_tokens map): a template that uses them renders
    the same text here (they were not stored, and rendered as empty strings)."""
    import shutil

    import transformers

    from ascend_super.runtime.chat import render
    from checkpoints import convert_checkpoint

    directory = tmp_path / "src"
    shutil.copytree(checkpoint_dir(MODEL), directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update({"sep_token": "<|im_end|>", "cls_token": "<|im_start|>", "mask_token": "<|endoftext|>",
                   "image_token": "<img>", "extra_special_tokens": {"video_token": "<vid>"}})
    config_path.write_text(json.dumps(config))
    template = ("[{{ sep_token }}][{{ cls_token }}][{{ mask_token }}][{{ image_token }}][{{ video_token }}]"
                + VARIABLES_TEMPLATE)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "user", "content": "2+2?"}]
    expected = reference.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=False)
    assert expected.startswith("[<|im_end|>][<|im_start|>][<|endoftext|>][<img>][<vid>]")
    with ascend_super.load(convert_checkpoint(directory, tmp_path / "m.asw")) as model:
        assert render(template, messages, model.special_tokens, add_generation_prompt=True) == expected


def test_generation_config_not_followed_is_named() -> None:
    from ascend_super.runtime.generate import unapplied_generation_config

    assert unapplied_generation_config({"bos_token_id": 1, "eos_token_id": [2], "repetition_penalty": 1.0,
                                        "suppress_tokens": [], "do_sample": False}, Sampling()) is None
    r1 = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}  # DeepSeek-R1-Distill's
    line = unapplied_generation_config(r1, Sampling())
    # generate() samples with GenerationConfig's top_k of 50 where the file gives none
    assert "where this run is greedy" in line and "--temperature 0.6 --top-k 50 --top-p 0.95" in line
    assert "\n" not in line
    assert unapplied_generation_config(r1, Sampling(temperature=0.6, top_k=50, top_p=0.95)) is None
    # a temperature is always suggested: --top-p alone would be refused as greedy
    assert "with --temperature 1.0 --top-k 50 --top-p 0.9)" in unapplied_generation_config(
        {"do_sample": True, "top_p": 0.9}, Sampling())
    line = unapplied_generation_config({**r1, "repetition_penalty": 1.05}, Sampling(temperature=0.6))
    assert "repetition_penalty=1.05, which this runtime does not implement" in line and "greedy" not in line
    # values that change nothing in generate(), and sampling warpers on a run where nothing samples
    neutral = {"min_new_tokens": 0, "guidance_scale": 1.0, "min_p": 0.0, "num_beams": 1, "typical_p": 0.9}
    assert unapplied_generation_config(neutral, Sampling()) is None
    assert "typical_p=0.9" in unapplied_generation_config(neutral, Sampling(temperature=1.0))
    assert "encoder_repetition_penalty=1.2" in unapplied_generation_config({"encoder_repetition_penalty": 1.2},
                                                                           Sampling())
    # any watermarking config switches the watermark on, even an empty one; out-of-range warpers do nothing
    assert "watermarking_config={}" in unapplied_generation_config({"watermarking_config": {}}, Sampling())
    assert unapplied_generation_config({"typical_p": 1.5, "epsilon_cutoff": 1.0, "token_healing": 0},
                                       Sampling(temperature=1.0)) is None
    # contrastive search (penalty_alpha) runs only where generate() does not sample
    assert "penalty_alpha=0.6" in unapplied_generation_config({"penalty_alpha": 0.6}, Sampling())
    assert "penalty_alpha" not in unapplied_generation_config({"do_sample": True, "penalty_alpha": 0.6}, Sampling())
    assert unapplied_generation_config({"penalty_alpha": 0.6}, Sampling(temperature=1.0)) is None


def test_cli_names_the_generation_config_it_does_not_follow(tmp_path: Path) -> None:
    """A file whose generation_config samples and penalizes repetition: ascend-run says so on stderr (greedy by
    default, no repetition penalty), once, before the text."""
    from checkpoints import convert_checkpoint, make_checkpoint
    from conftest import SPECS

    directory = make_checkpoint(tmp_path / "src", SPECS[MODEL])
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2], "do_sample": True, "temperature": 0.7, "top_p": 0.8,
         "repetition_penalty": 1.05}))
    convert_checkpoint(directory, tmp_path / "m.asw")
    result = run_cli("ascend-run", str(tmp_path / "m.asw"), "--prompt", "Hello", "-n", "2", "--threads", "2")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "--temperature 0.7 --top-k 50 --top-p 0.8" in notes[0]
    assert "repetition_penalty=1.05" in notes[0]
    result = run_cli("ascend-run", str(tmp_path / "m.asw"), "--prompt", "Hello", "-n", "2", "--temperature", "0.7",
                     "--top-k", "50", "--top-p", "0.8", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "greedy" not in result.stderr and "repetition_penalty=1.05" in result.stderr


def test_stream_decodes_multibyte_utf8() -> None:
    tokenizer = TextTokenizer(tokenizer_json(320))
    text = "你好，世界。今天天气很好。Ünïcödé ✓ 🚀 done"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 2  # the small vocabulary splits characters into byte tokens
    stream = tokenizer.stream()
    pieces = [stream.step(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)  # a partial character is held back, never mangled


def test_stream_pieces_and_flush_add_up_to_the_decode() -> None:
    """Whatever ids generation stops after (max tokens, eos), the streamed pieces and the final flush are the decode
    of all of them: a token held back as the start of a character, with any whole character decoded alongside it,
    is not lost (an unfinished character ends as U+FFFD, as tokenizer.decode gives it)."""
    tokenizer = TextTokenizer(tokenizer_json(320))
    ids = tokenizer.encode("你好 ✓ 🚀", add_special_tokens=False)
    rng = np.random.default_rng(0)
    cases = [ids[:n] for n in range(1, len(ids) + 1)] + [list(rng.integers(0, 320, rng.integers(1, 30)))
                                                          for _ in range(500)]
    held = 0
    for case in cases:
        stream = tokenizer.stream()
        streamed = "".join(stream.step(int(i)) for i in case)
        rest = stream.flush()
        held += rest != ""
        assert streamed + rest == tokenizer.decode([int(i) for i in case]), case
        assert stream.flush() == ""
    assert held > 50  # the cases do end inside characters


def _sentencepiece_tokenizer() -> TextTokenizer:
    """A SentencePiece-style BPE with byte fallback, decoded as GGUF imports and Llama-2 tokenizers do."""
    from tokenizers import Tokenizer, decoders, models

    pieces = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "\u2581a", "a", "\u2581\u4f60", "\u4f60"]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return TextTokenizer(tok.to_str())


def test_stream_flush_with_byte_fallback_pieces() -> None:
    """Byte-fallback decoding turns a whole run of byte pieces with an unfinished character into one U+FFFD per
    byte, so the flush decodes the held pieces after those already sent: what was sent stays as sent, the rest
    follows (U+FFFD for the unfinished character), and complete texts come out as tokenizer.decode gives them."""
    tokenizer = _sentencepiece_tokenizer()
    ids = [tokenizer.token_id(f"<0x{b:02X}>") for b in "\u4f60".encode()] + [tokenizer.token_id("<0xE4>")]
    stream = tokenizer.stream()
    assert "".join(stream.step(i) for i in ids) == "\u4f60" and stream.flush() == "\ufffd"
    rng = np.random.default_rng(1)
    for _ in range(2000):
        case = [int(i) for i in rng.integers(1, 262, rng.integers(1, 12))]
        stream = tokenizer.stream()
        text = "".join(stream.step(i) for i in case) + stream.flush()
        whole = tokenizer.decode(case)
        if "\ufffd" not in whole:
            assert text == whole, case
    assert tokenizer.token_bytes(tokenizer.token_id("\u2581a")) == b" a"  # not merged with "a"
    assert tokenizer.token_bytes(tokenizer.token_id("a")) == b"a"
    assert tokenizer.token_bytes(tokenizer.token_id("<0xE4>")) == b"\xe4"


def test_cli_streams_and_reports_stats(converted) -> None:
    result = run_cli("ascend-run", str(converted(MODEL)), "--prompt", "Hello", "-n", "8", "--threads", "2")
    assert result.returncode == 0, result.stderr
    stats = result.stderr.strip().splitlines()[-1]
    for field in ("load", "prompt", "TTFT", "prefill", "tok/s", "decode", "generated"):
        assert field in stats


def test_cli_bf16_activations_match_the_api(converted) -> None:
    path = converted(MODEL, "bf16")
    result = run_cli("ascend-run", str(path), "--prompt", "Hello", "-n", "12", "--json", "--activations", "bf16")
    assert result.returncode == 0, result.stderr
    with ascend_super.load(path, activations="bf16") as model:
        assert " bf16 activations" in model.native.describe()
        prompt_ids = model.prompt_ids("Hello")
        assert json.loads(result.stdout)["generated_token_ids"] == list(
            model.generate_tokens(prompt_ids, Sampling(max_new_tokens=12)))


def test_cli_json_matches_api(converted) -> None:
    path = converted(MODEL)
    result = run_cli("ascend-run", str(path), "--prompt", "Hello", "-n", "12", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    with ascend_super.load(path) as model:
        prompt_ids = model.prompt_ids("Hello")
        expected = list(model.generate_tokens(prompt_ids, Sampling(max_new_tokens=12)))
        assert out["prompt_token_ids"] == prompt_ids
        assert out["generated_token_ids"] == expected
        as_array = list(model.generate_tokens(np.array(prompt_ids), Sampling(max_new_tokens=12)))
        assert as_array == expected  # any sequence of ids, a numpy array too
        streamed = "".join(model.generate("Hello", max_new_tokens=12))
        assert out["text"] == streamed == model.tokenizer.decode(expected)  # a character cut by the limit: U+FFFD
    assert out["stop_reason"] in ("length", "eos")
    assert set(out["stats"]) >= {"load_s", "prompt_tokens", "ttft_s", "prefill_tok_s", "decode_tok_s",
                                 "generated_tokens", "stop_reason"}
    assert out["stats"]["prompt_tokens"] == len(prompt_ids)


def test_cli_prompt_from_stdin_and_raw(converted) -> None:
    path = str(converted(MODEL))
    piped = run_cli("ascend-run", path, "--prompt", "-", "--raw", "-n", "4", "--json", input_text="Hello world")
    direct = run_cli("ascend-run", path, "--prompt", "Hello world", "--raw", "-n", "4", "--json")
    assert piped.returncode == 0 and direct.returncode == 0, piped.stderr + direct.stderr
    assert json.loads(piped.stdout)["prompt_token_ids"] == json.loads(direct.stdout)["prompt_token_ids"]
    assert json.loads(piped.stdout)["generated_token_ids"] == json.loads(direct.stdout)["generated_token_ids"]


def test_sampling_is_seeded(converted) -> None:
    path = str(converted(MODEL))

    def tokens(*extra: str) -> list[int]:
        result = run_cli("ascend-run", path, "--prompt", "Hi", "-n", "16", "--json", *extra)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["generated_token_ids"]

    assert tokens("--temperature", "1.5", "--seed", "3") == tokens("--temperature", "1.5", "--seed", "3")
    assert tokens("--temperature", "1.5", "--seed", "3") != tokens("--temperature", "1.5", "--seed", "4")
    assert tokens("--temperature", "1.0", "--top-k", "1", "--seed", "9") == tokens()  # top-1 sampling is greedy


def test_sample_filters() -> None:
    values = np.array([5.0, 4.0, 1.0, -3.0])  # the backend's top-k candidates, descending
    ids = np.array([40, 10, 30, 20])
    rng = np.random.default_rng(0)
    draws = {sample(values, ids, Sampling(temperature=1.0, top_k=2), rng) for _ in range(200)}
    assert draws == {40, 10}
    draws = {sample(values, ids, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert draws == {40}  # the first candidate alone holds > 50 % of the mass
    for tiny in (1e-310, 5e-324):  # logits / temperature overflow: the largest logit takes all the mass
        assert sample(values, ids, Sampling(temperature=tiny), rng) == 40
    with pytest.raises(GenerationError, match="non-finite logits"):
        sample(np.array([np.nan, 1.0]), ids[:2], Sampling(temperature=1.0), rng)
    with pytest.raises(GenerationError, match="top_p"):
        Sampling(top_p=0).check()


class _FakeSession:
    """Emits a fixed token sequence through the pipelined greedy calls; lets the loop's stop logic be tested
    without a model, and records the order of calls."""

    def __init__(self, tokens: list[int], max_len: int = 100) -> None:
        self.tokens, self.pos, self.max_len = list(tokens), 0, max_len
        self.queued: list[int] = []
        self.calls: list[str] = []

    def prefill(self, tokens: list[int], logits: str = "last"):
        self.pos += len(tokens)
        return None, self.tokens.pop(0)

    def enqueue(self) -> None:
        self.calls.append("enqueue")
        self.pos += 1
        self.queued.append(self.tokens.pop(0))

    def read(self) -> int:
        self.calls.append("read")
        return self.queued.pop(0)

    def discard(self) -> None:
        self.calls.append("discard")
        self.pos -= len(self.queued)
        self.queued.clear()


@pytest.mark.parametrize("lookahead", [0, 1])
def test_stops_on_any_eos_id(lookahead: int) -> None:
    stats = Stats()
    session = _FakeSession([5, 6, 7, 99, 8, 9])
    got = list(generate_ids(session, [1, 2], Sampling(max_new_tokens=10), [2, 99], stats, 100, lookahead))
    assert got == [5, 6, 7] and stats.stop_reason == "eos" and stats.generated_tokens == 3
    assert session.pos == 2 + 3  # 5, 6, 7 are in the cache; the step that made 99 (and any after it) is given back
    stats = Stats()
    session = _FakeSession([5, 6, 7, 8])
    got = list(generate_ids(session, [1], Sampling(max_new_tokens=2), [99], stats, 100, lookahead))
    assert got == [5, 6] and stats.stop_reason == "length"
    assert session.calls == ["enqueue", "read"]  # never a step beyond max_new_tokens


def test_next_step_is_queued_before_a_token_is_read() -> None:
    session = _FakeSession([5, 6, 7, 8, 9])
    got = list(generate_ids(session, [1], Sampling(max_new_tokens=4), [99], Stats(), 100, lookahead=1))
    assert got == [5, 6, 7, 8]
    assert session.calls == ["enqueue", "enqueue", "read", "enqueue", "read", "read"]


@pytest.mark.parametrize(("args", "message"), [
    (["-n", "600", "--context", "64"], "exceeds the context of 64 tokens"),
    (["--backend", "aclnn"], "backend 'aclnn'"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--temperature", "1", "--seed", "-5"], "seed must be >= 0"),
    (["--top-k", "5"], "only apply when sampling: set temperature > 0"),
    (["--system", "Be brief.", "--raw"], "--system needs the chat template"),
    (["--threads", "0"], "threads must be between 1 and the"),
    (["--context", "0"], "context must be >= 1"),
    (["--activations", "bf16"], "bf16 activations need a bf16 file; this one's weights are fp16"),
    (["--activations", "fp8"], "activations must be one of f32, bf16, got 'fp8'"),
])
def test_cli_errors(args: list[str], message: str, converted) -> None:
    result = run_cli("ascend-run", str(converted(MODEL)), "--prompt", "Hello", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("prompt", "stdin", "message"), [
    ("", None, "the prompt is empty"),
    ("   ", None, "the prompt is empty"),
    ("-", b"caf\xe9", "the prompt is not valid UTF-8 (byte 3)"),
])
def test_cli_bad_prompts(prompt: str, stdin: bytes | None, message: str, converted) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "ascend_super.runtime", str(converted(MODEL)), "--prompt", prompt]
    result = subprocess.run(command, input=stdin or b"", capture_output=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.decode() and b"Traceback" not in result.stderr


def test_interleaved_generators_do_not_share_a_cache(converted) -> None:
    with ascend_super.load(converted(MODEL)) as model:
        alone = [list(model.generate_tokens(model.prompt_ids(p), Sampling(max_new_tokens=10))) for p in ("a", "bcd")]
        first = model.generate_tokens(model.prompt_ids("a"), Sampling(max_new_tokens=10))
        second = model.generate_tokens(model.prompt_ids("bcd"), Sampling(max_new_tokens=10))
        together: list[list[int]] = [[], []]
        for a, b in zip(first, second):
            together[0].append(a)
            together[1].append(b)
        together[0] += list(first)
        together[1] += list(second)
        assert together == alone


def test_threads_share_one_model(converted) -> None:
    import threading

    with ascend_super.load(converted(MODEL), threads=1) as model:
        prompts = ["one", "two two", "three three three", "four"]
        expected = {p: list(model.generate_tokens(model.prompt_ids(p), Sampling(max_new_tokens=12))) for p in prompts}
        got: dict[str, list[int]] = {}

        def work(p: str) -> None:
            got[p] = list(model.generate_tokens(model.prompt_ids(p), Sampling(max_new_tokens=12)))

        workers = [threading.Thread(target=work, args=(p,)) for p in prompts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not any(worker.is_alive() for worker in workers), "generation deadlocked"
        assert got == expected
        shared = model.session(64)  # one session driven from two threads is serialized, not deadlocked
        ids = model.prompt_ids("one")
        calls = [threading.Thread(target=shared.prefill, args=(ids,)) for _ in range(2)]
        for call in calls:
            call.start()
        for call in calls:
            call.join(timeout=60)
        assert not any(call.is_alive() for call in calls) and shared.pos == 2 * len(ids)


def test_cli_rejects_bad_files(tmp_path: Path, converted) -> None:
    bogus = tmp_path / "bogus.asw"
    bogus.write_bytes(b"x" * 100)
    result = run_cli("ascend-run", str(bogus), "--prompt", "Hello")
    assert result.returncode == 2 and "not a .asw file" in result.stderr
    from test_format import read_parts, rebuild

    broken = tmp_path / "tokenizer.asw"
    broken.write_bytes(converted(MODEL).read_bytes())
    _, manifest, data = read_parts(broken)
    manifest["tokenizer"] = '{"x": 1}'
    rebuild(broken, manifest, data)
    result = run_cli("ascend-run", str(broken), "--prompt", "Hello")
    assert result.returncode == 2 and "manifest tokenizer.json cannot be loaded" in result.stderr
    assert "Traceback" not in result.stderr
    nz = run_cli("ascend-run", str(converted(MODEL, "fp16", "nz")), "--prompt", "Hello")
    assert nz.returncode == 2 and "FRACTAL_NZ" in nz.stderr and "Traceback" not in nz.stderr


def test_prefill_slices_are_whole_backend_blocks() -> None:
    """generate_ids slices a long prompt at multiples of the backend's prefill block (256 tokens at least), so the
    backend runs the passes it runs on the whole prompt."""
    from ascend_super.runtime.generate import PREFILL_SLICE, prefill_slice

    assert prefill_slice(64) == PREFILL_SLICE == prefill_slice(256) == 256
    assert prefill_slice(100) == 300 and prefill_slice(512) == 512


def test_a_prompt_that_is_no_message_list_is_refused(converted) -> None:
    """A message dict instead of a list, or bare strings in the list: transformers refuses them, and many templates
    would render a prompt without the user's text."""
    import ascend_super
    from ascend_super.runtime.chat import ChatTemplateError

    with ascend_super.load(converted("qwen2-gqa-hd64"), backend="cpu", threads=1) as model:
        with pytest.raises(GenerationError, match="a prompt is text or a list of messages"):
            model.prompt_ids({"role": "user", "content": "What is 2+2?"})  # type: ignore[arg-type]
        with pytest.raises(ChatTemplateError, match="chat message 0 is str 'What is 2\\+2\\?', not a map"):
            model.prompt_ids(["What is 2+2?"])  # type: ignore[list-item]
