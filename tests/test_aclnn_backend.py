"""The aclnn backend on the CANN emulator (native/emu/, `make emu` -> build/emu/) against the cpu backend and
transformers.

Each case runs the backend in a subprocess (tests/aclnn_worker.py; CANN is opened once per process and the plugin
stays loaded, while other test files check what happens when it is missing). The emulator is independent of the
cpu backend (its own reference loops, from the CANN documentation), so agreement means something.

Tolerances (|ours - transformers| <= ATOL[dtype] + RTOL * max|logits| per position, transformers in fp32 on the
file's rounded weights): exactly test_parity.py's bound for the cpu backend. The device keeps activations in the
weight dtype between operators (the operators take and give fp16/bf16) where the cpu backend keeps f32; with fp16 that
stays well inside the bound, with bf16 (8 mantissa bits) it does not always, and neither does transformers itself
when it runs in bf16: on these checkpoints its own bf16 run is up to 1.14x the cpu bound off its fp32 run. So a bf16
file's allowance is the larger of the cpu bound and BF16_MARGIN times what transformers' own bf16 run needs on the same
checkpoint and inputs (measured worst: the device at 1.04-1.09x transformers' bf16 error). A wrong rope, norm, mask
or head mapping is O(1) off, far outside either.
"""

from __future__ import annotations

import copy
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ascend_super
from ascend_super.runtime.generate import Sampling
from conftest import REPO, SPECS, run_cli
from test_parity import ATOL, RTOL, TIE_GAP, check_greedy, hf_greedy, hf_model, prompt

EMU_DIR = REPO / "build" / "emu"
WORKER = Path(__file__).parent / "aclnn_worker.py"
BF16_MARGIN = 1.25
DECODE_STEPS = 8
GREEDY = 16


@pytest.fixture(scope="session")
def emulator() -> Path:
    """Build the emulator's libraries (make emu) once; their directory."""
    result = subprocess.run(["make", "-s", "emu"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (EMU_DIR / "libascendcl.so").is_file()
    return EMU_DIR


def emu_env(emulator: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, ASW_CANN_LIB_DIR=str(emulator))
    env.pop("ASCEND_HOME_PATH", None)
    env.update(extra)
    return env


def run_aclnn(emulator: Path, tmp_path: Path, request: dict, stats: bool = False) -> tuple[dict, dict | None]:
    """Run the worker on the emulator; (its outputs, the emulator's counters if asked)."""
    req = tmp_path / f"request-{len(list(tmp_path.iterdir()))}.json"
    req.write_text(json.dumps(request))
    out = req.with_suffix(".npz")
    extra = {}
    stats_path = req.with_suffix(".stats.json")
    if stats:
        extra["ASW_EMU_STATS"] = str(stats_path)
    result = subprocess.run([sys.executable, str(WORKER), str(req), str(out)], capture_output=True, text=True,
                            env=emu_env(emulator, **extra), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    with np.load(out) as data:
        outputs = {k: data[k] for k in data.files}
    return outputs, (json.loads(stats_path.read_text()) if stats else None)


def error_ratio(ours: np.ndarray, theirs: np.ndarray, dtype: str) -> float:
    """max over positions of |ours - theirs| / the cpu backend's bound at that position"""
    bound = ATOL[dtype] + RTOL * np.abs(theirs).max(axis=-1, keepdims=True)
    return float((np.abs(ours - theirs) / bound).max())


def assert_close(ours: np.ndarray, theirs: np.ndarray, dtype: str, what: str, allowance: float = 1.0) -> float:
    worst = error_ratio(ours, theirs, dtype)
    assert worst <= allowance, (f"{what}: max |diff| {np.abs(ours - theirs).max():.4g} is {worst:.2f}x the cpu bound "
                                f"(allowed: {allowance:.2f}x)")
    return worst


def transformers_logits(reference: torch.nn.Module, ids: list[int], decode_steps: int,
                        feed: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(prefill logits [S, V], decode logits [steps, V], the tokens fed) of `reference` (any dtype), as f32 numpy;
    each decode step is fed `feed` if given, else the previous argmax (greedy)."""
    with torch.no_grad():
        out = reference(torch.tensor([ids]), use_cache=True)
        prefill = out.logits[0].float().numpy()
        past, token, fed, steps = out.past_key_values, int(out.logits[0, -1].argmax()), [], []
        for step in range(decode_steps):
            token = feed[step] if feed is not None else token
            fed.append(token)
            out = reference(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits[0, -1].float().numpy())
            token = int(out.logits[0, -1].argmax())
    return prefill, np.stack(steps), fed


def bf16_allowance(reference: torch.nn.Module, ids: list[int], feed: list[int], expected_prefill: np.ndarray,
                   expected_steps: np.ndarray) -> tuple[float, float]:
    """What transformers needs when it runs in bf16 itself (prefill, decode), as multiples of the cpu bound, times
    BF16_MARGIN; never below the cpu bound."""
    native = copy.deepcopy(reference).to(torch.bfloat16)
    prefill, steps, _ = transformers_logits(native, ids, len(feed), feed)
    return (max(1.0, BF16_MARGIN * error_ratio(prefill, expected_prefill, "bf16")),
            max(1.0, BF16_MARGIN * error_ratio(steps, expected_steps, "bf16")))


def test_golden_model_greedy_tokens_on_the_emulator(emulator, tmp_path) -> None:
    golden = json.loads((REPO / "artifacts" / "golden-qwen2.json").read_text())
    path = REPO / "artifacts" / golden["asw"]
    count = len(golden["expected_tokens"])
    with ascend_super.load(path, backend="cpu") as model:
        cpu = list(model.generate_tokens(golden["prompt_ids"], Sampling(max_new_tokens=count)))
    for eager in (False, True):
        got, _ = run_aclnn(emulator, tmp_path, {"asw": str(path), "prompt": golden["prompt_ids"], "greedy": count,
                                                "logits": False, "eager": eager})
        assert got["greedy"].tolist() == golden["expected_tokens"] == cpu, f"eager={eager}"


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_logits_and_greedy_match_transformers(name: str, dtype: str, emulator, tmp_path, checkpoint_dir,
                                              converted) -> None:
    reference = hf_model(checkpoint_dir(name), dtype)
    ids = prompt(SPECS[name].vocab, 21)
    # decode steps are fed transformers' greedy tokens so both see the same inputs
    expected_prefill, expected_steps, feed = transformers_logits(reference, ids, DECODE_STEPS)
    allowance = ((1.0, 1.0) if dtype == "fp16"
                 else bf16_allowance(reference, ids, feed, expected_prefill, expected_steps))
    expected, gaps = hf_greedy(reference, ids, GREEDY)
    for layout in ("nd", "nz"):
        got, _ = run_aclnn(emulator, tmp_path, {"asw": str(converted(name, dtype, layout)), "prompt": ids,
                                                "decode_tokens": feed, "greedy": GREEDY})
        what = f"{name} {dtype} {layout}"
        assert_close(got["prefill_logits"], expected_prefill, dtype, f"{what} prefill", allowance[0])
        assert_close(got["decode_logits"], expected_steps, dtype, f"{what} decode", allowance[1])
        check_greedy(got["greedy"].tolist(), expected, gaps, TIE_GAP[dtype] * max(allowance), what)


@pytest.mark.parametrize("name", ["qwen2-gqa-hd64", "llama-llama3"])
def test_graph_and_eager_are_bit_identical(name: str, emulator, tmp_path, converted) -> None:
    ids = prompt(SPECS[name].vocab, 13, seed=3)
    request = {"asw": str(converted(name)), "prompt": ids, "decode_tokens": [5, 6, 7], "greedy": 12, "topk": 5}
    graph, _ = run_aclnn(emulator, tmp_path, request)
    eager, _ = run_aclnn(emulator, tmp_path, dict(request, eager=True))
    assert str(graph["describe"]).endswith("graph") and str(eager["describe"]).endswith("eager")
    for key in ("prefill_logits", "decode_logits", "greedy", "topk_values", "topk_ids"):
        np.testing.assert_array_equal(graph[key], eager[key], err_msg=key)


def test_long_prompt_and_several_kv_buckets_match_the_cpu_backend(emulator, tmp_path, converted) -> None:
    """A prompt longer than one prefill block (256 positions); decode steps across the 256 -> 512 bucket edge. The
    backend reports its block (256), and the prompt fed in pieces cut there (as ascend-serve cuts it) gives the
    logits of the whole prompt. The emulator computes every output element in one fixed order whatever the shapes,
    so this checks the plumbing only: that other cuts would differ on a device is what it cannot show."""
    name = "qwen2-gqa7"
    ids = prompt(SPECS[name].vocab, 300, seed=1)
    path = converted(name)
    got, _ = run_aclnn(emulator, tmp_path, {"asw": str(path), "prompt": ids, "context": 600, "greedy": 8,
                                            "pieces": [256, 44]})
    assert int(got["prefill_block"]) == 256
    np.testing.assert_array_equal(got["pieces_logits"], got["prefill_logits"][-1])
    edge, _ = run_aclnn(emulator, tmp_path, {"asw": str(path), "prompt": ids[:250], "context": 600, "greedy": 12,
                                             "logits": False})
    with ascend_super.load(path, backend="cpu", threads=2) as model:
        cpu_logits, _ = model.session(600).prefill(ids, logits="all")
        cpu_greedy = list(model.generate_tokens(ids, Sampling(max_new_tokens=8), context=600))
        cpu_edge = list(model.generate_tokens(ids[:250], Sampling(max_new_tokens=12), context=600))
    assert_close(got["prefill_logits"], cpu_logits, "fp16", "300-token prompt vs cpu")
    assert got["greedy"].tolist() == cpu_greedy
    assert edge["greedy"].tolist() == cpu_edge


def test_top_k_matches_the_cpu_backend(emulator, tmp_path, converted) -> None:
    name = "qwen2-tied-hd128"
    ids = prompt(SPECS[name].vocab, 9, seed=2)
    path = converted(name)
    got, _ = run_aclnn(emulator, tmp_path, {"asw": str(path), "prompt": ids, "topk": 10, "logits": False})
    with ascend_super.load(path, backend="cpu") as model:
        values, top = model.session(64).forward_topk(ids, 10)
    assert got["topk_ids"].tolist() == top.tolist()
    assert_close(got["topk_values"], values, "fp16", "top-k values")
    assert np.all(np.diff(got["topk_values"]) <= 0)


def test_sessions_on_several_threads(emulator, tmp_path, converted) -> None:
    name = "llama-sharded-bf16"
    ids = prompt(SPECS[name].vocab, 11, seed=4)
    got, _ = run_aclnn(emulator, tmp_path, {"asw": str(converted(name, "bf16")), "prompt": ids, "greedy": 10,
                                            "logits": False, "threads": 3})
    for row in got["threaded"]:
        assert row.tolist() == got["greedy"].tolist()


@pytest.mark.parametrize("eager", [False, True])
def test_counters_one_upload_and_one_small_read_per_token(eager: bool, emulator, tmp_path, converted) -> None:
    """Load: one device allocation and one host-to-device copy of the data region. Steady decode step (between two
    reads): no host-to-device copy, one device-to-host copy of 64 bytes (the token and its logit, each in a 32-byte block), one host synchronisation, and one graph
    replay (graph) or at most 12 launches per layer + 6 (eager)."""
    name = "qwen2-gqa-hd64"
    path = converted(name)
    from ascend_super.runtime import format as fmt

    with fmt.AswFile.open(path) as asw:
        region = len(asw.data_region())
    count = 12
    _, stats = run_aclnn(emulator, tmp_path, {"asw": str(path), "prompt": [5, 6, 7], "greedy": count,
                                              "logits": False, "eager": eager, "mark_steps": True}, stats=True)
    load, steps = stats["steps"][0], stats["steps"]
    assert load["device_allocs"] == 1 and load["device_alloc_bytes"] >= region
    assert load["copies"]["host_to_device"] == {"count": 1, "bytes": region}
    # steps[1] holds the session, the prefill and the first two enqueues; steps[-1] the last read alone
    steady = steps[2:-1]
    assert len(steady) == count - 3
    layers = SPECS[name].layers
    for step in steady:
        copies = step["copies"]
        assert copies["host_to_device"]["count"] == 0 and step["replayed_copies"]["host_to_device"]["count"] == 0
        assert copies["device_to_host"]["count"] == 1 and copies["device_to_host"]["bytes"] == 64
        assert step["stream_syncs"] + step["event_syncs"] + step["device_syncs"] == 1
        assert step["device_allocs"] == 0 and step["memsets"]["count"] == 0
        if eager:
            assert step["graph_replays"] == 0 and 0 < step["launches"] <= 12 * layers + 6
        else:
            assert step["graph_replays"] == 1 and step["launches"] == 0
            assert step["replayed_launches"] <= 12 * layers + 6


def test_missing_cann_is_one_clear_error(tmp_path) -> None:
    env = dict(os.environ, ASW_CANN_LIB_DIR=str(tmp_path), LD_LIBRARY_PATH=str(tmp_path))
    env.pop("ASCEND_HOME_PATH", None)
    result = run_cli("ascend-run", str(REPO / "artifacts" / "golden-qwen2.asw"), "--backend", "aclnn", "-p", "hi",
                     env=env)
    assert result.returncode == 2
    assert "backend 'aclnn' cannot run here: cannot load libascendcl.so" in result.stderr
    assert "Traceback" not in result.stderr


def test_selftest_passes_on_the_emulator(emulator) -> None:
    result = run_cli("ascend-run", "--backend", "aclnn", "--selftest", env=emu_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selftest passed" in result.stdout


@pytest.mark.parametrize(("name", "dtype", "layout"), [("qwen2-gqa7", "bf16", "nz"), ("llama-llama3", "fp16", "nz")])
def test_selftest_on_nz_and_bf16_files(name: str, dtype: str, layout: str, emulator, converted) -> None:
    """Every operator row (the NZ matmul with the file's own weight) and every model row pass; NZ files have no cpu
    comparison (the cpu backend refuses them), so the graph == eager row is what is left of the model checks."""
    result = run_cli("ascend-run", str(converted(name, dtype, layout)), "--backend", "aclnn", "--selftest",
                     env=emu_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MatmulWeightNz" in result.stdout and "FAIL" not in result.stdout


def test_nz_file_for_another_soc_is_refused_before_upload(emulator, converted) -> None:
    """requires.soc of an nz file reaches the backend, which compares it with aclrtGetSocName() before it uploads."""
    path = converted("qwen2-gqa7", "fp16", "nz")
    result = run_cli("ascend-run", str(path), "--backend", "aclnn", "-p", "hi", "-n", "2",
                     env=emu_env(emulator, ASW_EMU_SOC="Ascend310P3"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "FRACTAL_NZ layout was made for SoC family ascend910b/ascend910_93; this device is Ascend310P3" \
        in result.stderr
    ok = run_cli("ascend-run", str(path), "--backend", "aclnn", "-p", "hi", "-n", "2",
                 env=emu_env(emulator, ASW_EMU_SOC="Ascend910B3"))
    assert ok.returncode == 0, ok.stderr


def failing_aclnn_runs(emulator: Path, path: Path, text: str) -> list[str]:
    """`ascend-run --backend aclnn` on `path` (graph, then --eager), each of which must end in a one-line error
    (status 2, no traceback); their stderr."""
    errors = []
    for extra in ([], ["--eager"]):
        result = run_cli("ascend-run", str(path), "--backend", "aclnn", *extra, "-p", text, "--raw", "-n", "4",
                         env=emu_env(emulator))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        errors.append(result.stderr)
    return errors


def nan_row_file(source: Path, tmp_path: Path) -> tuple[Path, str, list[int], int]:
    """A copy of `source` whose embedding row of the first token generated after some short prompt is NaN: (the
    copy, the prompt's text, its ids, that token). The prompt runs clean; the first decode step, fed that token,
    writes NaN keys and values at position len(ids) and produces NaN logits."""
    from ascend_super.runtime import format as fmt

    with ascend_super.load(source, backend="cpu") as model:
        for text in ("Hello there", "a b c", "xyz 123", "The sky"):
            ids = model.prompt_ids(text, raw=True)
            first = list(model.generate_tokens(ids, Sampling(max_new_tokens=1)))[0]
            if first not in ids:
                break
        assert first not in ids, "every candidate prompt contains its own first generated token: add another"
    broken = tmp_path / "nan-row.asw"
    broken.write_bytes(source.read_bytes())
    with fmt.AswFile.open(broken) as asw:
        entry = next(t for t in asw.tensors if t.name == "token_embd.weight")
        row_bytes = entry.shape[1] * 2
        start = asw.preamble.data_offset + entry.offset + first * row_bytes
    nan_bits = (0x7E00 if entry.dtype == "fp16" else 0x7FC0).to_bytes(2, "little")
    with open(broken, "r+b") as f:
        f.seek(start)
        f.write(nan_bits * (row_bytes // 2))
    return broken, text, ids, first


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nan_logits_in_a_decode_step_are_an_error_on_both_backends(dtype: str, emulator, converted, tmp_path) -> None:
    """NaN logits must never become a token (see nan_row_file)."""
    from ascend_super.runtime.native import NativeError

    broken, text, ids, _ = nan_row_file(converted("qwen2-gqa7", dtype, "nd"), tmp_path)
    expected = f"the logits of position {len(ids)} are NaN"
    with ascend_super.load(broken, backend="cpu") as model:  # fp16: the KV check sees the NaN first
        with pytest.raises(NativeError, match=rf"(position {len(ids)}: a key value is NaN|{expected})"):
            list(model.generate_tokens(ids, Sampling(max_new_tokens=4)))
    for stderr in failing_aclnn_runs(emulator, broken, text):
        assert expected in stderr, stderr


def test_a_failed_step_leaves_no_nan_for_the_next_conversation(emulator, converted, tmp_path) -> None:
    """A generation that fails on NaN keys and values (nan_row_file) leaves them in its KV rows. The next
    conversation on the same (reset) session is shorter, so those rows lie past its position: masked, but inside
    the KV bucket its decode steps attend over, and the device multiplies masked values by their zero weights
    (the emulator too). Reset zeroes the cache after a failed step, so the next conversation gets its tokens."""
    source = converted("qwen2-gqa7", "fp16", "nd")
    broken, _, ids, first = nan_row_file(source, tmp_path)
    with ascend_super.load(source, backend="cpu") as model:
        for n in range(1, len(ids)):  # a shorter prompt with a decode step or more before it would feed `first`
            short = ids[:n]
            want = list(model.generate_tokens(short, Sampling(max_new_tokens=len(ids) - n)))
            want = want[:want.index(first) + 1] if first in want else want
            if len(want) >= 2:
                break
        assert len(want) >= 2, "no prefix of the prompt decodes before it feeds the NaN token: pick another model"
    got, _ = run_aclnn(emulator, tmp_path, {"asw": str(broken), "prompt": short, "logits": False,
                                            "failing_prompt": ids, "after_failure": len(want)})
    assert f"the logits of position {len(ids)} are NaN" in str(got["failure"])
    assert got["after_failure"].tolist() == want


def test_a_session_goes_on_after_a_failed_step_from_the_position_it_keeps(emulator, converted, tmp_path) -> None:
    """Three steps queued after the prompt, the first fed the NaN token (nan_row_file): all three write NaN keys and
    values, the read of the first fails, and the session keeps the prompt's positions. Going on from there (one more
    prompt token, then device-fed decode steps) must give a clean session's tokens: the prompt's rows kept (zeroing the whole
    cache at the failure would lose them), the NaN rows past the position gone before a decode step's bucket
    reaches them (the device multiplies masked rows too)."""
    from ascend_super.runtime.native import NativeError

    broken, _, ids, first = nan_row_file(converted("qwen2-gqa7", "fp16", "nd"), tmp_path)
    with ascend_super.load(broken, backend="cpu") as model:
        for then in (t for t in ids if t != first):  # a next token whose continuation never feeds the NaN token
            try:
                session = model.session(256)
                _, token = session.prefill(ids + [then], logits="none")
                want = [token]
                while len(want) < 6:
                    want.append(session.decode(want[-1], logits="none")[1])
                break
            except NativeError:
                continue
        else:
            pytest.fail("every candidate continuation feeds the NaN token: pick another model")
    got, _ = run_aclnn(emulator, tmp_path, {"asw": str(broken), "prompt": ids, "logits": False, "continue_after_failure":
                                            {"prompt": ids, "queue": 3, "then": [then], "tokens": len(want)}})
    assert f"the logits of position {len(ids)} are NaN" in str(got["continue_failure"])
    assert got["continued"].tolist() == want


def test_an_overflowing_fp16_logit_is_an_error_not_a_token(emulator, converted, tmp_path) -> None:
    """The device holds logits in the weight dtype: an fp16 logit beyond 65504 is inf there and its index says nothing
    (the cpu backend's f32 logits do not overflow). Every lm_head row is made 60 and the final norm's weights 2000, so
    every logit is 60 * 2000 * sum(normalised x): far beyond the fp16 range, every one the same infinity (no NaN)."""
    from ascend_super.runtime import format as fmt

    source = converted("qwen2-gqa7", "fp16", "nd")
    broken = tmp_path / "huge-logits.asw"
    broken.write_bytes(source.read_bytes())
    with fmt.AswFile.open(broken) as asw:
        by_name = {t.name: t for t in asw.tensors}
        head = by_name.get("output.weight", by_name["token_embd.weight"])
        patches = [(asw.preamble.data_offset + t.offset, int(np.prod(t.shape)), value)
                   for t, value in ((by_name["output_norm.weight"], 2000.0), (head, 60.0))]
    with open(broken, "r+b") as f:
        for start, count, value in patches:
            f.seek(start)
            f.write(np.full(count, value, dtype=np.float16).tobytes())
    for stderr in failing_aclnn_runs(emulator, broken, "Hello there"):
        assert re.search(r"logits of position \d+ are infinite|an infinite value in the .* logits", stderr), stderr


def test_selftest_checks_a_hub_file_before_it_runs(emulator, converted, tmp_path) -> None:
    """`--selftest` on a hub file runs the first-use hash check as a run does: a corrupt download is refused in one
    line, not compared between backends that would both read the same wrong weights."""
    from test_hub import COMMIT_A, flip_tensor_byte, hf_cache_file, offline_env

    blob = hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted("qwen2-gqa7"))
    flip_tensor_byte(blob, "output_norm.weight")
    env = {**emu_env(emulator), **{k: v for k, v in offline_env(tmp_path).items() if k.startswith(("HF_", "MODELS"))}}
    result = run_cli("ascend-run", f"hf://ascend/tiny/tiny.asw@{COMMIT_A}", "--backend", "aclnn", "--selftest",
                     env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "output_norm.weight" in result.stderr and "is corrupt or incomplete and was not used" in result.stderr
    assert "Traceback" not in result.stderr


def test_selftest_hands_every_mapping_of_the_file_to_on_open(emulator) -> None:
    """`ascend-run --selftest` guards each mapping of the file it opens (the operator rows' and the three models')
    with the bus-error guard, through `on_open`."""
    code = ("import sys\nfrom ascend_super.runtime import selftest\nopened = []\n"
            "ok = selftest.run(None, 0, lambda line: None, lambda asw: opened.append(asw.path.name))\n"
            "print(ok, opened)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=emu_env(emulator),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "True " + str(["golden-qwen2.asw"] * 4)
