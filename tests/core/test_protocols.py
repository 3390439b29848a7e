"""Protocol edge cases against loops written from the authors' code (latent-models.md s2, s3).

Each reference loop below restates one author's decoding state machine on the plain Hugging Face model (its own
forward, its own KV cache and position bookkeeping, greedy) and is compared with the engine token by token, fed
position by fed position and logit by logit. To reach the edge case on a random tiny model, the model's lm_head gets a
bias towards one token (the same biased model runs in both loops).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Engine, Request
from latentcheck.core.profiles import DecodingSpec
from latentcheck.core.prompts import build_prompt

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def _biased(tiny_checkpoint, family: str, profile: str, token: str, bias: float):
    """A fresh copy of a tiny checkpoint whose lm_head favours ``token`` by ``bias`` logits."""
    from latentcheck.core.loader import load_model

    lm = load_model(str(tiny_checkpoint(family, profile)), profile=profile)
    old = lm.model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
        new.bias[lm.tokenizer.convert_tokens_to_ids(token)] = bias
    lm.model.lm_head = new
    return lm


def _hf_prefill(lm, prompt, image):
    enc = lm.processor(text=[prompt.text], images=[image], return_tensors="pt")
    assert torch.equal(enc["input_ids"][0], prompt.input_ids)
    with torch.no_grad():
        return lm.model(**enc, use_cache=True, output_hidden_states=True)


def _hf_step(lm, emb, past):
    """One decode step of the model's own forward (its own rope-delta positions and cache)."""
    with torch.no_grad():
        return lm.model(inputs_embeds=emb.view(1, 1, -1), cache=past, use_cache=True, output_hidden_states=True)


def lvr_steps_reference(lm, prompt, image, max_new: int):
    """VincentLeebang/lvr ``QwenWithLVR._lvr_deocding_by_steps`` (batch 1, greedy): the mode switch is read from the
    LAST INPUT token (``last_tokens == lvr_start_id``), the quota resets on entry and is decremented while inside;
    inside the mode the sampled id is kept and the position is fed the previous position's last hidden state; EOS
    does not stop while the mode is on. Returns (generated ids, fed flags, step logits)."""
    start, k, eos = lm.tokens.start, lm.profile.latent.k, set(lm.tokens.eos)
    out = _hf_prefill(lm, prompt, image)
    last_input = int(prompt.input_ids[-1])
    mode, remaining = False, 0
    ids, fed, logits = [], [], []
    for _ in range(max_new):
        lg = out.logits[0, -1].float()
        logits.append(lg.numpy())
        nxt = int(lg.argmax())
        start_switch = last_input == start
        new_mode = mode or start_switch
        just_entered = (not mode) and new_mode
        if just_entered:
            remaining = k
        remaining -= int(mode)
        mode = new_mode and remaining > 0
        ids.append(nxt)
        fed.append(mode)
        if not mode and nxt in eos:
            break
        h = out.hidden_states[-1][0, -1]  # last_position_hidden_state (post-norm)
        emb = h if mode else lm.model.get_input_embeddings()(torch.tensor([nxt]))[0]
        out = _hf_step(lm, emb, out.past_key_values)
        last_input = nxt
    return ids, fed, np.stack(logits)


def monet_runner_reference(lm, prompt, image, max_new: int, force_start: bool = True):
    """NOVAglow646/Monet ``monet_gpu_model_runner`` (batch 1, greedy): per-request state {active, pending,
    current_len}; after sampling, a start activates, an end or ``current_len >= LATENT_SIZE`` deactivates and the
    sampled id is replaced by the end id; while active, ``pending`` = this step's last hidden state and
    ``current_len += 1``; before the next forward the newest position's embedding is overwritten by ``pending``.
    vLLM stops the request when the output token is an EOS: that position is never forwarded. ``force_start``
    makes the first token the start token (latentcheck's --force-latent, applied identically to both loops)."""
    start, end, size, eos = lm.tokens.start, lm.tokens.end, lm.profile.latent.k, set(lm.tokens.eos)
    out = _hf_prefill(lm, prompt, image)
    active, pending, cur = False, None, 0
    ids, fed, logits = [], [], []
    for t in range(max_new):
        lg = out.logits[0, -1].float()
        logits.append(lg.numpy())
        tid = int(lg.argmax())
        if t == 0 and force_start:
            tid = start
        if not active and tid == start:
            active = True
        elif active and (tid == end or cur >= size):
            active, pending, cur = False, None, 0
            tid = end
        if active:
            pending = out.hidden_states[-1][0, -1]
            cur += 1
        ids.append(tid)
        if tid in eos:
            fed.append(False)  # the request ends here; the pending vector is never consumed
            break
        use = active and pending is not None
        fed.append(use)
        emb = pending if use else lm.model.get_input_embeddings()(torch.tensor([tid]))[0]
        if use:
            pending = None
        out = _hf_step(lm, emb, out.past_key_values)
    return ids, fed, np.stack(logits)


def _engine_run(lm, prompt, max_new: int, force: bool):
    eng = Engine(lm, decoding=DecodingSpec(do_sample=False, max_new_tokens=max_new), capture_logits=True)
    return eng.run([Request(prompt, force_latent=force, max_new_tokens=max_new)])[0][0]


def _assert_same(tr, ref):
    ids, fed, logits = ref
    assert tr.token_ids == ids
    assert tr.fed_mask == fed
    assert tr.latent_count == sum(fed)
    assert np.abs(tr.logits - logits).max() <= 1e-4


def test_lvr_reenters_when_a_start_is_sampled_at_the_last_latent_step(tiny_checkpoint):
    """A start sampled at the K-th latent step is the next INPUT token, so LVR opens the next block at once."""
    image = make_image(3)
    k_seen = 0
    for bias in (0.0, 6.0, 60.0):
        lm = _biased(tiny_checkpoint, "lvr", "lvr", "<|lvr_start|>", bias)
        prompt = build_prompt(lm, "s", QUESTION, image)
        max_new = 2 * lm.profile.latent.k + 6
        ref = lvr_steps_reference(lm, prompt, image, max_new)
        tr = _engine_run(lm, prompt, max_new, force=False)
        _assert_same(tr, ref)
        k = lm.profile.latent.k
        ids, fed = tr.token_ids, tr.fed_mask
        # re-entry at the exit step: a start right after K fed positions, followed by fed positions again
        for i in range(k, len(ids) - 1):
            if all(fed[i - k:i]) and not fed[i] and ids[i] == lm.tokens.start and fed[i + 1]:
                k_seen += 1
        if bias == 60.0:
            assert tr.latent_blocks >= 1 and tr.latent_count >= 2 * k - 1
    assert k_seen >= 1  # the edge case was exercised


def test_monet_eos_inside_a_span_ends_the_request_and_is_not_a_fed_latent(tiny_checkpoint):
    image = make_image(4)
    seen = 0
    for bias in (0.0, 4.0, 7.0, 60.0):
        lm = _biased(tiny_checkpoint, "monet", "monet", "<|im_end|>", bias)
        prompt = build_prompt(lm, "s", QUESTION, image)
        max_new = 16
        ref = monet_runner_reference(lm, prompt, image, max_new)
        tr = _engine_run(lm, prompt, max_new, force=True)
        _assert_same(tr, ref)
        if tr.finish_reason == "eos" and tr.span_mask[-1] and lm.tokens.end not in tr.token_ids:
            seen += 1
            assert tr.fed_mask[-1] is False and tr.latents.shape[0] == sum(tr.fed_mask)
    assert seen >= 1  # the edge case was exercised


@pytest.mark.parametrize("name", ["mirage", "monet", "monet_sft", "lvr"])
def test_max_blocks_is_the_authors_value(name):
    from latentcheck.core.profiles import get_profile

    assert get_profile(name).latent.max_blocks == 0  # the authors' loops enter on every start token


def test_latent_profile_without_max_blocks_is_an_error():
    from latentcheck.core.errors import ProfileError
    from latentcheck.core.profiles import profile_from_dict

    d = {"name": "x", "kind": "latent", "tokens": {"start": "<s>", "end": "</s>", "placeholder": "<p>"},
         "latent": {"k": 4}}
    with pytest.raises(ProfileError, match="max_blocks"):
        profile_from_dict(d)
    d["latent"]["max_blocks"] = 2
    assert profile_from_dict(d).latent.max_blocks == 2
