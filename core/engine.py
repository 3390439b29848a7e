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
tokens; all other text after the image cannot — the toy positive control); ``none`` (no position after the image block
may attend to it: the behavioural probe's "image hidden from the answer"). ``latents_visible_after=False`` hides the
latent span from every later position (the toy negative control).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentcheck.core.errors import ProfileError
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
    refs: dict[str, np.ndarray]  # reference hidden states of the prompt (shared by all conditions of a sample)
    hidden: np.ndarray | None  # [T, H] last-layer hidden state at each generated position (if captured)
    finish_reason: str
    timing: dict[str, float] = field(default_factory=dict)  # batch_prefill_s, batch_decode_s (the decode loop),
    # batch_total_s (prefill to option scores), batch_rows, steps: shared by the traces of one batch
    logits: np.ndarray | None = None  # [T, V] logits each generated token was chosen from (capture_logits only)

    @property
    def option_probs(self) -> np.ndarray | None:
        """Option distribution renormalised over the options."""
        if self.option_logprobs is None:
            return None
        lp = self.option_logprobs - self.option_logprobs.max()
        p = np.exp(lp)
        return p / p.sum()


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
    'none', minus the whole user input (from ``start``) for models whose latents do not see the input."""
    import torch

    hide_img = torch.tensor([v == "none" for v in visibility], device=kinds.device)
    m = (kinds != PAD) & ~((kinds == IMAGE) & hide_img[:, None])
    if blind:
        cols = torch.arange(kinds.shape[1], device=kinds.device)[None]
        m = m & (cols < start[:, None])
    return m


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


def _row_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:12], 16)


class Engine:
    """Batched latent/plain decoding over a ``LoadedModel`` (see module docstring)."""

    def __init__(self, lm, decoding: DecodingSpec | None = None, seed: int = 0, capture_hidden: bool = False,
                 stats: LatentStats | None = None, capture_logits: bool = False):
        import torch

        self.lm = lm
        self.model = lm.model
        inner = lm.model.model
        # text-only causal LMs (Qwen2/Qwen3ForCausalLM) have the decoder as .model and 1-D positions; the VL
        # families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) have it as .model.language_model with mRoPE positions
        self.text_only = not hasattr(inner, "language_model")
        self.text_model = inner if self.text_only else inner.language_model
        vcfg = getattr(lm.model.config, "vision_config", None)
        self.deepstack = bool(getattr(vcfg, "deepstack_visual_indexes", None))  # Qwen3-VL
        self.decoding = decoding or lm.profile.decoding
        self.seed = seed
        self.capture_hidden = capture_hidden
        self.capture_logits = capture_logits
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
        self._torch = torch

    # ------------------------------------------------------------------ public API
    def run(self, requests: list[Request], batch_size: int = 8, sort_by_length: bool = True) -> list[list[Trace]]:
        """Run all requests (batches of ``batch_size`` samples); traces come back in request order."""
        order = list(range(len(requests)))
        if sort_by_length:
            order.sort(key=lambda i: requests[i].prompt.length)
        out: list[list[Trace] | None] = [None] * len(requests)
        for s in range(0, len(order), max(1, batch_size)):
            idx = order[s:s + batch_size]
            for i, traces in zip(idx, self._run_batch([requests[i] for i in idx])):
                out[i] = traces
        return out  # type: ignore[return-value]

    def generate(self, prompts: list[Prompt], batch_size: int = 8, **request_kw) -> list[Trace]:
        """Plain convenience: one un-intervened trace per prompt."""
        return [t[0] for t in self.run([Request(p, **request_kw) for p in prompts], batch_size)]

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

    def _forward(self, embeds, positions, mask, cache, **visual):
        """The decoder on input embeddings with explicit positions (3 x B x L mRoPE; a text-only model takes the
        first row, identical to its 1-D positions). ``visual``: Qwen3-VL's DeepStack inputs (prefill only)."""
        if self.text_only:
            positions = positions[0]
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

    def _run_batch(self, reqs: list[Request]) -> list[list[Trace]]:  # noqa: C901 - the state machine lives here
        torch = self._torch
        t0 = time.perf_counter()
        prof = self.profile
        L = prof.latent
        tk = self.tokens
        dev = self.device
        vis = [r.image_visibility or prof.image_visibility for r in reqs]
        with torch.no_grad():
            h, cache, st = self.prefill([r.prompt for r in reqs], vis)
            refs = self._refs(h, st["kinds"], st["qmask"])
            logits0 = self.model.lm_head(h[:, -1])
            feedback0 = self._feedback(h[:, -1]) if prof.is_latent else h[:, -1]
            t_prefill = time.perf_counter() - t0
            # ---- fork: one row per (request, condition)
            src, conds = [], []
            for b, r in enumerate(reqs):
                for c in r.conditions:
                    src.append(b)
                    conds.append(c)
            R = len(src)
            idx = torch.tensor(src, device=dev)
            if R != len(reqs) or src != list(range(len(reqs))):
                cache.batch_select_indices(idx)
            kinds0 = st["kinds"][idx]
            P = st["P"]
            max_new = max((r.max_new_tokens or self.decoding.max_new_tokens) for r in reqs)
            T = P + max_new + 2
            valid = kinds0 != PAD
            vis_row = [vis[b] for b in src]
            hide_t = torch.tensor([v != "all" for v in vis_row], device=dev)
            mT = torch.zeros((R, T), dtype=torch.bool, device=dev)
            mL = torch.zeros((R, T), dtype=torch.bool, device=dev)
            is_img = kinds0 == IMAGE
            mT[:, :P] = valid & ~(is_img & hide_t[:, None])
            mL[:, :P] = latent_key_mask(kinds0, st["input_start"][idx], vis_row, not prof.latents_see_input)
            latvis = prof.latents_visible_after
            see_input = prof.latents_see_input
            pos = st["next_pos"][idx].clone()
            logits = logits0[idx]
            fb = feedback0[idx]
            keys = [reqs[b].prompt.key for b in src]
            gens = None
            if self.decoding.do_sample:
                gens = [torch.Generator().manual_seed(_row_seed(self.seed, k)) for k in keys]
            # ---- per-row latent settings
            is_latent = prof.is_latent
            start_id = tk.start if is_latent else -1
            end_id = tk.end if is_latent else -1
            ph_id = tk.placeholder if tk.placeholder is not None else -1
            kmax_override = max([len(c.override) for c in conds if c.override is not None] + [0])
            H = fb.shape[-1]
            ov = torch.zeros((R, max(kmax_override, 1), H), dtype=self.dtype, device=dev)
            ov_len = torch.full((R,), -1, dtype=torch.long, device=dev)
            ov_mask = torch.zeros((R, max(kmax_override, 1)), dtype=torch.bool, device=dev)
            for r, c in enumerate(conds):
                if c.override is not None:
                    n = len(c.override)
                    if n:
                        ov[r, :n] = torch.as_tensor(c.override, dtype=self.dtype, device=dev)
                    ov_len[r] = n
                    ov_mask[r, :n] = True if c.override_mask is None else torch.as_tensor(c.override_mask[:n],
                                                                                          device=dev)
            has_ov = ov_len >= 0
            limit = torch.where(has_ov, ov_len, torch.full_like(ov_len, L.k))
            fixed = has_ov | torch.tensor(L.length == "fixed", device=dev)
            cond_ids: dict[int, list[int]] = {}
            for r, c in enumerate(conds):
                if c.intervention is not None and c.intervention.kind == "vector":
                    cond_ids.setdefault(id(c.intervention), []).append(r)
            spec_of = {id(c.intervention): c.intervention for c in conds if c.intervention is not None}
            row_cond = torch.full((R,), -1, dtype=torch.long, device=dev)
            spec_list = []
            for j, (sid, rows) in enumerate(cond_ids.items()):
                row_cond[rows] = j
                spec_list.append(spec_of[sid])
            force = torch.tensor([is_latent and (reqs[b].force_latent or L.trigger == "forced_prefix") for b in src],
                                 device=dev)
            force_any = bool(force.any())
            # stop sequences, grouped: (ids, rows that stop on them)
            groups: dict[tuple[int, ...], list[int]] = {}
            for r, b in enumerate(src):
                for s in reqs[b].stop_sequences:
                    if s:
                        groups.setdefault(tuple(int(x) for x in s), []).append(r)
            stop_groups = []
            for s, rows in groups.items():
                m = torch.zeros(R, dtype=torch.bool, device=dev)
                m[rows] = True
                stop_groups.append((torch.tensor(s, dtype=torch.long, device=dev), m))
            # ---- state (per row, as tensors; the generated ids/masks go into preallocated [R, max_new] tensors and
            # the fed vectors / hidden states / logits are kept as one [R, ...] tensor per step, assembled per row once
            # at the end, so a step costs no per-row Python work)
            mode = torch.zeros(R, dtype=torch.long, device=dev)  # 1 = inside a latent span
            lat_count = torch.zeros(R, dtype=torch.long, device=dev)
            blocks = torch.zeros(R, dtype=torch.long, device=dev)
            finished = torch.zeros(R, dtype=torch.bool, device=dev)
            reason = torch.zeros(R, dtype=torch.long, device=dev)  # index into REASONS
            V = logits.shape[-1]
            history = None  # ids the repetition penalty covers: prompt (left padding -> the row's first id, which
            # adds no token to the penalised set) then generated ids, as generate's input_ids
            if self.penalised:
                history = torch.zeros((R, P + max_new), dtype=torch.long, device=dev)
                ids0 = st["ids"][idx]
                first = ids0[torch.arange(R, device=dev), (~valid).sum(1)]
                history[:, :P] = torch.where(valid, ids0, first[:, None])
            gen_ids = torch.zeros((R, max_new), dtype=torch.long, device=dev)
            fed_t = torch.zeros((R, max_new), dtype=torch.bool, device=dev)
            span_t = torch.zeros((R, max_new), dtype=torch.bool, device=dev)
            n_gen = torch.zeros(R, dtype=torch.long, device=dev)  # generated tokens per row
            lat_steps: list[tuple[Any, Any, Any]] = []  # (rows fed [R], fed vectors [R, H], raw vectors [R, H])
            hid_steps: list[tuple[Any, Any]] = []  # (rows kept [R], hidden [R, H])
            lg_steps: list[Any] = []  # logits [R, V] the step's tokens were chosen from
            ap_id = -1
            if is_latent:
                ap_id = end_id if L.answer_point == "end" else (tk.inner_end if tk.inner_end is not None else end_id)
            ap_marker = tk.imagination_end if prof.kind == "text_imagination" else []
            ap_marker_t = torch.tensor(ap_marker, dtype=torch.long, device=dev) if ap_marker else None
            ap_logits = torch.zeros((R, V), dtype=logits.dtype, device=dev)
            ap_done = torch.zeros(R, dtype=torch.bool, device=dev)
            ap_col = torch.full((R,), -1, dtype=torch.long, device=dev)
            ap_pos = torch.zeros(R, dtype=torch.long, device=dev)
            if prof.kind == "plain":
                ap_logits[:] = logits
                ap_done[:] = True
                ap_col[:] = P
                ap_pos[:] = pos
            ap_pending = torch.zeros(R, dtype=torch.bool, device=dev)
            ap_all_done = bool(ap_done.all())
            eos = self._eos
            ar = torch.arange(R, device=dev)
            zeros_l = torch.zeros(R, dtype=torch.long, device=dev)
            ones_l = torch.ones(R, dtype=torch.long, device=dev)
            start_fill = torch.full((R,), start_id, dtype=torch.long, device=dev)
            end_fill = torch.full((R,), end_id, dtype=torch.long, device=dev)
            pad_fill = torch.full((R,), self.tokens.pad, dtype=torch.long, device=dev)
            lat_rec = torch.full((R,), ph_id, dtype=torch.long, device=dev) if L.record_id == "placeholder" else None
            on_start = is_latent and L.entry == "on_start"
            no_rows = torch.zeros(R, dtype=torch.bool, device=dev)
            mask_4d = self._step_mask_4d()
            spec_of_row = row_cond.tolist()
            spec_groups: dict[tuple[int, ...], list] = {}  # rows needing a vector -> [(spec, rows, keys)]
            any_unfixed = bool((~fixed).any())
            eos_ends_span = is_latent and L.record_id == "sampled" and not L.eos_guard
            reenter = is_latent and L.exit == "none"
            max_blocks = (L.max_blocks or 0) or max_new + 1  # 0 = no limit (the authors' loops)

            def suffix_is(seq, n: int):
                """Rows whose first ``n`` generated ids end with ``seq`` (None if ``n`` is too short)."""
                k = seq.shape[0]
                return None if n < k else (gen_ids[:, n - k:n] == seq[None]).all(1)

            t_col = P
            n_steps = 0
            t_loop = time.perf_counter()
            while True:
                # ---------------- transition: decide what each row feeds next
                sampled = self._choose(logits, None if history is None else history[:, :P + n_steps], gens)
                if n_steps == 0 and force_any:
                    sampled = torch.where(force & (mode == 0), start_fill, sampled)
                active = ~finished
                cand = (mode == 1) & active
                stop_tok = ~fixed & (sampled == end_id) if any_unfixed else no_rows
                cont = cand & ~stop_tok & (lat_count < limit) if any_unfixed else cand & (lat_count < limit)
                exit_ = cand & ~cont
                # an EOS sampled inside a span of a model that keeps sampled ids and has no guard ends the request
                # there (Monet's runner): that position is never forwarded, so it is not a fed latent
                eos_in_span = cont & torch.isin(sampled, eos) if eos_ends_span else no_rows
                cont = cont & ~eos_in_span if eos_ends_span else cont
                # entry: the token fed next is the start token (LVR: "the last input token is <|lvr_start|>"), also
                # when it was sampled at the last step of a block that exits without a forced end token
                may_enter = (mode == 0) | (exit_ & ~stop_tok) if reenter else (mode == 0)
                enter = may_enter & active & (sampled == start_id) & (
                    blocks + exit_.long() < max_blocks) if is_latent else no_rows
                enter_vec = enter & (limit > 0) if on_start else no_rows
                need = cont | enter_vec if on_start else cont
                li = torch.where(cont, lat_count, zeros_l)
                vec = fb
                raw = fb
                any_need = bool(need.any())
                if any_need:
                    vec = fb.clone()
                    use_ov = need & has_ov & (li < ov_len)
                    if bool(use_ov.any()):
                        liu = li.clamp(max=ov.shape[1] - 1)
                        take = use_ov & ov_mask[ar, liu]
                        vec = torch.where(take[:, None], ov[ar, liu], vec)
                    else:
                        take = no_rows
                    if spec_list:
                        rows_now = tuple((need & ~take & (row_cond >= 0)).nonzero().view(-1).tolist())
                        groups = spec_groups.get(rows_now)
                        if groups is None:  # (the same rows need vectors at every latent step, as a rule)
                            by_spec: dict[int, list[int]] = {}
                            for i in rows_now:
                                by_spec.setdefault(spec_of_row[i], []).append(i)
                            groups = spec_groups[rows_now] = [
                                (spec_list[j], torch.tensor(rows_j, dtype=torch.long, device=dev),
                                 [keys[i] for i in rows_j]) for j, rows_j in sorted(by_spec.items())]
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
                        nxt = torch.where(exit_, end_fill, nxt)
                    else:
                        nxt = torch.where(exit_ & stop_tok, end_fill, nxt)
                    nxt = torch.where(entered_tok, start_fill, nxt)
                rec = nxt
                if is_latent:
                    rec = torch.where(cont, sampled if lat_rec is None else lat_rec, rec)
                    rec = torch.where(enter_vec, start_fill, rec)
                # finishing
                text_rows = active & ~need & ~entered_tok
                new_fin = text_rows & torch.isin(rec, eos)  # (includes an EOS sampled inside a span, see above)
                # state updates
                span_now = need | entered_tok | eos_in_span
                if is_latent:
                    lat_count = torch.where(enter, enter_vec.long(), lat_count + cont.long())
                    blocks = blocks + exit_.long()
                    mode = torch.where(enter, ones_l, torch.where(exit_, zeros_l, mode))
                # record this step for the rows not finished before it (every active row has n_steps + 1 ids now)
                gen_ids[:, n_steps] = rec
                fed_t[:, n_steps] = need
                span_t[:, n_steps] = span_now
                n_gen += active.long()
                if self.capture_logits:
                    lg_steps.append(logits)
                if any_need:
                    lat_steps.append((need, vec, raw))
                reason = torch.where(new_fin, 1, reason)
                if stop_groups:
                    hit = no_rows
                    for seq, rows_m in stop_groups:
                        m = suffix_is(seq, n_steps + 1)
                        if m is not None:
                            hit = hit | (rows_m & m)
                    hit = hit & active & ~new_fin
                    reason = torch.where(hit, 2, reason)
                    new_fin = new_fin | hit
                if ap_marker_t is not None:
                    m = suffix_is(ap_marker_t, n_steps + 1)
                    if m is not None:
                        ap_pending = ap_pending | (active & ~ap_done & m)
                if is_latent and not ap_all_done:
                    ap_pending = ap_pending | (~ap_done & ~need & (nxt == ap_id) & active)
                if history is not None:
                    history[:, P + n_steps] = rec
                finished = finished | new_fin
                n_steps += 1
                if bool(finished.all()) or n_steps >= max_new:
                    break
                # ---------------- forward one position
                emb = self.embed(torch.where(need | finished, pad_fill, nxt) if any_need
                                 else torch.where(finished, pad_fill, nxt))
                if any_need:
                    emb = torch.where(need[:, None], vec.to(emb.dtype), emb)
                mT[:, t_col] = finished | ~span_now if not latvis else True
                if is_latent:  # (span_now is all False otherwise)
                    mL[:, t_col] = ~finished & (span_now | see_input)
                keys_ok = torch.where(span_now[:, None], mL[:, :t_col + 1], mT[:, :t_col + 1]) \
                    if is_latent and bool(span_now.any()) else mT[:, :t_col + 1]
                if not mask_4d:
                    mask = keys_ok.long()
                elif bool(keys_ok.all()):
                    mask = None  # what transformers makes of an all-ones 2-D mask for a one-token query
                else:  # = transformers' SDPA mask for a one-token query: causal is all-true, so keys_ok
                    mask = keys_ok[:, None, None, :]
                posv = pos.view(1, R, 1).expand(3, R, 1)
                hs = self._forward(emb[:, None], posv, mask, cache)
                h_last = hs[:, -1]
                logits = self.model.lm_head(h_last)
                fb = self._feedback(h_last) if is_latent else h_last
                if self.capture_hidden:
                    hid_steps.append((active & ~new_fin, h_last))
                if bool(ap_pending.any()):
                    ap_logits = torch.where(ap_pending[:, None], logits, ap_logits)
                    ap_col = torch.where(ap_pending, torch.full_like(ap_col, t_col + 1), ap_col)
                    ap_pos = torch.where(ap_pending, pos + 1, ap_pos)
                    ap_done = ap_done | ap_pending
                    ap_pending = torch.zeros_like(ap_pending)
                    ap_all_done = bool(ap_done.all())
                pos = pos + 1
                t_col += 1
            t_decode = time.perf_counter() - t_loop
            # ---------------- option scores at the answer point
            opt = [None] * R
            need_opts = [reqs[b].option_ids for b in src]
            if any(o for o in need_opts):
                lp = torch.log_softmax(ap_logits.float(), -1)
                prefix = self.lm.tokenizer.encode(prof.answer_prefix, add_special_tokens=False) \
                    if prof.answer_prefix else []
                if prefix and bool(ap_done.any()):
                    lp = self._score_prefix(prefix, cache, ap_done, ap_col, ap_pos, mT, t_col, lp)
                done_l = ap_done.tolist()
                lp_np = lp.cpu().numpy()
                for r in range(R):
                    if need_opts[r] and done_l[r]:
                        opt[r] = lp_np[r, need_opts[r]].astype(np.float64)
            t_total = time.perf_counter() - t0
        # ---------------- assemble traces (one conversion per tensor, then per-row slices)
        n_l = n_gen.tolist()
        gen_l, fed_l, span_l = gen_ids.cpu().tolist(), fed_t.cpu().tolist(), span_t.cpu().tolist()
        reason_l, blocks_l, mode_l = reason.tolist(), blocks.tolist(), mode.tolist()
        empty = np.zeros((0, H), dtype=np.float32)
        lat_fed = lat_raw = lat_mask = None
        if lat_steps:
            lat_mask = torch.stack([m for m, _, _ in lat_steps], 1).cpu().numpy()  # [R, S']
            lat_fed = torch.stack([v for _, v, _ in lat_steps], 1).float().cpu().numpy()  # [R, S', H]
            lat_raw = torch.stack([v for _, _, v in lat_steps], 1).float().cpu().numpy()
        hid_mask = hid_all = None
        if hid_steps:
            hid_mask = torch.stack([m for m, _ in hid_steps], 1).cpu().numpy()
            hid_all = torch.stack([h for _, h in hid_steps], 1).float().cpu().numpy()
        lg_all = torch.stack(lg_steps, 1).float().cpu().numpy() if lg_steps else None  # [R, S, V]
        out: list[list[Trace]] = [[] for _ in reqs]
        texts: dict[tuple[int, ...], str] = {}
        for r in range(R):
            b = src[r]
            n = n_l[r]
            ids = gen_l[r][:n]
            text = texts.get(tuple(ids))
            if text is None:
                text = texts[tuple(ids)] = self.lm.tokenizer.decode(ids, skip_special_tokens=False)
            if lat_mask is not None and lat_mask[r].any():
                lf, lr = lat_fed[r][lat_mask[r]], lat_raw[r][lat_mask[r]]
            else:
                lf, lr = empty, empty
            hidden = None
            if hid_mask is not None and hid_mask[r].any():
                hidden = hid_all[r][hid_mask[r]]
            out[b].append(Trace(
                key=keys[r], condition=conds[r].name, token_ids=ids,
                text=text, latents=lf, raw_latents=lr,
                latent_count=len(lf), latent_blocks=int(blocks_l[r]),
                triggered=bool(blocks_l[r] > 0 or mode_l[r] == 1), fed_mask=fed_l[r][:n], span_mask=span_l[r][:n],
                option_logprobs=opt[r], refs=refs[b], hidden=hidden, finish_reason=REASONS[reason_l[r]],
                logits=np.ascontiguousarray(lg_all[r, :n]) if (lg_all is not None and n) else None,
                timing={"batch_prefill_s": t_prefill, "batch_decode_s": t_decode, "batch_total_s": t_total,
                        "batch_rows": R, "steps": n_steps}))
        return out

    def _score_prefix(self, prefix, cache, ap_done, ap_col, ap_pos, mT, t_col, lp):
        """Teacher-force the profile's answer prefix at each row's answer point (hiding later cache columns)."""
        torch = self._torch
        R = ap_done.shape[0]
        n = len(prefix)
        dev = self.device
        ids = torch.tensor(prefix, device=dev).view(1, n).expand(R, n)
        cols = torch.arange(t_col, device=dev)
        base = mT[:, :t_col] & (cols[None] < ap_col[:, None].clamp(min=0))
        mask = torch.cat([base, torch.ones((R, n), dtype=torch.bool, device=dev)], 1).long()
        posv = (ap_pos[:, None] + torch.arange(n, device=dev)[None]).view(1, R, n).expand(3, R, n)
        hs = self._forward(self.embed(ids), posv, mask, cache)
        cache.crop(-n)
        new = torch.log_softmax(self.model.lm_head(hs[:, -1]).float(), -1)
        return torch.where(ap_done[:, None], new, lp)

    # ------------------------------------------------------------------ replay (teacher-forced oracle)
    def replay_logits(self, prompt: Prompt, trace: Trace, image_visibility: str | None = None):
        """One no-cache forward over prompt + generated ids with the trace's fed vectors written at their
        positions and the visibility rules as an explicit 4-D mask. Returns logits [L_total, V]."""
        torch = self._torch
        prof = self.profile
        vis = image_visibility or prof.image_visibility
        ids = torch.cat([prompt.input_ids, torch.tensor(trace.token_ids[:-1] if trace.token_ids else [],
                                                        dtype=torch.long)]).to(self.device)
        n_gen = len(ids) - prompt.length
        with torch.no_grad():
            emb = self.embed(ids)[None]
            visual: dict = {}
            if prompt.pixel_values is not None or prompt.image_embeds is not None:
                emb, visual = self._visual_inputs(ids[None], emb, [prompt])
            fed = [i for i, f in enumerate(trace.fed_mask[:n_gen]) if f]
            for j, i in enumerate(fed):
                emb[0, prompt.length + i] = torch.as_tensor(trace.latents[j], dtype=emb.dtype)
            pp = self._positions(prompt)
            last = int(pp.max())
            gpos = torch.arange(last + 1, last + 1 + n_gen, device=self.device).view(1, -1).expand(3, -1)
            pos = torch.cat([pp, gpos], 1)[:, None]
            Lt = len(ids)
            kind = torch.full((Lt,), TEXT, device=self.device)
            kind[:prompt.length][prompt.image_mask.to(self.device)] = IMAGE
            span = torch.tensor([False] * prompt.length + list(trace.span_mask[:n_gen]), device=self.device)
            kind[span] = SPAN
            m = torch.tril(torch.ones(Lt, Lt, dtype=torch.bool, device=self.device))
            qk, kk = kind[:, None], kind[None, :]
            if vis == "latents_only":
                m &= ~((kk == IMAGE) & (qk != IMAGE) & (qk != SPAN))
            elif vis == "none":
                m &= ~((kk == IMAGE) & (qk != IMAGE))
            if vis != "all":  # the prompt's own text after the image never sees it in the prefill
                in_prompt = torch.arange(Lt, device=self.device) < prompt.length
                m &= ~((kk == IMAGE) & (qk != IMAGE) & in_prompt[:, None])
            if not prof.latents_visible_after:
                m &= ~((kk == SPAN) & (qk != SPAN))
            if not prof.latents_see_input:
                first = [i for i in range(prompt.length) if prompt.image_mask[i] or prompt.question_mask[i]]
                if first:
                    idx_k = torch.arange(Lt, device=self.device)[None, :]
                    m &= ~((qk == SPAN) & (idx_k >= first[0]) & (kk != SPAN))
            h = self._forward(emb, pos, m[None, None], None, **visual)
            return self.model.lm_head(h[0])
