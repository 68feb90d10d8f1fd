"""Rebuild a HuggingFace ``tokenizer.json`` from the ``tokenizer.ggml.*`` keys of a GGUF file.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary, merges, token types and special ids as metadata
and picks its pre-tokenizer (the regexes that cut text into words before BPE) from the ``tokenizer.ggml.pre``
name. We rebuild the equivalent ``tokenizers`` pipeline:

- ``tokenizer.ggml.model == "gpt2"``: byte-level BPE. Vocabulary and merges as stored; the pre-tokenizer is the
  llama.cpp regex list for the ``pre`` name (one ``Split(isolated)`` per regex, applied in sequence, then a
  ``ByteLevel`` without its own regex), written in the form of the model's original tokenizer.json where one is
  known (llama3, qwen2, smollm).
- ``tokenizer.ggml.model == "llama"``: SentencePiece BPE with byte fallback, merges recovered from the scores the
  way transformers' SentencePiece converter does, a "▁" space prefix when ``add_space_prefix`` says so.

Tokens typed CONTROL or UNKNOWN become special added tokens, USER_DEFINED ones plain added tokens (matched whole,
as llama.cpp does), both with the id the file gives them. Anything else raises `TokenizerBuildError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ascend_super.runtime import format as fmt
from ascend_super.runtime.tokenizer import bytes_to_unicode
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

try:  # the gguf package's constants; the numbers are part of the GGUF format and never change
    from gguf import Keys, TokenType

    _K = Keys.Tokenizer
    KEY_MODEL, KEY_PRE, KEY_TOKENS, KEY_SCORES = _K.MODEL, _K.PRE, _K.LIST, _K.SCORES
    KEY_TOKEN_TYPE, KEY_MERGES = _K.TOKEN_TYPE, _K.MERGES
    KEY_BOS, KEY_EOS, KEY_UNK, KEY_PAD = _K.BOS_ID, _K.EOS_ID, _K.UNK_ID, _K.PAD_ID
    KEY_EOT, KEY_EOM = _K.EOT_ID, _K.EOM_ID
    KEY_ADD_BOS, KEY_ADD_EOS, KEY_ADD_PREFIX = _K.ADD_BOS, _K.ADD_EOS, _K.ADD_PREFIX
    T_NORMAL, T_UNKNOWN, T_CONTROL = int(TokenType.NORMAL), int(TokenType.UNKNOWN), int(TokenType.CONTROL)
    T_USER_DEFINED, T_UNUSED, T_BYTE = int(TokenType.USER_DEFINED), int(TokenType.UNUSED), int(TokenType.BYTE)
except ImportError:  # pragma: no cover - gguf is a dependency; this only keeps the module importable
    KEY_MODEL, KEY_PRE, KEY_TOKENS, KEY_SCORES = "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores"
    KEY_TOKEN_TYPE, KEY_MERGES = "tokenizer.ggml.token_type", "tokenizer.ggml.merges"
    KEY_BOS, KEY_EOS = "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"
    KEY_UNK, KEY_PAD = "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"
    KEY_EOT, KEY_EOM = "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"
    KEY_ADD_BOS, KEY_ADD_EOS = "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"
    KEY_ADD_PREFIX = "tokenizer.ggml.add_space_prefix"
    T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER_DEFINED, T_UNUSED, T_BYTE = 1, 2, 3, 4, 5, 6


class TokenizerBuildError(ValueError):
    """The tokenizer metadata cannot be turned into a tokenizer.json (unsupported model / pre-tokenizer, bad keys)."""


# ---------------------------------------------------------------------------------------------------------------
# Pre-tokenizer regexes, by llama.cpp's `tokenizer.ggml.pre` name (llama-vocab.cpp). Where llama.cpp adapted a
# model's original regex (case-insensitive contractions spelled out), the original tokenizer.json form is used:
# Oniguruma, which `tokenizers` runs, supports it and it matches the same text.

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]
_FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"]


@dataclass(frozen=True)
class _Pre:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # llama.cpp: a word that is itself a token is emitted whole (llama3 family)
    default_add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token key
    nfc: bool = False  # the model's original tokenizer.json normalizes to NFC (Qwen2)


_PRE_FAMILIES: dict[tuple[str, ...], _Pre] = {
    ("default",): _Pre(tuple(_DEFAULT)),
    ("gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code",
     "mpt", "olmo", "jais", "trillion", "roberta-bpe", "granite-docling"): _Pre((_GPT2,)),
    ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"): _Pre((r"\p{N}", _GPT2)),
    ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"):
        _Pre((_LLAMA3,), ignore_merges=True, default_add_bos=True),
    ("dbrx", "smaug-bpe"): _Pre((_LLAMA3,)),
    ("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"): _Pre((_QWEN2,), nfc=True),
    ("falcon",): _Pre(tuple(_FALCON)),
    ("gpt-4o", "llama4", "minimax-m2"): _Pre((_GPT4O,)),  # llama.cpp merges these words (no ignore_merges)
}
PRE_TOKENIZERS: dict[str, _Pre] = {name: pre for names, pre in _PRE_FAMILIES.items() for name in names}
TOKENIZER_MODELS = ("gpt2", "llama")


# ---------------------------------------------------------------------------------------------------------------


def _require(meta: Mapping[str, Any], key: str) -> Any:
    if key not in meta:
        raise TokenizerBuildError(f"missing required key {key}")
    return meta[key]


def _check_special_keys(meta: Mapping[str, Any], n_tokens: int) -> None:
    """llama.cpp refuses a special-token key of another type than its own (llama_model_loader::get_key), where
    Python's truth would read a string "false" as true. Every named id must index the vocabulary (llama.cpp warns and
    keeps its default id for one that does not: which token ends a turn would then be a guess)."""
    for key in (KEY_BOS, KEY_EOS, KEY_UNK, KEY_PAD, KEY_EOT, KEY_EOM):
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TokenizerBuildError(f"{key} is {value!r}, not an integer token id")
        if not 0 <= value < n_tokens:
            raise TokenizerBuildError(f"{key} is {value}, outside the vocabulary of {n_tokens} tokens")
    for key in (KEY_ADD_BOS, KEY_ADD_EOS, KEY_ADD_PREFIX):
        value = meta.get(key)
        if value is not None and not isinstance(value, bool):
            raise TokenizerBuildError(f"{key} is {value!r}, not a boolean")


def _special_ids(meta: Mapping[str, Any]) -> dict[str, int | None]:
    return {
        "bos": meta.get(KEY_BOS),
        "eos": meta.get(KEY_EOS),
        "unk": meta.get(KEY_UNK),
        "pad": meta.get(KEY_PAD),
    }


def _added_tokens(tokens: Sequence[str], types: Sequence[int]) -> list[tuple[int, AddedToken]]:
    out = []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (T_CONTROL, T_UNKNOWN):
            out.append((i, AddedToken(tok, special=True, normalized=False)))
        elif typ == T_USER_DEFINED:
            out.append((i, AddedToken(tok, special=False, normalized=False)))
    return out


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        # a repeated spelling keeps its first id (llama.cpp's text->token map keeps the last, then asserts on such
        # a vocabulary)
        vocab.setdefault(tok, i)
    return vocab


def _split_merge(merge: str) -> tuple[str, str]:
    # llama.cpp splits at the first space after the first character (a merge's left part is never empty)
    pos = merge.find(" ", 1)
    if pos < 0:
        raise TokenizerBuildError(f"malformed merge {merge!r} in {KEY_MERGES}")
    return merge[:pos], merge[pos + 1:]


def _byte_level(meta: Mapping[str, Any], tokens: Sequence[str]) -> tuple[Tokenizer, bool]:
    pre_name = meta.get(KEY_PRE, "default")
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise TokenizerBuildError(
            f"unsupported pre-tokenizer {KEY_PRE}={pre_name!r} (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    merges = [_split_merge(m) for m in _require(meta, KEY_MERGES)]
    vocab = _vocab(tokens)
    for left, right in merges:
        if left not in vocab or right not in vocab:
            raise TokenizerBuildError(f"merge {left!r} {right!r} names a token that is not in the vocabulary")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                               ignore_merges=pre.ignore_merges))
    if pre.nfc:
        tok.normalizer = normalizers.NFC()
    if tuple(pre.regexes) == (r"\p{N}", _GPT2):
        # SmolLM/StarCoder's own tokenizer.json: digits one by one, then GPT-2's regex inside ByteLevel
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    elif tuple(pre.regexes) == (_GPT2,):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
        )
    tok.decoder = decoders.ByteLevel()
    return tok, pre.default_add_bos


def _sentencepiece(meta: Mapping[str, Any], tokens: Sequence[str], types: Sequence[int]) -> tuple[Tokenizer, bool]:
    scores = list(meta.get(KEY_SCORES) or [0.0] * len(tokens))
    if len(scores) != len(tokens):
        raise TokenizerBuildError(f"{KEY_SCORES} has {len(scores)} entries for {len(tokens)} tokens")
    vocab = _vocab(tokens)
    # SentencePiece BPE merges pieces by the score of the result, and llama.cpp's SPM tokenizer ranks by the scores
    # alone (llama-vocab.cpp), so a tokenizer.ggml.merges list in such a file is not read (transformers' GGUF loader
    # would use it). Recover the pairs the way transformers' SentencePieceExtractor does: every split of a piece
    # into two pieces, best result score first.
    candidates = []
    for piece, pid in vocab.items():
        if types[pid] not in (T_NORMAL, T_USER_DEFINED):
            continue
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        candidates.extend((scores[pid], lr) for lr in local)
    candidates.sort(key=lambda c: -c[0])  # stable: ties keep the vocabulary order
    merges = [lr for _, lr in candidates]
    unk_id = meta.get(KEY_UNK)
    unk = tokens[unk_id] if unk_id is not None else None  # _check_special_keys: an id of the vocabulary
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    add_prefix = bool(meta.get(KEY_ADD_PREFIX, True))
    steps = ([normalizers.Prepend("▁")] if add_prefix else []) + [normalizers.Replace(" ", "▁")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok, True


def build_tokenizer(meta: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(tokenizer.json text, special tokens)`` from a GGUF's metadata (key -> Python value): the special tokens
    as the manifest keeps them (spelled bos, eos, pad, unk tokens; add_bos_token, add_eos_token)."""
    model = _require(meta, KEY_MODEL)
    tokens = list(_require(meta, KEY_TOKENS))
    if not tokens:
        raise TokenizerBuildError(f"{KEY_TOKENS} is empty")
    types = list(meta.get(KEY_TOKEN_TYPE) or [T_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerBuildError(f"{KEY_TOKEN_TYPE} has {len(types)} entries for {len(tokens)} tokens")
    _check_special_keys(meta, len(tokens))

    builders = {"gpt2": lambda: _byte_level(meta, tokens), "llama": lambda: _sentencepiece(meta, tokens, types)}
    if model not in builders:
        raise TokenizerBuildError(
            f"unsupported tokenizer model {KEY_MODEL}={model!r} (supported: {', '.join(TOKENIZER_MODELS)})"
        )
    try:
        tok, default_add_bos = builders[model]()
    except TokenizerBuildError:
        raise
    except Exception as exc:  # tokenizers raises a bare Exception for an inconsistent vocabulary / merges
        raise TokenizerBuildError(f"tokenizers cannot build it: {exc}") from None

    added = _added_tokens(tokens, types)
    # the model vocabulary already maps each added token's text to its id, so these keep the file's ids
    tok.add_special_tokens([a for _, a in added if a.special])
    tok.add_tokens([a for _, a in added if not a.special])
    for i, a in added:
        got = tok.token_to_id(a.content)
        if got != i and tokens.index(a.content) == i:  # pragma: no cover - a repeated spelling keeps its first id
            raise TokenizerBuildError(f"added token {a.content!r} got id {got}, the file says {i}")

    ids = _special_ids(meta)
    names = {role: None if tid is None else tokens[tid] for role, tid in ids.items()}  # ids checked above

    add_bos = bool(meta.get(KEY_ADD_BOS, default_add_bos))
    add_eos = bool(meta.get(KEY_ADD_EOS, False))
    if add_bos and names["bos"] is None:
        raise TokenizerBuildError(f"{KEY_ADD_BOS} is set but the file has no {KEY_BOS}")
    if add_eos and names["eos"] is None:
        raise TokenizerBuildError(f"{KEY_ADD_EOS} is set but the file has no {KEY_EOS}")
    if add_bos or add_eos:
        single = ([f"{names['bos']}:0"] if add_bos else []) + ["$A:0"] + ([f"{names['eos']}:0"] if add_eos else [])
        pair = single + ([f"{names['bos']}:1"] if add_bos else []) + ["$B:1"] + ([f"{names['eos']}:1"] if add_eos else [])
        specials = {}
        if add_bos:
            specials[names["bos"]] = ids["bos"]
        if add_eos:
            specials[names["eos"]] = ids["eos"]
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(pair), special_tokens=list(specials.items())
        )
    elif model == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    # every spelled key of the manifest, null but for the four transformers' GGUF loader reads (bos, eos, unk, pad)
    config: dict[str, Any] = dict.fromkeys(fmt.SPECIAL_TOKEN_TEXT_KEYS)
    config.update({f"{role}_token": names[role] for role in ("bos", "eos", "pad", "unk")})
    config.update({"add_bos_token": add_bos, "add_eos_token": add_eos})
    return tok.to_str(), config


def eos_ids(meta: Mapping[str, Any]) -> list[int]:
    """Every id that ends a turn: eos, then eot / eom when the file names them. llama.cpp stops on these and also on
    vocabulary tokens it recognizes by their text (<|endoftext|>, <|im_end|>, <|eot_id|>, ...: llama-vocab.cpp's
    end-of-generation set), which transformers' GGUF loading does not, nor we."""
    out: list[int] = []
    for key in (KEY_EOS, KEY_EOT, KEY_EOM):
        v = meta.get(key)
        if isinstance(v, int) and v not in out:
            out.append(v)
    return out
