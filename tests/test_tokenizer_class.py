"""The converter tokenizes a checkpoint as transformers' AutoTokenizer does, whatever tokenizer class it names: for
each model type, tokenizer_class, tokenizer.json style and flag, the stored tokenizer encodes and decodes a set of
texts to the same ids and text as AutoTokenizer on the same folder, and the special tokens a chat template sees are
the ones it holds; a class the converter does not reproduce is refused in one line."""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ascend_super.convert.sources.base import SourceError
from ascend_super.convert.sources.safetensors import normalize_tokenizer_config
from ascend_super.convert.sources.tokenizer_class import as_transformers_builds
from checkpoints import CORPUS, SPECIAL_TOKENS, tokenizer_json

transformers = pytest.importorskip("transformers")

TEXTS = ["hello world", " hello world", "hello  world", "Hello, World! 123 4567 89", "it's I'M we'LL",
         "caf\u00e9 cafe\u0301", "line1\nline2\n\n  indented",
         "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
         "<s>[INST] What is 2+2? [/INST] 4 </s><s>[INST] and 3? [/INST]", "   ", "\u65e5\u672c\u8a9e \U0001F600!",
         "nver writ: converted, written", ""]
MORE_TEXT = [*CORPUS, "Hello, World! 123 4567 89 it's I'M [INST] What is 2+2? [/INST] caf\u00e9 line1\nline2"]


@lru_cache(maxsize=None)
def tokenizer_file(style: str) -> str:
    """A tokenizer.json: Llama-2 style SentencePiece BPE, GPT-2 style byte-level BPE, or byte-level with single
    digits (SmolLM2's style)."""
    if style == "bytelevel":
        return tokenizer_json(400)
    if style == "digits":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(MORE_TEXT * 20, trainer)
        return tok.to_str()
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=450, show_progress=False, special_tokens=[
        "<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))])
    tok.train_from_iterator(MORE_TEXT * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    return tok.to_str()


CLASSES = [None, "PreTrainedTokenizerFast", "TokenizersBackend", "LlamaTokenizerFast", "LlamaTokenizer",
           "Qwen2TokenizerFast", "GPT2Tokenizer", "CodeLlamaTokenizer"]
FLAGS = [{}, {"add_prefix_space": True}, {"add_prefix_space": False}, {"legacy": True}, {"legacy": False}]
SPECIALS = {"bytelevel": {"eos_token": "<|im_end|>"}, "digits": {}, "spm": {"bos_token": "<s>", "unk_token": None}}


def _folder(directory: Path, arch: str, cls: str | None, style: str, flags: dict) -> dict:
    directory.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"], "model_type": arch,
              "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 64,
              "vocab_size": 512}
    tokenizer_config = {**({"tokenizer_class": cls} if cls else {}), **SPECIALS[style], **flags}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer.json").write_text(tokenizer_file(style))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tokenizer_config


def _same_as_auto_tokenizer(directory: Path, style: str, where: object) -> None:
    """The converter's tokenizer for the folder encodes, decodes and names special tokens as AutoTokenizer does; its
    vocabulary lacks only the special tokens transformers adds past the model's (no text here holds them)."""
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    config = json.loads((directory / "config.json").read_text())
    text, filled = as_transformers_builds(tokenizer_file(style), tokenizer_config, config)
    ours = Tokenizer.from_str(text)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    where = (where, type(reference).__name__)
    grown = {text for text in normalize_tokenizer_config(filled).values() if isinstance(text, str)
             and Tokenizer.from_str(tokenizer_file(style)).token_to_id(text) is None}
    assert ours.get_vocab_size() + len(grown) == len(reference), (where, grown)
    for sample in TEXTS:
        for special in (True, False):
            ids = ours.encode(sample, add_special_tokens=special).ids
            assert ids == reference(sample, add_special_tokens=special)["input_ids"], (where, sample, special)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(
                ids, skip_special_tokens=skip), (where, sample, skip)
    named = normalize_tokenizer_config(filled)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert named[key] == getattr(reference, key), (where, key)


@pytest.mark.parametrize("arch, cls, style", list(itertools.product(["llama", "qwen2"], CLASSES,
                                                                     ["bytelevel", "digits", "spm"])))
def test_tokenizes_as_auto_tokenizer(tmp_path: Path, arch: str, cls: str | None, style: str) -> None:
    for n, flags in enumerate(FLAGS):
        directory = tmp_path / str(n)
        tokenizer_config = _folder(directory, arch, cls, style, flags)
        if cls == "CodeLlamaTokenizer" and arch == "llama":
            with pytest.raises(SourceError, match="tokenizer_class 'CodeLlamaTokenizer' is not one"):
                as_transformers_builds(tokenizer_file(style), tokenizer_config,
                                       json.loads((directory / "config.json").read_text()))
            continue
        _same_as_auto_tokenizer(directory, style, (arch, cls, style, flags))


def _added_tokens_decoder(style: str) -> dict:
    """tokenizer_config.json's added_tokens_decoder as transformers saves it: tokenizer.json's added tokens."""
    return {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "rstrip", "single_word", "normalized", "special")}
            for t in json.loads(tokenizer_file(style))["added_tokens"]}


EDGES = {  # name: (arch, style, tokenizer_config, config.json additions)
    "null class, config.json's": ("llama", "spm", {"tokenizer_class": None}, {"tokenizer_class": "LlamaTokenizerFast"}),
    "config.json's class": ("llama", "spm", {}, {"tokenizer_class": "LlamaTokenizer"}),
    "no model_type": ("qwen2", "digits", {"tokenizer_class": "PreTrainedTokenizerFast"}, {"model_type": None}),
    "added_tokens_decoder as written": ("qwen2", "bytelevel", {"added_tokens_decoder": "same"}, {}),
    "special token only in the vocabulary": ("llama", "bytelevel", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                                    "bos_token": "nver"}, {}),
    "extra special tokens in the vocabulary": ("qwen2", "bytelevel", {"additional_special_tokens": ["writ"]}, {}),
    "model-specific tokens": ("llama", "bytelevel", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                     "image_token": "nver",
                                                     "extra_special_tokens": {"video_token": "writ"}}, {}),
    "a special token outside the vocabulary": ("llama", "bytelevel", {"pad_token": "<pad>"}, {}),
    "AddedToken map": ("qwen2", "digits", {"eos_token": {"__type": "AddedToken", "content": "<|im_end|>",
                                                         "lstrip": False, "rstrip": False, "normalized": False,
                                                         "single_word": False, "special": True}}, {}),
}


@pytest.mark.parametrize("case", list(EDGES))
def test_edge_folders_tokenize_as_auto_tokenizer(tmp_path: Path, case: str) -> None:
    arch, style, tokenizer_config, config = EDGES[case]
    directory = tmp_path / "f"
    _folder(directory, arch, None, style, {})
    written = json.loads((directory / "tokenizer_config.json").read_text())
    written.update(tokenizer_config)
    if written.get("added_tokens_decoder") == "same":
        written["added_tokens_decoder"] = _added_tokens_decoder(style)
    (directory / "tokenizer_config.json").write_text(json.dumps(written))
    full = {**json.loads((directory / "config.json").read_text()), **config}
    (directory / "config.json").write_text(json.dumps({k: v for k, v in full.items() if v is not None}))
    _same_as_auto_tokenizer(directory, style, case)


@pytest.mark.parametrize("case, change, words", [
    ("auto_map", {"auto_map": {"AutoTokenizer": ["tok.MyTokenizer", None]}}, "auto_map names tokenizer code"),
    ("add_prefix_space string", {"add_prefix_space": "false"},
     "add_prefix_space is 'false', not a boolean (transformers' Qwen2Tokenizer fails on it)"),
    ("added_tokens_decoder differs", {"added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": False}}},
     "added_tokens_decoder['0'] is ('<|endoftext|>', False), tokenizer.json's added token 0 is "
     "('<|endoftext|>', True): transformers' Qwen2Tokenizer takes the former"),
])
def test_what_transformers_would_build_otherwise_is_refused(tmp_path: Path, case: str, change: dict,
                                                             words: str) -> None:
    tokenizer_config = {**_folder(tmp_path / "f", "qwen2", None, "bytelevel", {}), **change}
    with pytest.raises(SourceError) as exc:
        as_transformers_builds(tokenizer_file("bytelevel"), tokenizer_config, {"model_type": "qwen2"})
    assert words in str(exc.value) and "\n" not in str(exc.value)
