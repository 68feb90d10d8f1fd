"""Fuzzing the Python reader (runtime/format.py AswFile.open and every check behind it) with hypothesis.

Cases are mutations of real files — the golden artifact and small converted models (tied, untied, llama3 rope
scaling, bf16 FRACTAL_NZ, GQA 7:1) — at five levels, so that they reach every check and not only the first one:
  raw       bytes of the file edited, inserted, deleted, truncated or appended anywhere (mostly the header);
  preamble  preamble fields set to boundary values, the rest of the file intact;
  msgpack   bytes of the manifest edited, then the checksum and layout made consistent again;
  manifest  the decoded manifest tree edited (values replaced by values of any type and size, keys deleted or
            added, tensor entries duplicated, dropped, moved, resized), then packed, checksummed and laid out;
  config    hyper-parameters set to boundary values (0, negative, 2**63, 10**12 layers) or to other types.
Every case must be accepted, or refused with exactly one FormatError whose message is one line naming the file;
an accepted file must also survive what ascend-inspect does with it (describe, verify). Any other exception, or a
case that runs past HANG_GUARD_S, fails the test with the case hypothesis found (and shrank).

The number of cases is a setting: ASW_FUZZ_EXAMPLES (default FUZZ_EXAMPLES_DEFAULT, about a minute of one CI
core); ASW_FUZZ_SEED fixes hypothesis' seed to replay a run.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ascend_super.runtime import format as fmt
from ascend_super.runtime.inspect import describe
from test_format import assemble

REPO = Path(__file__).resolve().parent.parent
FUZZ_EXAMPLES_DEFAULT = 10_000
FUZZ_EXAMPLES = int(os.environ.get("ASW_FUZZ_EXAMPLES", FUZZ_EXAMPLES_DEFAULT))
HANG_GUARD_S = 20  # one case still running after this long is a hang (not a speed check)
MAX_MESSAGE_CHARS = fmt.MAX_ERROR_CHARS + 100  # a "clear" error is a line, not a dump of the manifest

# integers where checks change their answer: zero, one, sign, 8/16/32/64-bit edges, huge
BOUNDARY_INTS = [0, 1, 2, 3, 7, 16, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
                 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 10**12, -1, -(2**31), -(2**63)]


class Hang(Exception):
    """A case ran past HANG_GUARD_S."""


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang(f"one case ran for more than {HANG_GUARD_S} s")


# ----------------------------------------------------------------------------------------------------- seeds
class Seed:
    """A valid file taken apart: its bytes, preamble, manifest and data region."""

    def __init__(self, path: Path) -> None:
        self.raw = path.read_bytes()
        with fmt.AswFile.open(path) as asw:
            self.preamble = asw.preamble
            self.manifest = asw.manifest
            self.data = bytes(asw.data_region())
        self.header_end = self.preamble.data_offset  # preamble + manifest + padding


@pytest.fixture(scope="module")
def seeds(converted) -> list[Seed]:
    paths = [REPO / "artifacts" / "golden-qwen2.asw", converted("qwen2-tied-hd128"),
             converted("llama-llama3", "bf16", "nz"), converted("qwen2-gqa7")]
    return [Seed(path) for path in paths]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "case.asw"


# ------------------------------------------------------------------------------------------------ strategies
ints = st.one_of(st.sampled_from(BOUNDARY_INTS), st.integers(min_value=-(2**64), max_value=2**64))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=24), st.binary(max_size=24))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=12), scalars, max_size=4))


def mutate_raw(draw: Callable[..., Any], case: Seed) -> bytes:
    raw = bytearray(case.raw)
    for _ in range(draw(st.integers(1, 6))):
        hot = min(len(raw), case.header_end + 64)  # most of the checks read the header
        limit = draw(st.sampled_from([hot, len(raw) + 1])) if raw else 1
        where = draw(st.integers(0, max(limit - 1, 0)))
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "append"]))
        if op == "set" and where < len(raw):
            raw[where] = draw(st.integers(0, 255))
        elif op == "flip" and where < len(raw):
            raw[where] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del raw[where:where + draw(st.integers(1, 64))]
        elif op == "truncate":
            del raw[where:]
        elif op == "append":
            raw += draw(st.binary(min_size=1, max_size=4096))
    return bytes(raw)


PREAMBLE_FIELDS = ("version_major", "version_minor", "flags", "manifest_offset", "manifest_nbytes",
                   "manifest_xxh3_64", "data_offset", "data_nbytes", "data_alignment")
FIELD_BITS = dict(version_major=16, version_minor=16, flags=32, data_alignment=32)


def mutate_preamble(draw: Callable[..., Any], case: Seed) -> bytes:
    fields = {name: getattr(case.preamble, name) for name in PREAMBLE_FIELDS}
    for name in draw(st.lists(st.sampled_from(PREAMBLE_FIELDS), min_size=1, max_size=3, unique=True)):
        bits = FIELD_BITS.get(name, 64)
        near = [fields[name] + d for d in (-1, 1, -512, 512, -4096, 4096)] + [fields[name] * 2, fields[name] // 2]
        candidate = draw(st.one_of(st.sampled_from(BOUNDARY_INTS + near), st.integers(0, 2**bits - 1)))
        fields[name] = candidate % (1 << bits)  # what the packed field can hold
    raw = bytearray(case.raw)
    raw[:fmt.PREAMBLE_NBYTES] = fmt.Preamble(**fields).pack()
    if draw(st.booleans()):  # reserved bytes too
        raw[60:64] = struct.pack("<I", draw(st.sampled_from([0, 1, 2**32 - 1])))
    return bytes(raw)


def mutate_msgpack(draw: Callable[..., Any], case: Seed) -> bytes:
    packed = bytearray(fmt.pack_manifest(case.manifest))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(packed) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            packed[where] = draw(st.integers(0, 255))
        elif op == "insert":
            packed[where:where] = draw(st.binary(min_size=1, max_size=9))
        elif len(packed) > 1:
            del packed[where:where + draw(st.integers(1, 16))]
    return assemble(None, case.data, case.preamble.data_alignment, bytes(packed))


def pack_or_original(manifest: dict[str, Any], case: Seed) -> bytes:
    """The edited manifest packed, or the seed's own where msgpack cannot hold a drawn value (an int >= 2**64)."""
    try:
        return msgpack.packb(manifest, use_bin_type=True)
    except (OverflowError, ValueError):
        return fmt.pack_manifest(case.manifest)


def _containers(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every map and list in the manifest tree with its path (the tokenizer text is a leaf)."""
    found = [(path, node)]
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        if isinstance(child, (dict, list)):
            found += _containers(child, path + (key,))
    return found


def mutate_manifest(draw: Callable[..., Any], case: Seed) -> bytes:
    manifest = msgpack.unpackb(fmt.pack_manifest(case.manifest), raw=False)  # a deep copy
    data = case.data
    for _ in range(draw(st.integers(1, 3))):
        _, node = draw(st.sampled_from(_containers(manifest)))
        op = draw(st.sampled_from(["replace", "nudge", "delete", "add", "duplicate", "swap"]))
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys or op == "add":
            if isinstance(node, dict):
                node[draw(st.one_of(st.text(max_size=12), st.sampled_from(list(fmt.MANIFEST_KEYS))))] = draw(values)
            else:
                node.insert(draw(st.integers(0, len(node))), draw(values))
            continue
        key = draw(st.sampled_from(keys))
        if op == "replace":
            node[key] = draw(values)
        elif op == "nudge" and isinstance(node[key], int) and not isinstance(node[key], bool):
            node[key] = draw(st.sampled_from([node[key] + d for d in (-1, 1, -512, 512)] +
                                             [node[key] * 2, 0, -node[key], node[key] * 10**9]))
        elif op == "delete":
            del node[key]
        elif op == "duplicate" and isinstance(node, list):
            node.insert(key, node[key])
        elif op == "swap" and len(keys) > 1:
            other = draw(st.sampled_from(keys))
            node[key], node[other] = node[other], node[key]
    if draw(st.booleans()):  # the data region resized too, so table changes can line up with it
        delta = draw(st.one_of(st.sampled_from([-4096, -512, -2, 2, 512, 4096]), st.integers(-8192, 8192)))
        data = (data + b"\0" * 8192)[:max(0, len(data) + delta)]
    return assemble(None, data, case.preamble.data_alignment, pack_or_original(manifest, case))


def mutate_config(draw: Callable[..., Any], case: Seed) -> bytes:
    """Hyper-parameters set to boundary values (0, negative, 2**31, 2**63, 10**12 layers, …) or other types."""
    manifest = msgpack.unpackb(fmt.pack_manifest(case.manifest), raw=False)
    config = manifest["config"]
    for key in draw(st.lists(st.sampled_from(sorted(config)), min_size=1, max_size=3, unique=True)):
        config[key] = draw(st.one_of(st.sampled_from(BOUNDARY_INTS), values))
    return assemble(None, case.data, case.preamble.data_alignment, pack_or_original(manifest, case))


MUTATORS = {"raw": mutate_raw, "preamble": mutate_preamble, "msgpack": mutate_msgpack, "manifest": mutate_manifest,
            "config": mutate_config}


# ------------------------------------------------------------------------------------------------- the check
def check_one(path: Path) -> str:
    """Open `path` as every consumer does; returns 'accepted' or the error class name. Raises on anything else."""
    try:
        asw = fmt.AswFile.open(path)
    except fmt.FormatError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, f"unclear error: {message[:3000]!r}"
        assert message.startswith(f"{path}:"), f"error does not name the file: {message[:300]!r}"
        return type(exc).__name__
    with asw:
        describe(asw)  # what ascend-inspect prints
        try:
            asw.verify()
        except (fmt.HashMismatch, fmt.NonZeroPadding):
            pass
    return "accepted"


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


OUTCOMES: dict[str, int] = {}


def _maybe_seeded(test: Callable) -> Callable:
    return seed(int(os.environ["ASW_FUZZ_SEED"]))(test) if "ASW_FUZZ_SEED" in os.environ else test


def run_case(data: st.DataObject, seeds: list[Seed], scratch: Path) -> None:
    """Draw a seed file and a mutation, write the case to `scratch`, check it (under the hang guard)."""
    case = data.draw(st.sampled_from(seeds), label="seed file")
    kind = data.draw(st.sampled_from(sorted(MUTATORS)), label="mutation")
    scratch.write_bytes(MUTATORS[kind](data.draw, case))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD_S)
    try:
        outcome = check_one(scratch)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    OUTCOMES[f"{kind}: {outcome}"] = OUTCOMES.get(f"{kind}: {outcome}", 0) + 1


def test_reader_fuzz_accepts_or_refuses_with_one_format_error(seeds: list[Seed], scratch: Path) -> None:
    @_maybe_seeded
    @fuzz_settings(FUZZ_EXAMPLES)
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        run_case(data, seeds, scratch)

    OUTCOMES.clear()
    fuzz()
    total = sum(OUTCOMES.values())
    print(f"\nreader fuzz: {total} cases; " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    assert total >= min(FUZZ_EXAMPLES, 100)  # the cases really ran
    assert any(key.endswith("accepted") for key in OUTCOMES)  # mutations that keep a file valid exist
    assert sum(1 for key in OUTCOMES if not key.endswith("accepted")) >= 5  # and many distinct refusals


def test_seeds_are_valid(seeds: list[Seed], tmp_path: Path) -> None:
    for case in seeds:  # the mutators start from files the reader accepts
        path = tmp_path / "seed.asw"
        path.write_bytes(case.raw)
        assert check_one(path) == "accepted"
