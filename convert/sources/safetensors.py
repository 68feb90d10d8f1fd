"""Reads a HuggingFace checkpoint directory: config.json, tokenizer files and one or many *.safetensors shards.

safetensors' `safe_open` validates every shard and names its tensors, shapes and dtypes; the bytes of one tensor or
one row block are then mapped on their own at the offsets the shard's header gives, so the converter never holds
more than one block of the model in memory and never copies the bytes out of the page cache. bfloat16 tensors
come back as `BF16_BITS` arrays (their raw bits; numpy has no native bf16, and importing ml_dtypes for one costs
about a second under numpy 2.4, a sixth of a whole conversion).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from ascend_super.runtime import format as fmt
from ascend_super.runtime.generate import GENERATION_KEYS
from ascend_super.runtime.native import BF16_BITS

from .base import SourceError, SourceMeta, SourceTensor, file_xxh3, map_range
from .tokenizer_class import as_transformers_builds, token_text

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # transformers' folder of named chat templates, NAME.jinja each
NUMPY_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BF16_BITS}
SUPPORTED_DTYPES = {name: dtype.itemsize for name, dtype in NUMPY_DTYPES.items()}
HEADER_SIZE = struct.Struct("<Q")  # a safetensors file starts with its JSON header's length


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return value


def load_chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The template transformers' apply_chat_template uses without a name: chat_template.jinja; else, where the folder
    has named template files (additional_chat_templates/NAME.jinja), which then take priority over
    tokenizer_config.json's entries, the one named default; else tokenizer_config.json's (its default one)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    named_files = sorted((directory / CHAT_TEMPLATE_DIR).glob("*.jinja"))
    if named_files:
        default = directory / CHAT_TEMPLATE_DIR / "default.jinja"
        if not default.is_file():
            raise SourceError(f"{directory / CHAT_TEMPLATE_DIR}: named chat templates "
                              f"({', '.join(p.stem for p in named_files)}) and none is named 'default', and they take "
                              "the place of tokenizer_config.json's in transformers; put the one to use in "
                              "chat_template.jinja beside them (in a local copy of the folder, for a hub download)")
        return default.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if named and "default" not in named:  # transformers' apply_chat_template refuses to choose one too
            raise SourceError(f"{directory / 'tokenizer_config.json'}: named chat templates "
                              f"({', '.join(sorted(map(str, named)))}) and none is named 'default'; put the one to use "
                              "in chat_template.jinja beside it (in a local copy of the folder, for a hub download)")
        template = named.get("default")
    return template if isinstance(template, str) else None


def _model_specific_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """transformers' model-specific named tokens, which its special_tokens_map (and so a chat template) also holds:
    the entries of an extra_special_tokens map, then (winning, as they are set last) the other top-level keys ending in
    "_token" whose value is a token (a string or an AddedToken). Only names ending in "_token" are kept."""
    named: dict[str, str] = {}
    extra = tokenizer_config.get("extra_special_tokens")
    candidates = [*(extra.items() if isinstance(extra, dict) else []),
                  *((key, value) for key, value in tokenizer_config.items()
                    if isinstance(value, str) or (isinstance(value, dict) and value.get("__type") == "AddedToken"))]
    for key, value in candidates:
        token = token_text(value)
        if isinstance(key, str) and fmt.is_special_token_name(key) and key not in fmt.SPECIAL_TOKEN_TEXT_KEYS \
                and token is not None:
            named[key] = token
    return named


def normalize_tokenizer_config(tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {key: token_text(tokenizer_config.get(key)) for key in fmt.SPECIAL_TOKEN_TEXT_KEYS}
    out.update(_model_specific_tokens(tokenizer_config))
    out.update({key: bool(tokenizer_config.get(key, False)) for key in fmt.SPECIAL_TOKEN_FLAG_KEYS})
    return out


def generation_from_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without generation_config.json: the generation keys its config.json sets (legacy checkpoints keep
    repetition_penalty, do_sample, ... there), which transformers' GenerationConfig.from_model_config then applies."""
    return {key: config[key] for key in GENERATION_KEYS if config.get(key) is not None}


class SafetensorsSource:
    """A local HF checkpoint directory. `provenance` is filled in by the resolver (hub id, commit) or defaults."""

    def __init__(self, directory: Path, provenance: dict[str, Any] | None = None) -> None:
        self.path = directory
        if not directory.is_dir():
            raise SourceError(f"{directory}: not a directory")
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise SourceError(f"{directory}: missing config.json (not a HuggingFace checkpoint directory)")
        tokenizer_path = directory / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise SourceError(f"{directory}: missing tokenizer.json (the .asw embeds it; slow-tokenizer-only "
                              "checkpoints are not supported)")
        tokenizer_config_path = directory / "tokenizer_config.json"
        tokenizer_config = read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
        special_map_path = directory / "special_tokens_map.json"
        if "added_tokens_decoder" not in tokenizer_config and special_map_path.is_file():
            # transformers' legacy rule (tokenization_utils_base.from_pretrained): without added_tokens_decoder in
            # tokenizer_config.json, special_tokens_map.json's tokens are read and take precedence
            tokenizer_config = {**tokenizer_config, **{key: value for key, value in read_json(special_map_path).items()
                                                       if fmt.is_special_token_name(key)}}
        generation_path = directory / "generation_config.json"
        config = read_json(config_path)
        tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
        try:
            tokenizer_json, tokenizer_config = as_transformers_builds(tokenizer_json, tokenizer_config, config)
        except SourceError as exc:
            raise SourceError(f"{directory}: {exc}") from None
        self.meta = SourceMeta(
            config=config,
            tokenizer_json=tokenizer_json,
            tokenizer_config=normalize_tokenizer_config(tokenizer_config),
            chat_template=load_chat_template(directory, tokenizer_config),
            generation_config=(read_json(generation_path) if generation_path.is_file()
                               else generation_from_model_config(config)),
            provenance=provenance or {"kind": "hf-dir", "id": directory.resolve().name, "revision": None},
        )
        self._shards = self._find_shards(config)
        self._tensors: dict[str, SourceTensor] = {}
        self._where: dict[str, Path] = {}
        self._offsets: dict[str, int] = {}  # file offset of each tensor's first byte
        for shard in self._shards:
            handle = self._open(shard)  # safetensors validates the header: offsets in bounds, contiguous, sized
            offsets = self._data_offsets(shard)
            for name in handle.keys():
                if name in self._where:
                    hint = (f" (without {SINGLE_FILE} or {INDEX_FILE}, every *.safetensors file of the folder is "
                            "read: remove the files that are not this checkpoint's)") if self._globbed else ""
                    raise SourceError(f"{shard}: tensor {name!r} also appears in {self._where[name]}{hint}")
                tensor_slice = handle.get_slice(name)
                dtype = tensor_slice.get_dtype()
                shape = tuple(int(d) for d in tensor_slice.get_shape())
                self._where[name] = shard
                itemsize = SUPPORTED_DTYPES.get(dtype, 0)
                nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
                begin, end = offsets.get(name, (0, -1))
                if itemsize and end - begin != nbytes:
                    raise SourceError(f"{shard}: tensor {name!r}: header gives {end - begin} bytes at offset "
                                      f"{begin}, its shape {list(shape)} in {dtype} needs {nbytes}")
                self._offsets[name] = begin
                self._tensors[name] = SourceTensor(name, shape, dtype, nbytes)

    @staticmethod
    def _data_offsets(shard: Path) -> dict[str, tuple[int, int]]:
        """[begin, end) file offsets of each tensor's bytes, from the header that safe_open has just validated
        (safetensors does not expose them): an 8-byte length, that many bytes of JSON, then the data."""
        try:
            with open(shard, "rb") as handle:
                (length,) = HEADER_SIZE.unpack(handle.read(HEADER_SIZE.size))
                header = json.loads(handle.read(length))
            start = HEADER_SIZE.size + length
            return {name: (start + int(entry["data_offsets"][0]), start + int(entry["data_offsets"][1]))
                    for name, entry in header.items() if name != "__metadata__"}
        except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
            raise SourceError(f"{shard}: cannot read the tensor offsets of its header: {exc}") from None

    def _find_shards(self, config: dict[str, Any]) -> list[Path]:
        """The files transformers would load, in its order of preference (modeling_utils: the file config.json's
        transformers_weights names, model.safetensors, the index's shards); a folder with none of them has every
        *.safetensors file read (self._globbed), each tensor from one file."""
        self._globbed = False
        explicit = config.get("transformers_weights")
        if explicit is not None:
            named = self.path / str(explicit)
            if not isinstance(explicit, str) or named.resolve().parent != self.path.resolve() or \
                    not named.name.endswith((".safetensors", ".safetensors.index.json")) or not named.is_file():
                raise SourceError(f"{self.path / 'config.json'}: transformers_weights {explicit!r} is not a "
                                  "safetensors file or index in the checkpoint folder")
            if named.name.endswith(".safetensors"):
                return [named]
        single_path = self.path / SINGLE_FILE
        if explicit is None and single_path.is_file():
            return [single_path]  # transformers loads it even beside an index and its shards
        index_path = named if explicit is not None else self.path / INDEX_FILE
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise SourceError(f"{index_path}: no weight_map")
            shards = sorted({self.path / str(f) for f in weight_map.values()})
            escaping = [s for s in shards if s.resolve().parent != self.path.resolve()]
            if escaping:
                raise SourceError(f"{index_path}: weight_map names a file outside the checkpoint folder: "
                                  f"{escaping[0]}")
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise SourceError(f"{index_path}: shard file(s) listed in weight_map are missing: {', '.join(missing)}")
            return shards
        shards = sorted(self.path.glob("*.safetensors"))
        if not shards:
            raise SourceError(f"{self.path}: no *.safetensors files (and no {INDEX_FILE})")
        self._globbed = True
        return shards

    def _open(self, shard: Path) -> Any:
        try:
            return safe_open(str(shard), framework="numpy")
        except Exception as exc:  # safetensors raises SafetensorError / OSError with its own text
            raise SourceError(f"{shard}: not a readable safetensors file: {exc}") from None

    def tensors(self) -> dict[str, SourceTensor]:
        return self._tensors

    def _checked(self, name: str) -> SourceTensor:
        info = self._tensors.get(name)
        if info is None:
            raise SourceError(f"{self.path}: tensor {name!r} is missing")
        if info.dtype not in SUPPORTED_DTYPES:
            raise SourceError(f"{self._where[name]}: tensor {name!r} has dtype {info.dtype}; supported: "
                              f"{', '.join(SUPPORTED_DTYPES)}")
        return info

    def read(self, name: str) -> np.ndarray:
        return self.read_rows(name, 0, self._tensors[name].shape[0] if name in self._tensors else 0)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor (all of a 1-D one when start == 0 and stop == its length), as float32,
        float16 or BF16_BITS: a read-only array over a map of just those bytes (see map_range)."""
        info = self._checked(name)
        shape = info.shape if info.shape else (1,)
        if not 0 <= start <= stop <= shape[0]:
            raise SourceError(f"{self._where[name]}: tensor {name!r}: rows [{start}, {stop}) outside its "
                              f"{shape[0]} rows")
        row_nbytes = info.nbytes // shape[0] if shape[0] else 0
        dtype = NUMPY_DTYPES[info.dtype]
        rows = (stop - start, *shape[1:])
        offset, nbytes = self._offsets[name] + start * row_nbytes, (stop - start) * row_nbytes
        if nbytes == 0:
            return np.empty(rows, dtype=dtype)
        try:
            fd = os.open(self._where[name], os.O_RDONLY)
            try:
                window, at = map_range(fd, offset, nbytes)  # the array keeps the map alive, not the descriptor
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            raise SourceError(f"{self._where[name]}: cannot read tensor {name!r} at byte {offset}: {exc}") from None
        out = np.frombuffer(window, dtype=dtype, count=nbytes // dtype.itemsize, offset=at).reshape(rows)
        return out.reshape(info.shape) if not info.shape else out

    def file_names(self) -> list[str]:
        return [shard.name for shard in self._shards]

    def file_hashes(self) -> dict[str, str]:
        return {shard.name: file_xxh3(shard) for shard in self._shards}

    def close(self) -> None:
        """Nothing stays open between reads."""

    def __enter__(self) -> "SafetensorsSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
