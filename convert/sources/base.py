"""The contract every source reader fulfils: HF-named tensors plus HF-style metadata.

A source (a local HF directory, a hub snapshot, a GGUF file) is presented to the planner in one shape: the
`config.json` dict of a HuggingFace checkpoint, the tokenizer.json text, tokenizer_config, chat template,
generation config, provenance, and tensors under their HuggingFace names (``model.layers.0.self_attn.q_proj.weight``)
read one at a time. The planner never knows which kind of source it reads.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import xxhash

HASH_CHUNK = 16 * 1024 * 1024


def map_range(fd: int, offset: int, nbytes: int) -> tuple[mmap.mmap, int]:
    """A read-only, pre-faulted map of bytes [offset, offset + nbytes) (nbytes > 0) of the open file `fd`, and
    where `offset` lies in it. The bytes are read from the page cache in place, where read/pread would copy each
    one (that copy was a third of a conversion's CPU time). The map goes when its last view goes, so the process
    keeps only what it is working on resident."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, offset + nbytes - start, flags=flags, prot=mmap.PROT_READ, offset=start), offset - start


def file_xxh3(path: Path) -> str:
    """xxh3_64 hex digest of a whole file, mapped in chunks."""
    hasher = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for offset in range(0, size, HASH_CHUNK):  # HASH_CHUNK is a multiple of the page size: each map starts at 0
            window, _ = map_range(handle.fileno(), offset, min(HASH_CHUNK, size - offset))
            with window:
                hasher.update(window)
    return hasher.hexdigest()


class SourceError(Exception):
    """A source cannot be read or is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class SourceTensor:
    """Shape and dtype of one source tensor, known before its data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy-style name of the stored type, e.g. "float32", "bfloat16", "float16", or a GGUF quant name
    nbytes: int  # bytes this tensor occupies in the source file (for progress)


@dataclass
class SourceMeta:
    """Everything but the tensors."""

    config: dict[str, Any]  # HF config.json contents
    tokenizer_json: str  # tokenizer.json text
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # kind, id, revision, files: {name: hash}
    config_origin: str = "config.json"  # what `config` was read from, as refusals name it


class Source(Protocol):
    """A readable checkpoint. Use as a context manager; `read` returns one tensor at a time."""

    meta: SourceMeta
    path: Path

    def tensors(self) -> dict[str, SourceTensor]: ...

    def read(self, name: str) -> np.ndarray:
        """The tensor as a numpy array: float16 / float32 as stored, bfloat16 returned as float32 (exact)."""
        ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the tensor (all of a 1-D one when start == 0 and stop == its length), reading
        no more of the source than those rows need."""
        ...

    def file_names(self) -> list[str]:
        """Names of the source files `file_hashes` will cover (known before any tensor is read)."""
        ...

    def file_hashes(self) -> dict[str, str]:
        """xxh3_64 hex digest of every source file, by file name. Called on a thread of its own while the tensors
        are read, so it must only read the files."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> "Source": ...

    def __exit__(self, *exc: object) -> None: ...

