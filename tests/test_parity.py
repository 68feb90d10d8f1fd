"""The cpu backend against transformers, token for token.

transformers runs in fp32 on the same u16-rounded weights our file holds, so the only differences left are ours:
the KV cache is stored in the weight dtype (fp16: ~3 significant digits, bf16: ~2), and f32 sums are taken in
another order. Tolerance: |our logit - HF logit| <= ATOL[dtype] + RTOL * max|HF logits of that position|.
Measured on these checkpoints (|logits| <= 4.2): worst |diff| 2.0e-3 with fp16 files and 1.5e-2 with bf16 files
(a bf16 KV cache keeps 8 mantissa bits, fp16 11), i.e. 15-40 % of the bound; a wrong rope, norm, bias or head
mapping gives errors of O(1), far outside it. A sweep of 34 other shapes (hidden 17-144, head_dim 4-256, vocab
97-8191) stayed within 0.71x the fp16 bound; three narrow bf16 models (hidden 17-40, one or two KV heads) went to
1.02-1.41x the bf16 bound, where a reference that also keeps its KV cache in bf16 agrees with us to 9e-4: the
bound is for these checkpoints, not a law for every shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import ascend_super
from ascend_super.runtime.generate import Sampling, Stats
from conftest import SPECS

ATOL = {"fp16": 5e-3, "bf16": 4e-2}
# Greedy continuations must be identical, except that once transformers' own top-2 logit gap at a step is below
# TIE_GAP (twice the logit tolerance: inside our rounding error either token is a correct argmax) the sequences
# may part there; the test reports such a split and compares nothing after it.
RTOL = 2e-3
TIE_GAP = {dtype: 2 * atol for dtype, atol in ATOL.items()}
DECODE_STEPS = 16
GREEDY_TOKENS = 32


def hf_model(directory: Path, dtype: str) -> torch.nn.Module:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    rounding = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(rounding).float())
    return model.eval()


def assert_close(ours: np.ndarray, theirs: np.ndarray, dtype: str, what: str) -> None:
    bound = ATOL[dtype] + RTOL * np.abs(theirs).max(axis=-1, keepdims=True)
    error = np.abs(ours - theirs)
    worst = float((error / bound).max())
    assert worst <= 1.0, f"{what}: max |diff| {error.max():.4g} is {worst:.2f}x the tolerance"


def hf_greedy(reference: torch.nn.Module, ids: list[int], count: int) -> tuple[list[int], list[float]]:
    """transformers' greedy continuation (eos does not stop it, and may be chosen: generate's min_new_tokens would
    mask it, feeding the runner-up while the gap reported came from the raw logits) and its top-2 logit gap at each
    step: the model's forward with its KV cache, the argmax fed back."""
    tokens, gaps = [], []
    with torch.no_grad():
        out = reference(torch.tensor([ids]), use_cache=True)
        for _ in range(count):
            top = torch.topk(out.logits[0, -1].float(), 2)
            tokens.append(int(top.indices[0]))
            gaps.append(float(top.values[0] - top.values[1]))
            out = reference(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, gaps


def check_greedy(ours: list[int], theirs: list[int], gaps: list[float], tie_gap: float, what: str) -> int | None:
    """Assert `ours` equals `theirs` up to its length, or parts from it only right after a near-tie of transformers'
    logits; returns the step where they parted (None if identical) and prints it so the run reports it."""
    for step, (mine, expected) in enumerate(zip(ours, theirs)):
        if mine != expected:
            assert gaps[step] < tie_gap, (f"{what}: greedy token {step} is {mine}, transformers says {expected} "
                                          f"(top-2 gap {gaps[step]:.4g} is not a near-tie < {tie_gap})")
            print(f"{what}: parted from transformers at step {step} after a near-tie (gap {gaps[step]:.2g})")
            return step
    return None


def prompt(vocab: int, length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, size=length).tolist()


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_logits_and_greedy_match_transformers(name: str, dtype: str, checkpoint_dir, converted) -> None:
    reference = hf_model(checkpoint_dir(name), dtype)
    ids = prompt(SPECS[name].vocab, 21)
    with ascend_super.load(converted(name, dtype), backend="cpu", threads=2) as model:
        session = model.session(256)
        ours, _ = session.prefill(ids, logits="all")
        with torch.no_grad():
            out = reference(torch.tensor([ids]), use_cache=True)
        assert_close(ours, out.logits[0].numpy(), dtype, f"{name} {dtype} prefill")
        past, sequence = out.past_key_values, list(ids)
        token = int(out.logits[0, -1].argmax())
        for step in range(DECODE_STEPS):  # decode steps, fed HF's greedy token so both see the same inputs
            ours_step, _ = session.decode(token)
            with torch.no_grad():
                out = reference(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            assert_close(ours_step, out.logits[0, -1].numpy(), dtype, f"{name} {dtype} decode step {step}")
            sequence.append(token)
            token = int(out.logits[0, -1].argmax())

        expected, gaps = hf_greedy(reference, ids, GREEDY_TOKENS)
        stats = Stats()
        got = list(model.generate_tokens(ids, Sampling(max_new_tokens=GREEDY_TOKENS), context=256, stats=stats))
        # generation stops at eos; transformers was told to go on, so compare what we produced, and our eos with
        # transformers' token at that step
        parted = check_greedy(got, expected, gaps, TIE_GAP[dtype], f"{name} {dtype}")
        assert len(got) == GREEDY_TOKENS or stats.stop_reason == "eos"
        if stats.stop_reason == "eos" and parted is None:
            step = len(got)
            assert expected[step] in model.eos_ids or gaps[step] < TIE_GAP[dtype], \
                f"{name} {dtype}: we stopped at eos at step {step}, transformers says {expected[step]}"


@pytest.mark.parametrize("name", ["qwen2-gqa7", "llama-llama3"])
def test_cache_equals_recompute_and_long_prompt(name: str, checkpoint_dir, converted) -> None:
    """Decoding with the KV cache equals running the whole sequence at once; a prompt longer than one prefill chunk
    (64 positions) matches transformers at every position."""
    dtype = "fp16"
    ids = prompt(SPECS[name].vocab, 150, seed=1)
    with ascend_super.load(converted(name, dtype), backend="cpu", threads=2) as model:
        whole = model.session(256)
        all_logits, _ = whole.prefill(ids, logits="all")
        stepwise = model.session(256)
        stepwise.prefill(ids[:10], logits="none")
        for position in range(10, 40):
            logits, _ = stepwise.decode(ids[position])
            np.testing.assert_allclose(logits, all_logits[position], atol=2e-3, rtol=0,
                                       err_msg=f"position {position}")
        reference = hf_model(checkpoint_dir(name), dtype)
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0].numpy()
        assert_close(all_logits, expected, dtype, f"{name} 150-token prompt")


def test_threads_do_not_change_results(converted) -> None:
    ids = prompt(SPECS["qwen2-gqa-hd64"].vocab, 30)
    results = []
    for threads in sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}):
        with ascend_super.load(converted("qwen2-gqa-hd64"), backend="cpu", threads=threads) as model:
            logits, _ = model.session(64).prefill(ids, logits="all")
            results.append(logits)
    for other in results[1:]:
        np.testing.assert_allclose(results[0], other, atol=1e-4)
