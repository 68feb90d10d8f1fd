"""TEMPORARY (until the native batched decode lands on main): NativeModel.forward_batch as one decode per session,
with the signature the native side will have. Imported by the serve tests only when the real one is missing."""

from __future__ import annotations

import numpy as np

from ascend_super.runtime.native import NativeModel


def forward_batch(self, sessions, tokens, logits="none", k=0):
    argmax, rows, ids = [], [], []
    for session, token in zip(sessions, tokens):
        if logits == "topk":
            v, i = session.decode_topk(token, k)
            rows.append(v); ids.append(i); argmax.append(int(i[0]))
        else:
            out, a = session.decode(token, logits="last" if logits == "last" else "none")
            argmax.append(a)
            if out is not None:
                rows.append(out)
    values = np.stack(rows) if rows else None
    return np.array(argmax, dtype=np.int32), values, (np.stack(ids) if ids else None)


if not hasattr(NativeModel, "forward_batch"):
    NativeModel.forward_batch = forward_batch
