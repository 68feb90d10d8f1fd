"""The .asw file format: the ONLY module that knows its byte layout (constants, naming, reader, validation).

docs/FORMAT.md is the prose twin of this module; change both together. The converter's writer packs the preamble
and manifest with the helpers here, and every consumer of a file (runtime, inspect, tests) opens it through
`AswFile.open`, which checks every count, offset and size before anything else touches the bytes.

Layout (all little-endian):
    [0, 64)                          preamble (PREAMBLE_STRUCT)
    [64, 64 + manifest_nbytes)       msgpack manifest
    zero padding up to data_offset   (data_offset is a multiple of data_alignment)
    [data_offset, data_offset + data_nbytes)   tensors, each at a multiple of TENSOR_ALIGNMENT from data_offset
    end of file == data_offset + data_nbytes
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import msgpack
import numpy as np
import xxhash

from . import hugepages

# --------------------------------------------------------------------------------------------------- constants
MAGIC = b"\x89ASW\r\n\x1a\n"  # PNG-style: non-ASCII first byte, CRLF and ^Z catch text-mode mangling
VERSION_MAJOR = 1
VERSION_MINOR = 1  # 1.1 added the manifest keys "requires" (what a file needs to run) and "defaulted_config"
# magic, major, minor, flags, manifest_offset, manifest_nbytes, manifest_xxh3_64, data_offset, data_nbytes,
# data_alignment, reserved
PREAMBLE_STRUCT = struct.Struct("<8sHHIQQQQQII")
PREAMBLE_NBYTES = 64
assert PREAMBLE_STRUCT.size == PREAMBLE_NBYTES

TENSOR_ALIGNMENT = 512
DEFAULT_DATA_ALIGNMENT = 2 * 1024 * 1024
MIN_DATA_ALIGNMENT = TENSOR_ALIGNMENT
MAX_DATA_ALIGNMENT = 1 << 30  # 1 GiB (the preamble field is u32)
MAX_MANIFEST_NBYTES = 256 * 1024 * 1024
HASH_HEX_LEN = 16  # xxh3_64 as 16 lowercase hex digits: fixed length, so the manifest size is known in advance

DTYPES: dict[str, int] = {"fp16": 2, "bf16": 2}  # file dtype -> bytes per element
LAYOUTS = ("nd", "nz")
NZ_BLOCK = 16  # FRACTAL_NZ fp16/bf16 fractal: 16 x 16
ARCHS = ("qwen2", "llama")
ROPE_SCALING_TYPES = ("llama3",)

MANIFEST_KEYS = (
    "arch", "config", "dtype", "layout", "tensor_alignment", "tokenizer", "chat_template",
    "generation_config", "special_tokens", "source", "tensors",
)
# what a file needs to run (manifest key "requires", since 1.1; derived from "layout" for 1.0 files)
REQUIRES_KEYS = ("format_major", "layout", "backends", "soc")
BACKENDS_BY_LAYOUT: dict[str, tuple[str, ...]] = {"nd": ("cpu", "aclnn"), "nz": ("aclnn",)}
# the Ascend SoC families whose matmul units take this FRACTAL_NZ (16 x 16 fp16/bf16 fractals): A2 and A3.
# "/" separates families; a device's SoC name (aclrtGetSocName, e.g. "Ascend910B3") matches by prefix.
NZ_SOC_FAMILY = "ascend910b/ascend910_93"
VERIFY_CHUNK = 32 * 1024 * 1024  # bytes one verify thread hashes between readahead requests
MAX_VERIFY_THREADS = 8
# config int key -> the largest value a file may hold. The bounds keep every size the reader and the native
# library derive from them (tensor table, KV cache, activations) within 64-bit and 32-bit arithmetic, and let a
# forged manifest be refused before anything is allocated from it.
CONFIG_INT_LIMITS = {
    "hidden_size": 1 << 20, "num_hidden_layers": 4096, "num_attention_heads": 4096, "num_key_value_heads": 4096,
    "head_dim": 4096, "intermediate_size": 1 << 22, "vocab_size": 1 << 24, "max_position_embeddings": 1 << 24,
}
MAX_ATTENTION_WIDTH = 1 << 20  # num_attention_heads * head_dim
MAX_EOS_IDS = 1024
CONFIG_FLOAT_KEYS = ("rms_norm_eps", "rope_theta")
# config keys whose value may be null but must be there (FORMAT.md: every config key is required)
CONFIG_NULLABLE_KEYS = ("rope_scaling", "bos_token_id", "pad_token_id")
# the manifest's special_tokens: the spelled tokens (str or null) and the flags (bool). The spelled ones are
# transformers' SPECIAL_TOKENS_ATTRIBUTES, which apply_chat_template hands a chat template (those set); files from
# before sep_token, cls_token and mask_token were kept lack them, which reads as null
SPECIAL_TOKEN_TEXT_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
SPECIAL_TOKEN_FLAG_KEYS = ("add_bos_token", "add_eos_token")
HASH_HEX_DIGITS = frozenset("0123456789abcdef")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
CONFIG_BOOL_KEYS = ("tie_word_embeddings", "attention_bias")
TENSOR_KEYS = ("name", "dtype", "shape", "layout", "offset", "nbytes", "xxh3_64")
# 2-D weights that --layout nz stores as FRACTAL_NZ (token_embd stays ND: it is gathered by rows)
NZ_TENSOR_SUFFIXES = ("attn_qkv.weight", "attn_output.weight", "ffn_gate_up.weight", "ffn_down.weight")
NZ_TENSOR_NAMES = ("output.weight",)


def is_special_token_name(key: str) -> bool:
    """A spelled token of the manifest's special_tokens: the named ones above and transformers' model-specific ones
    (any other name ending in "_token", such as image_token), which a chat template also sees."""
    return key.endswith("_token") and key not in SPECIAL_TOKEN_FLAG_KEYS


# ------------------------------------------------------------------------------------------------------ errors
class FormatError(Exception):
    """A .asw file is malformed. Every subclass is one distinct, named problem; the message says where.

    A message stays one readable line even when it quotes a forged value (a whole tokenizer as the arch, a huge
    list): past MAX_ERROR_CHARS its middle is cut, keeping the start (file, what) and the end (what was expected)."""

    def __init__(self, message: str) -> None:
        if len(message) > MAX_ERROR_CHARS:
            keep = MAX_ERROR_CHARS // 2
            message = f"{message[:keep]} … ({len(message) - 2 * keep} characters left out) … {message[-keep:]}"
        super().__init__(message)


MAX_ERROR_CHARS = 1000


class BadMagic(FormatError): ...
class UnsupportedVersion(FormatError): ...
class TruncatedFile(FormatError): ...
class BadPreamble(FormatError): ...
class ManifestOutOfBounds(FormatError): ...
class ManifestChecksumMismatch(FormatError): ...
class ManifestNotMsgpack(FormatError): ...
class ManifestInvalid(FormatError): ...
class TensorOutOfBounds(FormatError): ...
class TensorMisaligned(FormatError): ...
class TensorOverlap(FormatError): ...
class TensorGap(FormatError): ...
class TensorSizeMismatch(FormatError): ...
class TensorMissing(FormatError): ...
class TensorUnexpected(FormatError): ...
class TensorOrder(FormatError): ...
class TrailingBytes(FormatError): ...
class HashMismatch(FormatError): ...
class NonZeroPadding(FormatError): ...
class IncompatibleFile(FormatError):
    """A well-formed file that this backend or device cannot run (its manifest's "requires" says why)."""


# ------------------------------------------------------------------------------------------------- pure helpers
def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def hash_hex(digest: int) -> str:
    return f"{digest:0{HASH_HEX_LEN}x}"


def xxh3_hex(data: bytes | memoryview | np.ndarray) -> str:
    return hash_hex(xxhash.xxh3_64_intdigest(data))


def nz_storage_shape(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """FRACTAL_NZ storage of a logical [out, in] matrix: [ceil(in/16), ceil(out/16), 16, 16]."""
    out_dim, in_dim = shape
    return (-(-in_dim // NZ_BLOCK), -(-out_dim // NZ_BLOCK), NZ_BLOCK, NZ_BLOCK)


def tensor_nbytes(shape: tuple[int, ...] | list[int], dtype: str, layout: str) -> int:
    """Bytes a tensor of this logical shape occupies: ND = product x itemsize; NZ pads both dims to 16."""
    itemsize = DTYPES[dtype]
    dims = nz_storage_shape((shape[0], shape[1])) if layout == "nz" else tuple(shape)
    count = 1
    for dim in dims:
        count *= int(dim)
    return count * itemsize


def tensor_layout(name: str, file_layout: str) -> str:
    """Layout of one tensor in a file whose manifest says `file_layout`."""
    if file_layout == "nz" and (name in NZ_TENSOR_NAMES or name.endswith(NZ_TENSOR_SUFFIXES)):
        return "nz"
    return "nd"


def expected_tensors(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Canonical tensor names and logical shapes, in data-region (execution) order."""
    hidden = int(config["hidden_size"])
    head_dim = int(config["head_dim"])
    qkv_rows = (int(config["num_attention_heads"]) + 2 * int(config["num_key_value_heads"])) * head_dim
    q_width = int(config["num_attention_heads"]) * head_dim
    ffn = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden)}
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"blk.{layer}."
        shapes[prefix + "attn_norm.weight"] = (hidden,)
        shapes[prefix + "attn_qkv.weight"] = (qkv_rows, hidden)
        if config["attention_bias"]:
            shapes[prefix + "attn_qkv.bias"] = (qkv_rows,)
        shapes[prefix + "attn_output.weight"] = (hidden, q_width)
        shapes[prefix + "ffn_norm.weight"] = (hidden,)
        shapes[prefix + "ffn_gate_up.weight"] = (2 * ffn, hidden)
        shapes[prefix + "ffn_down.weight"] = (hidden, ffn)
    shapes["output_norm.weight"] = (hidden,)
    if not config["tie_word_embeddings"]:
        shapes["output.weight"] = (vocab, hidden)
    return shapes


def plan_offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets (relative to the data region) of tensors of these sizes, each TENSOR_ALIGNMENT-aligned, and the
    region length (ends exactly at the end of the last tensor)."""
    offsets: list[int] = []
    cursor = 0
    for size in sizes:
        cursor = align_up(cursor, TENSOR_ALIGNMENT)
        offsets.append(cursor)
        cursor += size
    return offsets, cursor


def requirements(layout: str) -> dict[str, Any]:
    """The manifest's "requires" map for a file of this layout (what the converter writes)."""
    return {"format_major": VERSION_MAJOR, "layout": layout, "backends": list(BACKENDS_BY_LAYOUT[layout]),
            "soc": NZ_SOC_FAMILY if layout == "nz" else None}


def soc_matches(soc: str, family: str) -> bool:
    """Whether a device SoC name (e.g. "Ascend910B3", "Ascend910_9391") belongs to a "/"-separated family."""
    name = soc.lower()
    return any(name.startswith(prefix) for prefix in family.lower().split("/") if prefix)


# ---------------------------------------------------------------------------------------------------- preamble
@dataclass(frozen=True)
class Preamble:
    version_major: int
    version_minor: int
    flags: int
    manifest_offset: int
    manifest_nbytes: int
    manifest_xxh3_64: int
    data_offset: int
    data_nbytes: int
    data_alignment: int

    def pack(self) -> bytes:
        return PREAMBLE_STRUCT.pack(
            MAGIC, self.version_major, self.version_minor, self.flags, self.manifest_offset,
            self.manifest_nbytes, self.manifest_xxh3_64, self.data_offset, self.data_nbytes, self.data_alignment, 0,
        )


def pack_manifest(manifest: Mapping[str, Any]) -> bytes:
    return msgpack.packb(manifest, use_bin_type=True)


def layout_file(manifest_nbytes: int, data_alignment: int) -> int:
    """Data-region offset for a manifest of this size."""
    return align_up(PREAMBLE_NBYTES + manifest_nbytes, data_alignment)


def check_data_alignment(data_alignment: int) -> None:
    if not MIN_DATA_ALIGNMENT <= data_alignment <= MAX_DATA_ALIGNMENT or data_alignment & (data_alignment - 1):
        raise ValueError(f"data alignment must be a power of two from {MIN_DATA_ALIGNMENT} to {MAX_DATA_ALIGNMENT}, "
                         f"got {data_alignment}")


# ------------------------------------------------------------------------------------------------------ reader
@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    layout: str
    offset: int  # from the start of the data region
    nbytes: int
    xxh3_64: str


class AswFile:
    """A validated, read-only mapping of a .asw file. Use `AswFile.open(path)`; close() or `with` releases it."""

    def __init__(self, path: Path, mapping: mmap.mmap, preamble: Preamble, manifest: dict[str, Any],
                 tensors: list[TensorEntry], opened: os.stat_result) -> None:
        self.path = path
        self.opened = opened  # the status of the file that was mapped (fstat of its descriptor), whatever `path` is now
        self._mmap = mapping
        self.preamble = preamble
        self.manifest = manifest
        self.tensors = tensors
        self.by_name = {t.name: t for t in tensors}

    # --- construction
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "AswFile":
        path = Path(path)
        try:
            # O_NONBLOCK: opening a FIFO for reading must not wait for a writer before fstat can refuse it
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise FormatError(f"{path}: cannot open: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"{path}: not a regular file (a .asw model must be a file, not a pipe, device or "
                                  "folder)")
            if info.st_size < PREAMBLE_NBYTES:
                raise TruncatedFile(f"{path}: file is {info.st_size} bytes, shorter than the {PREAMBLE_NBYTES}-byte "
                                    "preamble")
            size = info.st_size
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise FormatError(f"{path}: cannot open: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        try:
            preamble = _parse_preamble(path, mapping[:PREAMBLE_NBYTES], size)
            manifest = _parse_manifest(path, mapping, preamble)
            tensors = _validate_tensors(path, manifest, preamble)
        except BaseException:
            mapping.close()
            raise
        return cls(path, mapping, preamble, manifest, tensors, info)

    def close(self) -> None:
        """Unmap now, or, while numpy views of the mapping are still alive, when the last of them goes."""
        try:
            self._mmap.close()
        except BufferError:
            pass

    def __enter__(self) -> "AswFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- access
    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def layout(self) -> str:
        return self.manifest["layout"]

    def mapped_range(self) -> tuple[int, int]:
        """(address, length) of the whole mapping in this process (for a guard against the file shrinking)."""
        return hugepages.mapping_address(self._mmap), len(self._mmap)

    def map_weights_huge(self) -> hugepages.HugePages | None:
        """Get the data region mapped with 2 MiB pages where the system allows (runtime/hugepages.py): what the cpu
        backend, which reads the weights in place, asks for at load."""
        return hugepages.map_with_huge_pages(self.path, self._mmap, self.preamble.data_offset,
                                             self.preamble.data_nbytes)

    def data_region(self) -> np.ndarray:
        """The whole data region as a read-only uint8 array (a view of the mapping, no copy)."""
        return np.frombuffer(self._mmap, dtype=np.uint8, count=self.preamble.data_nbytes,
                             offset=self.preamble.data_offset)

    def tensor_bytes(self, name: str) -> np.ndarray:
        entry = self.by_name[name]
        return np.frombuffer(self._mmap, dtype=np.uint8, count=entry.nbytes,
                             offset=self.preamble.data_offset + entry.offset)

    def tensor_u16(self, name: str) -> np.ndarray:
        """Stored u16 elements: logical shape for ND, NZ storage shape for NZ (see nz_storage_shape)."""
        entry = self.by_name[name]
        shape = nz_storage_shape((entry.shape[0], entry.shape[1])) if entry.layout == "nz" else entry.shape
        return self.tensor_bytes(name).view("<u2").reshape(shape)

    @property
    def requires(self) -> dict[str, Any]:
        """What the file needs to run: the manifest's "requires" (1.1+), or for a 1.0 file what its layout implies."""
        return self.manifest.get("requires") or {**requirements(self.layout),
                                                 "format_major": self.preamble.version_major}

    def check_runnable(self, backend: str, soc: str | None = None) -> None:
        """Raise IncompatibleFile (one line, before any weight is touched) unless `backend` (and, when known, the
        device's SoC name) can run this file."""
        needs = self.requires
        if backend not in needs["backends"]:
            laid_out = f", laid out for {needs['soc']}" if needs["soc"] else ""
            hint = "; convert with --layout nd for the cpu backend" if needs["layout"] == "nz" else ""
            raise IncompatibleFile(
                f"{self.path}: layout {needs['layout']} ({'FRACTAL_NZ' if needs['layout'] == 'nz' else 'row-major'}"
                f"{laid_out}) runs on the {' or '.join(needs['backends'])} backend, not {backend}{hint}")
        if soc is not None and needs["soc"] and not soc_matches(soc, needs["soc"]):
            raise IncompatibleFile(f"{self.path}: laid out for SoC family {needs['soc']}, this device is {soc}; "
                                   "convert it again for this device")

    def sha256(self, progress: Callable[[int], None] | None = None) -> str:
        """The SHA-256 (hex) of the whole file, streamed through the mapping; `progress` gets each piece's bytes."""
        import hashlib

        digest = hashlib.sha256()
        view = memoryview(self._mmap)
        try:
            for start in range(0, len(view), VERIFY_CHUNK):
                piece = view[start:start + VERIFY_CHUNK]
                digest.update(piece)  # releases the GIL on large pieces
                if progress is not None:
                    progress(len(piece))
        finally:
            view.release()
        return digest.hexdigest()

    def verify(self, progress: Callable[[TensorEntry], None] | None = None, threads: int | None = None) -> None:
        """Recompute every tensor hash and check that all padding is zeros. Tensors are hashed by `threads` worker
        threads (default: the cores, at most MAX_VERIFY_THREADS; xxhash releases the GIL on large buffers) that
        stream through the mapping in VERIFY_CHUNK pieces with kernel readahead asked for the next piece.
        HashMismatch names the first bad tensor in file order; NonZeroPadding names its byte range. `progress` is
        called in this thread, in file order, once per verified tensor."""
        self._check_padding()
        entries = sorted(self.tensors, key=lambda e: e.offset)
        workers = threads if threads is not None else min(os.cpu_count() or 1, MAX_VERIFY_THREADS)
        if workers < 1:
            raise ValueError(f"threads must be >= 1, got {workers}")
        hugepages.advise(self._mmap, mmap.MADV_SEQUENTIAL if hasattr(mmap, "MADV_SEQUENTIAL") else None, 0, len(self._mmap))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="asw-verify")
        try:
            for entry, actual in zip(entries, pool.map(self._tensor_hash, entries)):
                if actual != entry.xxh3_64:
                    raise HashMismatch(
                        f"{self.path}: tensor {entry.name!r} at byte {self.preamble.data_offset + entry.offset}: "
                        f"xxh3_64 is {actual}, manifest says {entry.xxh3_64}"
                    )
                if progress is not None:
                    progress(entry)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _tensor_hash(self, entry: TensorEntry) -> str:
        start = self.preamble.data_offset + entry.offset
        end = start + entry.nbytes
        view = np.frombuffer(self._mmap, dtype=np.uint8, count=entry.nbytes, offset=start)
        hasher = xxhash.xxh3_64()  # streaming XXH3 gives the same digest as the one-shot hash
        for begin in range(start, end, VERIFY_CHUNK):
            ahead = begin + VERIFY_CHUNK
            if ahead < end:
                hugepages.advise(self._mmap, getattr(mmap, "MADV_WILLNEED", None), ahead,
                                 min(end, ahead + VERIFY_CHUNK) - ahead)
            hasher.update(view[begin - start:ahead - start])
        return hasher.hexdigest()

    def _check_padding(self) -> None:
        pads = [(PREAMBLE_NBYTES + self.preamble.manifest_nbytes, self.preamble.data_offset)]
        cursor = 0
        for entry in sorted(self.tensors, key=lambda e: e.offset):
            pads.append((self.preamble.data_offset + cursor, self.preamble.data_offset + entry.offset))
            cursor = entry.offset + entry.nbytes
        for start, end in pads:
            if end > start and np.frombuffer(self._mmap, dtype=np.uint8, count=end - start, offset=start).any():
                raise NonZeroPadding(f"{self.path}: padding bytes [{start}, {end}) are not all zero")

    def iter_tensors(self) -> Iterator[TensorEntry]:
        return iter(self.tensors)


def _parse_preamble(path: Path, raw: bytes, file_size: int) -> Preamble:
    (magic, major, minor, flags, manifest_offset, manifest_nbytes, manifest_hash, data_offset, data_nbytes,
     data_alignment, reserved) = PREAMBLE_STRUCT.unpack(raw)
    if magic != MAGIC:
        raise BadMagic(f"{path}: not a .asw file (bytes 0-7 are {magic!r}, expected {MAGIC!r})")
    if major > VERSION_MAJOR:
        raise UnsupportedVersion(
            f"{path}: format version {major}.{minor} is newer than this reader ({VERSION_MAJOR}.{VERSION_MINOR}); "
            "upgrade ascend-super"
        )
    if major < 1:
        raise UnsupportedVersion(f"{path}: format version {major}.{minor} is not a released version")
    if reserved != 0:
        raise BadPreamble(f"{path}: reserved preamble bytes 60-63 are not zero")
    try:
        check_data_alignment(data_alignment)
    except ValueError as exc:
        raise BadPreamble(f"{path}: byte 56: {exc}") from None
    if manifest_offset != PREAMBLE_NBYTES:
        raise ManifestOutOfBounds(f"{path}: manifest offset {manifest_offset} (byte 16) must be {PREAMBLE_NBYTES}")
    if manifest_nbytes == 0 or manifest_nbytes > MAX_MANIFEST_NBYTES:
        raise ManifestOutOfBounds(
            f"{path}: manifest length {manifest_nbytes} (byte 24) is outside 1..{MAX_MANIFEST_NBYTES}"
        )
    if manifest_offset + manifest_nbytes > file_size:
        raise ManifestOutOfBounds(
            f"{path}: manifest [{manifest_offset}, {manifest_offset + manifest_nbytes}) extends beyond the end of "
            f"the file ({file_size} bytes)"
        )
    if data_offset % data_alignment or data_offset < manifest_offset + manifest_nbytes:
        raise BadPreamble(
            f"{path}: data offset {data_offset} (byte 40) is not a multiple of {data_alignment} after the manifest end "
            f"{manifest_offset + manifest_nbytes}"
        )
    if data_offset + data_nbytes > file_size:
        raise TruncatedFile(
            f"{path}: data region [{data_offset}, {data_offset + data_nbytes}) extends beyond the end of the file "
            f"({file_size} bytes): the file is truncated"
        )
    if data_offset + data_nbytes < file_size:
        raise TrailingBytes(
            f"{path}: {file_size - data_offset - data_nbytes} bytes after the data region end at byte "
            f"{data_offset + data_nbytes}"
        )
    return Preamble(major, minor, flags, manifest_offset, manifest_nbytes, manifest_hash, data_offset, data_nbytes,
                    data_alignment)


def _parse_manifest(path: Path, mapping: mmap.mmap, preamble: Preamble) -> dict[str, Any]:
    raw = mapping[preamble.manifest_offset:preamble.manifest_offset + preamble.manifest_nbytes]
    if xxhash.xxh3_64_intdigest(raw) != preamble.manifest_xxh3_64:
        raise ManifestChecksumMismatch(
            f"{path}: manifest bytes [{preamble.manifest_offset}, {preamble.manifest_offset + preamble.manifest_nbytes}) "
            "do not match the checksum in the preamble (byte 32): the file is corrupt"
        )
    try:
        manifest = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ManifestNotMsgpack(f"{path}: manifest at byte {preamble.manifest_offset} is not valid msgpack: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestInvalid(f"{path}: manifest is a {type(manifest).__name__}, not a map")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ManifestInvalid(f"{path}: manifest is missing key(s): {', '.join(missing)}")
    check_manifest_values(path, manifest)
    if "requires" not in manifest and (preamble.version_major, preamble.version_minor) >= (1, 1):
        raise ManifestInvalid(f"{path}: manifest has no \"requires\" map, which format {preamble.version_major}."
                              f"{preamble.version_minor} files must have (only 1.0 files may lack it)")
    return manifest


def _require(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise ManifestInvalid(f"{path}: manifest {what}")


def check_manifest_values(path: Path, manifest: dict[str, Any]) -> None:
    """Every rule on the manifest's values (not the tensor table's placement); raises ManifestInvalid. The one
    validator: the converter runs it before writing, and every reader (ascend-inspect, ascend-run, the API) runs
    it through `AswFile.open`, so a file one accepts the others accept."""
    _require(manifest["arch"] in ARCHS, path, f"arch {manifest['arch']!r} is not one of {', '.join(ARCHS)}")
    _require(isinstance(manifest["dtype"], str) and manifest["dtype"] in DTYPES, path,
             f"dtype {manifest['dtype']!r} is not one of {', '.join(DTYPES)}")
    _require(manifest["layout"] in LAYOUTS, path, f"layout {manifest['layout']!r} is not one of {', '.join(LAYOUTS)}")
    _require(manifest["tensor_alignment"] == TENSOR_ALIGNMENT, path,
             f"tensor_alignment {manifest['tensor_alignment']!r} is not {TENSOR_ALIGNMENT}")
    _require(isinstance(manifest["tokenizer"], str) and manifest["tokenizer"] != "", path,
             "tokenizer is not a non-empty tokenizer.json string")
    _require(manifest["chat_template"] is None or isinstance(manifest["chat_template"], str), path,
             "chat_template is neither null nor a string")
    for key in ("generation_config", "special_tokens", "source"):
        _require(isinstance(manifest[key], dict), path, f"{key} is not a map")
        try:
            _check_json_value(path, key, manifest[key])
        except RecursionError:
            raise ManifestInvalid(f"{path}: manifest {key} is nested too deeply") from None
    _check_special_tokens(path, manifest["special_tokens"])
    check_config(path, manifest["config"])
    defaulted = manifest.get("defaulted_config", [])
    _require(isinstance(defaulted, list) and all(isinstance(k, str) for k in defaulted), path,
             f"defaulted_config is {defaulted!r}, not a list of config key names")
    _require(isinstance(manifest["tensors"], list), path, "tensors is not a list")
    _check_tokenizer_ids(path, manifest["tokenizer"], manifest["config"]["vocab_size"])
    if "requires" in manifest:  # since 1.1
        check_requires(path, manifest["requires"], manifest["layout"])


def _check_json_value(path: Path, where: str, value: Any) -> None:
    """`value` holds only what a JSON file can (the maps copied from the source's JSON files): str keys, and
    strings, finite numbers, booleans, nulls, lists and maps (a msgpack bin or ext value is not one)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _require(isinstance(key, str), path, f"{where} has the key {key!r}, not a string")
            _check_json_value(path, f"{where}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(path, f"{where}[{index}]", item)
    else:
        _require(value is None or isinstance(value, (str, bool, int)) or isinstance(value, float)
                 and math.isfinite(value), path, f"{where} is {value!r}, not a JSON value")


def _check_special_tokens(path: Path, special: dict[str, Any]) -> None:
    """The spelled special tokens are strings or null and the add_* flags booleans (other keys, which older
    converters copied from a GGUF's tokenizer settings, are not read)."""
    for key in dict.fromkeys([*SPECIAL_TOKEN_TEXT_KEYS, *filter(is_special_token_name, special)]):
        value = special.get(key)
        _require(value is None or isinstance(value, str), path,
                 f"special_tokens.{key} is {value!r}, not a string or null")
    for key in SPECIAL_TOKEN_FLAG_KEYS:
        _require(isinstance(special.get(key, False), bool), path,
                 f"special_tokens.{key} is {special.get(key)!r}, not a boolean")


def check_requires(path: Path, requires: Any, layout: str) -> None:
    """The "requires" map: its keys, a format major this reader knows, the file's own layout, and backends that
    can run that layout (names a later minor version adds are allowed; the ones the layout rules out are not)."""
    _require(isinstance(requires, dict) and all(key in requires for key in REQUIRES_KEYS), path,
             f"requires is not a map with the keys {', '.join(REQUIRES_KEYS)}")
    _require(_is_int(requires["format_major"]) and requires["format_major"] == VERSION_MAJOR, path,
             f"requires.format_major {requires['format_major']!r} is not {VERSION_MAJOR}")
    _require(requires["layout"] == layout, path, f"requires.layout {requires['layout']!r} is not the file's {layout!r}")
    backends = requires["backends"]
    _require(isinstance(backends, list) and backends and all(isinstance(b, str) for b in backends), path,
             f"requires.backends {backends!r} is not a non-empty list of backend names")
    known = {name for names in BACKENDS_BY_LAYOUT.values() for name in names}
    ruled_out = sorted(set(backends) & known - set(BACKENDS_BY_LAYOUT[layout]))
    _require(not ruled_out, path, f"requires.backends lists {', '.join(ruled_out)}, which cannot run layout {layout}")
    soc = requires["soc"]
    _require(soc is None or isinstance(soc, str) and soc != "", path, f"requires.soc {soc!r} is not null or a name")
    _require(layout != "nz" or soc is not None, path, "requires.soc is null in an nz file (FRACTAL_NZ is per SoC)")
    _require(layout != "nd" or soc is None, path, f"requires.soc is {soc!r} in an nd file (only nz is per SoC)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_f32(value: Any) -> bool:
    """A finite number that stays positive and finite as the 32-bit float the native library computes with."""
    if not _is_number(value) or value <= 0:
        return False
    with np.errstate(over="ignore", under="ignore"):
        as_f32 = np.float32(value)
    return bool(np.isfinite(as_f32) and as_f32 > 0)


def check_config(path: Path, config: Any) -> None:
    """Every rule on the manifest's config map (hyper-parameters with their upper bounds, rope scaling, special
    token ids); raises ManifestInvalid. The converter runs it as soon as it has read config.json."""
    _require(isinstance(config, dict), path, "config is not a map")
    for key, limit in CONFIG_INT_LIMITS.items():
        value = config.get(key)
        _require(_is_int(value) and 0 < value <= limit, path,
                 f"config.{key} is {value!r}, not an integer from 1 to {limit}")
    for key in CONFIG_FLOAT_KEYS:
        value = config.get(key)
        _require(_is_positive_f32(value), path, f"config.{key} is {value!r}, not a positive finite number "
                 "(as a 32-bit float, which the runtime computes in)")
    for key in CONFIG_NULLABLE_KEYS:
        _require(key in config, path, f"config has no key {key!r} (null when unset)")
    for key in CONFIG_BOOL_KEYS:
        _require(isinstance(config.get(key), bool), path, f"config.{key} is {config.get(key)!r}, not a boolean")
    _require(config["num_attention_heads"] % config["num_key_value_heads"] == 0, path,
             "config.num_attention_heads is not a multiple of config.num_key_value_heads")
    _require(config["head_dim"] % 2 == 0, path, "config.head_dim is odd (rotate-half RoPE needs it even)")
    _require(config["num_attention_heads"] * config["head_dim"] <= MAX_ATTENTION_WIDTH, path,
             f"config.num_attention_heads x config.head_dim is above {MAX_ATTENTION_WIDTH}")
    _check_rope_scaling(path, config.get("rope_scaling"))
    eos = config.get("eos_token_id")
    _require(isinstance(eos, list) and len(eos) <= MAX_EOS_IDS and all(_is_int(i) for i in eos), path,
             f"config.eos_token_id is {eos!r}, not a list of at most {MAX_EOS_IDS} token ids")
    vocab = config["vocab_size"]
    for key in ("bos_token_id", "pad_token_id"):
        value = config.get(key)
        _require(value is None or _is_int(value) and 0 <= value < vocab, path,
                 f"config.{key} is {value!r}, not null or a token id below vocab_size {vocab}")
    _require(all(0 <= i < vocab for i in eos), path, f"config.eos_token_id {eos} has ids outside [0, {vocab})")


def _check_rope_scaling(path: Path, scaling: Any) -> None:
    """null, or llama3 scaling whose formula is defined: factors > 0, high_freq_factor > low_freq_factor (the
    smoothing divides by their difference), original_max_position_embeddings a positive integer."""
    if scaling is None:
        return
    _require(isinstance(scaling, dict) and scaling.get("rope_type") in ROPE_SCALING_TYPES, path,
             f"config.rope_scaling {scaling!r} is not null or one of: {', '.join(ROPE_SCALING_TYPES)}")
    for key in LLAMA3_ROPE_KEYS[:3]:
        value = scaling.get(key)
        _require(_is_positive_f32(value), path,
                 f"config.rope_scaling.{key} is {value!r}, not a positive finite number (as a 32-bit float)")
    _require(np.float32(scaling["high_freq_factor"]) > np.float32(scaling["low_freq_factor"]), path,
             f"config.rope_scaling.high_freq_factor {scaling['high_freq_factor']} is not above low_freq_factor "
             f"{scaling['low_freq_factor']}")
    original = scaling.get("original_max_position_embeddings")
    _require(_is_int(original) and 0 < original <= CONFIG_INT_LIMITS["max_position_embeddings"], path,
             f"config.rope_scaling.original_max_position_embeddings is {original!r}, not an integer from 1 to "
             f"{CONFIG_INT_LIMITS['max_position_embeddings']}")


def tokenizer_max_id(tokenizer_json: str) -> int | None:
    """The highest token id a tokenizer.json can produce (its model's vocabulary, its added tokens and the ids its
    post-processor inserts), or None when the text is not a tokenizer.json this can read (the tokenizer loader
    reports that)."""
    try:
        data = json.loads(tokenizer_json)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    ids: list[int] = []
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: {piece: id}
        ids = [v for v in vocab.values() if _is_int(v)]
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], ids are positions
        ids = [len(vocab) - 1] if vocab else []
    added = data.get("added_tokens")
    if isinstance(added, list):
        ids += [t["id"] for t in added if isinstance(t, dict) and _is_int(t.get("id"))]
    ids += _post_processor_ids(data.get("post_processor"))
    return max(ids, default=None)


def _post_processor_ids(processor: Any) -> list[int]:
    """The token ids a tokenizer.json post-processor inserts: TemplateProcessing's special_tokens, Bert/Roberta's
    cls and sep pairs, and those of a Sequence's processors."""
    if not isinstance(processor, dict):
        return []
    ids: list[int] = []
    specials = processor.get("special_tokens")
    if isinstance(specials, dict):  # TemplateProcessing: {name: {"id", "ids": [...], "tokens"}}
        for special in specials.values():
            if isinstance(special, dict) and isinstance(special.get("ids"), list):
                ids += [i for i in special["ids"] if _is_int(i)]
    for key in ("cls", "sep"):  # BertProcessing, RobertaProcessing: [token, id]
        pair = processor.get(key)
        if isinstance(pair, list) and len(pair) == 2 and _is_int(pair[1]):
            ids.append(pair[1])
    inner = processor.get("processors")
    for step in inner if isinstance(inner, list) else []:  # Sequence
        ids += _post_processor_ids(step)
    return ids


def _check_tokenizer_ids(path: Path, tokenizer_json: str, vocab: int) -> None:
    highest = tokenizer_max_id(tokenizer_json)
    _require(highest is None or 0 <= highest < vocab, path,
             f"tokenizer has token id {highest}, outside the model's vocab_size {vocab} (embedding rows)")


def _validate_tensors(path: Path, manifest: dict[str, Any], preamble: Preamble) -> list[TensorEntry]:
    base = preamble.data_offset
    entries: list[TensorEntry] = []
    for index, raw in enumerate(manifest["tensors"]):
        if not isinstance(raw, dict) or any(key not in raw for key in TENSOR_KEYS):
            raise ManifestInvalid(f"{path}: tensors[{index}] lacks one of the keys {', '.join(TENSOR_KEYS)}")
        name = raw["name"]
        shape = raw["shape"]
        where = f"{path}: tensor {name!r} (tensors[{index}])"
        if (not isinstance(name, str) or not isinstance(shape, list)
                or not all(isinstance(d, int) and d > 0 for d in shape)
                or not isinstance(raw["offset"], int) or not isinstance(raw["nbytes"], int)
                or raw["offset"] < 0 or raw["nbytes"] < 0
                or not isinstance(raw["xxh3_64"], str) or len(raw["xxh3_64"]) != HASH_HEX_LEN
                or not set(raw["xxh3_64"]) <= HASH_HEX_DIGITS):
            raise ManifestInvalid(f"{where}: malformed entry {raw!r}")
        if raw["dtype"] != manifest["dtype"]:
            raise ManifestInvalid(f"{where}: dtype {raw['dtype']!r} differs from the file dtype {manifest['dtype']!r}")
        if raw["layout"] != tensor_layout(name, manifest["layout"]):
            raise ManifestInvalid(f"{where}: layout {raw['layout']!r}, expected "
                                  f"{tensor_layout(name, manifest['layout'])!r} in a {manifest['layout']} file")
        entry = TensorEntry(name, raw["dtype"], tuple(shape), raw["layout"], raw["offset"], raw["nbytes"],
                            raw["xxh3_64"])
        if entry.offset + entry.nbytes > preamble.data_nbytes:
            raise TensorOutOfBounds(
                f"{where}: bytes [{base + entry.offset}, {base + entry.offset + entry.nbytes}) lie outside the data "
                f"region [{base}, {base + preamble.data_nbytes})"
            )
        if entry.offset % TENSOR_ALIGNMENT:
            raise TensorMisaligned(f"{where}: offset {base + entry.offset} is not {TENSOR_ALIGNMENT}-byte aligned")
        if len(shape) not in (1, 2) or (entry.layout == "nz" and len(shape) != 2):
            raise ManifestInvalid(f"{where}: shape {shape} has an unsupported rank for layout {entry.layout}")
        expected_nbytes = tensor_nbytes(entry.shape, entry.dtype, entry.layout)
        if entry.nbytes != expected_nbytes:
            raise TensorSizeMismatch(
                f"{where}: nbytes {entry.nbytes} != {expected_nbytes} for shape {list(shape)} {entry.dtype} "
                f"{entry.layout}"
            )
        entries.append(entry)

    cursor = 0
    for entry in sorted(entries, key=lambda e: e.offset):
        if entry.offset < cursor:
            raise TensorOverlap(f"{path}: tensor {entry.name!r} at byte {base + entry.offset} overlaps the tensor "
                                f"before it, which ends at byte {base + cursor}")
        if entry.offset >= align_up(cursor, TENSOR_ALIGNMENT) + TENSOR_ALIGNMENT:
            raise TensorGap(f"{path}: {entry.offset - cursor} unused bytes before tensor {entry.name!r} at byte "
                            f"{base + entry.offset} (the data region must have no holes beyond alignment padding)")
        cursor = entry.offset + entry.nbytes
    if cursor != preamble.data_nbytes:
        raise TensorGap(f"{path}: the last tensor ends at byte {base + cursor} but the data region ends at byte "
                        f"{base + preamble.data_nbytes}")

    by_name: dict[str, TensorEntry] = {}
    for entry in entries:
        if entry.name in by_name:
            raise ManifestInvalid(f"{path}: tensor {entry.name!r} appears more than once")
        by_name[entry.name] = entry
    names = list(by_name)
    layers = manifest["config"]["num_hidden_layers"]
    if layers > len(entries):  # every layer has tensors: checked before the expected list is built for it
        raise TensorMissing(f"{path}: config.num_hidden_layers is {layers} but the manifest lists only "
                            f"{len(entries)} tensors")
    expected = expected_tensors(manifest["config"])
    for name, shape in expected.items():
        found = by_name.get(name)
        if found is None:
            raise TensorMissing(f"{path}: required tensor {name!r} is missing")
        if found.shape != shape:
            raise TensorSizeMismatch(f"{path}: tensor {name!r} has shape {list(found.shape)}, the config implies "
                                     f"{list(shape)}")
    unexpected = [name for name in names if name not in expected]
    if unexpected:
        raise TensorUnexpected(f"{path}: tensor {unexpected[0]!r} is not part of a {manifest['arch']} model with "
                               "this config")
    # The table lists the tensors in the order of §3 at the offsets packing them in that order gives, so that a
    # table whose entries were swapped (names, or offsets and hashes, between tensors of one shape) is refused
    # rather than run on the wrong weights: the hashes cover bytes, not which tensor they belong to.
    planned, _ = plan_offsets([entry.nbytes for entry in entries])
    for index, (entry, name, offset) in enumerate(zip(entries, expected, planned)):
        if entry.name != name:
            raise TensorOrder(f"{path}: tensors[{index}] is {entry.name!r}, but the table's order (execution "
                              f"order) puts {name!r} there")
        if entry.offset != offset:
            raise TensorOrder(f"{path}: tensor {entry.name!r} (tensors[{index}]) is at byte {base + entry.offset}, "
                              f"but the data region holds the tensors in table order, which puts it at byte "
                              f"{base + offset}")
    return entries
