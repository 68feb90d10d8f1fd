"""Reads a HuggingFace checkpoint directory: config.json, tokenizer files and one or many *.safetensors shards.

Tensors are read with safetensors' `safe_open` (memory-mapped), one tensor or one row block at a time, so the
converter never holds more than one block of the model in memory. bfloat16 tensors come back as ml_dtypes.bfloat16
arrays (numpy has no native bf16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16" dtype, needed by safetensors' numpy frontend)
import numpy as np
from safetensors import safe_open

from .base import SourceError, SourceMeta, SourceTensor, file_xxh3

INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


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


def _token_string(value: Any) -> str | None:
    """tokenizer_config special tokens are strings or AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def normalize_tokenizer_config(tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {key: _token_string(tokenizer_config.get(key))
                           for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    out["add_bos_token"] = bool(tokenizer_config.get("add_bos_token", False))
    out["add_eos_token"] = bool(tokenizer_config.get("add_eos_token", False))
    return out


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
        generation_path = directory / "generation_config.json"
        self.meta = SourceMeta(
            config=read_json(config_path),
            tokenizer_json=tokenizer_path.read_text(encoding="utf-8"),
            tokenizer_config=normalize_tokenizer_config(tokenizer_config),
            chat_template=load_chat_template(directory, tokenizer_config),
            generation_config=read_json(generation_path) if generation_path.is_file() else {},
            provenance=provenance or {"kind": "hf-dir", "id": directory.resolve().name, "revision": None},
        )
        self._shards = self._find_shards()
        self._tensors: dict[str, SourceTensor] = {}
        self._where: dict[str, Path] = {}
        for shard in self._shards:
            handle = self._open(shard)
            for name in handle.keys():
                if name in self._where:
                    raise SourceError(f"{shard}: tensor {name!r} also appears in {self._where[name]}")
                tensor_slice = handle.get_slice(name)
                dtype = tensor_slice.get_dtype()
                shape = tuple(int(d) for d in tensor_slice.get_shape())
                self._where[name] = shard
                itemsize = SUPPORTED_DTYPES.get(dtype, 0)
                self._tensors[name] = SourceTensor(name, shape, dtype, int(np.prod(shape, dtype=np.int64)) * itemsize)

    def _find_shards(self) -> list[Path]:
        index_path = self.path / INDEX_FILE
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
        return shards

    def _open(self, shard: Path) -> Any:
        """A fresh handle per read: safetensors maps the whole shard, and a long-lived mapping keeps every page
        read so far resident (counted in RSS); dropping the handle after each block releases them."""
        try:
            return safe_open(str(shard), framework="numpy")
        except Exception as exc:  # safetensors raises SafetensorError / OSError with its own text
            raise SourceError(f"{shard}: not a readable safetensors file: {exc}") from None

    def tensors(self) -> dict[str, SourceTensor]:
        return self._tensors

    def _checked(self, name: str) -> Any:
        info = self._tensors.get(name)
        if info is None:
            raise SourceError(f"{self.path}: tensor {name!r} is missing")
        if info.dtype not in SUPPORTED_DTYPES:
            raise SourceError(f"{self._where[name]}: tensor {name!r} has dtype {info.dtype}; supported: "
                              f"{', '.join(SUPPORTED_DTYPES)}")
        return self._open(self._where[name])

    def read(self, name: str) -> np.ndarray:
        return self.read_rows(name, 0, self._tensors[name].shape[0] if name in self._tensors else 0)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor (all of a 1-D one when start == 0 and stop == its length)."""
        handle = self._checked(name)
        try:
            return np.asarray(handle.get_slice(name)[start:stop])
        except Exception as exc:
            raise SourceError(f"{self._where[name]}: cannot read tensor {name!r}: {exc}") from None

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
