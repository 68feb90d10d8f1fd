"""`ascend-convert --card`: a model-card README snippet written next to the output, for publishing the .asw on a hub.

Everything in it is read back from the written file's own manifest (source, revision, dtype, layout, what it needs
to run, converter version, hashes), so the card cannot disagree with the file. OWNER/REPO stands for the repository
the user uploads to; the snippet says so.
"""

from __future__ import annotations

import math
from pathlib import Path

from ascend_super.runtime import format as fmt
from ascend_super.runtime.tempfiles import replace_text

SOURCE_KINDS = {"hf-hub": "Hugging Face", "ms-hub": "ModelScope", "hf-dir": "a local checkpoint folder",
                "gguf": "a GGUF file"}


def card_path(out_path: Path) -> Path:
    """model-fp16.asw -> model-fp16.README.md (beside it)."""
    return out_path.with_name(f"{out_path.stem}.README.md")


def render_card(asw: fmt.AswFile, file_name: str) -> str:
    manifest = asw.manifest
    source = manifest["source"]
    needs = asw.requires
    kind = source.get("kind")
    origin = SOURCE_KINDS.get(kind, str(kind))
    source_id = source.get("id")
    revision = source.get("revision")
    parameters = sum(math.prod(t.shape) for t in asw.tensors)
    size = asw.preamble.data_offset + asw.preamble.data_nbytes
    front = ["---", "library_name: ascend-super", "tags:", "- ascend", "- asw", f"- {manifest['arch']}"]
    if kind == "hf-hub":
        front.append(f"base_model: {source_id}")
    front.append("---")
    runs_on = " or ".join(needs["backends"]) + (f" (SoC {needs['soc']})" if needs["soc"] else "")
    backend = "" if "cpu" in needs["backends"] else f" --backend {needs['backends'][0]}"
    lines = [
        *front,
        "",
        f"# {file_name}",
        "",
        f"`{source_id}` from {origin}" + (f" at revision `{revision}`" if revision else "") +
        f", converted by {source.get('converter')} into one `.asw` file: weights pre-fused and pre-cast, with the "
        "tokenizer, chat template and generation config inside.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {manifest['arch']}, {parameters:,} parameters |",
        f"| dtype | {manifest['dtype']} |",
        f"| layout | {manifest['layout']} |",
        f"| runs on | ascend-super backend {runs_on} |",
        f"| format | .asw {asw.preamble.version_major}.{asw.preamble.version_minor} |",
        f"| file | {size:,} bytes, {len(asw.tensors)} tensors |",
        f"| manifest xxh3_64 | `{fmt.hash_hex(asw.preamble.manifest_xxh3_64)}` (covers every tensor's xxh3_64) |",
        "",
        "Source files (xxh3_64):",
        "",
        *[f"- `{name}`: `{digest}`" for name, digest in sorted(source.get("files", {}).items())],
        "",
        "## Run it",
        "",
        "Replace OWNER/REPO with the repository this file is published in.",
        "",
        "```bash",
        "pip install ascend-super               # ascend-super[modelscope] for ms://",
        f"ascend-run hf://OWNER/REPO/{file_name}{backend} --prompt \"Hello\"",
        f"ascend-run ms://OWNER/REPO/{file_name}{backend} --prompt \"Hello\"   # from ModelScope",
        f"ascend-inspect hf://OWNER/REPO/{file_name}                  # what it holds and needs",
        "```",
        "",
        "The first run downloads the file into the hub's cache and checks every tensor hash once; later runs start "
        "at once. Pin a revision with `@REVISION` after the file name.",
        "",
    ]
    return "\n".join(lines)


def write_card(out_path: Path) -> Path:
    """Write the card for the .asw at `out_path` beside it (atomically) and return its path."""
    target = card_path(out_path)
    with fmt.AswFile.open(out_path) as asw:
        text = render_card(asw, out_path.name)
    replace_text(target, text)
    return target
