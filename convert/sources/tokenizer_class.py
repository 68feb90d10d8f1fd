"""The tokenizer transformers 5 builds for a HuggingFace checkpoint, where that is not its tokenizer.json as written.

`AutoTokenizer` picks a tokenizer class from the model type and `tokenizer_class`; a class with its own constructor
(Qwen2Tokenizer, LlamaTokenizer, GPT2Tokenizer) keeps tokenizer.json's vocabulary, merges, added tokens and
post-processor, but builds its own normalizer, pre-tokenizer and decoder, and takes the special tokens that
tokenizer_config.json leaves out from its own defaults. A Qwen2 checkpoint, for one, is always tokenized as
Qwen2Tokenizer builds it (NFC, Qwen2's split pattern), whatever its tokenizer.json says. So the converter stores the
pipeline that class builds: the .asw then tokenizes as transformers does. The rules below were read from transformers
5.24 (models/auto/tokenization_auto.py and each class's __init__) and are checked against it, class by class and flag
by flag, in tests/test_tokenizer_class.py; a class named that is not in the table is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

from .base import SourceError

AS_WRITTEN = "TokenizersBackend"  # transformers' class that uses tokenizer.json as it is

# Qwen2Tokenizer's split pattern (transformers models/qwen2/tokenization_qwen2.py, PRETOKENIZE_REGEX)
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
METASPACE = "\u2581"


def _flag(tokenizer_config: dict[str, Any], key: str, default: Any) -> Any:
    value = tokenizer_config.get(key)
    return default if value is None else value


def _qwen2(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """Qwen2Tokenizer.__init__: NFC, the Qwen2 split, byte-level pieces; a BPE without unk or byte fallback."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(_flag(tokenizer_config, "add_prefix_space", False)),
                                 use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return {"unk_token": None, "fuse_unk": False, "byte_fallback": False}


def _gpt2(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """GPT2Tokenizer.__init__: no normalizer, GPT-2's byte-level split; a BPE without unk or byte fallback."""
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(tokenizer_config.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
    return {"unk_token": None, "fuse_unk": False, "byte_fallback": False}


def _llama(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """LlamaTokenizer.__init__ (SentencePiece-style files only; a byte-level one is used as written): no normalizer,
    a Metaspace that puts "▁" before the text's first piece (legacy: before every piece between added tokens; never
    with add_prefix_space false), byte fallback; a BPE without unk."""
    add_prefix_space = bool(_flag(tokenizer_config, "add_prefix_space", True))
    legacy = tokenizer_config.get("legacy", False)
    scheme = ("always" if legacy else "first") if add_prefix_space else "never"  # tokenization_utils_base
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme=scheme, split=False)
    steps = [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_prefix_space else []))
    return {"unk_token": None, "fuse_unk": True, "byte_fallback": True}


@dataclass(frozen=True)
class TokenizerClass:
    rebuild: Callable[[Tokenizer, dict[str, Any]], dict[str, Any]] | None  # None: tokenizer.json as written
    special_defaults: dict[str, str | None] = field(default_factory=dict)  # the constructor's special tokens


TOKENIZER_CLASSES: dict[str, TokenizerClass] = {
    AS_WRITTEN: TokenizerClass(None),
    "Qwen2Tokenizer": TokenizerClass(_qwen2, {"unk_token": "<|endoftext|>", "bos_token": None,
                                              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    "GPT2Tokenizer": TokenizerClass(_gpt2, {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                                            "eos_token": "<|endoftext|>", "pad_token": None}),
    "LlamaTokenizer": TokenizerClass(_llama, {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}),
}
# model types whose checkpoints transformers tokenizes with one class whatever tokenizer_class names (qwen2 is in its
# MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
FIXED_CLASS = {"qwen2": "Qwen2Tokenizer"}
# tokenizer_class names (without "Fast") that mean tokenizer.json as written
GENERIC_CLASSES = ("PreTrainedTokenizer", "TokenizersBackend")


def tokenizer_class(arch: str, named: Any, tokenizer_json: str) -> str:
    """The class transformers 5 tokenizes with: by the model type, else by tokenizer_class (a LlamaTokenizer over a
    byte-level tokenizer.json is read as written, as transformers does for Llama 3 style repositories)."""
    if arch in FIXED_CLASS:
        return FIXED_CLASS[arch]
    if named is None:
        return AS_WRITTEN
    name = str(named).removesuffix("Fast")
    if name in GENERIC_CLASSES or name == "LlamaTokenizer" and '"ByteLevel"' in tokenizer_json:
        return AS_WRITTEN
    if name not in TOKENIZER_CLASSES:
        raise SourceError(f"tokenizer_class {named!r}: transformers builds that tokenizer its own way, which the "
                          f"converter does not reproduce (supported: {', '.join(sorted(TOKENIZER_CLASSES))}, "
                          "PreTrainedTokenizerFast, or none)")
    return name


def as_transformers_builds(arch: str, tokenizer_json: str, tokenizer_config: dict[str, Any],
                           config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config with the class's default special tokens filled in where it names none)
    as transformers 5 tokenizes the checkpoint. Raises SourceError for a class the table does not have."""
    named = tokenizer_config.get("tokenizer_class", config.get("tokenizer_class"))
    name = tokenizer_class(arch, named, tokenizer_json)
    spec = TOKENIZER_CLASSES[name]
    defaults = {key: value for key, value in spec.special_defaults.items() if key not in tokenizer_config}
    if spec.rebuild is None and not defaults:
        return tokenizer_json, tokenizer_config
    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception:  # tokenizers' own error is raised where tokenizer.json is loaded for the manifest
        return tokenizer_json, tokenizer_config
    for key, token in defaults.items():
        if token is not None and tok.token_to_id(token) is None:  # transformers would add it as a new token
            raise SourceError(f"names no {key}, so transformers' {name} takes its default {token!r}, which is not "
                              "in tokenizer.json's vocabulary (set it in tokenizer_config.json, null for none)")
    filled = {**defaults, **tokenizer_config}
    if spec.rebuild is None:
        return tokenizer_json, filled
    data = json.loads(tokenizer_json)
    if data.get("model", {}).get("type") != "BPE":
        raise SourceError(f"tokenizer.json has a {data.get('model', {}).get('type')!r} model, where the tokenizer "
                          f"class transformers uses for it ({named or arch}) builds a BPE one")
    model_fields = spec.rebuild(tok, tokenizer_config)
    rebuilt = json.loads(tok.to_str())
    rebuilt["model"].update({"dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                             "ignore_merges": False, **model_fields})
    return json.dumps(rebuilt, ensure_ascii=False), filled
