"""Resolves what the user typed (local directory, .gguf file, alias, HuggingFace repo id) into an open Source.

Hub ids go through huggingface_hub's `snapshot_download` (its cache, HF_HOME, HF_HUB_OFFLINE, revisions) and only
fetch what conversion needs: config, tokenizer, generation config, safetensors shards and their index.
"""

from __future__ import annotations

import re
from pathlib import Path

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
                "chat_template.jinja", "special_tokens_map.json", "*.safetensors", "model.safetensors.index.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def download_snapshot(repo_id: str, revision: str | None) -> Path:
    """Local snapshot folder of a hub repo (from the cache when offline). The folder name is the commit hash."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise SourceError(f"{repo_id}: gated repository; accept its terms on the hub and log in "
                          "(huggingface-cli login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise SourceError(f"{repo_id}: no such repository on the hub (or it is private)") from None
    except RevisionNotFoundError:
        raise SourceError(f"{repo_id}: revision {revision!r} not found") from None
    except LocalEntryNotFoundError:
        raise SourceError(f"{repo_id}: not in the local huggingface_hub cache and the hub cannot be reached "
                          "(HF_HUB_OFFLINE set or no network); download it once on a connected machine") from None
    except (HfHubHTTPError, OSError) as exc:
        raise SourceError(f"{repo_id}: download failed: {exc}") from None


def open_source(spec: str, revision: str | None = None) -> Source:
    """A local directory, a .gguf file, an alias (see ALIASES) or a hub repo id."""
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
    snapshot = download_snapshot(repo_id, revision)
    provenance = {"kind": "hf-hub", "id": repo_id, "revision": snapshot.name}
    return SafetensorsSource(snapshot, provenance)
