"""Shared helpers for bench/convert.py and bench/decode.py.

- `ensure_checkpoint()`: a random-weight HuggingFace Qwen2 checkpoint with Qwen2-0.5B's exact shape (bf16 safetensors,
  one file, tied embeddings, a tiny WordLevel tokenizer.json), generated once and cached under .cache/bench/.
- `ensure_gguf()`: the same weights as a Q8_0 GGUF (llama.cpp's qwen2 layout, norms and biases F32, a tiny
  byte-level BPE vocabulary), generated once from that checkpoint and cached beside it.
- `ensure_asw()`: that checkpoint converted to .asw, cached and keyed by a fingerprint of the converter's source,
  so an edit to the converter or the format gives a fresh conversion instead of a stale file.
- page-cache control (`drop_page_cache`, `resident_bytes`), `median`, `machine_line`, a small table printer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
PROBE_MIB = 1024  # bench/bandwidth.c's buffer per rep, for every probe of the roofline (side_by_side, run_engine)
sys.path.insert(0, str(ROOT / "tests"))

from checkpoints import widen_init  # noqa: E402  (the tests' checkpoint maker: one set of weight scales)

# Qwen/Qwen2-0.5B's config.json (shape and rope), random weights
QWEN2_05B: dict[str, Any] = {
    "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "head_dim": 64, "intermediate_size": 4864, "vocab_size": 151936, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": True,
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
}
CHECKPOINT_VERSION = 1  # bump when the generator below changes
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def add_common_args(parser: argparse.ArgumentParser, keep_help: str) -> None:
    """--rounds, --keep-cache/--no-keep-cache and --regen, shared by every benchmark."""
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported) [3]")
    parser.add_argument("--keep-cache", action=argparse.BooleanOptionalAction, default=True, help=keep_help)
    parser.add_argument("--regen", action="store_true", help="regenerate the cached checkpoint")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- checkpoint
def _tiny_tokenizer_json() -> str:
    """A WordLevel tokenizer (a few hundred entries): the converter embeds it, the benchmarks never use it
    (prompts are random ids over the model's full vocab_size)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = SPECIAL_TOKENS + ["<unk>"] + [chr(c) for c in range(33, 127)] + [f"w{i}" for i in range(256)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str()


def _checkpoint_key() -> str:
    blob = json.dumps({"v": CHECKPOINT_VERSION, "config": QWEN2_05B}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def checkpoint_dir() -> Path:
    return CACHE / f"qwen2-0.5b-shape-random-bf16-{_checkpoint_key()}"


def ensure_checkpoint(regen: bool = False) -> Path:
    """The cached checkpoint directory (generated on first use: ~1 GB, a minute or so on 2 cores)."""
    directory = checkpoint_dir()
    stamp = directory / ".complete"
    if stamp.is_file() and not regen:
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    log(f"generating a random Qwen2-0.5B-shape bf16 checkpoint in {directory} (once) ...")
    started = time.perf_counter()
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = dict(QWEN2_05B)
    rope_theta = cfg.pop("rope_theta")
    config = transformers.Qwen2Config(**cfg, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    model = transformers.Qwen2ForCausalLM(config)
    widen_init(model)  # the tests' weight scales, so activations are non-trivial
    model = model.to(torch.bfloat16)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="10GB")  # one file, like the real repo
    del model
    (tmp / "tokenizer.json").write_text(_tiny_tokenizer_json(), encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast",
    }), encoding="utf-8")
    (tmp / "generation_config.json").write_text(json.dumps({
        "bos_token_id": QWEN2_05B["bos_token_id"], "eos_token_id": QWEN2_05B["eos_token_id"]}), encoding="utf-8")
    for f in tmp.iterdir():  # so posix_fadvise(DONTNEED) can really evict the pages later (dirty pages stay)
        with open(f, "rb+") as handle:
            os.fsync(handle.fileno())
    tmp.rename(directory)
    stamp.write_text(time.strftime("%Y-%m-%d %H:%M:%S"), encoding="utf-8")
    log(f"checkpoint ready in {time.perf_counter() - started:.1f} s")
    return directory


def ensure_gguf(checkpoint: Path) -> Path:
    """`checkpoint` as a Q8_0 GGUF (cached): every 2-D weight Q8_0, norms and biases F32; tensors are quantized
    one at a time, the writer holds the quantized bytes (~0.5 GB) until it writes them."""
    import gguf
    import ml_dtypes  # noqa: F401  (numpy's bfloat16, for safetensors' numpy frontend)
    from safetensors import safe_open

    from ascend_super.runtime.tokenizer import bytes_to_unicode

    out = checkpoint.with_name(checkpoint.name + "-Q8_0.gguf")
    if out.is_file():
        return out
    log(f"writing the checkpoint as a Q8_0 GGUF to {out} (once) ...")
    started = time.perf_counter()
    c = QWEN2_05B
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="qwen2")
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_theta"])
    tokens = SPECIAL_TOKENS + list(bytes_to_unicode().values()) + ["Ġt"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS)))
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                   "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down"}
    with safe_open(str(source_files(checkpoint)[0]), framework="numpy") as handle:
        for name in handle.keys():
            if name in names:
                target = names[name]
            else:
                _, _, layer, rest = name.split(".", 3)
                module, kind = rest.rsplit(".", 1)
                target = f"blk.{layer}.{layer_names[module]}.{kind}"
            value = handle.get_tensor(name).astype("float32")
            if value.ndim == 2:
                w.add_tensor(target, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(target, value)
            del value
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)
    log(f"GGUF ready in {time.perf_counter() - started:.1f} s ({out.stat().st_size / 1e6:.0f} MB)")
    return out


def source_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


# --------------------------------------------------------------------------- converted .asw
def converter_fingerprint() -> str:
    """Hash of every source file that decides what a conversion writes (converter + format module)."""
    h = hashlib.sha256()
    files = sorted((ROOT / "convert").rglob("*.py")) + [ROOT / "runtime" / "format.py"]
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def convert_cmd(src: Path, out: Path, dtype: str) -> list[str]:
    """The `ascend-convert` command line (the venv's console script, else `-c` into its main)."""
    exe = Path(sys.executable).with_name("ascend-convert")
    if exe.is_file():
        return [str(exe), str(src), "-o", str(out), "--dtype", dtype]
    return [sys.executable, "-c", "import sys; from ascend_super.convert.cli import main; sys.exit(main())",
            str(src), "-o", str(out), "--dtype", dtype]


def ensure_asw(checkpoint: Path, dtype: str) -> Path:
    """`checkpoint` converted to `dtype` .asw (cached; re-converted whenever the converter's source changes)."""
    fingerprint = converter_fingerprint()
    out = CACHE / f"{checkpoint.name}-{dtype}-conv{fingerprint}.asw"
    if out.is_file():
        return out
    for stale in CACHE.glob(f"{checkpoint.name}-*-conv*.asw"):  # made by an older converter
        if not stale.name.endswith(f"-conv{fingerprint}.asw"):
            stale.unlink()
    log(f"converting to {dtype} (converter fingerprint {fingerprint}) ...")
    started = time.perf_counter()
    done = subprocess.run(convert_cmd(checkpoint, out, dtype), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"ascend-convert failed (exit {done.returncode}):\n{done.stdout.decode(errors='replace')}")
    log(f"converted in {time.perf_counter() - started:.1f} s -> {out}")
    return out


def remove_cache() -> None:
    if CACHE.exists():
        shutil.rmtree(CACHE)
        log(f"removed {CACHE}")


# --------------------------------------------------------------------------- page cache
def drop_page_cache(paths: Iterable[Path]) -> None:
    """Ask the kernel to evict the files' clean pages (posix_fadvise DONTNEED); see resident_bytes to check."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(paths: Iterable[Path]) -> int | None:
    """Bytes of the files in the page cache (util-linux `fincore`), None where that tool is missing."""
    exe = shutil.which("fincore")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--bytes", "--noheadings", "--output", "RES", *map(str, paths)],
                             check=True, capture_output=True, text=True).stdout
        return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- reporting
class Steal:
    """Share of CPU time the hypervisor gave to others (/proc/stat "steal") over a `with` block: on a shared VM
    a high value means that measurement was disturbed from outside."""

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            return sum(fields[:8]), fields[7] if len(fields) > 7 else 0
        except (OSError, ValueError):
            return 0, 0

    def __enter__(self) -> "Steal":
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        total, steal = end[0] - self._start[0], end[1] - self._start[1]
        self.percent = 100.0 * steal / total if total > 0 else 0.0

    def __str__(self) -> str:
        return f"steal {self.percent:.0f}%"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    return f"[{min(values):.3g} .. {max(values):.3g}]"


def machine_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return f"{platform.machine()} {model}, {os.cpu_count()} cpus{mem}, python {platform.python_version()}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
