"""Engine oracles for three documented meanings no other test pinned down:

* option log-probabilities are read AFTER the profile's answer prefix, at the answer point: they equal a teacher-forced
  forward over prompt + generated ids up to the answer point + the answer prefix (one position earlier is wrong);
* each fed vector is the model's own FINAL, post-norm hidden state at the previous position (what the model's own
  forward returns as ``last_hidden_state``), not a pre-norm or other layer's state.
* the reference states are the prompt's own final hidden states: mean over image tokens, mean over question tokens,
  last prompt token (left padding in a batch does not leak in).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Engine, Request
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def _answer_point_id(lm) -> int:
    L, tk = lm.profile.latent, lm.tokens
    if L.answer_point == "end" or tk.inner_end is None:
        return tk.end
    return tk.inner_end


@pytest.mark.parametrize("family,profile", [("mirage", "mirage"), ("monet", "monet"), ("monet", "monet_sft"),
                                            ])
def test_option_logprobs_equal_teacher_forced_prompt_generated_and_answer_prefix(load_tiny, family, profile):
    lm = load_tiny(family, profile)
    prefix = lm.tokenizer.encode(lm.profile.answer_prefix, add_special_tokens=False)
    assert prefix, "every real profile has an answer prefix"
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    checked = 0
    for seed in range(6):
        p = build_prompt(lm, f"s{seed}", QUESTION, make_image(seed))
        tr = eng.run([Request(p, option_ids=opts, force_latent=True, max_new_tokens=24)])[0][0]
        ap_id = _answer_point_id(lm)
        idx = [i for i, t in enumerate(tr.token_ids) if t == ap_id and not tr.fed_mask[i]]
        if tr.option_logprobs is None:
            assert not idx, "the answer point was reached but no option scores were read"
            continue
        i = idx[0]
        # replay prompt + ids[:i+1] + prefix (+ one dummy id: the replay feeds token_ids[:-1])
        n = i + 1 + len(prefix) + 1
        forced = dataclasses.replace(
            tr, token_ids=tr.token_ids[:i + 1] + prefix + [0],
            fed_mask=tr.fed_mask[:i + 1] + [False] * (n - i - 1), span_mask=tr.span_mask[:i + 1] + [False] * (n - i - 1),
            latents=tr.latents[:sum(tr.fed_mask[:i + 1])])
        logits = eng.replay(p, forced).float()
        want = torch.log_softmax(logits[-1], -1)[opts].numpy()
        early = torch.log_softmax(logits[-2], -1)[opts].numpy()
        assert np.abs(tr.option_logprobs - want).max() <= 1e-4
        assert np.abs(tr.option_logprobs - early).max() > 1e-3  # the test can tell one position early apart
        checked += 1
    assert checked >= 1, "no trace reached its answer point"


@pytest.mark.parametrize("family,profile", [("mirage", "mirage"), ("monet", "monet"), ("toy", "toy-latent")])
def test_fed_vectors_are_the_models_own_final_post_norm_states(load_tiny, family, profile):
    lm = load_tiny(family, profile)
    if lm.profile.image_visibility != "all" or not lm.profile.latents_visible_after \
            or not lm.profile.latents_see_input:
        pytest.skip("the oracle below uses the model's plain causal forward")
    p = build_prompt(lm, "s0", QUESTION, None)  # text-only prompt: positions are plain, the forward is the model's own
    tr = Engine(lm).run([Request(p, force_latent=True, max_new_tokens=12)])[0][0]
    fed = [i for i, f in enumerate(tr.fed_mask) if f]
    assert fed and len(fed) == len(tr.latents)
    assert np.array_equal(tr.latents, tr.raw_latents)  # no intervention: fed == own
    ids = torch.cat([p.input_ids, torch.tensor(tr.token_ids[:max(fed) + 1], dtype=torch.long)])
    with torch.no_grad():
        emb = lm.model.get_input_embeddings()(ids)[None].clone()
        for j, i in enumerate(fed):
            emb[0, p.length + i] = torch.as_tensor(tr.latents[j], dtype=emb.dtype)
        out = lm.model.model.language_model(inputs_embeds=emb, attention_mask=torch.ones_like(ids)[None])
    h = out.last_hidden_state[0].float().numpy()  # post final norm, as the model's own forward returns it
    for j, i in enumerate(fed):
        assert np.abs(tr.raw_latents[j] - h[p.length + i - 1]).max() <= 1e-4, j
    # a pre-norm state would be told apart: the final norm changes the vector
    with torch.no_grad():
        pre = lm.model.model.language_model(inputs_embeds=emb, attention_mask=torch.ones_like(ids)[None],
                                            output_hidden_states=True).hidden_states[-2][0].float().numpy()
    assert np.abs(tr.raw_latents[0] - pre[p.length + fed[0] - 1]).max() > 1e-3


def test_reference_states_are_the_prompts_own_final_states(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    texts = [QUESTION, "Where is the square? Answer with one word please, and be brief about it."]
    imgs = [make_image(3), make_image(4)]
    prompts = [build_prompt(lm, f"r{i}", t, im) for i, (t, im) in enumerate(zip(texts, imgs))]
    assert prompts[0].length != prompts[1].length  # the batch is left-padded
    traces = Engine(lm).run([Request(p, max_new_tokens=1) for p in prompts], batch_size=2)
    for p, im, tr in zip(prompts, imgs, traces):
        enc = lm.processor(text=[p.text], images=[im], return_tensors="pt")
        with torch.no_grad():
            h = lm.model.model(**enc).last_hidden_state[0].float().numpy()
        image = (enc["input_ids"][0] == lm.tokens.image).numpy()
        refs = tr[0].refs
        assert np.abs(refs["image_tokens"] - h[image].mean(0)).max() <= 1e-4
        assert np.abs(refs["question_tokens"] - h[p.question_mask.numpy()].mean(0)).max() <= 1e-4
        assert np.abs(refs["last_prompt_token"] - h[-1]).max() <= 1e-4
