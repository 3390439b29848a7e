"""Every Qwen generation through the ONE loader and engine, against the model's own forward and generate.

Tiny random checkpoints of the real transformers classes (Qwen2-VL, Qwen2.5-VL, Qwen3-VL with DeepStack, and the
text-only Qwen2 / Qwen3 causal LMs) are built offline; the engine's next-token logits on (left-padded, batched)
image prompts must equal the model's own forward within 1e-4, and greedy decoding must equal ``model.generate``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Engine, Request
from latentcheck.core.profiles import DecodingSpec
from latentcheck.core.prompts import build_prompt

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

TEXTS = ["What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow",
         "Where is the square? Answer with one word please, and be brief about it."]


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    from latentcheck.core.loader import load_model
    from latentcheck.toy.tiny import build_tiny_checkpoint, build_tokenizer

    tok = build_tokenizer("plain")
    cache: dict = {}

    def make(arch: str):
        if arch not in cache:
            out = build_tiny_checkpoint(tmp_path_factory.mktemp(f"arch-{arch}"), family="plain", tokenizer=tok,
                                        arch=arch, seed=1)
            cache[arch] = load_model(str(out), profile="qwen2_5_vl", fast_paths=False)
        return cache[arch]

    return make


def _engine_logits(lm, prompts, n: int):
    eng = Engine(lm, decoding=DecodingSpec(do_sample=False, max_new_tokens=n), capture_logits=True)
    return eng, eng.run([Request(p) for p in prompts], batch_size=len(prompts), sort_by_length=False)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_vl_families_match_the_models_own_forward(family_model, arch):
    lm = family_model(arch)
    images = [make_image(5), make_image(6, size=140)]
    prompts = [build_prompt(lm, f"k{i}", t, im) for i, (t, im) in enumerate(zip(TEXTS, images))]
    assert prompts[0].length != prompts[1].length
    eng, traces = _engine_logits(lm, prompts, 6)
    for p, im, tr in zip(prompts, images, traces):
        enc = lm.processor(text=[p.text], images=[im], return_tensors="pt")
        assert torch.equal(enc["input_ids"][0], p.input_ids)
        with torch.no_grad():
            own = lm.model(**enc).logits[0, -1].float().numpy()
            gen = lm.model.generate(**enc, max_new_tokens=6, do_sample=False)[0, p.length:].tolist()
        assert np.abs(tr[0].logits[0] - own).max() <= 1e-4
        assert tr[0].token_ids == gen[:len(tr[0].token_ids)]
    # the cached decode equals one teacher-forced forward over the generated ids (later positions too)
    tr = traces[0][0]
    ref = eng.replay_logits(prompts[0], tr).float().numpy()
    assert np.abs(tr.logits - ref[prompts[0].length - 1: prompts[0].length - 1 + len(tr.logits)]).max() <= 1e-4


def test_qwen3_vl_deepstack_features_reach_the_language_model(family_model):
    """Without the DeepStack injection the logits move far beyond the tolerance: the oracle above would catch a
    dropped injection."""
    lm = family_model("qwen3_vl")
    p = build_prompt(lm, "k", TEXTS[0], make_image(5))
    eng, traces = _engine_logits(lm, [p], 1)
    eng.deepstack = False
    dropped = eng.run([Request(p)])[0][0]
    assert np.abs(dropped.logits[0] - traces[0][0].logits[0]).max() > 1e-2


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_text_only_causal_lms_match_the_models_own_forward(family_model, arch):
    from latentcheck.core.errors import RecordError

    lm = family_model(arch)
    assert lm.info["text_only"]
    prompts = [build_prompt(lm, f"k{i}", t) for i, t in enumerate(TEXTS)]
    _, traces = _engine_logits(lm, prompts, 6)
    for p, tr in zip(prompts, traces):
        ids = p.input_ids[None]
        with torch.no_grad():
            own = lm.model(input_ids=ids).logits[0, -1].float().numpy()
            gen = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                    do_sample=False)[0, p.length:].tolist()
        assert np.abs(tr[0].logits[0] - own).max() <= 1e-4
        assert tr[0].token_ids == gen[:len(tr[0].token_ids)]
    with pytest.raises(RecordError, match="text-only"):
        build_prompt(lm, "img", TEXTS[0], make_image(1))
