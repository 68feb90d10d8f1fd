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
         "caf\u00e9 cafe\u0301", "line1\nline2\n\n  indented", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
         "<s>[INST] What is 2+2? [/INST] 4 </s><s>[INST] and 3? [/INST]", "   ", "\u65e5\u672c\u8a9e \U0001F600!", ""]
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


@pytest.mark.parametrize("arch, cls, style", list(itertools.product(["llama", "qwen2"], CLASSES,
                                                                     ["bytelevel", "digits", "spm"])))
def test_tokenizes_as_auto_tokenizer(tmp_path: Path, arch: str, cls: str | None, style: str) -> None:
    for n, flags in enumerate(FLAGS):
        directory = tmp_path / str(n)
        tokenizer_config = _folder(directory, arch, cls, style, flags)
        config = json.loads((directory / "config.json").read_text())
        try:
            text, filled = as_transformers_builds(arch, tokenizer_file(style), tokenizer_config, config)
        except SourceError as exc:
            assert "\n" not in str(exc)
            if "not in tokenizer.json's vocabulary" in str(exc):  # transformers would grow the vocabulary
                reference = transformers.AutoTokenizer.from_pretrained(directory)
                assert len(reference) > Tokenizer.from_str(tokenizer_file(style)).get_vocab_size(), exc
                continue
            assert cls == "CodeLlamaTokenizer" and arch == "llama", exc
            assert "tokenizer_class 'CodeLlamaTokenizer'" in str(exc)
            continue
        ours = Tokenizer.from_str(text)
        reference = transformers.AutoTokenizer.from_pretrained(directory)
        where = (arch, cls, style, flags, type(reference).__name__)
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


def test_a_class_default_outside_the_vocabulary_is_refused(tmp_path: Path) -> None:
    """Qwen2Tokenizer's default unk and eos are <|endoftext|>: a vocabulary without it would grow a token in
    transformers."""
    tokenizer_config = _folder(tmp_path / "f", "qwen2", None, "spm", {})
    tokenizer_config.pop("unk_token")
    with pytest.raises(SourceError, match="names no unk_token, so transformers' Qwen2Tokenizer takes its default "
                                          "'<|endoftext|>', which is not in tokenizer.json's vocabulary"):
        as_transformers_builds("qwen2", tokenizer_file("spm"), tokenizer_config, {})
