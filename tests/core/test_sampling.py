"""Decoding matches transformers: processed logits vs generate's own LogitsProcessorList, greedy + repetition
penalty vs model.generate."""

from __future__ import annotations

import torch

from latentcheck.core.engine import Engine, Request
from latentcheck.core.profiles import DecodingSpec
from latentcheck.core.prompts import build_prompt

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def _hf_processors(lm, spec: DecodingSpec, prompt_len: int):
    """The processor list model.generate itself builds for these settings."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=spec.do_sample, temperature=spec.temperature, top_k=spec.top_k,
                           top_p=spec.top_p, repetition_penalty=spec.repetition_penalty)
    return lm.model._get_logits_processor(generation_config=cfg, input_ids_seq_length=prompt_len)


def test_processed_logits_equal_transformers_processor_list(load_tiny, monkeypatch):
    lm = load_tiny("plain", "qwen2_5_vl")
    spec = DecodingSpec(do_sample=True, temperature=0.7, top_k=50, top_p=0.8, repetition_penalty=1.3,
                        max_new_tokens=6)
    texts = [QUESTION, "Where is the square? Answer with one word please, and be brief about it."]
    prompts = [build_prompt(lm, f"k{i}", t, make_image(i)) for i, t in enumerate(texts)]
    assert prompts[0].length != prompts[1].length  # left padding in the batch
    eng = Engine(lm, decoding=spec, seed=3)
    calls = []
    orig = Engine._choose

    def spy(self, logits, history, gens):
        calls.append((logits.clone(), None if history is None else history.clone()))
        return orig(self, logits, history, gens)

    monkeypatch.setattr(Engine, "_choose", spy)
    traces = eng.run([Request(p) for p in prompts], batch_size=2, sort_by_length=False)
    assert calls
    for step, (logits, history) in enumerate(calls):
        for r, (p, tr) in enumerate(zip(prompts, traces)):
            if step > len(tr[0].token_ids) - 1:
                continue
            # generate's input_ids for this row: the unpadded prompt and the tokens generated so far
            ids = torch.cat([p.input_ids, torch.tensor(tr[0].token_ids[:step], dtype=torch.long)])[None]
            want = _hf_processors(lm, spec, p.length)(ids, logits[r:r + 1].float())
            got = eng.processors(history[r:r + 1], logits[r:r + 1].float())
            assert torch.equal(torch.isinf(got), torch.isinf(want))
            fin = ~torch.isinf(want)
            assert torch.allclose(got[fin], want[fin], atol=1e-6)
            # the prompt's tokens are penalised: some logit differs from the raw one at the prompt ids
            raw = logits[r].float()
            assert not torch.allclose(want[0, p.input_ids], raw[p.input_ids] / 0.7)


def test_greedy_repetition_penalty_equals_generate(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    spec = DecodingSpec(do_sample=False, repetition_penalty=1.5, max_new_tokens=10)
    eng = Engine(lm, decoding=spec)
    plain = Engine(lm, decoding=DecodingSpec(do_sample=False, max_new_tokens=10))
    differs = 0
    for i in range(3):
        img = make_image(10 + i)
        p = build_prompt(lm, f"s{i}", QUESTION, img)
        enc = lm.processor(text=[p.text], images=[img], return_tensors="pt")
        ref = lm.model.generate(**enc, max_new_tokens=10, do_sample=False, repetition_penalty=1.5)
        got = eng.run([Request(p)])[0][0].token_ids
        ref_ids = ref[0, enc["input_ids"].shape[1]:].tolist()
        assert got == ref_ids[:len(got)] and (len(got) == len(ref_ids) or got[-1] in lm.tokens.eos)
        differs += got != plain.run([Request(p)])[0][0].token_ids
    assert differs  # the penalty changed something, so the comparison was not vacuous
