"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on a HuggingFace checkpoint.

    python bench/hf_to_gguf.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT.gguf --outtype f16|bf16 [--no-vocab]

LLAMA_CPP_DIR is the sdist's vendor/llama.cpp (convert_hf_to_gguf.py, conversion/, gguf-py/); the script puts
its gguf-py first on sys.path, as convert_hf_to_gguf.py itself does, so the GGUF is written by the gguf package of
the same llama.cpp that reads it.

--no-vocab: the benchmark's random checkpoint carries a toy tokenizer whose pre-tokenizer llama.cpp's converter
cannot identify (it hashes the tokenizer's output on a test text and refuses unknown ones). The benchmark feeds
token ids, never text, so the vocabulary is written as llama.cpp's "none" tokenizer with the model's vocab_size
(llama.cpp then creates that many placeholder tokens). The weights and every hyper-parameter are converted by
llama.cpp's code unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("llama_cpp_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--outfile", type=Path, required=True)
    parser.add_argument("--outtype", choices=["f16", "bf16"], required=True)
    parser.add_argument("--no-vocab", action="store_true", help="write llama.cpp's 'none' tokenizer")
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
    sys.argv = [convert_hf_to_gguf.__file__, str(args.model_dir), "--outfile", str(args.outfile),
                "--outtype", args.outtype]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
