"""Attention weights of chosen query positions, read out of a forward without changing it.

transformers' decoder layers call their attention through ``ALL_ATTENTION_FUNCTIONS`` under the name in
``config._attn_implementation``. :func:`attention_rows` registers one more entry (``latentcheck_rows``) that calls the
model's own implementation (sdpa / eager / ...) for the output, so the forward is unchanged, and in addition computes
``softmax(q_rows . k^T * scaling + mask)`` for the requested query rows only, averaged over heads, from the very
query and key tensors the layer attends with (after its projections, norms and rotary embedding, for every family).
Memory stays small (rows x keys per layer), so it works on long image prompts of real checkpoints.

Used by ``Engine.replay_attention`` (the probe's attention mass, issue #24 part 3). Not thread-safe across models
that share one config object (the name is switched on the config for the duration of the ``with`` block).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

CAPTURE_NAME = "latentcheck_rows"


@dataclass
class _Capture:
    rows: Any  # LongTensor of query positions
    inner: str | None  # the model's own attention implementation
    out: list = field(default_factory=list)  # per layer call: [B, n_rows, L_keys] head-mean weights (float32)


_STATE: ContextVar[_Capture | None] = ContextVar("latentcheck_attention_rows", default=None)


def rows_weights(query, key, attention_mask, rows, scaling: float):
    """Head-mean attention weights [B, n_rows, L_keys] of query positions ``rows``: softmax over keys of
    q . k * scaling plus the mask (boolean: False = hidden; float: added), grouped-query keys repeated per head as
    transformers' ``repeat_kv`` does. Without a mask the causal mask applies (queries and keys aligned at the end)."""
    import torch

    q = query[:, :, rows].float()  # [B, h, r, d]
    k = key.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scaling  # [B, h, r, Lk]
    Lq, Lk = query.shape[2], k.shape[2]
    if attention_mask is None:
        qpos = rows.to(s.device) + (Lk - Lq)
        allowed = torch.arange(Lk, device=s.device)[None, :] <= qpos[:, None]
        s = s.masked_fill(~allowed[None, None], float("-inf"))
    else:
        m = attention_mask[..., rows, :Lk]
        if m.dtype == torch.bool:
            s = s.masked_fill(~m, float("-inf"))
        else:
            s = s + m.float()
    return torch.softmax(s, dim=-1).mean(1)


def _capture_forward(module, query, key, value, attention_mask, *args, **kwargs):
    from latentcheck.core.kvshare import own_attention

    state = _STATE.get()
    inner = own_attention(module, state.inner if state is not None else "sdpa")
    out = inner(module, query, key, value, attention_mask, *args, **kwargs)
    if state is not None:
        if getattr(module, "sliding_window", None):
            raise NotImplementedError("attention capture does not model sliding-window attention")
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
        state.out.append(rows_weights(query, key, attention_mask, state.rows, float(scaling)).cpu())
    return out


def _register() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if CAPTURE_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(CAPTURE_NAME, _capture_forward)


@contextmanager
def attention_rows(text_model, rows) -> Iterator[list]:
    """Within the block, every attention call of ``text_model`` (a decoder whose layers read
    ``config._attn_implementation``) also appends the head-mean weights of query positions ``rows`` to the yielded
    list (one [B, n_rows, L_keys] tensor per layer, in layer order). The model's own implementation computes the
    outputs, so the forward is unchanged."""
    import torch

    _register()
    cfg = text_model.config
    own = cfg._attn_implementation
    state = _Capture(rows=torch.as_tensor(rows, dtype=torch.long), inner=own)
    token = _STATE.set(state)
    cfg._attn_implementation = CAPTURE_NAME
    try:
        yield state.out
    finally:
        cfg._attn_implementation = own
        _STATE.reset(token)


__all__ = ["CAPTURE_NAME", "attention_rows", "rows_weights"]
