"""Logit lens on the latents: ranks under the model's own unembedding, checked on planted vectors and on a run."""

from __future__ import annotations

import numpy as np
import torch

from latentcheck.core.prompts import option_token_ids
from latentcheck.probe.lens import lens_ranks, lens_record, summarise_lens


def test_a_vector_along_a_letters_unembedding_row_ranks_that_letter_first(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    opts = option_token_ids(lm, 4)
    W = lm.model.lm_head.weight.detach().float().numpy()
    planted = np.stack([W[opts[2]] * 50.0, -W[opts[2]] * 50.0])  # toward / away from letter C
    ranks, top = lens_ranks(lm, planted, opts)
    assert ranks[0, 2] == 0 and top[0][0] == opts[2]
    assert ranks[1, 2] > ranks[0, 2]
    # ranks are counts of strictly higher logits under lm_head (hand check on random vectors)
    v = np.random.default_rng(0).normal(size=(3, W.shape[1])).astype(np.float32)
    logits = torch.as_tensor(v) @ torch.as_tensor(W).T
    want = [[int((logits[i] > logits[i, t]).sum()) for t in opts] for i in range(3)]
    assert lens_ranks(lm, v, opts)[0].tolist() == want


def test_lens_record_and_summary_on_hand_ranks(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    opts = option_token_ids(lm, 4)
    W = lm.model.lm_head.weight.detach().float().numpy()
    lat = np.stack([W[opts[0]] * 50.0, W[opts[1]] * 50.0])  # step 0 says A (gold), step 1 says B
    rec = lens_record(lm, lat, W[opts[3]] * 50.0, opts, gold=0, answer=1)
    assert rec["gold_rank"][0] == 0 and rec["gold_rank"][1] > 0 and rec["answer_rank"][1] == 0
    assert rec["prompt_gold_rank"] > 0
    s = summarise_lens([{"logit_lens": rec}, {"logit_lens": {**rec, "gold_rank": [3, 1]}}])
    assert s["steps"][0]["gold_mrr"] == (1.0 + 1 / 4) / 2 and s["steps"][0]["gold_top1"] == 0.5
    assert s["steps"][1]["gold_median_rank"] == np.median([rec["gold_rank"][1], 1])
