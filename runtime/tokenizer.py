"""Text <-> token ids with the tokenizer.json embedded in the .asw (HF `tokenizers`), and streaming detokenization
through tokenizers' DecodeStream, which holds back partial UTF-8 sequences (multi-byte CJK, emoji) until whole."""

from __future__ import annotations

import functools
import json
import re

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

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


def _uses_byte_level(decoder: object) -> bool:
    """Whether a tokenizer.json decoder (or a step of its Sequence) is ByteLevel: pieces spelled in GPT-2's table."""
    if not isinstance(decoder, dict):
        return False
    steps = decoder.get("decoders")
    return decoder.get("type") == "ByteLevel" or isinstance(steps, list) and any(map(_uses_byte_level, steps))


class TokenizerError(ValueError):
    """The tokenizer.json text cannot be loaded by `tokenizers`; says why."""


class TextTokenizer:
    def __init__(self, tokenizer_json: str) -> None:
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON or models
            raise TokenizerError(f"tokenizer.json cannot be loaded by tokenizers: {exc}") from None
        self._byte_level = _uses_byte_level(json.loads(tokenizer_json).get("decoder"))
        self._added = {i: t.content for i, t in self._tokenizer.get_added_tokens_decoder().items()}

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for in decoded text: an added token's text; a byte-level BPE piece mapped
        back through GPT-2's table; a byte-fallback piece <0xNN> as that byte; else the UTF-8 of its decode.
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
        return self.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Ids of `text`; add_special_tokens applies the tokenizer's post-processor (e.g. a BOS token)."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def stream(self, skip_special_tokens: bool = True) -> "TextStream":
        return TextStream(self._tokenizer, skip_special_tokens)


class TextStream:
    """Feed generated ids one at a time; each step returns the text that became complete ('' if none yet). When
    generation ends, `flush` returns what is still held back, so that the pieces add up to the decode of all the ids
    (as transformers' tokenizer.decode gives it: an unfinished UTF-8 sequence as U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._ids: list[int] = []
        self._sent = 0  # characters returned so far

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        piece = self._stream.step(self._tokenizer, token_id) or ""
        self._sent += len(piece)
        return piece

    def flush(self) -> str:
        """The text of the ids fed so far that no step has returned: a token DecodeStream still holds back (the
        start of a multi-byte character, and any whole character decoded with it) would otherwise be lost."""
        whole = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip_special_tokens)
        rest = whole[self._sent:] if len(whole) > self._sent else ""
        self._sent += len(rest)
        return rest
