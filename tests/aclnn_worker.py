"""Runs the aclnn backend on the CANN emulator in its own process (tests/test_aclnn_backend.py starts it).

A process of its own because CANN is opened once per process and the plugin stays loaded: other test files check
what happens when it is missing. Usage: python aclnn_worker.py REQUEST.json OUT.npz; the request says which
.asw file, eager or graph, the prompt, host-fed decode tokens, pieces to prefill the prompt in, how many pipelined
greedy tokens, top-k, a generation that must fail before the prompt's, a session that goes on after a failed
step; every
result goes into OUT.npz.
"""

from __future__ import annotations

import json
import sys
import threading

import numpy as np

import ascend_super
from ascend_super.runtime.native import NativeError, NativeSession


def pipelined_greedy(session: NativeSession, prompt: list[int], count: int, mark_step=None) -> list[int]:
    """Greedy tokens as generation runs them: step t+1 queued before token t is read, the argmax on the device."""
    _, first = session.prefill(prompt, logits="none")
    tokens = [first]
    if count > 1:
        session.enqueue()
    while len(tokens) < count:
        if len(tokens) + 1 < count:
            session.enqueue()
        tokens.append(session.read())
        if mark_step is not None:
            mark_step()
    session.discard()
    return tokens


def emulator_mark_step():
    """The emulator's aswemu_mark_step: closes one interval of the counters file's "steps" list."""
    import ctypes
    import os

    return ctypes.CDLL(os.path.join(os.environ["ASW_CANN_LIB_DIR"], "libascendcl.so")).aswemu_mark_step


def main() -> None:
    request = json.loads(open(sys.argv[1]).read())
    out: dict[str, np.ndarray] = {}
    mark = emulator_mark_step() if request.get("mark_steps") else None
    with ascend_super.load(request["asw"], backend="aclnn", eager=request.get("eager", False)) as model:
        if mark is not None:
            mark()  # steps[0]: opening the model
        out["describe"] = np.array(model.native.describe())
        out["prefill_block"] = np.array(model.native.prefill_block)
        context = request.get("context", 256)
        prompt = request["prompt"]
        session = model.session(context)
        if request.get("logits", True):
            logits, argmax = session.prefill(prompt, logits="all")
            out["prefill_logits"] = logits
            out["prefill_argmax"] = np.array(argmax)
            steps = []
            for token in request.get("decode_tokens", []):
                step, _ = session.decode(token)
                steps.append(step)
            if steps:
                out["decode_logits"] = np.stack(steps)
            session.reset()
        if request.get("failing_prompt"):  # a generation that must fail, then `prompt` on the same (reset) session
            try:
                list(model.generate_tokens(request["failing_prompt"], ascend_super.Sampling(max_new_tokens=4),
                                           context=context))
            except NativeError as exc:
                out["failure"] = np.array(str(exc))
            else:
                raise SystemExit("failing_prompt: the generation did not fail")
            out["after_failure"] = np.array(list(model.generate_tokens(
                prompt, ascend_super.Sampling(max_new_tokens=request["after_failure"]), context=context)),
                dtype=np.int64)
        if request.get("continue_after_failure"):  # queued steps, the first fails; the session goes on from there
            plan = request["continue_after_failure"]
            session.prefill(plan["prompt"], logits="none")
            for _ in range(plan["queue"]):
                session.enqueue()
            try:
                session.read()
            except NativeError as exc:
                out["continue_failure"] = np.array(str(exc))
            else:
                raise SystemExit("continue_after_failure: the first queued step did not fail")
            _, token = session.prefill(plan["then"], logits="none")
            continued = [token]
            while len(continued) < plan["tokens"]:  # device-fed steps: they attend over a whole KV bucket
                session.enqueue()
                continued.append(session.read())
            out["continued"] = np.array(continued, dtype=np.int64)
            session.reset()
        if request.get("pieces"):  # the prompt fed in pieces of these lengths: the last position's logits
            start = 0
            for piece in request["pieces"]:
                logits, _ = session.prefill(prompt[start:start + piece], logits="last")
                start += piece
            out["pieces_logits"] = logits
            session.reset()
        if request.get("topk"):
            values, ids = session.forward_topk(prompt, request["topk"])
            out["topk_values"], out["topk_ids"] = values, ids
            session.reset()
        greedy = request.get("greedy", 0)
        if greedy:
            out["greedy"] = np.array(pipelined_greedy(session, prompt, greedy, mark), dtype=np.int64)
        threads = request.get("threads", 0)
        if threads:  # the same greedy run from several Python threads at once, one session each
            results: list[list[int] | BaseException] = [[] for _ in range(threads)]

            def work(i: int) -> None:
                try:
                    results[i] = list(model.generate_tokens(prompt, ascend_super.Sampling(max_new_tokens=greedy),
                                                            context=context))
                except BaseException as exc:  # reported below
                    results[i] = exc

            pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            out["threaded"] = np.array(results, dtype=np.int64)
        session.close()
    np.savez(sys.argv[2], **out)


if __name__ == "__main__":
    main()
