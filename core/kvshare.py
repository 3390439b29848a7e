"""Shared-prefix KV cache: the prompt's keys/values are stored ONCE per sample; every row (a condition of a sample)
stores only its own suffix (the positions it generated), and attention combines the two with a log-sum-exp merge.

Forking a prefill cache per condition (``DynamicCache.batch_select_indices``) copies the prompt's KV once per row:
9 conditions x 8 samples x an 8k-token prompt of a 7B model (~57 KB/token) is ~34 GB where ~3.7 GB would do. Here a
decode row costs only its suffix. The attention function is registered in transformers' ``AttentionInterface`` under
``ATTENTION_NAME`` and selected for the duration of one forward (``shared_forward``); for each query it computes

    softmax over [prefix keys of its sample ; its own suffix keys]
    = merge( softmax-attention over the prefix (once per sample, all rows of the sample as extra queries),
             softmax-attention over the row's suffix )  with weights exp(lse_part - lse_total)

which is exact (up to float rounding) for any boolean key mask. Rows may leave (``select_rows``: only suffixes are
copied; a sample's prefix is dropped once none of its rows is left).
"""

from __future__ import annotations

import sys
from typing import Any

from latentcheck.core.errors import LatentcheckError

ATTENTION_NAME = "latentcheck_shared_prefix"
KNOCKOUT_NAME = "latentcheck_knockout"  # the plain path's attention with per-layer key knockout (``knockout_forward``)
_registered = False


def register_attention() -> None:
    """Register the shared-prefix attention function with transformers (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    AttentionInterface.register(KNOCKOUT_NAME, knockout_attention)
    _registered = True


class KeyKnockout:
    """Attention knockout: per decoder layer, which keys some queries may not read (on top of the step's mask).

    ``drop[layer]`` = a boolean tensor broadcastable to the attention mask [R, 1, n, K] (True = hidden); layers
    without an entry attend as usual. The engine builds one per forward from the rows' knockout interventions;
    both attention paths (``shared_prefix_attention`` and the plain path's ``knockout_attention``) AND it into the
    mask of that layer only, so knockout is a mask, never a copy of the cache."""

    def __init__(self, drop: dict[int, Any]):
        self.drop = drop

    def apply(self, layer_idx: int, mask):
        """The boolean mask ``mask`` of layer ``layer_idx`` with this layer's knocked-out keys hidden."""
        d = self.drop.get(layer_idx)
        return mask if d is None else mask & ~d.to(mask.device)


def supports_shared_prefix(text_model) -> bool:
    """Whether a text model can decode from a shared prefix: every layer full attention (no sliding window) and
    attention modules that read ``config._attn_implementation`` (transformers' standard layout)."""
    cfg = text_model.config
    types = getattr(cfg, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in types) and hasattr(cfg, "_attn_implementation_internal")


class SharedPrefixCache:
    """KV cache of a decode batch: per layer one prefix [B, kv_heads, P, d] (the prefill's, shared by the rows of a
    sample) and one suffix buffer [R, kv_heads, capacity, d] (per row). ``rows[r]`` = the sample of row ``r``."""

    def __init__(self, prefill_cache, rows, capacity: int = 64):
        import torch

        layers = prefill_cache.layers
        self.prefix_k = [layer.keys for layer in layers]
        self.prefix_v = [layer.values for layer in layers]
        self.P = int(self.prefix_k[0].shape[-2])
        dev = self.prefix_k[0].device
        self.rows = torch.as_tensor(rows, dtype=torch.long, device=dev)
        self._slots()
        R = len(rows)
        kvh, d = self.prefix_k[0].shape[1], self.prefix_k[0].shape[3]
        dt = self.prefix_k[0].dtype
        cap = max(1, capacity)
        # (each layer's buffers live where its prefix lives: layers may sit on different devices)
        self.suffix_k = [torch.zeros((R, kvh, cap, d), dtype=dt, device=k.device) for k in self.prefix_k]
        self.suffix_v = [torch.zeros((R, kvh, cap, d), dtype=dt, device=k.device) for k in self.prefix_k]
        self.length = [0] * len(layers)  # suffix columns written, per layer

    def _slots(self) -> None:
        """Per row its slot among the rows of its sample (queries are grouped per sample for the prefix)."""
        import torch

        rows = self.rows.tolist()
        seen: dict[int, int] = {}
        slot = []
        for s in rows:
            slot.append(seen.get(s, 0))
            seen[s] = slot[-1] + 1
        self.slot = torch.tensor(slot, dtype=torch.long, device=self.rows.device)
        self.n_slots = max(seen.values()) if seen else 0
        self.n_samples = int(self.prefix_k[0].shape[0])
        # one row per sample, in sample order (continuous batching of plain generation): row r reads prefix r
        self.one_to_one = rows == list(range(self.n_samples))

    # ---- the transformers Cache calls
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write the new suffix positions of every row and return the layer's suffix keys/values so far."""
        import torch

        n = key_states.shape[-2]
        i = self.length[layer_idx]
        if i + n > self.suffix_k[layer_idx].shape[2]:
            grow = max(i + n, 2 * self.suffix_k[layer_idx].shape[2]) - self.suffix_k[layer_idx].shape[2]
            pad = (0, 0, 0, grow)
            self.suffix_k[layer_idx] = torch.nn.functional.pad(self.suffix_k[layer_idx], pad)
            self.suffix_v[layer_idx] = torch.nn.functional.pad(self.suffix_v[layer_idx], pad)
        self.suffix_k[layer_idx][:, :, i:i + n] = key_states
        self.suffix_v[layer_idx][:, :, i:i + n] = value_states
        self.length[layer_idx] = i + n
        return self.suffix_k[layer_idx][:, :, :i + n], self.suffix_v[layer_idx][:, :, :i + n]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.P + self.length[layer_idx]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` suffix positions (transformers' negative-crop convention)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        self.length = [max(0, n + tokens_to_remove) for n in self.length]

    # ---- the engine's calls
    def select_rows(self, keep) -> None:
        """Keep only rows ``keep`` (a 1-D index tensor): suffixes are gathered; prefixes of samples left without
        rows are dropped."""
        import torch

        keep = keep.to(self.rows.device)
        for li in range(len(self.suffix_k)):  # (capacity kept: the next positions need no growth copy)
            k_here = keep.to(self.suffix_k[li].device)
            self.suffix_k[li] = self.suffix_k[li][k_here]
            self.suffix_v[li] = self.suffix_v[li][k_here]
        rows = self.rows[keep]
        used = torch.unique(rows)
        if used.numel() < self.n_samples:  # compact the prefixes of samples that still have rows
            self.prefix_k = [k[used.to(k.device)] for k in self.prefix_k]
            self.prefix_v = [v[used.to(v.device)] for v in self.prefix_v]
            rows = torch.searchsorted(used, rows)
        self.rows = rows
        self._slots()

    def extend(self, other: "SharedPrefixCache", drop: int = 0, capacity: int = 0) -> None:
        """Continuous batching: append the samples and rows of ``other`` (a fresh fork, no suffix written yet).
        Prefixes are left-padded to the longer prompt (the engine masks the padding); the first ``drop`` suffix
        columns (no live row reads them any more) are dropped; the new rows' suffix columns written so far are
        zeros (masked); room for ``capacity`` suffix positions in all."""
        import torch

        if any(other.length):
            raise ValueError("extend: the joining rows must not have suffix positions yet")
        Pm = max(self.P, other.P)
        n = self.length[0] - drop
        n_old = int(self.prefix_k[0].shape[0])

        def lpad(t, P: int):
            return t if P == Pm else torch.nn.functional.pad(t, (0, 0, Pm - P, 0))

        for li in range(len(self.prefix_k)):
            dev = self.prefix_k[li].device
            for pre, oth in ((self.prefix_k, other.prefix_k), (self.prefix_v, other.prefix_v)):
                pre[li] = torch.cat([lpad(pre[li], self.P), lpad(oth[li].to(dev), other.P)])
            for suf, oth in ((self.suffix_k, other.suffix_k), (self.suffix_v, other.suffix_v)):
                t = suf[li]
                new = t.new_zeros((t.shape[0] + oth[li].shape[0], t.shape[1], max(capacity, n, 1), t.shape[3]))
                new[:t.shape[0], :, :n] = t[:, :, drop:drop + n]
                suf[li] = new
        self.rows = torch.cat([self.rows, other.rows.to(self.rows.device) + n_old])
        self.P = Pm
        self.length = [n] * len(self.length)
        self._slots()

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` suffix positions in every layer (avoids growth copies during decoding)."""
        import torch

        for li in range(len(self.suffix_k)):
            have = self.suffix_k[li].shape[2]
            if have < capacity:
                pad = (0, 0, 0, capacity - have)
                self.suffix_k[li] = torch.nn.functional.pad(self.suffix_k[li], pad)
                self.suffix_v[li] = torch.nn.functional.pad(self.suffix_v[li], pad)

    def nbytes(self) -> dict[str, int]:
        """Bytes held: the shared prefixes and the row suffixes (allocated capacity)."""
        pre = sum(t.numel() * t.element_size() for t in self.prefix_k + self.prefix_v)
        suf = sum(t.numel() * t.element_size() for t in self.suffix_k + self.suffix_v)
        return {"prefix": pre, "suffix": suf}


def shared_forward(text_model, embeds, positions, mask, cache: SharedPrefixCache, knockout: KeyKnockout | None = None):
    """One forward of ``text_model`` whose attention reads ``cache``'s shared prefixes. ``mask``: None (every key
    visible), a 2-D [R, K] key mask (the new positions causal among themselves, as transformers reads a 2-D mask) or a
    4-D boolean [R, 1, n, K] mask; K = P + suffix positions including the new ones. ``knockout``: keys hidden in
    some layers only (``KeyKnockout``)."""
    register_attention()
    mask = bool_mask(mask, embeds, cache.get_seq_length())
    cfg = text_model.config
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    before = cfg._attn_implementation_internal
    cfg._attn_implementation_internal = ATTENTION_NAME
    try:
        out = text_model(inputs_embeds=embeds, position_ids=positions, attention_mask=dict.fromkeys(types, mask),
                         cache=cache, use_cache=True, lc_shared_prefix=cache, lc_knockout=knockout)
    finally:
        cfg._attn_implementation_internal = before
    return out.last_hidden_state


def bool_mask(mask, embeds, past: int):
    """The 4-D boolean mask [R, 1, n, K] (K = ``past`` + n) of a forward of ``embeds`` [R, n, H]: None = every key
    visible, a 2-D [R, K] key mask gets the new positions causal among themselves (as transformers reads a 2-D mask),
    a 4-D mask is taken as is."""
    import torch

    R, n = embeds.shape[0], embeds.shape[1]
    K = past + n
    dev = embeds.device
    if mask is not None and mask.dim() == 4:
        return mask.bool()
    keys = torch.ones((R, K), dtype=torch.bool, device=dev) if mask is None else mask.bool()
    causal = torch.ones((n, n), dtype=torch.bool, device=dev).tril()
    m = keys[:, None, :].expand(R, n, K).clone()
    m[:, :, K - n:] &= causal[None]
    return m[:, None]


def knockout_forward(text_model, embeds, positions, mask, cache, knockout: KeyKnockout, **visual):
    """One forward of ``text_model`` on the plain path (a transformers cache or none) with attention knockout: the
    step's mask made 4-D boolean (``bool_mask``) and passed prepared, and the attention function
    ``knockout_attention`` (registered in transformers' ``AttentionInterface``) selected for this forward; it hides
    ``knockout``'s keys in their layers and otherwise runs the model's own attention (sdpa or eager) on the same
    mask. Needs full attention in every layer."""
    register_attention()
    cfg = text_model.config
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise LatentcheckError("attention knockout needs a text model whose layers are all full attention (this one "
                               "has sliding-window layers)")
    past = cache.get_seq_length() if cache is not None else 0
    m = bool_mask(mask, embeds, past)
    before = cfg._attn_implementation_internal
    base = cfg._attn_implementation
    if base not in ("sdpa", "eager"):
        raise LatentcheckError(f"attention knockout on the plain path runs on sdpa or eager attention, this model "
                               f"uses {base!r} (load it with sdpa or eager)")
    cfg._attn_implementation_internal = KNOCKOUT_NAME
    try:
        out = text_model(inputs_embeds=embeds, position_ids=positions, attention_mask=dict.fromkeys(types, m),
                         cache=cache, use_cache=cache is not None, lc_knockout=knockout, lc_base=base, **visual)
    finally:
        cfg._attn_implementation_internal = before
    return out.last_hidden_state


def own_attention(module: Any, name: str):
    """The attention function a model module runs under implementation ``name``: ``eager`` is the module's own
    ``eager_attention_forward`` (its modeling file's), any other name is looked up in transformers' registry."""
    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def knockout_attention(module, query, key, value, attention_mask, lc_knockout: KeyKnockout | None = None,
                       lc_base: str = "sdpa", **kwargs: Any):
    """The plain path's attention under knockout: ``attention_mask`` (4-D boolean) with the layer's knocked-out keys
    hidden, then the model's own attention function (``lc_base``: transformers' sdpa, or the model module's eager
    with the mask made additive)."""
    import torch

    mask = attention_mask if lc_knockout is None else lc_knockout.apply(module.layer_idx, attention_mask)
    if lc_base == "sdpa":
        return own_attention(module, "sdpa")(module, query, key, value, mask, **kwargs)
    eager = own_attention(module, "eager")
    additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~mask, torch.finfo(query.dtype).min)
    return eager(module, query, key, value, additive, **kwargs)


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, lc_shared_prefix: SharedPrefixCache | None = None,
                            lc_knockout: KeyKnockout | None = None, **kwargs: Any):
    """Attention of R rows' queries over [their sample's prefix ; their own suffix] (see the module docstring).
    ``query`` [R, h, n, d]; ``key``/``value`` = the rows' suffixes [R, kvh, S, d]; ``attention_mask`` [R, 1, n, P+S]
    boolean. Returns ([R, n, h, d], None) like transformers' attention functions."""
    import torch

    c = lc_shared_prefix
    if c is None:
        raise RuntimeError(f"{ATTENTION_NAME} attention needs the shared-prefix cache (use kvshare.shared_forward)")
    li = module.layer_idx
    pk, pv = c.prefix_k[li], c.prefix_v[li]
    R, h, n, d = query.shape
    B, kvh, P, _ = pk.shape
    g = h // kvh
    scale = scaling if scaling is not None else d ** -0.5
    attention_mask = attention_mask.to(query.device)
    if lc_knockout is not None:
        attention_mask = lc_knockout.apply(li, attention_mask)
    if c.one_to_one:  # row r reads prefix r: one softmax over [prefix scores ; suffix scores], no merge needed
        q = query.reshape(R, kvh, g * n, d)
        s = torch.cat([torch.matmul(q, pk.transpose(-1, -2)), torch.matmul(q, key.transpose(-1, -2))], -1).float()
        s = (s * scale).view(R, kvh, g, n, -1).masked_fill(~attention_mask.view(R, 1, 1, n, -1), float("-inf"))
        p = torch.softmax(s.view(R, kvh, g * n, -1), -1)
        out = torch.matmul(p[..., :P].to(pv.dtype), pv).float() + torch.matmul(p[..., P:].to(value.dtype), value).float()
        return out.view(R, h, n, d).to(query.dtype).transpose(1, 2).contiguous(), None
    m_pre, m_suf = attention_mask[..., :P], attention_mask[..., P:]  # [R, 1, n, P], [R, 1, n, S]
    # ---- prefix: the rows of a sample are extra queries of that sample ([B, h, N*n, d]), one pass over its keys
    N = c.n_slots
    rows, slot = c.rows.to(query.device), c.slot.to(query.device)
    qg = query.new_zeros((B, N, h, n, d))
    qg[rows, slot] = query
    qg = qg.permute(0, 2, 1, 3, 4).reshape(B, kvh, g * N * n, d)
    mg = torch.zeros((B, N, n, P), dtype=torch.bool, device=query.device)
    mg[rows, slot] = m_pre[:, 0]
    s = torch.matmul(qg, pk.transpose(-1, -2)).float() * scale  # [B, kvh, g*N*n, P]
    s = s.view(B, kvh, g, N * n, P).masked_fill(~mg.view(B, 1, 1, N * n, P), float("-inf")).view(B, kvh, -1, P)
    lse_p = torch.logsumexp(s, -1)
    o_p = torch.matmul(torch.exp(s - torch.nan_to_num(lse_p, neginf=0.0)[..., None]).to(pv.dtype), pv).float()
    o_p = o_p.view(B, kvh, g, N, n, d).permute(0, 3, 1, 2, 4, 5)[rows, slot].reshape(R, h, n, d)
    lse_p = lse_p.view(B, kvh, g, N, n).permute(0, 3, 1, 2, 4)[rows, slot].reshape(R, h, n)
    # ---- suffix: per row
    S = key.shape[2]
    s = torch.matmul(query.reshape(R, kvh, g * n, d), key.transpose(-1, -2)).float() * scale  # [R, kvh, g*n, S]
    s = s.view(R, kvh, g, n, S).masked_fill(~m_suf.view(R, 1, 1, n, S), float("-inf")).view(R, kvh, g * n, S)
    lse_s = torch.logsumexp(s, -1)
    o_s = torch.matmul(torch.exp(s - torch.nan_to_num(lse_s, neginf=0.0)[..., None]).to(value.dtype), value).float()
    o_s = o_s.view(R, h, n, d)
    lse_s = lse_s.view(R, h, n)
    # ---- log-sum-exp merge
    lse = torch.logaddexp(lse_p, lse_s)
    safe = torch.nan_to_num(lse, neginf=0.0)
    w_p = torch.exp(lse_p - safe)[..., None]
    w_s = torch.exp(lse_s - safe)[..., None]
    out = (o_p * w_p + o_s * w_s).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None
