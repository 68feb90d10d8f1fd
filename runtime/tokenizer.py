"""Text <-> token ids with the tokenizer.json embedded in the .asw (HF `tokenizers`), and streaming detokenization
through tokenizers' DecodeStream, which holds back partial UTF-8 sequences (multi-byte CJK, emoji) until whole."""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class TokenizerError(ValueError):
    """The tokenizer.json text cannot be loaded by `tokenizers`; says why."""


class TextTokenizer:
    def __init__(self, tokenizer_json: str) -> None:
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON or models
            raise TokenizerError(f"tokenizer.json cannot be loaded by tokenizers: {exc}") from None

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
    """Feed generated ids one at a time; each step returns the text that became complete ('' if none yet)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, token_id: int) -> str:
        return self._stream.step(self._tokenizer, token_id) or ""
