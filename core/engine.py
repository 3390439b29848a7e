"""The ONE decoding engine: batched KV-cached generation for latent-reasoning and plain Qwen2.5-VL-class models.

Per batch: one left-padded prefill of the samples, then the cache is forked so that every sample runs all its
conditions (interventions, overrides) as rows of one decode batch. Each step feeds, per row, either a token embedding
or a vector (the profile's feedback vector, after the condition's intervention), with explicit mRoPE positions
(``position = cache index + rope_delta``, cpu-notes.md s4) and a per-row attention mask that implements the image /
latent visibility rules. Per-row state (latent mode, count, blocks, finished) is kept as tensors, so the step costs one
model forward plus a few vector ops: generated ids and masks go into preallocated [rows, max_new_tokens] tensors, fed
vectors / hidden states / logits are kept as one tensor per step and split per row once at the end, and SDPA models
get the step's key mask as a prepared 4-D boolean mask (transformers would rebuild it from a 2-D mask every step).
See docs/performance.md for the measured cost against the bare model call.

Visibility rules (``image_visibility``): ``all`` (normal); ``latents_only`` (only the latent span may attend to image
tokens; all other text after the image cannot — the toy positive control); ``start_only`` (only the latent-start
position may attend to image tokens — with ``start_visible_after=False`` the image reaches the rest only through the
vector that position produces: the toy vector-mediated control); ``none`` (no position after the image block may
attend to it: the behavioural probe's "image hidden from the answer"). ``latents_visible_after=False`` hides the
latent span from every later position (the toy negative control); ``start_visible_after=False`` hides each
latent-start position from every later position.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from latentcheck.core.errors import ProfileError
from latentcheck.core.kvshare import KeyKnockout, SharedPrefixCache, knockout_forward, shared_forward, \
    supports_shared_prefix
from latentcheck.core.interventions import InterventionSpec, LatentStats, VectorContext, apply_vector
from latentcheck.core.profiles import DecodingSpec
from latentcheck.core.prompts import Prompt

PAD, TEXT, IMAGE, SPAN = 0, 1, 2, 3
REASONS = ("length", "eos", "stop")  # Trace.finish_reason values


@dataclass
class Condition:
    """What one forked branch does differently from the un-intervened run."""

    name: str = "baseline"
    intervention: InterventionSpec | None = None
    override: np.ndarray | None = None  # [K', H] latent vectors to feed (fixes the span length to K')
    override_mask: np.ndarray | None = None  # [K'] which indices take the override (others stay live)


@dataclass
class Request:
    """One sample: a prepared prompt and the conditions to run from its shared prefill."""

    prompt: Prompt
    conditions: list[Condition] = field(default_factory=lambda: [Condition()])
    option_ids: list[int] | None = None
    image_visibility: str | None = None  # None = the profile's
    force_latent: bool = False  # force the first generated token to be the latent-start token
    stop_sequences: list[list[int]] = field(default_factory=list)
    max_new_tokens: int | None = None


@dataclass
class Trace:
    """What the engine returns for one (sample, condition)."""

    key: str
    condition: str
    token_ids: list[int]
    text: str
    latents: np.ndarray  # [n, H] vectors actually fed (after intervention)
    raw_latents: np.ndarray  # [n, H] the model's own feedback vectors before intervention
    latent_count: int
    latent_blocks: int
    triggered: bool
    fed_mask: list[bool]  # per generated position: was a vector fed there
    span_mask: list[bool]  # per generated position: inside a latent span
    option_logprobs: np.ndarray | None  # log p(option letter) at the answer point (full-vocabulary softmax)
    refs: dict[str, np.ndarray]  # reference hidden states of the prompt (shared by all conditions of a sample);
    # with Engine(capture_image_tokens=True) also "image_token_states" [n_image_tokens, H] (last layer, per token)
    hidden: np.ndarray | None  # [T, H] last-layer hidden state at each generated position (if captured)
    finish_reason: str
    timing: dict[str, float] = field(default_factory=dict)  # batch_prefill_s, batch_decode_s (the decode loop),
    # batch_total_s (prefill to option scores), batch_rows, steps, rows_retired (rows that left the batch early),
    # kv_cache_bytes (the largest size of the batch's KV cache): shared by the traces of one batch
    logits: np.ndarray | None = None  # [T, V] logits each generated token was chosen from (capture_logits only)

    @property
    def option_probs(self) -> np.ndarray | None:
        """Option distribution renormalised over the options."""
        if self.option_logprobs is None:
            return None
        lp = self.option_logprobs - self.option_logprobs.max()
        p = np.exp(lp)
        return p / p.sum()


@dataclass
class Scores:
    """Teacher-forced log-likelihoods from :meth:`Engine.score` (torch tensors; gradients flow when enabled)."""

    logprobs: Any  # [R, L] log p(continuation token j | prompt, latent span, tokens < j); 0 where not ``valid``
    valid: Any  # [R, L] bool: j < len(continuation of row R)
    rows: list[int]  # prompt index of each row (rows are the continuations, flattened in order)
    latents: tuple | None = None  # K tensors [R, H]: the own feedback vectors fed in the latent span, in order
    start_logprob: Any = None  # [R] log p(latent-start token | prompt) (latent_steps > 0)

    def mean_nll(self) -> np.ndarray:
        """Mean negative log-likelihood per continuation token (nats), one value per row."""
        v = self.valid
        return (-(self.logprobs * v).sum(1) / v.sum(1)).detach().float().cpu().numpy().astype(np.float64)


@dataclass
class AttentionRows:
    """Head-mean attention weights of chosen query positions at every decoder layer (``Engine.replay_attention``)."""

    labels: list[str]  # per query row: last_prompt_token, start, latent_0 ..., answer_point
    positions: list[int]  # per query row: its position in the replayed sequence
    weights: np.ndarray  # [n_layers, n_rows, L]: attention over the L keys (prompt + generated ids), rows sum to 1
    image_positions: np.ndarray  # positions of the prompt's image tokens, in the processor's (row-major) order


_ROW_TENSORS = ("mT", "mL", "pos", "logits", "fb", "ov", "ov_len", "ov_mask", "has_ov", "limit", "fixed", "force",
                "mode", "lat_count", "blocks", "finished", "reason", "history", "gen_ids", "fed_t", "span_t", "n_gen",
                "ap_logits", "ap_done", "ap_col", "ap_pos", "ap_pending", "zeros_l", "ones_l", "start_fill",
                "end_fill", "pad_fill", "lat_rec", "no_rows", "has_spec", "retirable", "need", "vec", "nxt",
                "span_now", "new_fin", "active", "row_max", "enter", "start_only", "mS0", "img_cols", "s0")  # per-row state of a _Batch (rows leave by indexing these)


class _Batch(SimpleNamespace):
    """Decode state of one batch inside the engine: one row per (request, condition); per-row quantities are
    tensors of R rows (set up by ``Engine._setup``, advanced by ``_transition`` / ``_advance``, read by
    ``_assemble``)."""


def input_start(kinds, qmask):
    """Per row, the first column of the user's input (first image token, else first question token)."""
    import torch

    P = kinds.shape[1]
    cols = torch.arange(P, device=kinds.device)[None].expand_as(kinds)
    first_img = torch.where(kinds == IMAGE, cols, torch.full_like(cols, P)).min(1).values
    first_q = torch.where(qmask, cols, torch.full_like(cols, P)).min(1).values
    return torch.minimum(first_img, first_q)


def latent_key_mask(kinds, start, visibility: list[str], blind: bool):
    """Which prompt columns latent-span queries may attend to: valid columns, minus the image under visibility
    'none' or 'start_only' (there the latent-start query adds the image: ``start_key_mask``), minus the whole
    user input (from ``start``) for models whose latents do not see the input."""
    import torch

    hide_img = torch.tensor([v in ("none", "start_only") for v in visibility], device=kinds.device)
    m = (kinds != PAD) & ~((kinds == IMAGE) & hide_img[:, None])
    if blind:
        cols = torch.arange(kinds.shape[1], device=kinds.device)[None]
        m = m & (cols < start[:, None])
    return m


def start_key_mask(kinds, latent_mask, visibility: list[str]):
    """Prompt columns the latent-start query may attend to: the latent mask plus, under 'start_only', the image."""
    import torch

    so = torch.tensor([v == "start_only" for v in visibility], device=kinds.device)
    return latent_mask | (so[:, None] & (kinds == IMAGE))


def logits_processor(decoding: DecodingSpec):
    """transformers' own ``LogitsProcessorList`` for a decoding spec, in ``generate``'s order and under its
    conditions (``GenerationMixin._get_logits_processor``): repetition penalty (over prompt and generated ids), then,
    when sampling, temperature, top-k, top-p."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    d = decoding
    out = LogitsProcessorList()
    if d.repetition_penalty is not None and d.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=d.repetition_penalty))
    if d.do_sample:
        if d.temperature is not None and d.temperature != 1.0:
            out.append(TemperatureLogitsWarper(d.temperature))
        if d.top_k:
            out.append(TopKLogitsWarper(top_k=d.top_k, min_tokens_to_keep=1))
        if d.top_p is not None and d.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=d.top_p, min_tokens_to_keep=1))
    return out


def cache_bytes(cache) -> int:
    """Bytes held by a KV cache (a transformers cache's layer tensors, or a SharedPrefixCache's prefixes and
    suffix buffers)."""
    if isinstance(cache, SharedPrefixCache):
        return sum(cache.nbytes().values())
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


def text_model_of(model):
    """The decoder of a loaded model: text-only causal LMs (Qwen2/Qwen3ForCausalLM) have it as ``.model`` (1-D
    positions); the VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) as ``.model.language_model`` (mRoPE positions)."""
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner


def _row_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:12], 16)


class Engine:
    """Batched latent/plain decoding over a ``LoadedModel`` (see module docstring)."""

    def __init__(self, lm, decoding: DecodingSpec | None = None, seed: int = 0, capture_hidden: bool = False,
                 stats: LatentStats | None = None, capture_logits: bool = False, shared_prefix: bool | None = None,
                 retire_rows: bool = True, capture_image_tokens: bool = False,
                 continuous: bool = True, admit_min: int | None = None):
        import torch

        self.lm = lm
        self.model = lm.model
        self.text_model = text_model_of(lm.model)
        self.text_only = self.text_model is lm.model.model
        vcfg = getattr(lm.model.config, "vision_config", None)
        self.deepstack = bool(getattr(vcfg, "deepstack_visual_indexes", None))  # Qwen3-VL
        self.decoding = decoding or lm.profile.decoding
        self.seed = seed
        self.capture_hidden = capture_hidden
        self.capture_logits = capture_logits
        self.capture_image_tokens = capture_image_tokens  # Trace.refs["image_token_states"]: [n_image_tokens, H]
        self.stats = stats
        self.profile = lm.profile
        self.tokens = lm.tokens
        self.device = next(lm.model.parameters()).device
        self.embed = lm.model.get_input_embeddings()
        self.dtype = self.embed.weight.dtype
        L = self.profile.latent
        self._hook_store: dict[str, Any] = {}
        if self.profile.is_latent and (L.feedback_layer != -1 or not L.post_norm):
            layer = self.text_model.layers[L.feedback_layer]

            def hook(_m, _i, out):
                self._hook_store["h"] = out[0] if isinstance(out, tuple) else out

            layer.register_forward_hook(hook)
        self._eos = torch.tensor(self.tokens.eos or [-1], device=self.device)
        self.processors = logits_processor(self.decoding)
        self.penalised = any(type(p).__name__ == "RepetitionPenaltyLogitsProcessor" for p in self.processors)
        # forks keep ONE copy of the prompt's KV per sample (core/kvshare.py): None = whenever a sample has several
        # rows (conditions, continuations), True = always, False = copy the prompt's KV per row (the plain fork)
        self.can_share = supports_shared_prefix(self.text_model)
        if shared_prefix and not self.can_share:
            raise ValueError("shared_prefix=True needs a text model whose layers are all full attention")
        self.shared_prefix = shared_prefix
        self.retire_rows = retire_rows  # finished rows leave the decode batch (False: they idle to the end)
        # continuous batching: with more requests than ``batch_size``, new samples take the rows finished samples
        # free (one decode stream; needs the shared-prefix cache, whose prefixes and suffix columns it realigns)
        self.continuous = continuous and retire_rows and self.can_share and shared_prefix is not False
        # a stream admits new samples once this many sample slots are free (None: 1; more = one prefill for several
        # samples, fewer prefill calls but rows idle meanwhile: on this CPU the two cancel out, docs/performance.md)
        self.admit_min = admit_min
        self._torch = torch

    # ------------------------------------------------------------------ public API
    def generate(self, requests: Sequence[Request | Prompt], batch_size: int = 8,
                 sort_by_length: bool = True) -> list[list[Trace]]:
        """Decode every request with all its conditions (forks of one prefill); a bare ``Prompt`` is one
        un-intervened request. Up to ``batch_size`` samples decode together; with more requests than that and
        ``continuous`` (the default), a new sample takes the rows of a finished one (continuous batching: one decode
        stream, ``_decode(..., slots=batch_size)``), else fixed batches. Traces come back in request order, one list
        (one trace per condition) per request."""
        requests = [r if isinstance(r, Request) else Request(r) for r in requests]
        order = list(range(len(requests)))
        if sort_by_length:  # similar generation budgets, then similar prompt lengths, share a batch
            order.sort(key=lambda i: (requests[i].max_new_tokens or self.decoding.max_new_tokens,
                                      requests[i].prompt.length))
        out: list[list[Trace] | None] = [None] * len(requests)
        knockout = any(c.intervention is not None and c.intervention.kind == "attention"
                       for r in requests for c in r.conditions)  # (its key columns assume fixed batches)
        if self.continuous and 1 < batch_size < len(order) and not knockout:
            if sort_by_length:  # longest budgets first: the short ones fill the rows they leave at the end
                order.sort(key=lambda i: -(requests[i].max_new_tokens or self.decoding.max_new_tokens))
            for i, traces in zip(order, self._decode([requests[i] for i in order], slots=batch_size)):
                out[i] = traces
            return out  # type: ignore[return-value]
        for s in range(0, len(order), max(1, batch_size)):
            idx = order[s:s + batch_size]
            for i, traces in zip(idx, self._decode([requests[i] for i in idx])):
                out[i] = traces
        return out  # type: ignore[return-value]

    run = generate  # the name most callers use

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[Sequence[int]]],
              image_visibility: str | None = None, latent_steps: int = 0,
              on_latent: Callable[[int, Any], None] | None = None) -> Scores:
        """Teacher-forced log-likelihood of continuations: ``continuations[i]`` is a list of token-id sequences
        scored after ``prompts[i]`` (one prefill per prompt, one cache row per continuation, all continuations in one
        batched forward with explicit mRoPE positions continuing the prompt's).

        ``latent_steps = K > 0`` (latent profiles): before the continuation each row feeds the latent-start token and
        then K of its own feedback vectors as latent-span queries, as the engine decodes a forced span (the
        continuation then starts after the span; the span is hidden from it when the profile says so);
        ``on_latent(k, vector)`` sees each fed vector as soon as it is made (a training loss on the latents computed
        there keeps the order of operations of a hand-written loop). Gradients flow when torch's grad mode is on."""
        torch = self._torch
        if len(continuations) != len(prompts):
            raise ValueError("score: one list of continuations per prompt")
        src = [b for b, conts in enumerate(continuations) for _ in conts]
        flat = [list(ids) for conts in continuations for ids in conts]
        if not flat or any(len(ids) == 0 for ids in flat):
            raise ValueError("score: every prompt needs at least one non-empty continuation")
        if latent_steps and not self.profile.is_latent:
            raise ValueError("score: latent_steps needs a latent profile")
        dev = self.device
        prof = self.profile
        vis = [image_visibility or prof.image_visibility] * len(prompts)
        h, cache, st = self.prefill(list(prompts), vis)
        first = self.model.lm_head(h[:, -1])
        idx = torch.tensor(src, device=dev)
        R, n = len(flat), max(len(x) for x in flat)
        cache = self._fork(cache, src, len(prompts), latent_steps + 1 + n)
        if src != list(range(len(prompts))):
            first = first[idx]
        kinds = st["kinds"][idx]
        pos = st["next_pos"][idx]
        hide = torch.tensor([v != "all" for v in vis], device=dev)[idx]
        prefix = (kinds != PAD) & ~((kinds == IMAGE) & hide[:, None])
        latents = start_lp = None
        span_cols = 0
        if latent_steps:
            start = torch.full((R,), self.tokens.start, device=dev)
            start_lp = torch.log_softmax(first.float(), -1)[:, self.tokens.start]
            row_vis = [vis[b] for b in src]
            span_keys = latent_key_mask(kinds, st["input_start"][idx], row_vis, not prof.latents_see_input)
            emb = self.embed(start)
            fed = []
            for k in range(latent_steps + 1):
                own = torch.ones((R, span_cols + 1), dtype=torch.bool, device=dev)
                if k and not prof.start_visible_after:
                    own[:, 0] = False  # the latent-start position is hidden from every later position
                keys = start_key_mask(kinds, span_keys, row_vis) if k == 0 else span_keys  # start_only: start sees
                mask = torch.cat([keys, own], 1).long()  # the image
                hs = self._forward(emb[:, None], pos.view(1, R, 1).expand(3, R, 1), mask, cache)
                pos = pos + 1
                span_cols += 1
                if k < latent_steps:
                    emb = self._feedback(hs[:, -1])
                    fed.append(emb)
                    if on_latent is not None:
                        on_latent(k, emb)
                else:
                    first = self.model.lm_head(hs[:, -1])
            latents = tuple(fed)
        ids = torch.full((R, n), self.tokens.pad, dtype=torch.long, device=dev)
        valid = torch.zeros((R, n), dtype=torch.bool, device=dev)
        for r, x in enumerate(flat):
            ids[r, :len(x)] = torch.tensor(x, device=dev)
            valid[r, :len(x)] = True
        span_vis = torch.full((R, span_cols), prof.latents_visible_after, dtype=torch.bool, device=dev)
        if span_cols and not prof.start_visible_after:
            span_vis[:, 0] = False
        mask = torch.cat([prefix, span_vis, valid], 1).long()
        posn = (pos[:, None] + torch.arange(n, device=dev)[None]).view(1, R, n).expand(3, R, n)
        hs = self._forward(self.embed(ids), posn, mask, cache)
        # (the latent path runs lm_head over every position, as the training loss always has: same bits)
        tail = self.model.lm_head(hs)[:, :-1] if latent_steps else self.model.lm_head(hs[:, :-1])
        logits = torch.cat([first[:, None], tail], 1)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0]
        return Scores(logprobs=lp.masked_fill(~valid, 0.0), valid=valid, rows=src, latents=latents,
                      start_logprob=start_lp)

    # ------------------------------------------------------------------ internals
    def _feedback(self, h):
        L = self.profile.latent
        if L.feedback_layer != -1 or not L.post_norm:
            v = self._hook_store["h"][:, -1]
            if L.post_norm:
                v = self.text_model.norm(v)
        else:
            v = h
        if self.lm.head is not None:
            v = self.lm.head(v)
        return v

    def _step_mask_4d(self) -> bool:
        """Whether a decode step may pass its own 4-D boolean key mask: SDPA attention and full attention in every
        layer (transformers returns a prepared 4-D mask as is, so it skips building one from the 2-D mask)."""
        cfg = self.text_model.config
        types = getattr(cfg, "layer_types", None) or ["full_attention"]
        return getattr(cfg, "_attn_implementation", None) == "sdpa" and all(t == "full_attention" for t in types)

    def _forward(self, embeds, positions, mask, cache, knockout: KeyKnockout | None = None, **visual):
        """The decoder on input embeddings with explicit positions (3 x B x L mRoPE; a text-only model takes the
        first row, identical to its 1-D positions). ``visual``: Qwen3-VL's DeepStack inputs (prefill only).
        ``knockout``: keys hidden from some queries in some layers only (attention knockout, ``core.kvshare``)."""
        if self.text_only:
            positions = positions[0]
        if isinstance(cache, SharedPrefixCache):
            return shared_forward(self.text_model, embeds, positions, mask, cache, knockout)
        if knockout is not None:
            return knockout_forward(self.text_model, embeds, positions, mask, cache, knockout, **visual)
        out = self.text_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                              cache=cache, use_cache=cache is not None, **visual)
        return out.last_hidden_state

    def _positions(self, p: Prompt):
        """3 x L mRoPE positions of one unpadded prompt (prepared with the prompt, else computed here)."""
        from latentcheck.core.prompts import mrope_positions

        pos = p.positions
        if pos is None:
            grid = None if p.image_grid_thw is None else p.image_grid_thw.to(self.device)
            pos = mrope_positions(self.model, p.input_ids.to(self.device), grid, self.tokens.image)
        return pos.to(self.device)

    def image_features(self, prompts: list[Prompt]) -> list:
        """Merged visual tokens of each prompt's images ([n_image_tokens, H] per prompt); a prompt's cached
        ``image_embeds`` (e.g. a frozen vision tower during training) is used as is."""
        return self.visual_features(prompts)[0]

    def visual_features(self, prompts: list[Prompt]) -> tuple[list, list | None]:
        """(merged visual tokens per prompt, DeepStack features per prompt or None). DeepStack (Qwen3-VL): per prompt
        a list over the injected decoder layers of [n_image_tokens, H] features, added to the image positions'
        hidden states after those layers (the model's own ``_deepstack_process``)."""
        from latentcheck.core.errors import LatentcheckError

        torch = self._torch
        if self.text_only:
            raise LatentcheckError("this model is a text-only causal LM: it has no vision tower for images")
        need = [p for p in prompts if p.image_embeds is None]
        fresh: list = []
        fresh_ds: list = []
        if need:
            pv = torch.cat([p.pixel_values for p in need]).to(self.device, self.model.model.visual.dtype)
            grid = torch.cat([p.image_grid_thw for p in need]).to(self.device)
            out = self.model.model.get_image_features(pv, grid)
            sizes = [int(p.image_mask.sum()) for p in need]
            fresh = list(torch.split(torch.cat(out.pooler_output), sizes))
            ds = getattr(out, "deepstack_features", None) if self.deepstack else None
            if ds is not None:
                per_layer = [torch.split(torch.cat(list(f)), sizes) for f in ds]
                fresh_ds = [[layer[i] for layer in per_layer] for i in range(len(need))]
        it, it_ds = iter(fresh), iter(fresh_ds)
        feats, deep = [], []
        for p in prompts:
            if p.image_embeds is not None:
                feats.append(p.image_embeds.to(self.device))
                if self.deepstack:
                    if p.deepstack_embeds is None:
                        raise LatentcheckError("a cached image_embeds needs its deepstack_embeds on a Qwen3-VL model")
                    deep.append([d.to(self.device) for d in p.deepstack_embeds])
            else:
                feats.append(next(it))
                if self.deepstack:
                    deep.append(next(it_ds))
        return feats, (deep if self.deepstack else None)

    def _visual_inputs(self, ids, embeds, prompts: list[Prompt]):
        """Image features scattered into the image-pad slots of ``embeds`` (row-major, as the model does), plus
        the DeepStack keyword arguments for the decoder (empty for models without DeepStack)."""
        torch = self._torch
        feats_l, deep_l = self.visual_features(prompts)
        feats = torch.cat(feats_l).to(embeds.dtype)
        img = ids == self.tokens.image
        if int(img.sum()) != feats.shape[0]:
            raise RuntimeError(f"image tokens ({int(img.sum())}) != image features ({feats.shape[0]})")
        embeds = embeds.masked_scatter(img.unsqueeze(-1), feats)
        if not deep_l:
            return embeds, {}
        layers = [torch.cat([d[j] for d in deep_l]).to(embeds.dtype) for j in range(len(deep_l[0]))]
        return embeds, {"visual_pos_masks": img, "deepstack_visual_embeds": layers}

    def prefill(self, prompts: list[Prompt], visibility: list[str]):
        """Left-padded batched prefill. Returns (hidden [B,P,H], cache, state dict)."""
        torch = self._torch
        from transformers import DynamicCache

        B = len(prompts)
        P = max(p.length for p in prompts)
        pad = self.tokens.pad
        ids = torch.full((B, P), pad, dtype=torch.long, device=self.device)
        kinds = torch.zeros((B, P), dtype=torch.long, device=self.device)
        pos = torch.zeros((3, B, P), dtype=torch.long, device=self.device)
        qmask = torch.zeros((B, P), dtype=torch.bool, device=self.device)
        next_pos = torch.zeros(B, dtype=torch.long, device=self.device)
        for b, p in enumerate(prompts):
            L = p.length
            ids[b, P - L:] = p.input_ids.to(self.device)
            kinds[b, P - L:] = torch.where(p.image_mask.to(self.device), IMAGE, TEXT)
            qmask[b, P - L:] = p.question_mask.to(self.device)
            pp = self._positions(p)
            pos[:, b, P - L:] = pp
            next_pos[b] = int(pp.max()) + 1
        embeds = self.embed(ids)
        with_img = [p for p in prompts if p.pixel_values is not None or p.image_embeds is not None]
        visual: dict = {}
        if with_img:
            embeds, visual = self._visual_inputs(ids, embeds, with_img)
        valid = kinds != PAD
        if all(v == "all" for v in visibility) and bool(valid.all()):
            mask = None
        elif all(v == "all" for v in visibility):
            mask = valid.long()
        else:
            causal = torch.tril(torch.ones(P, P, dtype=torch.bool, device=self.device))
            m = causal[None] & valid[:, None, :]
            hide = torch.tensor([v != "all" for v in visibility], device=self.device)
            # text queries (non-image) may not see image keys when visibility != all
            hide_img = hide[:, None, None] & (kinds[:, None, :] == IMAGE) & (kinds[:, :, None] != IMAGE)
            m = m & ~hide_img
            m = m | torch.eye(P, dtype=torch.bool, device=self.device)[None]  # every query sees itself
            mask = m[:, None]
        cache = DynamicCache(config=self.model.config)
        h = self._forward(embeds, pos, mask, cache, **visual)
        return h, cache, dict(ids=ids, kinds=kinds, qmask=qmask, next_pos=next_pos, P=P,
                              input_start=input_start(kinds, qmask))

    def _refs(self, h, kinds, qmask) -> list[dict[str, np.ndarray]]:
        out = []
        for b in range(h.shape[0]):
            r = {"last_prompt_token": h[b, -1]}
            im = kinds[b] == IMAGE
            if bool(im.any()):
                r["image_tokens"] = h[b, im].mean(0)
                if self.capture_image_tokens:  # per-token states, in the processor's order (position-matched refs)
                    r["image_token_states"] = h[b, im]
            if bool(qmask[b].any()):
                r["question_tokens"] = h[b, qmask[b]].mean(0)
            out.append({k: v.float().cpu().numpy() for k, v in r.items()})
        return out

    def _choose(self, logits, history, gens):
        """Next token per row: the logits processed by transformers' own processors (``logits_processor``), then
        argmax (greedy) or one multinomial draw per row from the row's own seeded generator. ``history``: [R, n]
        ids the repetition penalty covers (prompt and generated ids, as ``generate`` passes its ``input_ids``)."""
        torch = self._torch
        scores = self.processors(history, logits.float()) if self.processors else logits
        if not self.decoding.do_sample:
            return scores.max(-1).indices  # = argmax (first maximum), ~3x faster on CPU
        probs = torch.softmax(scores, -1).cpu()
        return torch.stack([torch.multinomial(probs[r], 1, generator=gens[r])[0]
                            for r in range(probs.shape[0])]).to(logits.device)

    def _fork(self, cache, src: list[int], n_samples: int, capacity: int, share: bool | None = None):
        """One cache row per entry of ``src`` (the sample the row continues): the prompt's KV kept once per sample
        (``SharedPrefixCache``, room for ``capacity`` new positions per row) or copied per row."""
        if share is None:
            share = self.shared_prefix if self.shared_prefix is not None else len(src) > n_samples
        if share and self.can_share:
            return SharedPrefixCache(cache, src, capacity)
        if src != list(range(n_samples)):
            cache.batch_select_indices(self._torch.tensor(src, device=self.device))
        return cache

    # ------------------------------------------------------------------ one batch: set-up, steps, assembly
    def _decode(self, reqs: list[Request], slots: int | None = None) -> list[list[Trace]]:
        """Decode requests: set-up (prefill + fork), steps until every row is done, option scores, assembly of the
        traces. ``slots=None``: ``reqs`` is one batch. ``slots=k`` (continuous batching): the first ``k`` samples
        start; whenever rows finish they leave at once and the next samples of ``reqs`` are prefilled and join the
        running batch (``_merge``) until at most ``k`` samples decode again; one stream, one set of traces."""
        with self._torch.no_grad():
            if slots is None:
                b = self._setup(reqs)
                while not self._transition(b):
                    if self.retire_rows:
                        self._retire(b)
                    self._advance(b)
            else:
                max_new = max(r.max_new_tokens or self.decoding.max_new_tokens for r in reqs)
                b = self._setup(reqs[:slots], max_new=max_new, stream=True)
                nxt = slots
                admit_min = max(1, min(slots, self.admit_min or 1))
                while True:
                    done = self._transition(b)
                    if nxt < len(reqs):
                        self._retire(b, eager=True)
                        free = slots - len(set(b.src))
                        if free >= min(admit_min, len(reqs) - nxt) or (free and b.n_finished == b.R):
                            nb = self._setup(reqs[nxt:nxt + free], max_new=max_new, stream=True)
                            nxt += free
                            self._transition(nb)  # the new rows' first token, from their prefill
                            self._merge(b, nb)
                        done = b.n_finished == b.R and nxt >= len(reqs)
                    elif not done:
                        self._retire(b)
                    if done:
                        break
                    self._advance(b)
            b.t_decode = time.perf_counter() - b.t_loop
            b.kv_bytes = max(b.kv_bytes, cache_bytes(b.cache))
            b.opt = self._option_scores(b, list(range(b.R)))
            b.t_total = time.perf_counter() - b.t0
        return self._assemble(b)

    def _setup(self, reqs: list[Request], max_new: int | None = None, stream: bool = False) -> _Batch:
        """Prefill the batch, fork one row per (request, condition) and build the per-row state tensors. ``stream``
        (continuous batching): buffers sized for ``max_new`` (the stream's largest budget), the shared-prefix cache,
        every row stops at its own budget and may leave the batch whenever it finishes."""
        torch = self._torch
        b = _Batch()
        b.t0 = time.perf_counter()
        b.reqs = reqs
        prof = self.profile
        L = prof.latent
        tk = self.tokens
        dev = self.device
        vis = [r.image_visibility or prof.image_visibility for r in reqs]
        h, cache, st = self.prefill([r.prompt for r in reqs], vis)
        b.refs = self._refs(h, st["kinds"], st["qmask"])
        logits0 = self.model.lm_head(h[:, -1])
        feedback0 = self._feedback(h[:, -1]) if prof.is_latent else h[:, -1]
        b.t_prefill = time.perf_counter() - b.t0
        # ---- fork: one row per (request, condition)
        src, conds = [], []
        for i, r in enumerate(reqs):
            for c in r.conditions:
                src.append(i)
                conds.append(c)
        b.src, b.conds = src, conds
        b.R = b.R0 = R = len(src)
        b.src0 = list(src)  # request of each original row
        b.rid = list(range(R))  # original index of each live row (rows leave the batch when they finish)
        b.done = []  # (original row, trace) of rows that left
        b.retired = 0
        b.texts = {}  # decoded text per distinct id sequence
        idx = torch.tensor(src, device=dev)
        limits = [reqs[i].max_new_tokens or self.decoding.max_new_tokens for i in src]
        b.max_new = max_new or max(limits)
        b.row_max = torch.tensor(limits, dtype=torch.long, device=dev)  # each row stops at its own budget
        b.stream = stream
        b.own_budgets = stream or len(set(limits)) > 1
        b.cache = self._fork(cache, src, len(reqs), b.max_new + 2, share=True if stream else None)
        kinds0 = st["kinds"][idx]
        b.P = P = st["P"]
        T = P + b.max_new + 2
        valid = kinds0 != PAD
        vis_row = [vis[i] for i in src]
        hide_t = torch.tensor([v != "all" for v in vis_row], device=dev)
        b.mT = torch.zeros((R, T), dtype=torch.bool, device=dev)  # key mask of text queries
        b.mL = torch.zeros((R, T), dtype=torch.bool, device=dev)  # key mask of latent-span queries
        is_img = kinds0 == IMAGE
        b.mT[:, :P] = valid & ~(is_img & hide_t[:, None])
        b.mL[:, :P] = latent_key_mask(kinds0, st["input_start"][idx], vis_row, not prof.latents_see_input)
        b.start_only = torch.tensor([v == "start_only" for v in vis_row], device=dev)
        b.enter = torch.zeros(R, dtype=torch.bool, device=dev)
        b.any_start_only = bool(b.start_only.any())
        b.mS0 = start_key_mask(kinds0, b.mL[:, :P], vis_row) if b.any_start_only else None
        b.hide_start = not prof.start_visible_after
        b.latvis = prof.latents_visible_after
        b.see_input = prof.latents_see_input
        b.pos = st["next_pos"][idx].clone()
        b.logits = logits0[idx]
        b.fb = feedback0[idx]
        b.keys = keys = [reqs[i].prompt.key for i in src]
        b.s0 = torch.zeros(R, dtype=torch.long, device=dev)  # suffix column where each row's own positions start
        b.gens = None
        if self.decoding.do_sample:
            b.gens = [torch.Generator().manual_seed(_row_seed(self.seed, k)) for k in keys]
        # ---- per-row latent settings
        b.is_latent = is_latent = prof.is_latent
        b.start_id = start_id = tk.start if is_latent else -1
        b.end_id = end_id = tk.end if is_latent else -1
        ph_id = tk.placeholder if tk.placeholder is not None else -1
        kmax_override = max([len(c.override) for c in conds if c.override is not None] + [0])
        b.H = H = b.fb.shape[-1]
        b.ov = torch.zeros((R, max(kmax_override, 1), H), dtype=self.dtype, device=dev)
        b.ov_len = torch.full((R,), -1, dtype=torch.long, device=dev)
        b.ov_mask = torch.zeros((R, max(kmax_override, 1)), dtype=torch.bool, device=dev)
        for r, c in enumerate(conds):
            if c.override is not None:
                n = len(c.override)
                if n:
                    b.ov[r, :n] = torch.as_tensor(c.override, dtype=self.dtype, device=dev)
                b.ov_len[r] = n
                b.ov_mask[r, :n] = True if c.override_mask is None else torch.as_tensor(c.override_mask[:n],
                                                                                        device=dev)
        b.has_ov = b.ov_len >= 0
        b.limit = torch.where(b.has_ov, b.ov_len, torch.full_like(b.ov_len, L.k))
        b.fixed = b.has_ov | torch.tensor(L.length == "fixed", device=dev)
        cond_ids: dict[int, list[int]] = {}
        for r, c in enumerate(conds):
            if c.intervention is not None and c.intervention.kind == "vector":
                cond_ids.setdefault(id(c.intervention), []).append(r)
        spec_of = {id(c.intervention): c.intervention for c in conds if c.intervention is not None}
        row_cond = torch.full((R,), -1, dtype=torch.long, device=dev)
        b.spec_list = []
        for j, (sid, rows) in enumerate(cond_ids.items()):
            row_cond[rows] = j
            b.spec_list.append(spec_of[sid])
        # attention knockout: (layers, rows, query kind, key kind) per distinct knockout intervention
        n_layers = len(self.text_model.layers)
        b.ko_groups = []
        ko_specs: dict[int, list[int]] = {}
        for r, c in enumerate(conds):
            if c.intervention is not None and c.intervention.kind == "attention":
                ko_specs.setdefault(id(c.intervention), []).append(r)
        for sid, rows in ko_specs.items():
            spec = spec_of[sid]
            layers = spec.definition.fn(spec, n_layers)
            m = torch.zeros(R, dtype=torch.bool, device=dev)
            m[rows] = True
            b.ko_groups.append((layers, m, spec.params["query"], spec.params["key"]))
        b.img_cols = is_img if b.ko_groups else None
        b.force = torch.tensor([is_latent and (reqs[i].force_latent or L.trigger == "forced_prefix") for i in src],
                               device=dev)
        b.force_any = bool(b.force.any())
        # stop sequences, grouped: (ids, rows that stop on them)
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, i in enumerate(src):
            for s in reqs[i].stop_sequences:
                if s:
                    groups.setdefault(tuple(int(x) for x in s), []).append(r)
        b.stop_groups = []
        for s, rows in groups.items():
            m = torch.zeros(R, dtype=torch.bool, device=dev)
            m[rows] = True
            b.stop_groups.append((torch.tensor(s, dtype=torch.long, device=dev), m))
        # ---- state (per row, as tensors; the generated ids/masks go into preallocated [R, max_new] tensors and the
        # fed vectors / hidden states / logits are kept as one [R, ...] tensor per step, assembled per row once at
        # the end, so a step costs no per-row Python work)
        b.mode = torch.zeros(R, dtype=torch.long, device=dev)  # 1 = inside a latent span
        b.lat_count = torch.zeros(R, dtype=torch.long, device=dev)
        b.blocks = torch.zeros(R, dtype=torch.long, device=dev)
        b.finished = torch.zeros(R, dtype=torch.bool, device=dev)
        b.reason = torch.zeros(R, dtype=torch.long, device=dev)  # index into REASONS
        V = b.logits.shape[-1]
        b.history = None  # ids the repetition penalty covers: prompt (left padding -> the row's first id, which
        # adds no token to the penalised set) then generated ids, as generate's input_ids
        if self.penalised:  # (columns a row has not generated yet hold its first id too: the same penalised set)
            ids0 = st["ids"][idx]
            first = ids0[torch.arange(R, device=dev), (~valid).sum(1)]
            b.history = first[:, None].repeat(1, P + b.max_new + 1)
            b.history[:, :P] = torch.where(valid, ids0, first[:, None])
        # (one spare column: a finished row that stays writes there; each row writes at its own count n_gen)
        b.gen_ids = torch.zeros((R, b.max_new + 1), dtype=torch.long, device=dev)
        b.fed_t = torch.zeros((R, b.max_new + 1), dtype=torch.bool, device=dev)
        b.span_t = torch.zeros((R, b.max_new + 1), dtype=torch.bool, device=dev)
        b.n_gen = torch.zeros(R, dtype=torch.long, device=dev)  # generated tokens per row
        b.lat_steps = []  # (rows fed [R], fed vectors [R, H], raw vectors [R, H])
        b.hid_steps = []  # (rows kept [R], hidden [R, H])
        b.lg_steps = []  # (rows kept [R], logits [R, V] the step's tokens were chosen from)
        b.kept = {}  # original row -> {"lat": [(fed, raw)], "hid": [...], "lg": [...]}: steps flushed (``_flush``)
        b.ap_id = -1
        if is_latent:
            b.ap_id = end_id if L.answer_point == "end" else (tk.inner_end if tk.inner_end is not None else end_id)
        ap_marker = tk.imagination_end if prof.kind == "text_imagination" else []
        b.ap_marker_t = torch.tensor(ap_marker, dtype=torch.long, device=dev) if ap_marker else None
        b.ap_logits = torch.zeros((R, V), dtype=b.logits.dtype, device=dev)
        b.ap_done = torch.zeros(R, dtype=torch.bool, device=dev)
        b.ap_col = torch.full((R,), -1, dtype=torch.long, device=dev)
        b.ap_pos = torch.zeros(R, dtype=torch.long, device=dev)
        if prof.kind == "plain":
            b.ap_logits[:] = b.logits
            b.ap_done[:] = True
            b.ap_col[:] = P
            b.ap_pos[:] = b.pos
        b.ap_pending = torch.zeros(R, dtype=torch.bool, device=dev)
        answer_prefix = bool(prof.answer_prefix)
        b.retirable = torch.tensor([stream or not (answer_prefix and reqs[i].option_ids) for i in src], device=dev)
        b.ap_all_done = bool(b.ap_done.all())
        b.ar = torch.arange(R, device=dev)
        b.zeros_l = torch.zeros(R, dtype=torch.long, device=dev)
        b.ones_l = torch.ones(R, dtype=torch.long, device=dev)
        b.start_fill = torch.full((R,), start_id, dtype=torch.long, device=dev)
        b.end_fill = torch.full((R,), end_id, dtype=torch.long, device=dev)
        b.pad_fill = torch.full((R,), self.tokens.pad, dtype=torch.long, device=dev)
        b.lat_rec = torch.full((R,), ph_id, dtype=torch.long, device=dev) if L.record_id == "placeholder" else None
        b.on_start = is_latent and L.entry == "on_start"
        b.no_rows = torch.zeros(R, dtype=torch.bool, device=dev)
        b.mask_4d = self._step_mask_4d()
        b.spec_of_row = row_cond.tolist()
        b.has_spec = row_cond >= 0
        b.spec_groups = {}  # rows needing a vector -> [(spec, rows, keys)]
        b.any_unfixed = bool((~b.fixed).any())
        b.eos_ends_span = is_latent and L.record_id == "sampled" and not L.eos_guard
        b.reenter = is_latent and L.exit == "none"
        b.max_blocks = (L.max_blocks or 0) or b.max_new + 1  # 0 = no limit (the authors' loops)
        b.kv_bytes = cache_bytes(b.cache)
        b.t_col = P
        b.n_steps = 0
        b.t_loop = time.perf_counter()
        return b

    def _transition(self, b: _Batch) -> bool:
        """Decide what every row feeds next from the current logits, record it and update the per-row state.
        Returns True when the batch is done (every row finished or the step budget spent)."""
        torch = self._torch
        L = self.profile.latent
        is_latent, on_start, no_rows = b.is_latent, b.on_start, b.no_rows
        sampled = self._choose(b.logits, None if b.history is None else b.history[:, :b.P + b.n_steps], b.gens)
        if b.n_steps == 0 and b.force_any:
            sampled = torch.where(b.force & (b.mode == 0), b.start_fill, sampled)
        active = ~b.finished
        cand = (b.mode == 1) & active
        stop_tok = ~b.fixed & (sampled == b.end_id) if b.any_unfixed else no_rows
        cont = cand & ~stop_tok & (b.lat_count < b.limit) if b.any_unfixed else cand & (b.lat_count < b.limit)
        exit_ = cand & ~cont
        # an EOS sampled inside a span of a model that keeps sampled ids and has no guard ends the request there
        # (Monet's runner): that position is never forwarded, so it is not a fed latent
        eos_in_span = cont & torch.isin(sampled, self._eos) if b.eos_ends_span else no_rows
        cont = cont & ~eos_in_span if b.eos_ends_span else cont
        # entry: the token fed next is the start token (LVR: "the last input token is <|lvr_start|>"), also when it
        # was sampled at the last step of a block that exits without a forced end token
        may_enter = (b.mode == 0) | (exit_ & ~stop_tok) if b.reenter else (b.mode == 0)
        enter = may_enter & active & (sampled == b.start_id) & (
            b.blocks + exit_.long() < b.max_blocks) if is_latent else no_rows
        enter_vec = enter & (b.limit > 0) if on_start else no_rows
        need = cont | enter_vec if on_start else cont
        li = torch.where(cont, b.lat_count, b.zeros_l)
        fb = b.fb
        vec = fb
        raw = fb
        any_need = bool(need.any())
        if any_need:
            vec = fb.clone()
            use_ov = need & b.has_ov & (li < b.ov_len)
            if bool(use_ov.any()):
                liu = li.clamp(max=b.ov.shape[1] - 1)
                take = use_ov & b.ov_mask[b.ar, liu]
                vec = torch.where(take[:, None], b.ov[b.ar, liu], vec)
            else:
                take = no_rows
            if b.spec_list:
                rows_now = tuple((need & ~take & b.has_spec).nonzero().view(-1).tolist())
                groups = b.spec_groups.get(rows_now)
                if groups is None:  # (the same rows need vectors at every latent step, as a rule)
                    by_spec: dict[int, list[int]] = {}
                    for i in rows_now:
                        by_spec.setdefault(b.spec_of_row[i], []).append(i)
                    groups = b.spec_groups[rows_now] = [
                        (b.spec_list[j], torch.tensor(rows_j, dtype=torch.long, device=self.device),
                         [b.keys[i] for i in rows_j]) for j, rows_j in sorted(by_spec.items())]
                for spec, sel, sel_keys in groups:
                    sub = fb[sel]
                    new = apply_vector(spec, sub, li[sel], VectorContext(keys=sel_keys, seed=self.seed,
                                                                         stats=self.stats))
                    if new is not sub:  # (identity returns its input: nothing to write)
                        vec[sel] = new.to(vec.dtype)
        # next token for rows that feed a token
        nxt = sampled
        entered_tok = enter & ~enter_vec if on_start else enter
        if is_latent:
            if L.exit == "force_end":
                nxt = torch.where(exit_, b.end_fill, nxt)
            else:
                nxt = torch.where(exit_ & stop_tok, b.end_fill, nxt)
            nxt = torch.where(entered_tok, b.start_fill, nxt)
        rec = nxt
        if is_latent:
            rec = torch.where(cont, sampled if b.lat_rec is None else b.lat_rec, rec)
            rec = torch.where(enter_vec, b.start_fill, rec)
        # finishing
        text_rows = active & ~need & ~entered_tok
        new_fin = text_rows & torch.isin(rec, self._eos)  # (includes an EOS sampled inside a span, see above)
        # state updates
        span_now = need | entered_tok | eos_in_span
        if is_latent:
            b.lat_count = torch.where(enter, enter_vec.long(), b.lat_count + cont.long())
            b.blocks = b.blocks + exit_.long()
            b.mode = torch.where(enter, b.ones_l, torch.where(exit_, b.zeros_l, b.mode))
        # record this step for the rows not finished before it (every active row has n_steps + 1 ids now)
        n_steps = b.n_steps
        if b.stream:  # rows joined at different steps: each writes at its own count
            col = b.n_gen.clamp(max=b.max_new)
            b.gen_ids[b.ar, col] = rec
            b.fed_t[b.ar, col] = need
            b.span_t[b.ar, col] = span_now
            if b.history is not None:
                b.history[b.ar, b.P + col] = rec
        else:
            b.gen_ids[:, n_steps] = rec
            b.fed_t[:, n_steps] = need
            b.span_t[:, n_steps] = span_now
            if b.history is not None:
                b.history[:, b.P + n_steps] = rec
        b.n_gen += active.long()
        if self.capture_logits:
            b.lg_steps.append((active, b.logits))
        if any_need:
            b.lat_steps.append((need, vec, raw))
        b.reason = torch.where(new_fin, 1, b.reason)
        if b.stop_groups:
            hit = no_rows
            for seq, rows_m in b.stop_groups:
                m = self._suffix_is(b, seq, n_steps + 1)
                if m is not None:
                    hit = hit | (rows_m & m)
            hit = hit & active & ~new_fin
            b.reason = torch.where(hit, 2, b.reason)
            new_fin = new_fin | hit
        if b.ap_marker_t is not None:
            m = self._suffix_is(b, b.ap_marker_t, n_steps + 1)
            if m is not None:
                b.ap_pending = b.ap_pending | (active & ~b.ap_done & m)
        if is_latent and not b.ap_all_done:
            b.ap_pending = b.ap_pending | (~b.ap_done & ~need & (nxt == b.ap_id) & active)
        if b.own_budgets:  # (equal budgets end together at the step limit)
            new_fin = new_fin | (active & (b.n_gen >= b.row_max))  # (reason stays "length")
        b.finished = b.finished | new_fin
        b.n_steps = n_steps + 1
        # what the next forward feeds
        b.enter = enter
        b.need, b.any_need, b.vec, b.nxt, b.span_now, b.new_fin, b.active = \
            need, any_need, vec, nxt, span_now, new_fin, active
        b.n_finished = int(b.finished.sum())
        return b.n_finished == b.R or (not b.stream and b.n_steps >= b.max_new)

    def _suffix_is(self, b: _Batch, seq, n: int):
        """Rows whose first ``n`` generated ids end with ``seq`` (None if ``n`` is too short); in a stream, each
        row's own generated ids so far (rows not active this step are ignored by the callers)."""
        k = seq.shape[0]
        if n < k:
            return None
        if not b.stream:
            return (b.gen_ids[:, n - k:n] == seq[None]).all(1)
        cols = (b.n_gen[:, None] - k + self._torch.arange(k, device=self.device)[None]).clamp(min=0)
        return (b.gen_ids.gather(1, cols) == seq[None]).all(1) & (b.n_gen >= k)

    def _advance(self, b: _Batch) -> None:
        """Forward one position for every row (token embedding or fed vector, the step's key mask, explicit mRoPE
        positions) and keep the new logits / feedback vectors / answer-point logits."""
        torch = self._torch
        need, finished, t_col, R = b.need, b.finished, b.t_col, b.R
        emb = self.embed(torch.where(need | finished, b.pad_fill, b.nxt) if b.any_need
                         else torch.where(finished, b.pad_fill, b.nxt))
        if b.any_need:
            emb = torch.where(need[:, None], b.vec.to(emb.dtype), emb)
        b.mT[:, t_col] = finished | ~b.span_now if not b.latvis else True
        if b.is_latent:  # (span_now is all False otherwise)
            b.mL[:, t_col] = ~finished & (b.span_now | b.see_input)
        keys_ok = torch.where(b.span_now[:, None], b.mL[:, :t_col + 1], b.mT[:, :t_col + 1]) \
            if b.is_latent and bool(b.span_now.any()) else b.mT[:, :t_col + 1]
        if b.any_start_only and bool((b.enter & b.start_only).any()):  # the latent-start query sees the image
            keys_ok = keys_ok.clone()
            rows_s = b.enter & b.start_only
            keys_ok[rows_s, :b.P] = b.mS0[rows_s]
        if not b.mask_4d:
            mask = keys_ok.long()
        elif bool(keys_ok.all()):
            mask = None  # what transformers makes of an all-ones 2-D mask for a one-token query
        else:  # = transformers' SDPA mask for a one-token query: causal is all-true, so keys_ok
            mask = keys_ok[:, None, None, :]
        posv = b.pos.view(1, R, 1).expand(3, R, 1)
        hs = self._forward(emb[:, None], posv, mask, b.cache, self._knockout(b, t_col + 1, b.span_now))
        if b.hide_start and bool(b.enter.any()):  # later queries never see a latent-start position
            b.mT[:, t_col] &= ~b.enter
            b.mL[:, t_col] &= ~b.enter
        h_last = hs[:, -1]
        b.logits = logits = self.model.lm_head(h_last)
        b.fb = self._feedback(h_last) if b.is_latent else h_last
        if self.capture_hidden:
            b.hid_steps.append((b.active & ~b.new_fin, h_last))
        if bool(b.ap_pending.any()):
            # (a row that finished at this step never reaches its answer point, as when it runs alone: no forward
            # follows its last token)
            p = b.ap_pending & ~finished
            b.ap_logits = torch.where(p[:, None], logits, b.ap_logits)
            b.ap_col = torch.where(p, torch.full_like(b.ap_col, t_col + 1), b.ap_col)
            b.ap_pos = torch.where(p, b.pos + 1, b.ap_pos)
            b.ap_done = b.ap_done | p
            b.ap_pending = torch.zeros_like(p)
            b.ap_all_done = bool(b.ap_done.all())
        b.pos = b.pos + 1
        b.t_col = t_col + 1

    def _knockout(self, b: _Batch, K: int, span_query) -> KeyKnockout | None:
        """The attention knockout of one forward over key columns [0, K) (None when no row knocks anything out):
        per decoder layer the keys hidden from the rows' queries. ``span_query`` [R]: whether the row's query is a
        latent-span position (query=span) or not (query=answer: every position outside a span). Key kinds: ``span``
        = the generated positions recorded as span positions so far, ``image`` = the prompt's image tokens."""
        if not b.ko_groups:
            return None
        torch = self._torch
        R, P = b.R, b.P
        n_gen = K - P
        span_cols = torch.zeros((R, K), dtype=torch.bool, device=self.device)
        done = min(n_gen, b.span_t.shape[1])
        span_cols[:, P:P + done] = b.span_t[:, :done]
        img_cols = torch.zeros((R, K), dtype=torch.bool, device=self.device)
        img_cols[:, :P] = b.img_cols
        per_layer: dict[int, Any] = {}
        for layers, rows, query, key in b.ko_groups:
            q = rows & (span_query if query == "span" else ~span_query)
            d = q[:, None] & (span_cols if key == "span" else img_cols)
            for li in layers:
                per_layer[li] = d if li not in per_layer else per_layer[li] | d
        return KeyKnockout({li: d[:, None, None, :] for li, d in per_layer.items()})

    def _option_scores(self, b: _Batch, rows: list[int]) -> list:
        """Option log-probabilities at the answer point of live rows ``rows`` (after the profile's answer prefix,
        teacher-forced on the cache; rows that still need it are never retired early)."""
        torch = self._torch
        need_opts = [b.reqs[b.src[r]].option_ids for r in rows]
        if not any(o for o in need_opts):
            return [None] * len(rows)
        lp = torch.log_softmax(b.ap_logits.float(), -1)
        prof = self.profile
        prefix = self.lm.tokenizer.encode(prof.answer_prefix, add_special_tokens=False) if prof.answer_prefix else []
        if prefix and bool(b.ap_done[rows].any()):
            lp = self._score_prefix(prefix, b, lp)
        done_l = b.ap_done.tolist()
        lp_np = lp.cpu().numpy()
        return [lp_np[r, o].astype(np.float64) if o and done_l[r] else None for r, o in zip(rows, need_opts)]

    def _retire(self, b: _Batch, eager: bool = False) -> None:
        """Rows that finished leave the batch (their traces are assembled now; the cache, the masks and every
        per-row state tensor keep only the other rows), once they are at least an eighth of the live rows
        (``eager``: any finished row, so that a new sample can take its place)."""
        torch = self._torch
        if b.n_finished < (1 if eager else max(1, b.R // 8)):
            return
        gone = b.finished & (b.retirable | ~b.ap_done)
        n = int(gone.sum())
        if n == 0 or (not eager and n < max(1, b.R // 8)):
            return
        rows = gone.nonzero().view(-1).tolist()
        b.kv_bytes = max(b.kv_bytes, cache_bytes(b.cache))
        b.done.extend(self._traces(b, rows, self._option_scores(b, rows)))
        keep = (~gone).nonzero().view(-1)
        kl = keep.tolist()
        for name in _ROW_TENSORS:
            t = getattr(b, name)
            if t is not None:
                setattr(b, name, t[keep])
        for name in ("src", "conds", "keys", "rid", "spec_of_row"):
            setattr(b, name, [getattr(b, name)[i] for i in kl])
        if b.gens is not None:
            b.gens = [b.gens[i] for i in kl]
        b.stop_groups = [(seq, m[keep]) for seq, m in b.stop_groups]
        b.ko_groups = [(layers, m[keep], q, k) for layers, m, q, k in b.ko_groups]
        b.spec_groups = {}  # (the per-step records were flushed by _traces: nothing to re-index)
        b.R = len(kl)
        b.ar = torch.arange(b.R, device=self.device)
        b.ap_all_done = bool(b.ap_done.all())
        if isinstance(b.cache, SharedPrefixCache):
            b.cache.select_rows(keep)
        else:
            b.cache.batch_select_indices(keep)
        b.retired += n

    def _score_prefix(self, prefix: list[int], b: _Batch, lp):
        """Teacher-force the profile's answer prefix at each row's answer point (hiding later cache columns)."""
        torch = self._torch
        R, t_col = b.R, b.t_col
        n = len(prefix)
        dev = self.device
        ids = torch.tensor(prefix, device=dev).view(1, n).expand(R, n)
        cols = torch.arange(t_col, device=dev)
        base = b.mT[:, :t_col] & (cols[None] < b.ap_col[:, None].clamp(min=0))
        mask = torch.cat([base, torch.ones((R, n), dtype=torch.bool, device=dev)], 1).long()
        posv = (b.ap_pos[:, None] + torch.arange(n, device=dev)[None]).view(1, R, n).expand(3, R, n)
        ko = self._knockout(b, t_col + n, torch.zeros(R, dtype=torch.bool, device=dev))
        hs = self._forward(self.embed(ids), posv, mask, b.cache, ko)
        b.cache.crop(-n)
        new = torch.log_softmax(self.model.lm_head(hs[:, -1]).float(), -1)
        return torch.where(b.ap_done[:, None], new, lp)

    def _flush(self, b: _Batch) -> None:
        """Move the per-step records (fed vectors, hidden states, logits: one [R, ...] tensor per step) into per-row
        arrays (``b.kept``, by original row), one conversion per tensor; then rows may leave or join the batch
        without re-indexing every step's tensors."""
        torch = self._torch
        kept, rid = b.kept, b.rid

        def add(kind: str, mask, values) -> None:
            for j in np.flatnonzero(mask.any(1)).tolist():
                kept.setdefault(rid[j], {}).setdefault(kind, []).append(tuple(v[j][mask[j]] for v in values))

        if b.lat_steps:
            m = torch.stack([x for x, _, _ in b.lat_steps], 1).cpu().numpy()  # [R, S']
            add("lat", m, [torch.stack([v for _, v, _ in b.lat_steps], 1).float().cpu().numpy(),
                           torch.stack([v for _, _, v in b.lat_steps], 1).float().cpu().numpy()])
        if b.hid_steps:
            add("hid", torch.stack([x for x, _ in b.hid_steps], 1).cpu().numpy(),
                [torch.stack([h for _, h in b.hid_steps], 1).float().cpu().numpy()])
        if b.lg_steps:
            add("lg", torch.stack([x for x, _ in b.lg_steps], 1).cpu().numpy(),
                [torch.stack([lg for _, lg in b.lg_steps], 1).float().cpu().numpy()])
        b.lat_steps, b.hid_steps, b.lg_steps = [], [], []

    def _traces(self, b: _Batch, rows: list[int], opt: list) -> list[tuple[int, Trace]]:
        """(original row index, trace) of live rows ``rows`` (one conversion per tensor, then per-row slices)."""
        torch = self._torch
        self._flush(b)
        sel = torch.tensor(rows, dtype=torch.long, device=self.device)
        empty = np.zeros((0, b.H), dtype=np.float32)
        n_l = b.n_gen[sel].tolist()
        gen_l, fed_l, span_l = (t[sel].cpu().tolist() for t in (b.gen_ids, b.fed_t, b.span_t))
        reason_l, blocks_l, mode_l = b.reason[sel].tolist(), b.blocks[sel].tolist(), b.mode[sel].tolist()
        out = []
        for j, r in enumerate(rows):
            i = b.src[r]
            n = n_l[j]
            ids = gen_l[j][:n]
            text = b.texts.get(tuple(ids))
            if text is None:
                text = b.texts[tuple(ids)] = self.lm.tokenizer.decode(ids, skip_special_tokens=False)
            kept = b.kept.pop(b.rid[r], {})
            lat, hid, lg = kept.get("lat"), kept.get("hid"), kept.get("lg")
            lf = np.concatenate([x[0] for x in lat]) if lat else empty
            lr = np.concatenate([x[1] for x in lat]) if lat else empty
            out.append((b.rid[r], Trace(
                key=b.keys[r], condition=b.conds[r].name, token_ids=ids,
                text=text, latents=lf, raw_latents=lr,
                latent_count=len(lf), latent_blocks=int(blocks_l[j]),
                triggered=bool(blocks_l[j] > 0 or mode_l[j] == 1), fed_mask=fed_l[j][:n], span_mask=span_l[j][:n],
                option_logprobs=opt[j], refs=b.refs[i], hidden=np.concatenate([x[0] for x in hid]) if hid else None,
                finish_reason=REASONS[reason_l[j]],
                logits=np.ascontiguousarray(np.concatenate([x[0] for x in lg])[:n]) if (lg and n) else None)))
        return out

    def _merge(self, b: _Batch, nb: _Batch) -> None:
        """Continuous batching: the rows of ``nb`` (newly prefilled samples, after their first transition) join the
        running batch ``b`` (after its transition, before its forward). Prompts are left-padded to the longer one
        (cache prefixes, masks, repetition history); the suffix columns no live row of ``b`` reads any more are
        dropped; the new rows' own positions start at the current column (their earlier columns stay masked), while
        generated ids, budgets and counts are per row, so each row runs as it would alone."""
        torch = self._torch
        dev = self.device
        self._flush(b)
        self._flush(nb)
        Pb, Pn = b.P, nb.P
        Pm = max(Pb, Pn)
        s_b = b.t_col - Pb  # suffix columns written so far
        c = int(b.s0.min()) if b.R else s_b  # columns before every live row's start: dropped
        keep = s_b - c
        Rb, Rn = b.R, nb.R
        W = Pm + keep + b.max_new + 2

        def masks(mb, mn):
            m = torch.zeros((Rb + Rn, W), dtype=torch.bool, device=dev)
            m[:Rb, Pm - Pb:Pm] = mb[:, :Pb]
            m[:Rb, Pm:Pm + keep] = mb[:, Pb + c:Pb + s_b]
            m[Rb:, Pm - Pn:Pm] = mn[:, :Pn]
            return m

        def lpad(t, P: int, fill=None):  # [R, P + rest] -> [R, Pm + rest]: left padding of the prompt part
            if P == Pm:
                return t
            pad = t[:, :1].expand(-1, Pm - P) if fill is None else torch.full((t.shape[0], Pm - P), fill,
                                                                              dtype=t.dtype, device=dev)
            return torch.cat([pad, t], 1)

        def kpad(t, k: int):  # [R, K, ...] -> [R, k, ...]
            if t.shape[1] == k:
                return t
            return torch.cat([t, t.new_zeros((t.shape[0], k - t.shape[1]) + tuple(t.shape[2:]))], 1)

        b.mT, b.mL = masks(b.mT, nb.mT), masks(b.mL, nb.mL)
        if b.history is not None:  # (a row's first id fills its padding: the same penalised set)
            b.history = torch.cat([lpad(b.history, Pb), lpad(nb.history, Pn)])
        if b.mS0 is not None or nb.mS0 is not None:
            m0 = [x.mS0 if x.mS0 is not None else torch.zeros((x.R, x.P), dtype=torch.bool, device=dev)
                  for x in (b, nb)]
            b.mS0 = torch.cat([lpad(m0[0], Pb, False), lpad(m0[1], Pn, False)])
        k = max(b.ov.shape[1], nb.ov.shape[1])
        b.ov, b.ov_mask = torch.cat([kpad(b.ov, k), kpad(nb.ov, k)]), torch.cat([kpad(b.ov_mask, k),
                                                                                  kpad(nb.ov_mask, k)])
        b.ap_col = torch.cat([torch.where(b.ap_col >= 0, b.ap_col + (Pm - Pb) - c, b.ap_col),
                              torch.where(nb.ap_col >= 0, nb.ap_col - Pn + Pm + keep, nb.ap_col)])
        b.s0 = torch.cat([b.s0 - c, torch.full((Rn,), keep, dtype=torch.long, device=dev)])
        done = {"mT", "mL", "history", "mS0", "ov", "ov_mask", "ap_col", "s0"}
        for name in _ROW_TENSORS:
            x = getattr(b, name)
            if name not in done and x is not None:
                setattr(b, name, torch.cat([x, getattr(nb, name)]))
        off_r, off_q, off_s = b.R0, len(b.reqs), len(b.spec_list)
        b.src = b.src + [i + off_q for i in nb.src]
        b.src0 = b.src0 + [i + off_q for i in nb.src0]
        b.rid = b.rid + [r + off_r for r in nb.rid]
        b.kept.update({r + off_r: v for r, v in nb.kept.items()})
        b.conds, b.keys, b.refs, b.reqs = b.conds + nb.conds, b.keys + nb.keys, b.refs + nb.refs, b.reqs + nb.reqs
        b.spec_of_row = b.spec_of_row + [j + off_s if j >= 0 else -1 for j in nb.spec_of_row]
        b.spec_list = b.spec_list + nb.spec_list
        if b.gens is not None:
            b.gens = b.gens + nb.gens
        groups: dict[tuple[int, ...], Any] = {}
        for x, (lo, hi) in ((b, (0, Rb)), (nb, (Rb, Rb + Rn))):
            for seq, m in x.stop_groups:
                key = tuple(seq.tolist())
                if key not in groups:
                    groups[key] = (seq, torch.zeros(Rb + Rn, dtype=torch.bool, device=dev))
                groups[key][1][lo:hi] |= m
        b.stop_groups = list(groups.values())
        b.cache.extend(nb.cache, drop=c, capacity=keep + b.max_new + 2)
        b.R, b.R0, b.P, b.t_col = Rb + Rn, b.R0 + nb.R0, Pm, Pm + keep
        b.ar = torch.arange(b.R, device=dev)
        b.n_finished = int(b.finished.sum())
        b.any_need = b.any_need or nb.any_need
        b.force_any = b.force_any or nb.force_any
        b.any_unfixed = bool((~b.fixed).any())
        b.any_start_only = b.any_start_only or nb.any_start_only
        b.ap_all_done = bool(b.ap_done.all())
        b.spec_groups = {}
        b.kv_bytes = max(b.kv_bytes, cache_bytes(b.cache))
        b.t_prefill += nb.t_prefill
        b.t_loop += nb.t_prefill  # (the new samples' prefill is prefill time, not decode time)

    def _assemble(self, b: _Batch) -> list[list[Trace]]:
        """The traces of the batch in request order (rows retired early and the rows left at the end)."""
        timing = {"batch_prefill_s": b.t_prefill, "batch_decode_s": b.t_decode, "batch_total_s": b.t_total,
                  "batch_rows": b.R0, "steps": b.n_steps, "rows_retired": b.retired, "kv_cache_bytes": b.kv_bytes}
        out: list[list[Trace]] = [[] for _ in b.reqs]
        for rid, tr in sorted(b.done + self._traces(b, list(range(b.R)), b.opt), key=lambda x: x[0]):
            tr.timing = dict(timing)
            out[b.src0[rid]].append(tr)
        return out

    # ------------------------------------------------------------------ replay (teacher-forced oracle)
    def replay(self, prompt: Prompt, trace: Trace, image_visibility: str | None = None):
        """One no-cache forward over prompt + generated ids with the trace's fed vectors written at their
        positions and the visibility rules as an explicit 4-D mask. Returns logits [L_total, V]."""
        torch = self._torch
        with torch.no_grad():
            emb, pos, m, _span, visual = self._replay_inputs(prompt, list(trace.token_ids[:-1]), trace,
                                                             image_visibility or self.profile.image_visibility)
            h = self._forward(emb, pos, m[None, None], None, **visual)
            return self.model.lm_head(h[0])

    replay_logits = replay  # the earlier name

    def answer_point_ids(self, trace: Trace) -> list[int] | None:
        """The generated ids up to and including the answer-point marker (the latent end token, or the profile's
        inner end), plus the profile's answer prefix: the next-token distribution after them is the one
        ``Trace.option_logprobs`` scores. None when the trace never reached the answer point."""
        L = self.profile.latent
        ap_id = self.tokens.end if L.answer_point == "end" else (self.tokens.inner_end if self.tokens.inner_end
                                                                  is not None else self.tokens.end)
        ids = list(trace.token_ids)
        hits = [i for i, t in enumerate(ids) if t == ap_id and not trace.fed_mask[i]]
        if not hits:
            return None
        prefix = self.lm.tokenizer.encode(self.profile.answer_prefix, add_special_tokens=False) \
            if self.profile.answer_prefix else []
        return ids[:hits[0] + 1] + list(prefix)

    def replay_span(self, prompt: Prompt, trace: Trace, span_states=None, image_visibility: str | None = None,
                    layers=None):
        """Activation patching of the latent span as a whole (the span mediator of perturb-latent's mediation).

        One teacher-forced forward over prompt + the trace's ids up to the answer point (``answer_point_ids``), with
        the trace's fed vectors and the visibility rules of ``replay``. Returns (log-softmax at the answer point [V],
        the span's states [n_layers + 1, S, H]: its input embeddings and every decoder layer's output at the S span
        positions). With ``span_states`` (the same shape, from another run), those states are written over the
        span's input embeddings and every layer's output, so every later position reads the other run's span keys
        and values at every layer. ``layers`` (state indices l in 0..n_layers: l = the residual stream entering
        decoder layer l, n_layers = the last layer's output; None = all) patches only those states: the span's
        states at the other layers are recomputed from them (activation patching at layer l). Returns None when the
        trace has no answer point."""
        torch = self._torch
        keep = self.answer_point_ids(trace)
        if keep is None:
            return None
        with torch.no_grad():
            emb, pos, m, span, visual = self._replay_inputs(prompt, keep, trace,
                                                            image_visibility or self.profile.image_visibility)
            idx = torch.nonzero(span).view(-1)
            patch = None
            n_states = len(self.text_model.layers) + 1
            at = set(range(n_states)) if layers is None else {int(x) for x in layers}
            if any(not 0 <= x < n_states for x in at):
                raise ValueError(f"span patch layers {sorted(at)}: state indices are 0..{n_states - 1}")
            if span_states is not None:
                patch = torch.as_tensor(np.asarray(span_states), dtype=emb.dtype, device=self.device)
                if patch.shape[1] != len(idx):
                    raise ValueError(f"span patch has {patch.shape[1]} positions, this run's span has {len(idx)}")
                if 0 in at:
                    emb[0, idx] = patch[0]
            states = [emb[0, idx].clone()]

            def hook_for(layer_i):
                def hook(_m, _inp, out):
                    h = out[0] if isinstance(out, tuple) else out
                    here = patch is not None and layer_i + 1 in at
                    if here:
                        h = h.clone()
                        h[0, idx] = patch[layer_i + 1]
                    states.append(h[0, idx].clone())
                    if not here:
                        return None
                    return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
                return hook

            handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(self.text_model.layers)]
            try:
                h = self._forward(emb, pos, m[None, None], None, **visual)
            finally:
                for hd in handles:
                    hd.remove()
            lp = torch.log_softmax(self.model.lm_head(h[0, -1]).float(), -1)
            return lp.cpu().numpy(), torch.stack(states).float().cpu().numpy()

    def replay_attention(self, prompt: Prompt, trace: Trace, image_visibility: str | None = None
                         ) -> AttentionRows | None:
        """Where the latent span and its references attend, per decoder layer (issue #24 part 3).

        The teacher-forced replay of ``replay_span`` (prompt + the trace's ids up to the answer point, the trace's fed
        vectors, the visibility rules as a 4-D mask), run once with ``core.attention.attention_rows`` reading the
        head-mean attention weights of these query positions at every layer: the last prompt token
        (``last_prompt_token``), every span position in order (``start`` for a latent-start marker — ``start_1`` ... for
        later blocks —, ``latent_j`` for the position where the j-th vector is fed) and the answer point
        (``answer_point``: the position whose next-token distribution ``option_logprobs`` scores). The outputs are
        the model's own (its attention implementation computes them). None when the trace has no answer point."""
        from latentcheck.core.attention import attention_rows

        torch = self._torch
        keep = self.answer_point_ids(trace)
        if keep is None:
            return None
        P = prompt.length
        labels, rows, n_start, n_lat = ["last_prompt_token"], [P - 1], 0, 0
        for i in range(len(keep)):
            if i < len(trace.span_mask) and trace.span_mask[i]:
                if trace.fed_mask[i]:
                    labels.append(f"latent_{n_lat}")
                    n_lat += 1
                else:
                    labels.append("start" if n_start == 0 else f"start_{n_start}")
                    n_start += 1
                rows.append(P + i)
        labels.append("answer_point")
        rows.append(P + len(keep) - 1)
        with torch.no_grad():
            emb, pos, m, _span, visual = self._replay_inputs(prompt, keep, trace,
                                                             image_visibility or self.profile.image_visibility)
            with attention_rows(self.text_model, rows) as captured:
                self._forward(emb, pos, m[None, None], None, **visual)
        weights = torch.stack([w[0] for w in captured]).numpy()  # [n_layers, n_rows, L]
        return AttentionRows(labels=labels, positions=rows, weights=weights,
                             image_positions=np.nonzero(prompt.image_mask.cpu().numpy())[0])

    def _replay_inputs(self, prompt: Prompt, gen_ids: list[int], trace: Trace, vis: str):
        """Embeddings [1, L, H] (image features scattered, fed vectors written), 3-D positions, the [L, L] mask of
        the visibility rules, the span flags [L] and the decoder's visual keyword arguments for prompt + ``gen_ids``
        (a prefix of the trace's ids, optionally followed by answer-prefix ids outside the span)."""
        torch = self._torch
        prof = self.profile
        ids = torch.cat([prompt.input_ids, torch.tensor(gen_ids, dtype=torch.long)]).to(self.device)
        n_gen = len(ids) - prompt.length
        span_g = (list(trace.span_mask[:n_gen]) + [False] * n_gen)[:n_gen]
        fed_g = (list(trace.fed_mask[:n_gen]) + [False] * n_gen)[:n_gen]
        emb = self.embed(ids)[None]
        visual: dict = {}
        if prompt.pixel_values is not None or prompt.image_embeds is not None:
            emb, visual = self._visual_inputs(ids[None], emb, [prompt])
        fed = [i for i, f in enumerate(fed_g) if f]
        for j, i in enumerate(fed):
            emb[0, prompt.length + i] = torch.as_tensor(trace.latents[j], dtype=emb.dtype)
        pp = self._positions(prompt)
        last = int(pp.max())
        gpos = torch.arange(last + 1, last + 1 + n_gen, device=self.device).view(1, -1).expand(3, -1)
        pos = torch.cat([pp, gpos], 1)[:, None]
        Lt = len(ids)
        kind = torch.full((Lt,), TEXT, device=self.device)
        kind[:prompt.length][prompt.image_mask.to(self.device)] = IMAGE
        span = torch.tensor([False] * prompt.length + span_g, device=self.device)
        kind[span] = SPAN
        m = torch.tril(torch.ones(Lt, Lt, dtype=torch.bool, device=self.device))
        qk, kk = kind[:, None], kind[None, :]
        starts = torch.tensor([False] * prompt.length + [bool(sp) and t == self.tokens.start
                                                         for sp, t in zip(span_g, gen_ids)], device=self.device)
        if vis == "latents_only":
            m &= ~((kk == IMAGE) & (qk != IMAGE) & (qk != SPAN))
        elif vis == "start_only":
            m &= ~((kk == IMAGE) & (qk != IMAGE) & ~starts[:, None])
        elif vis == "none":
            m &= ~((kk == IMAGE) & (qk != IMAGE))
        if vis != "all":  # the prompt's own text after the image never sees it in the prefill
            in_prompt = torch.arange(Lt, device=self.device) < prompt.length
            m &= ~((kk == IMAGE) & (qk != IMAGE) & in_prompt[:, None])
        if not prof.latents_visible_after:
            m &= ~((kk == SPAN) & (qk != SPAN))
        if not prof.start_visible_after:
            m &= ~(starts[None, :] & ~torch.eye(Lt, dtype=torch.bool, device=self.device))
        if not prof.latents_see_input:
            first = [i for i in range(prompt.length) if prompt.image_mask[i] or prompt.question_mask[i]]
            if first:
                idx_k = torch.arange(Lt, device=self.device)[None, :]
                m &= ~((qk == SPAN) & (idx_k >= first[0]) & (kk != SPAN))
        return emb, pos, m, span, visual
