"""Text <-> token ids with the tokenizer.json embedded in the .asw (HF `tokenizers`); streaming detokenization
through tokenizers' DecodeStream, which holds back partial UTF-8 sequences (multi-byte CJK, emoji) until whole, and
writes out what it holds when generation ends; and the bytes each token stands for (for logprobs)."""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Callable

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

METASPACE = "\u2581"  # SentencePiece's word-start mark
FLUSH_CONTEXT = 8  # ids before the held-back ones that TextStream.flush decodes them after
BYTE_FALLBACK_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback tokens


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE vocabularies are spelled in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of bytes_to_unicode: a byte-level BPE piece's characters back to its bytes."""
    return {c: b for b, c in bytes_to_unicode().items()}


def _decoder_has(decoder: object, step: Callable[[dict[str, Any]], bool]) -> bool:
    """Whether a tokenizer.json decoder, or a step of its Sequence, is one `step` recognizes."""
    if not isinstance(decoder, dict):
        return False
    steps = decoder.get("decoders")
    return step(decoder) or isinstance(steps, list) and any(_decoder_has(inner, step) for inner in steps)


def _is_byte_level(step: dict[str, Any]) -> bool:  # pieces spelled in GPT-2's table
    return step.get("type") == "ByteLevel"


def _is_metaspace(step: dict[str, Any]) -> bool:  # SentencePiece's "▁" for a space
    pattern = step.get("pattern")
    return step.get("type") == "Metaspace" or step.get("type") == "Replace" and isinstance(pattern, dict) and \
        pattern.get("String") == METASPACE and step.get("content") == " "


class TokenizerError(ValueError):
    """The tokenizer.json text cannot be loaded by `tokenizers`; says why."""


class TextTokenizer:
    def __init__(self, tokenizer_json: str) -> None:
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON or models
            raise TokenizerError(f"tokenizer.json cannot be loaded by tokenizers: {exc}") from None
        # the decoder's own JSON (what pickling it gives), not a second parse of the whole tokenizer.json (~40 ms for
        # SmolLM2's 1.5 MB one, at every load)
        decoder = None if self._tokenizer.decoder is None else json.loads(self._tokenizer.decoder.__getstate__())
        self._byte_level = _decoder_has(decoder, _is_byte_level)
        self._metaspace = _decoder_has(decoder, _is_metaspace)
        added = self._tokenizer.get_added_tokens_decoder()
        self._added = {i: t.content for i, t in added.items()}
        self._special_ids: dict[str, list[int]] = {}  # a special token's text -> its ids (decode skips them)
        for i, t in added.items():
            if t.special:
                self._special_ids.setdefault(t.content, []).append(i)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for in decoded text: an added token's text; a byte-level BPE piece mapped
        back through GPT-2's table; a byte-fallback piece <0xNN> as that byte; a SentencePiece piece with its "▁"
        as a space; else the UTF-8 of its decode.
        Tokens that carry part of a character give their own bytes, which their decode alone turns into U+FFFD."""
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self._tokenizer.id_to_token(token_id)
        if piece is not None and self._byte_level:
            table = unicode_to_bytes()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if piece is not None and (match := BYTE_FALLBACK_PIECE.fullmatch(piece)):
            return bytes([int(match.group(1), 16)])
        if piece is not None and self._metaspace:  # "▁a" is " a" (its decode alone loses the space to Strip)
            return piece.replace(METASPACE, " ").encode("utf-8")
        return self.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Ids of `text`; add_special_tokens applies the tokenizer's post-processor (e.g. a BOS token)."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def special_token_ids(self, text: str) -> list[int]:
        """The ids of the special tokens spelled `text` (none: []): text decoded without special tokens never
        contains them."""
        return self._special_ids.get(text, [])

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def stream(self, skip_special_tokens: bool = True) -> "TextStream":
        return TextStream(self._tokenizer, skip_special_tokens)


class TextStream:
    """Feed generated ids one at a time; each step returns the text that became complete ('' if none yet). When
    generation ends, `flush` returns what is still held back, so that no text is lost (an unfinished UTF-8
    sequence ends as U+FFFD; with byte-level BPE the pieces then add up to tokenizer.decode of all the ids)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stream = _decode_stream([], skip_special_tokens)
        self._ids: list[int] = []
        self._emitted_upto = 0  # ids fed up to the last step that returned text
        self.sent = 0  # characters returned so far: where the next token's text starts

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        try:
            piece = self._stream.step(self._tokenizer, token_id) or ""
        except Exception:  # tokenizers raises a bare Exception ("Invalid prefix encountered while decoding stream")
            # on some byte-fallback runs: send what is held as flush decodes it, and go on from here afresh
            piece = self.flush()
            self._stream = _decode_stream(self._ids[-FLUSH_CONTEXT:], self._skip_special_tokens)
            return piece
        if piece:
            self._emitted_upto = len(self._ids)
            self.sent += len(piece)
        return piece

    def flush(self) -> str:
        """The text of the ids fed since the last step that returned text (DecodeStream holds a token back while
        it ends inside a character, with any whole character decoded alongside it), decoded after a few of the ids
        before them as DecodeStream decodes, so that what follows a word keeps its spacing."""
        held = self._ids[self._emitted_upto:]
        if not held:
            return ""
        context = self._ids[max(0, self._emitted_upto - FLUSH_CONTEXT):self._emitted_upto]
        before = self._decode(context)
        after = self._decode(context + held)
        rest = after[len(before):] if after.startswith(before) else self._decode(held)
        self._emitted_upto = len(self._ids)
        self.sent += len(rest)
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens) if ids else ""


def _decode_stream(prefix: list[int], skip_special_tokens: bool) -> DecodeStream:
    """A DecodeStream whose text starts after `prefix` (ids already sent), where tokenizers can take one."""
    if prefix:
        try:
            return DecodeStream(ids=prefix, skip_special_tokens=skip_special_tokens)
        except TypeError:  # tokenizers before DecodeStream(ids=...): no context
            pass
    return DecodeStream(skip_special_tokens=skip_special_tokens)
