"""The cpu backend's greedy screen (backend_cpu.c): a greedy step finds the argmax of the logits from an int8 copy of
the lm_head and exact rows for the few candidates its bounds leave. It must pick exactly the token the whole lm_head
picks, the first of equal logits included, on every kernel set, dtype and activation mode, and fall back to the
whole lm_head where its bounds cannot choose.
"""

from __future__ import annotations

import numpy as np
import pytest

from ascend_super.runtime.native import NativeError, NativeModel

from reference import f32_to_u16
from test_native import build, kernel_sets, make_config

# a vocabulary large enough that the screen has rows to skip; tied (Qwen2-like) and untied (Llama-like)
TIED = make_config(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=24, intermediate_size=80,
                   vocab_size=3001, tie_word_embeddings=True, attention_bias=True)
UNTIED = make_config(hidden_size=72, num_attention_heads=3, num_key_value_heads=1, head_dim=24,
                     intermediate_size=64, vocab_size=2048)
PROMPT = [5, 17, 400, 9, 1234, 77]


def open_model(data, tensors, config, dtype="fp16", activations="f32") -> NativeModel:
    return NativeModel(data, config, dtype, "nd", tensors, activations=activations)


def full_and_screened(model: NativeModel, steps: int) -> tuple[list[int], list[int], list[int]]:
    """The argmax of `steps` decode steps three ways: np.argmax of the whole lm_head's logits, the token the backend
    returns with those logits, and the token of a logits-free (screened) step. Each step is fed the next of a fixed
    run of tokens rather than the last argmax, so that the steps see varied inputs (a random tied model keeps
    predicting the token it was fed)."""
    feed = [(37 * i + 11) % model.vocab for i in range(steps)]
    by_logits, with_logits, screened = [], [], []
    with model.session(max_len=64) as full, model.session(max_len=64) as fast:
        logits, token = full.prefill(PROMPT, logits="last")
        _, fast_token = fast.prefill(PROMPT, logits="none")
        for fed in feed:
            by_logits.append(int(np.argmax(logits)))
            with_logits.append(token)
            screened.append(fast_token)
            logits, token = full.decode(fed, logits="last")
            _, fast_token = fast.decode(fed, logits="none")
    return by_logits, with_logits, screened


def with_output_rows(config: dict, dtype: str, rows: np.ndarray, seed: int = 3):
    """An untied model whose lm_head is `rows` ([vocab, hidden] uint16 bit patterns of `dtype`)."""
    data, tensors, _ = build(config, dtype, seed=seed)
    entry = next(t for t in tensors if t[0] == "output.weight")
    data[entry[1]:entry[1] + entry[2]] = np.ascontiguousarray(rows, dtype=np.uint16).reshape(-1).view(np.uint8)
    return data, tensors


@pytest.mark.parametrize("config", [TIED, UNTIED], ids=["tied", "untied"])
@pytest.mark.parametrize(("dtype", "activations"), [("fp16", "f32"), ("bf16", "f32"), ("bf16", "bf16")])
@pytest.mark.parametrize("kernels", kernel_sets())
def test_screened_steps_pick_the_whole_lm_heads_argmax(config, dtype, activations, kernels, monkeypatch):
    monkeypatch.setenv("ASW_KERNELS", kernels)
    data, tensors, _ = build(config, dtype, seed=11)
    with open_model(data, tensors, config, dtype, activations) as model:
        by_logits, with_logits, screened = full_and_screened(model, 20)
    assert screened == with_logits == by_logits
    assert len(set(screened)) > 3  # a run of different tokens, not one repeated


def test_screened_pipelined_decode_matches():
    """enqueue/read (the decode loop of ascend-run, each step fed the last argmax) goes through the screen too"""
    data, tensors, _ = build(UNTIED, "fp16", seed=11)
    with open_model(data, tensors, UNTIED) as model:
        with model.session(max_len=64) as s:
            logits, token = s.prefill(PROMPT, logits="last")
            want = [token]
            for _ in range(11):
                logits, token = s.decode(token, logits="last")
                want.append(token)
        with model.session(max_len=64) as s:
            _, first = s.prefill(PROMPT, logits="none")
            got = [first]
            for _ in range(11):
                s.enqueue()
                got.append(s.read())
    assert got == want


def test_a_batch_of_one_greedy_step_is_a_lone_step():
    """forward_batch with one session and no logits (ascend-serve with one greedy stream) takes the lone step's
    screened path; with two sessions, the batched whole lm_head: the same tokens either way"""
    data, tensors, _ = build(TIED, "fp16", seed=11)
    with open_model(data, tensors, TIED) as model:
        sessions = [model.session(max_len=64) for _ in range(3)]
        firsts = [s.prefill(PROMPT, logits="none")[1] for s in sessions]
        alone = sessions[0].decode(firsts[0], logits="none")[1]
        one, _, _ = model.forward_batch(sessions[1:2], firsts[1:2], logits="none")
        two, _, _ = model.forward_batch(sessions[1:], firsts[1:], logits="none")
        assert int(one[0]) == alone
        for s in sessions:
            s.close()
    assert len(set(firsts)) == 1 and int(two[1]) == alone


@pytest.mark.parametrize("nudge", [0, 1], ids=["equal", "one-ulp-apart"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_ties_and_near_ties_go_as_in_the_whole_lm_head(dtype, nudge):
    """Every row of the lm_head's second half repeats the first half's (nudge 0: exactly, so each logit has an equal
    twin and the lower id must win; nudge 1: one element one ulp away, logits apart by less than the int8 bounds can
    tell, so both rows are candidates and the exact ones decide)."""
    vocab, hidden = UNTIED["vocab_size"], UNTIED["hidden_size"]
    rng = np.random.default_rng(4)
    half = f32_to_u16((rng.standard_normal((vocab // 2, hidden)) / np.sqrt(hidden)).astype(np.float32), dtype)
    twin = half.copy()
    twin[:, 7] += np.uint16(nudge)
    data, tensors = with_output_rows(UNTIED, dtype, np.concatenate([half, twin]))
    with open_model(data, tensors, UNTIED, dtype) as model:
        by_logits, with_logits, screened = full_and_screened(model, 16)
    assert screened == with_logits == by_logits
    if nudge == 0:
        assert all(t < vocab // 2 for t in screened)


def test_rows_the_bounds_cannot_tell_apart_fall_back_to_the_whole_lm_head():
    """All rows equal: every row is a candidate, more than the screen computes, so the step takes the whole lm_head
    (and, all logits equal, token 0)."""
    vocab, hidden = UNTIED["vocab_size"], UNTIED["hidden_size"]
    row = f32_to_u16(np.linspace(-0.2, 0.3, hidden, dtype=np.float32), "fp16")
    data, tensors = with_output_rows(UNTIED, "fp16", np.tile(row, (vocab, 1)))
    with open_model(data, tensors, UNTIED) as model:
        by_logits, with_logits, screened = full_and_screened(model, 4)
    assert screened == with_logits == by_logits == [0, 0, 0, 0]


def test_screen_off_gives_the_same_tokens(monkeypatch):
    data, tensors, _ = build(TIED, "bf16", seed=11)
    with open_model(data, tensors, TIED, "bf16") as model:
        _, _, screened = full_and_screened(model, 12)
    monkeypatch.setenv("ASW_GREEDY_SCREEN", "0")
    with open_model(data, tensors, TIED, "bf16") as model:
        _, with_logits, without = full_and_screened(model, 12)
    assert screened == without == with_logits


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_lm_head_is_reported_as_without_the_screen(bad, monkeypatch):
    """No screen is built over a non-finite row; the step then computes the whole lm_head, which names the NaN."""
    vocab, hidden = UNTIED["vocab_size"], UNTIED["hidden_size"]
    rows = np.random.default_rng(2).standard_normal((vocab, hidden)).astype(np.float32) / np.sqrt(hidden)
    rows[100, 3] = bad
    rows[101, 3] = -np.inf if bad == np.inf else bad  # +inf and -inf rows: inf - inf somewhere in the sums
    data, tensors = with_output_rows(UNTIED, "fp16", f32_to_u16(rows, "fp16"))
    outcomes = []
    for screen in ("1", "0"):
        monkeypatch.setenv("ASW_GREEDY_SCREEN", screen)
        with open_model(data, tensors, UNTIED) as model, model.session(max_len=16) as s:
            try:
                outcomes.append(s.prefill(PROMPT, logits="none")[1])
            except NativeError as e:
                outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]
