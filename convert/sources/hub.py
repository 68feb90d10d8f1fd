"""Resolves what the user typed (local directory, .gguf file, alias, hub repo id) into an open Source.

Hub ids come from Hugging Face (huggingface_hub's `snapshot_download`: its cache, HF_HOME, HF_HUB_OFFLINE,
revisions) or, with --hub modelscope or ASCEND_USE_MODELSCOPE=1, from ModelScope (modelscope's snapshot_download:
MODELSCOPE_CACHE); both through runtime/hub.py, and only what conversion needs is fetched: config, tokenizer,
generation config, safetensors shards and their index. Aliases name the same repo id on either hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ascend_super.runtime import hub

from .base import Source, SourceError
from .safetensors import SafetensorsSource

ALIASES: dict[str, str] = {
    "deepseek-r1-1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "deepseek-r1-7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "deepseek-r1-8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "deepseek-r1-14b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
    "deepseek-r1-32b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-r1-70b": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
}
HUB_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "additional_chat_templates/*.jinja", "special_tokens_map.json", "*.safetensors",
                "model.safetensors.index.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


HUBS = {"huggingface": "hf", "modelscope": "ms"}  # --hub value -> scheme in runtime/hub.py
USE_MODELSCOPE_ENV = "ASCEND_USE_MODELSCOPE"  # =1: hub ids come from ModelScope (vLLM-Ascend's VLLM_USE_MODELSCOPE)


def default_hub() -> str:
    """huggingface, or modelscope when ASCEND_USE_MODELSCOPE is set to a true value."""
    flag = os.environ.get(USE_MODELSCOPE_ENV, "").strip().upper()
    return "modelscope" if flag in ("1", "ON", "YES", "TRUE") else "huggingface"


def download_snapshot(repo_id: str, revision: str | None, hub_name: str = "huggingface") -> tuple[Path, str | None]:
    """Local snapshot folder of a hub repo (from the hub's cache when offline; only what conversion needs) and the
    revision it is a copy of (runtime/hub.download_snapshot)."""
    try:
        return hub.download_snapshot(HUBS[hub_name], repo_id, revision, HUB_PATTERNS)
    except hub.HubError as exc:
        raise SourceError(str(exc)) from None


def open_source(spec: str, revision: str | None = None, hub_name: str | None = None) -> Source:
    """A local directory, a .gguf file, an alias (see ALIASES) or a repo id on `hub_name` (huggingface or
    modelscope; default: see default_hub)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if revision is not None:
            raise SourceError(f"{spec}: --revision applies to hub ids, not local directories")
        return SafetensorsSource(path)
    if path.suffix.lower() == ".gguf" or path.is_file():
        if not path.is_file():
            raise SourceError(f"{spec}: no such file")
        if path.suffix.lower() == ".safetensors":
            raise SourceError(f"{spec}: pass the checkpoint folder (with config.json and tokenizer.json), not one "
                              ".safetensors file")
        if path.suffix.lower() == ".asw":
            raise SourceError(f"{spec}: is already a .asw file (ascend-inspect shows what it holds)")
        if revision is not None:
            raise SourceError(f"{spec}: --revision applies to hub ids, not local files")
        from .gguf import GGUFSource

        return GGUFSource(path)
    repo_id = ALIASES.get(spec.lower(), spec)
    if not _REPO_ID.match(repo_id):
        raise SourceError(f"{spec}: not a directory, a .gguf file, a known alias ({', '.join(ALIASES)}) "
                          "or a HuggingFace repo id (owner/name)")
    hub_name = hub_name or default_hub()
    if hub_name not in HUBS:
        raise SourceError(f"--hub must be one of {', '.join(HUBS)}, got {hub_name!r}")
    snapshot, resolved = download_snapshot(repo_id, revision, hub_name)
    provenance = {"kind": f"{HUBS[hub_name]}-hub", "id": repo_id, "revision": resolved}
    return SafetensorsSource(snapshot, provenance)
