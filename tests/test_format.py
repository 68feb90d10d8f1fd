"""The .asw reader: a valid file opens; each malformed file raises its own named error with the byte offset or
tensor, and `ascend-inspect` turns it into one line on stderr (exit 2), never a traceback."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np
import pytest
import xxhash

from ascend_super.runtime import format as fmt
from conftest import run_cli


def read_parts(path: Path) -> tuple[fmt.Preamble, dict[str, Any], bytes]:
    with fmt.AswFile.open(path) as asw:
        data = bytes(asw.data_region())
        return asw.preamble, asw.manifest, data


def rebuild(path: Path, manifest: dict[str, Any], data: bytes, alignment: int = 4096,
            raw_manifest: bytes | None = None, **preamble_fields: int) -> None:
    """Write a file from parts with the format's own packing (so tests can break exactly one thing)."""
    path.write_bytes(assemble(manifest, data, alignment, raw_manifest, **preamble_fields))


def assemble(manifest: dict[str, Any] | None, data: bytes, alignment: int = 4096, raw_manifest: bytes | None = None,
             **preamble_fields: int) -> bytes:
    """The bytes of a file around `manifest` (or `raw_manifest` bytes) with a consistent checksum and layout; the
    preamble fields given override the computed ones."""
    packed = raw_manifest if raw_manifest is not None else fmt.pack_manifest(manifest)
    data_offset = fmt.layout_file(len(packed), alignment)
    fields = dict(version_major=fmt.VERSION_MAJOR, version_minor=fmt.VERSION_MINOR, flags=0,
                  manifest_offset=fmt.PREAMBLE_NBYTES, manifest_nbytes=len(packed),
                  manifest_xxh3_64=xxhash.xxh3_64_intdigest(packed), data_offset=data_offset,
                  data_nbytes=len(data), data_alignment=alignment)
    fields.update(preamble_fields)
    body = fmt.Preamble(**fields).pack() + packed
    return body + b"\0" * (data_offset - len(body)) + data


def tensor(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in manifest["tensors"] if t["name"] == name)


def _patch_preamble(offset: int, fmt_char: str, value: int) -> Callable[[Path], None]:
    def patch(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        struct.pack_into("<" + fmt_char, raw, offset, value)
        path.write_bytes(bytes(raw))
    return patch


def _manifest_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        _, manifest, data = read_parts(path)
        change(manifest)
        rebuild(path, manifest, data)
    return edit


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:-1000])


def _not_msgpack(path: Path) -> None:
    _, manifest, data = read_parts(path)
    rebuild(path, manifest, data, raw_manifest=b"\xc1" * 100)


def _out_of_region(m: dict[str, Any]) -> None:
    tensor(m, "output_norm.weight")["offset"] = 10**9


def _overlap(m: dict[str, Any]) -> None:
    tensor(m, "blk.0.attn_qkv.weight")["offset"] = tensor(m, "blk.0.attn_norm.weight")["offset"]


def _misaligned(m: dict[str, Any]) -> None:
    tensor(m, "blk.0.attn_qkv.weight")["offset"] += 2


def _size_mismatch(m: dict[str, Any]) -> None:
    tensor(m, "blk.1.ffn_down.weight")["shape"] = [128, 199]


def _missing(m: dict[str, Any]) -> None:
    entry = tensor(m, "output.weight")
    m["tensors"].remove(entry)
    # keep the region hole-free: the data region then ends where the tensor before it ends
    m["_cut_to"] = entry["offset"]


def _drop_key(m: dict[str, Any]) -> None:
    del m["tokenizer"]


def _trailing(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0" * 7)


def _bad_hash(path: Path) -> None:
    with fmt.AswFile.open(path) as asw:
        where = asw.preamble.data_offset + asw.by_name["blk.1.attn_output.weight"].offset + 10
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0xFF
    path.write_bytes(bytes(raw))


def _missing_tensor_file(path: Path) -> None:
    _, manifest, data = read_parts(path)
    _missing(manifest)
    cut = manifest.pop("_cut_to")
    last_end = max(t["offset"] + t["nbytes"] for t in manifest["tensors"])
    assert last_end <= cut
    rebuild(path, manifest, data[:last_end])


def _swap(m: dict[str, Any], first: str, second: str, keys: tuple[str, ...]) -> None:
    """Exchange `keys` between two tensor entries (of one shape: every other check still passes)."""
    a, b = tensor(m, first), tensor(m, second)
    for key in keys:
        a[key], b[key] = b[key], a[key]


def _post_processor_beyond_vocab(m: dict[str, Any]) -> None:
    data = json.loads(m["tokenizer"])
    data["post_processor"] = {"type": "TemplateProcessing", "single": [], "pair": [], "special_tokens": {
        "<x>": {"id": "<x>", "ids": [100_000], "tokens": ["<x>"]}}}
    m["tokenizer"] = json.dumps(data)


CASES: dict[str, tuple[Callable[[Path], None], type[fmt.FormatError], str]] = {
    "bad magic": (_patch_preamble(0, "8s", 0) if False else (lambda p: p.write_bytes(b"GGUF" + p.read_bytes()[4:])),
                  fmt.BadMagic, "not a .asw file (bytes 0-7"),
    "newer major": (_patch_preamble(8, "H", 2), fmt.UnsupportedVersion, f"format version 2.{fmt.VERSION_MINOR} is newer than this reader"),
    "truncated": (_truncate, fmt.TruncatedFile, "the file is truncated"),
    "tiny file": (lambda p: p.write_bytes(p.read_bytes()[:20]), fmt.TruncatedFile, "shorter than the 64-byte preamble"),
    "manifest beyond EOF": (_patch_preamble(24, "Q", 10**8), fmt.ManifestOutOfBounds, "extends beyond the end of the file"),
    "manifest checksum": (_patch_preamble(32, "Q", 12345), fmt.ManifestChecksumMismatch, "do not match the checksum"),
    "manifest not msgpack": (_not_msgpack, fmt.ManifestNotMsgpack, "manifest at byte 64 is not valid msgpack"),
    "manifest missing key": (_manifest_edit(_drop_key), fmt.ManifestInvalid, "manifest is missing key(s): tokenizer"),
    "bad config value": (_manifest_edit(lambda m: m["config"].update(num_key_value_heads=3)), fmt.ManifestInvalid,
                         "num_attention_heads is not a multiple of config.num_key_value_heads"),
    "tensor outside region": (_manifest_edit(_out_of_region), fmt.TensorOutOfBounds,
                              "'output_norm.weight' (tensors[15]): bytes [10000"),
    "overlapping tensors": (_manifest_edit(_overlap), fmt.TensorOverlap, "overlaps the tensor before it"),
    "misaligned tensor": (_manifest_edit(_misaligned), fmt.TensorMisaligned, "is not 512-byte aligned"),
    "shape x dtype != nbytes": (_manifest_edit(_size_mismatch), fmt.TensorSizeMismatch,
                                "'blk.1.ffn_down.weight' (tensors[14]): nbytes 51200 != 50944"),
    "required tensor missing": (_missing_tensor_file, fmt.TensorMissing, "required tensor 'output.weight' is missing"),
    "trailing bytes": (_trailing, fmt.TrailingBytes, "7 bytes after the data region"),
    "tensor names swapped": (_manifest_edit(lambda m: _swap(m, "token_embd.weight", "output.weight", ("name",))),
                             fmt.TensorOrder, "tensors[0] is 'output.weight', but the table's order"),
    "tensor bytes swapped": (_manifest_edit(lambda m: _swap(m, "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight",
                                                            ("offset", "xxh3_64"))),
                             fmt.TensorOrder, "tensor 'blk.0.attn_norm.weight' (tensors[1]) is at byte"),
    "hash not lowercase hex": (_manifest_edit(lambda m: m["tensors"][0].update(xxh3_64="ABCDEF0123456789")),
                               fmt.ManifestInvalid, "malformed entry"),
    "bytes in a JSON map": (_manifest_edit(lambda m: m["generation_config"].update(temperature=b"\x01")),
                            fmt.ManifestInvalid, "generation_config.temperature is b'\\x01', not a JSON value"),
    "NaN in a JSON map": (_manifest_edit(lambda m: m["source"].update(extra=[float("nan")])), fmt.ManifestInvalid,
                          "source.extra[0] is nan, not a JSON value"),
    "non-string key": (_manifest_edit(lambda m: m["special_tokens"].update({b"k": 1})), fmt.ManifestInvalid,
                       "special_tokens has the key b'k', not a string"),
    "special token not text": (_manifest_edit(lambda m: m["special_tokens"].update(eos_token=2)), fmt.ManifestInvalid,
                               "special_tokens.eos_token is 2, not a string or null"),
    "model-specific token not text": (_manifest_edit(lambda m: m["special_tokens"].update(image_token=[1])),
                                      fmt.ManifestInvalid, "special_tokens.image_token is [1], not a string or null"),
    "special flag not bool": (_manifest_edit(lambda m: m["special_tokens"].update(add_bos_token=1)),
                              fmt.ManifestInvalid, "special_tokens.add_bos_token is 1, not a boolean"),
    "eps zero as float32": (_manifest_edit(lambda m: m["config"].update(rms_norm_eps=1e-300)), fmt.ManifestInvalid,
                            "config.rms_norm_eps is 1e-300, not a positive finite number (as a 32-bit float"),
    "theta infinite as float32": (_manifest_edit(lambda m: m["config"].update(rope_theta=1e39)), fmt.ManifestInvalid,
                                  "config.rope_theta is 1e+39, not a positive finite number"),
    "config key absent": (_manifest_edit(lambda m: m["config"].pop("pad_token_id")), fmt.ManifestInvalid,
                          "config has no key 'pad_token_id' (null when unset)"),
    "1.1 file without requires": (_manifest_edit(lambda m: m.pop("requires")), fmt.ManifestInvalid,
                                  'manifest has no "requires" map, which format 1.1 files must have'),
    "SoC in an nd file": (_manifest_edit(lambda m: m["requires"].update(soc="ascend910b")), fmt.ManifestInvalid,
                          "requires.soc is 'ascend910b' in an nd file"),
    "post-processor id past the vocabulary": (_manifest_edit(_post_processor_beyond_vocab), fmt.ManifestInvalid,
                                              "tokenizer has token id 100000, outside the model's vocab_size"),
}


@pytest.fixture()
def good_file(tmp_path: Path, converted) -> Path:
    path = tmp_path / "model.asw"
    path.write_bytes(converted("qwen2-gqa-hd64").read_bytes())
    return path


def test_valid_file_opens(good_file: Path) -> None:
    with fmt.AswFile.open(good_file) as asw:
        assert asw.manifest["arch"] == "qwen2"
        asw.verify()


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_file(case: str, good_file: Path) -> None:
    corrupt, error, message = CASES[case]
    corrupt(good_file)
    with pytest.raises(error) as caught:
        fmt.AswFile.open(good_file).close()
    assert message in str(caught.value)
    assert str(good_file) in str(caught.value)
    result = run_cli("ascend-inspect", str(good_file))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_verify_names_bad_tensor(good_file: Path) -> None:
    _bad_hash(good_file)
    fmt.AswFile.open(good_file).close()  # opening does not hash the data
    with fmt.AswFile.open(good_file) as asw, pytest.raises(fmt.HashMismatch, match="blk.1.attn_output.weight"):
        asw.verify()
    result = run_cli("ascend-inspect", str(good_file), "--verify")
    assert result.returncode == 1
    assert "verify failed" in result.stderr and "'blk.1.attn_output.weight'" in result.stderr
    as_json = run_cli("ascend-inspect", str(good_file), "--verify", "--json")
    assert as_json.returncode == 1 and as_json.stdout == ""  # no JSON for a file that failed its check


def test_verify_checks_padding(good_file: Path) -> None:
    with fmt.AswFile.open(good_file) as asw:
        norm = asw.by_name["blk.0.attn_norm.weight"]  # 256 bytes, then padding up to the next 512
        where = asw.preamble.data_offset + norm.offset + norm.nbytes
    assert norm.nbytes % fmt.TENSOR_ALIGNMENT
    raw = bytearray(good_file.read_bytes())
    raw[where] = 7
    good_file.write_bytes(bytes(raw))
    with fmt.AswFile.open(good_file) as asw, pytest.raises(fmt.NonZeroPadding, match=f"padding bytes \\[{where},"):
        asw.verify()
    result = run_cli("ascend-inspect", str(good_file), "--verify")
    assert result.returncode == 1 and "are not all zero" in result.stderr


def test_inspect_json_and_verify(good_file: Path) -> None:
    result = run_cli("ascend-inspect", str(good_file), "--json", "--verify")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["arch"] == "qwen2" and info["config"]["head_dim"] == 64 and info["verified"] is True
    assert info["tensors"][0]["name"] == "token_embd.weight" and info["tensors"][0]["offset"] == info["data_offset"]
    assert "all hashes match" in result.stderr
    human = run_cli("ascend-inspect", str(good_file))
    assert human.returncode == 0 and "blk.1.ffn_gate_up.weight" in human.stdout and "400x128" in human.stdout


def test_unknown_flags_and_manifest_keys_are_ignored(good_file: Path) -> None:
    """Minor versions may add manifest keys; a 1.x reader reads a 1.(x+1) file."""
    _, manifest, data = read_parts(good_file)
    manifest["future_key"] = {"anything": 1}
    rebuild(good_file, manifest, data, version_minor=7)
    with fmt.AswFile.open(good_file) as asw:
        assert asw.preamble.version_minor == 7


def test_msgpack_roundtrip_of_real_manifest(good_file: Path) -> None:
    raw = good_file.read_bytes()
    preamble = fmt.PREAMBLE_STRUCT.unpack(raw[:64])
    manifest = msgpack.unpackb(raw[64:64 + preamble[5]])
    assert manifest["tensors"][0]["xxh3_64"] == f"{xxhash.xxh3_64_intdigest(raw[preamble[7]:preamble[7] + manifest['tensors'][0]['nbytes']]):016x}"


def test_random_corruption_never_crashes(good_file: Path) -> None:
    """Flipped bytes in the preamble or manifest give a FormatError (or, in padding, a file that still opens),
    never another exception."""
    original = good_file.read_bytes()
    with fmt.AswFile.open(good_file) as asw:
        manifest_end = 64 + asw.preamble.manifest_nbytes
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "opened": 0}
    for _ in range(300):
        raw = bytearray(original)
        for position in rng.integers(0, manifest_end, size=int(rng.integers(1, 4))):
            raw[position] = int(rng.integers(0, 256))
        good_file.write_bytes(bytes(raw))
        try:
            fmt.AswFile.open(good_file).close()
            outcomes["opened"] += 1
        except fmt.FormatError:
            outcomes["error"] += 1
    assert outcomes["error"] > 250


def test_forged_manifest_with_valid_checksum(good_file: Path) -> None:
    """A manifest rewritten with the right checksum but absurd values is still refused by name."""
    _, manifest, data = read_parts(good_file)
    for change, message in [
        (lambda m: m["config"].update(hidden_size=2**40), "config.hidden_size is 1099511627776, not an integer"),
        (lambda m: m["config"].update(hidden_size=m["config"]["hidden_size"] * 2), "has shape"),
        (lambda m: m["config"].update(num_hidden_layers=-1), "config.num_hidden_layers is -1"),
        (lambda m: m["tensors"][0].update(shape=[2**62, 2**62]), "nbytes"),
        (lambda m: m["tensors"].__setitem__(0, "nonsense"), "tensors[0] lacks one of the keys"),
        (lambda m: m.update(tensors=[]), "the last tensor ends at byte"),
        (lambda m: m.update(dtype="fp8"), "dtype 'fp8' is not one of"),
    ]:
        forged = msgpack.unpackb(msgpack.packb(manifest))
        change(forged)
        rebuild(good_file, forged, data)
        with pytest.raises(fmt.FormatError, match=re.escape(message)):
            fmt.AswFile.open(good_file).close()


def test_llama3_factors_compare_as_float32(good_file: Path) -> None:
    """high_freq_factor above low_freq_factor in f64 but equal in the native library's f32 (its smoothing divides by
    their difference) is refused."""
    with fmt.AswFile.open(good_file) as asw:
        config = dict(asw.manifest["config"])
    config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 1.0000000001, "original_max_position_embeddings": 64}
    with pytest.raises(fmt.ManifestInvalid, match="high_freq_factor 1.0000000001 is not above low_freq_factor"):
        fmt.check_config(good_file, config)


def test_deeply_nested_json_map_is_one_error(good_file: Path) -> None:
    """A manifest map nested deeper than Python's recursion (msgpack unpacks it) is refused as invalid."""
    _, manifest, data = read_parts(good_file)
    manifest["source"]["x"] = "PLACEHOLDER"
    packed = fmt.pack_manifest(manifest)
    nested = packed.replace(msgpack.packb("PLACEHOLDER"), b"\x91" * 990 + b"\xc0")  # [[[...[nil]...]]]
    good_file.write_bytes(assemble(None, data, raw_manifest=nested))
    with pytest.raises(fmt.ManifestInvalid, match="manifest source is nested too deeply"):
        fmt.AswFile.open(good_file)
