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

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers

from ascend_super.runtime import format as fmt

from .base import SourceError

AS_WRITTEN = "TokenizersBackend"  # transformers' class that uses tokenizer.json as it is

# Qwen2Tokenizer's split pattern (transformers models/qwen2/tokenization_qwen2.py, PRETOKENIZE_REGEX)
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
METASPACE = "\u2581"


def _flag(tokenizer_config: dict[str, Any], key: str, default: Any) -> Any:
    value = tokenizer_config.get(key)
    return default if value is None else value


def _bool_flag(tokenizer_config: dict[str, Any], key: str, default: bool, cls: str, null_default: bool) -> bool:
    """A flag the class hands to tokenizers' ByteLevel, which takes only a bool (transformers fails on another
    type); `null_default`: whether the class reads null as the default (else null fails there too)."""
    value = tokenizer_config.get(key, default)
    if value is None and null_default:
        value = default
    if not isinstance(value, bool):
        raise SourceError(f"tokenizer_config.json {key} is {value!r}, not a boolean (transformers' {cls} fails on it)")
    return value


def _qwen2(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """Qwen2Tokenizer.__init__: NFC, the Qwen2 split, byte-level pieces; a BPE without unk or byte fallback."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=_bool_flag(tokenizer_config, "add_prefix_space", False,
                                                              "Qwen2Tokenizer", null_default=True), use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return {"unk_token": None, "fuse_unk": False, "byte_fallback": False}


def _gpt2(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """GPT2Tokenizer.__init__: no normalizer, GPT-2's byte-level split; a BPE without unk or byte fallback."""
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=_bool_flag(
        tokenizer_config, "add_prefix_space", False, "GPT2Tokenizer", null_default=False))
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
GENERIC_CLASSES = ("PreTrainedTokenizer", "TokenizersBackend", "PythonBackend")
# tokenizer_config.json keys whose entries transformers also makes special tokens
SPECIAL_LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")


def tokenizer_class(model_type: Any, named: Any, tokenizer_json: str) -> str:
    """The class transformers 5 tokenizes with: by the model type, else by tokenizer_class (a LlamaTokenizer over a
    byte-level tokenizer.json is read as written, as transformers does for Llama 3 style repositories)."""
    if model_type in FIXED_CLASS:
        return FIXED_CLASS[model_type]
    if named is None:
        return AS_WRITTEN
    name = str(named).removesuffix("Fast")
    if name in GENERIC_CLASSES or name == "LlamaTokenizer" and '"ByteLevel"' in tokenizer_json:
        return AS_WRITTEN
    if name not in TOKENIZER_CLASSES:
        raise SourceError(f"tokenizer_class {named!r} is not one whose tokenizer the converter reproduces as "
                          f"transformers builds it (supported: {', '.join(sorted(TOKENIZER_CLASSES))}, "
                          "PreTrainedTokenizerFast, or none)")
    return name


def token_text(token: Any) -> str | None:
    """A special token of tokenizer_config.json as text: a string, or an AddedToken map's content."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _special_tokens(tokenizer_config: dict[str, Any]) -> list[Any]:
    """The tokens transformers treats as special: the named ones, the model-specific ones (other keys ending in
    "_token"), and the entries of its special-token lists (or map)."""
    tokens = [value for key, value in tokenizer_config.items() if fmt.is_special_token_name(key)]
    for key in SPECIAL_LIST_KEYS:
        listed = tokenizer_config.get(key)
        tokens += list(listed.values() if isinstance(listed, dict) else listed if isinstance(listed, list) else [])
    return [token for token in tokens if token_text(token) is not None]


def _check_added_tokens(data: dict[str, Any], tokenizer_config: dict[str, Any], name: str) -> None:
    """A class that rebuilds the tokenizer takes its added tokens from tokenizer_config.json's added_tokens_decoder
    where there is one (tokenization_utils_base): it must say what tokenizer.json's added_tokens say."""
    decoder = tokenizer_config.get("added_tokens_decoder")
    if not isinstance(decoder, dict):
        return
    written = {int(t["id"]): (t.get("content"), bool(t.get("special"))) for t in data.get("added_tokens", [])}
    for key, entry in decoder.items():
        want = (entry.get("content"), bool(entry.get("special"))) if isinstance(entry, dict) else (None, False)
        if not str(key).isdigit() or written.get(int(key)) != want:
            raise SourceError(f"tokenizer_config.json added_tokens_decoder[{key!r}] is {want}, tokenizer.json's "
                              f"added token {key} is {written.get(int(key)) if str(key).isdigit() else None}: "
                              f"transformers' {name} takes the former")
    if len(decoder) != len(written):
        raise SourceError(f"tokenizer_config.json added_tokens_decoder has {len(decoder)} tokens, tokenizer.json's "
                          f"added_tokens {len(written)}: transformers' {name} takes the former")


def _add_special_tokens(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> bool:
    """transformers adds each special token that is no added token of the tokenizer as a special one (matched whole
    in text, left out of decoded text); whether any was added. One outside the vocabulary is left out: transformers
    would give it a new id, past the model's embedding (text holding it fails there)."""
    added = {token.content for token in tok.get_added_tokens_decoder().values()}
    new: dict[str, AddedToken] = {}
    for token in _special_tokens(tokenizer_config):
        text = token_text(token)
        if text in added or text in new or tok.token_to_id(text) is None:
            continue
        flags = {key: bool(token[key]) for key in ("lstrip", "rstrip", "single_word", "normalized")
                 if isinstance(token, dict) and key in token}
        new[text] = AddedToken(text, special=True, **flags)
    tok.add_special_tokens(list(new.values()))
    return bool(new)


def as_transformers_builds(tokenizer_json: str, tokenizer_config: dict[str, Any],
                           config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config with the class's default special tokens filled in where it names none)
    as transformers 5 tokenizes the checkpoint. Raises SourceError for what the table cannot reproduce."""
    auto_map = tokenizer_config.get("auto_map")
    if isinstance(auto_map, (list, tuple)) or isinstance(auto_map, dict) and "AutoTokenizer" in auto_map:
        raise SourceError("tokenizer_config.json's auto_map names tokenizer code from the repository, which "
                          "transformers runs (with trust_remote_code) and the converter does not")
    named = tokenizer_config.get("tokenizer_class")
    if named is None:  # null or absent: transformers falls back to config.json's
        named = config.get("tokenizer_class")
    name = tokenizer_class(config.get("model_type"), named, tokenizer_json)
    spec = TOKENIZER_CLASSES[name]
    filled = {**{key: value for key, value in spec.special_defaults.items() if key not in tokenizer_config},
              **tokenizer_config}
    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception:  # tokenizers' own error is raised where tokenizer.json is loaded for the manifest
        return tokenizer_json, filled
    data = json.loads(tokenizer_json)
    if spec.rebuild is not None:
        if data.get("model", {}).get("type") != "BPE":
            raise SourceError(f"tokenizer.json has a {data.get('model', {}).get('type')!r} model, where the "
                              f"tokenizer class transformers uses for it ({name}) builds a BPE one")
        _check_added_tokens(data, tokenizer_config, name)
        model_fields = spec.rebuild(tok, tokenizer_config)
    if not _add_special_tokens(tok, filled) and spec.rebuild is None:
        return tokenizer_json, filled
    rebuilt = json.loads(tok.to_str())
    if spec.rebuild is not None:
        rebuilt["model"].update({"dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                                 "ignore_merges": False, **model_fields})
    return json.dumps(rebuilt, ensure_ascii=False), filled
