"""One conversion, start to finish: plan → stream every tensor (cast, fuse, lay out) → manifest → atomic rename.

Memory: ND tensors are streamed in row blocks of about BLOCK_BYTES, so peak memory is one block plus two casts (the
writer thread writes one while the next is cast), whatever the model size; NZ tensors are assembled whole (in u16)
because FRACTAL_NZ interleaves rows.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ascend_super import __version__
from ascend_super.runtime import format as fmt
from ascend_super.runtime.chat import ChatTemplateError, render
from ascend_super.runtime.tokenizer import TextTokenizer, TokenizerError

from .cast import to_nz, to_u16
from .plan import Plan, PlannedTensor, build_plan
from .sources.base import Source, SourceError
from .writer import AswWriter

# source bytes (as float32) per row block: 16 MiB measured less system time than 64 and keeps the converter's peak
# RSS under 100 MB
BLOCK_BYTES = 16 * 1024 * 1024
TEMPLATE_PROBE = [{"role": "user", "content": "Hello"}]  # what every `ascend-run` chat prompt renders


@dataclass(frozen=True)
class Summary:
    out_path: Path
    arch: str
    dtype: str
    layout: str
    tensors: int
    parameters: int
    file_nbytes: int
    tensor_nbytes: int  # bytes of tensor data written (the file less manifest and padding)
    source_nbytes: int
    seconds: float


def _row_blocks(source: Source, name: str, shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    row_bytes = 4 * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 4 * shape[0]
    rows_per_block = max(1, BLOCK_BYTES // max(row_bytes, 1)) if len(shape) > 1 else shape[0]
    for start in range(0, shape[0], rows_per_block):
        yield start, min(shape[0], start + rows_per_block)


def _stream_tensor(source: Source, tensor: PlannedTensor, dtype: str, writer: AswWriter,
                   advance: Callable[[int], None], scratch: list[np.ndarray]) -> None:
    """Cast and write one tensor; ND row blocks alternate between the two `scratch` buffers (the writer thread
    may still be writing the previous block)."""
    what = f"{source.path}: tensor {tensor.name}"
    if tensor.layout == "nz":
        parts = [to_u16(source.read_rows(part, 0, shape[0]), dtype, f"{what} (from {part})")
                 for part, shape in tensor.parts]
        for part, _ in tensor.parts:
            advance(source.tensors()[part].nbytes)
        writer.write(memoryview(to_nz(np.concatenate(parts, axis=0))).cast("B"))
        return
    for part, shape in tensor.parts:
        part_nbytes = source.tensors()[part].nbytes
        done = 0
        for start, stop in _row_blocks(source, part, shape):
            scratch.reverse()
            block = to_u16(source.read_rows(part, start, stop), dtype, f"{what} (from {part})", scratch[0])
            writer.write(memoryview(np.ascontiguousarray(block)).cast("B"))
            step = part_nbytes * stop // shape[0] - done
            advance(step)
            done += step


def _in_background(job: Callable[[], Any]) -> Future[Any]:
    """job() on a daemon thread: an interrupted conversion exits without waiting for it."""
    result: Future[Any] = Future()

    def run() -> None:
        if result.set_running_or_notify_cancel():
            try:
                result.set_result(job())
            except BaseException as exc:  # handed to whoever waits for the result
                result.set_exception(exc)

    threading.Thread(target=run, name="source-hashes", daemon=True).start()
    return result


def _manifest(plan: Plan, source: Source, entries: list[dict[str, Any]], file_hashes: dict[str, str]) -> dict[str, Any]:
    meta = source.meta
    provenance = dict(meta.provenance)
    provenance["files"] = dict(sorted(file_hashes.items()))
    provenance["converter"] = f"ascend-super {__version__}"
    return {
        "arch": plan.arch.arch,
        "config": plan.config,
        "defaulted_config": plan.defaulted,
        "dtype": plan.dtype,
        "layout": plan.layout,
        "requires": fmt.requirements(plan.layout),
        "tensor_alignment": fmt.TENSOR_ALIGNMENT,
        "tokenizer": meta.tokenizer_json,
        "chat_template": meta.chat_template,
        "generation_config": meta.generation_config,
        "special_tokens": meta.tokenizer_config,
        "source": provenance,
        "tensors": entries,
    }


def _check_before_writing(source: Source, manifest: dict[str, Any]) -> None:
    """Refuse, before a byte is written, what the reader or the runtime would refuse later."""
    try:
        fmt.check_manifest_values(source.path, manifest)
    except fmt.FormatError as exc:
        raise SourceError(f"the source would give an invalid model: {exc}") from None
    try:
        TextTokenizer(manifest["tokenizer"])  # the runtime's own loader
    except TokenizerError as exc:
        raise SourceError(f"{source.path}: {exc}") from None
    if manifest["chat_template"] is not None:
        try:  # the runtime's own renderer, on the one-message conversation every chat run starts with
            render(manifest["chat_template"], TEMPLATE_PROBE, manifest["special_tokens"], add_generation_prompt=True)
        except ChatTemplateError as exc:
            raise SourceError(f"{source.path}: {exc} (every chat run would fail)") from None
        except Exception as exc:  # a template can fail in Python itself (TypeError, OverflowError, ...)
            raise SourceError(f"{source.path}: chat template: {type(exc).__name__}: {exc} (every chat run would "
                              "fail)") from None


def check_output_path(out_path: Path, source: Source) -> None:
    """The output must be a regular file (or not exist yet) and must not be one of the source's own files."""
    if out_path.exists() and not out_path.is_file():
        raise SourceError(f"{out_path}: exists and is not a regular file; choose another output path")
    resolved = out_path.resolve()
    source_dir = source.path if source.path.is_dir() else source.path.parent
    inputs = {(source_dir / name).resolve() for name in source.file_names()} | {source.path.resolve()}
    if resolved in inputs or (source.path.is_dir() and resolved.parent == source.path.resolve()
                              and out_path.exists() and out_path.suffix != ".asw"):
        raise SourceError(f"{out_path}: is one of the source's own files; refusing to overwrite it")


def convert(source: Source, out_path: Path, dtype: str = "fp16", layout: str = "nd",
            data_alignment: int = fmt.DEFAULT_DATA_ALIGNMENT,
            on_plan: Callable[[Plan], None] | None = None,
            advance: Callable[[int], None] = lambda _: None) -> Summary:
    """Convert `source` into `out_path`. On any error or interrupt nothing is left at out_path (an existing file
    there is only replaced once the new one is complete)."""
    started = time.perf_counter()
    check_output_path(out_path, source)
    plan = build_plan(source, dtype, layout)
    if on_plan is not None:
        on_plan(plan)
    offsets, data_nbytes = fmt.plan_offsets([t.nbytes for t in plan.tensors])
    entries = [
        {"name": t.name, "dtype": dtype, "shape": list(t.shape), "layout": t.layout, "offset": offset,
         "nbytes": t.nbytes, "xxh3_64": "0" * fmt.HASH_HEX_LEN}
        for t, offset in zip(plan.tensors, offsets)
    ]
    # every hash in the manifest is fixed-length hex, so placeholders give the final manifest size up front
    placeholder_files = {name: "0" * fmt.HASH_HEX_LEN for name in source.file_names()}
    draft = _manifest(plan, source, entries, placeholder_files)
    _check_before_writing(source, draft)
    manifest_nbytes = len(fmt.pack_manifest(draft))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = AswWriter(out_path, data_alignment)
    # two row blocks' output, reused by every block in turn
    scratch = [np.empty(BLOCK_BYTES // 4 + 1, dtype=np.uint16) for _ in range(2)]
    try:
        writer.reserve_manifest(manifest_nbytes)
        # the source files are hashed while the tensors stream (the hash thread reads ahead of them from disk)
        source_hashes = _in_background(source.file_hashes)
        hashes = []
        for tensor, entry in zip(plan.tensors, entries):
            writer.begin_tensor(tensor.name, entry["offset"])
            _stream_tensor(source, tensor, dtype, writer, advance, scratch)
            hashes.append(writer.end_tensor())
        for entry, digest in zip(entries, hashes):
            entry["xxh3_64"] = digest.result()
        writer.finish(_manifest(plan, source, entries, source_hashes.result()))
    except BaseException:
        writer.abort()
        raise
    return Summary(out_path, plan.arch.arch, dtype, layout, len(plan.tensors), plan.parameters,
                   out_path.stat().st_size, sum(t.nbytes for t in plan.tensors), plan.source_nbytes,
                   time.perf_counter() - started)
