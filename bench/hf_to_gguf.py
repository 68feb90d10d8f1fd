"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on a HuggingFace checkpoint.

    python bench/hf_to_gguf.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT.gguf --outtype f16|bf16 [--no-vocab | --byte-vocab]

LLAMA_CPP_DIR is the sdist's vendor/llama.cpp (convert_hf_to_gguf.py, conversion/, gguf-py/); the script puts
its gguf-py first on sys.path, as convert_hf_to_gguf.py itself does, so the GGUF is written by the gguf package of
the same llama.cpp that reads it.

--no-vocab: the benchmark's random checkpoint carries a toy tokenizer whose pre-tokenizer llama.cpp's converter
cannot identify (it hashes the tokenizer's output on a test text and refuses unknown ones). The benchmark feeds
token ids, never text, so the vocabulary is written as llama.cpp's "none" tokenizer with the model's vocab_size
(llama.cpp then creates that many placeholder tokens). The weights and every hyper-parameter are converted by
llama.cpp's code unchanged.

--byte-vocab: for llama.cpp's *server*, which takes prompts as text and streams text: a GPT-2-style byte-level BPE
vocabulary of the model's vocab_size — ids 0..255 the 256 bytes, the eos id and the two after it Qwen2's special
tokens, every other id the word "w<id>" — with no merges, so any text tokenizes to one token per byte and every
generated id decodes to text (one streamed chunk per token, as the WordLevel tokenizer of bench/serve.py gives
ascend-serve).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def byte_level_alphabet() -> list[str]:
    """GPT-2's byte-level BPE alphabet: the character that stands for byte b (printable Latin-1 bytes stand for
    themselves, the others for code points 256 and up, in byte order), indexed by b."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("llama_cpp_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--outfile", type=Path, required=True)
    parser.add_argument("--outtype", choices=["f16", "bf16"], required=True)
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--no-vocab", action="store_true", help="write llama.cpp's 'none' tokenizer")
    vocab.add_argument("--byte-vocab", action="store_true", help="write a byte-level BPE tokenizer (see above)")
    args = parser.parse_args()

    sys.path.insert(0, str(args.llama_cpp_dir))
    import convert_hf_to_gguf  # noqa: PLC0415  (its import puts the sdist's gguf-py on sys.path)
    from conversion import ModelBase, get_model_class  # noqa: PLC0415

    if args.no_vocab:
        hparams = ModelBase.load_hparams(args.model_dir, False)
        model_class = get_model_class(hparams["architectures"][0])

        def set_vocab_none(self) -> None:  # noqa: ANN001
            self.gguf_writer.add_tokenizer_model("none")
            self.gguf_writer.add_vocab_size(int(self.hparams["vocab_size"]))

        model_class.set_vocab = set_vocab_none
    elif args.byte_vocab:
        hparams = ModelBase.load_hparams(args.model_dir, False)
        model_class = get_model_class(hparams["architectures"][0])

        def set_vocab_bytes(self) -> None:  # noqa: ANN001
            from gguf import TokenType  # noqa: PLC0415  (the sdist's gguf-py, on sys.path now)

            size, eos = int(self.hparams["vocab_size"]), int(self.hparams["eos_token_id"])
            tokens = [f"w{i}" for i in range(size)]
            types = [TokenType.NORMAL] * size
            tokens[:256] = byte_level_alphabet()
            for offset, special in enumerate(C.SPECIAL_TOKENS):  # Qwen2's ids for them
                tokens[eos + offset], types[eos + offset] = special, TokenType.CONTROL
            writer = self.gguf_writer
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_merges(["\u0120 \u0120"])  # llama.cpp wants the key; two spaces never occur in a prompt
            writer.add_bos_token_id(eos)
            writer.add_eos_token_id(eos)
            writer.add_add_bos_token(False)

        model_class.set_vocab = set_vocab_bytes
    sys.argv = [convert_hf_to_gguf.__file__, str(args.model_dir), "--outfile", str(args.outfile),
                "--outtype", args.outtype]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
