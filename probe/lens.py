"""Logit lens on the latents: what does each fed-back vector "say" when read out by the model's own unembedding?

For a latent step's own vector h_k (the model's final post-norm hidden state that was fed back, ``Trace.raw_latents``)
the lens is ``lm_head(h_k)``: its top tokens, and the rank (0 = top) among the whole vocabulary of the gold option's
letter token and of the model's own answer letter (the tokens the model emits at its answer point,
``core.prompts.option_token_ids``). The reference is the same readout of the last prompt token's state (what the model
would say right after the question, before any latent step), so "the latents say the answer" means a better rank than
the prompt's own state had. A latent that ranks the gold letter no better than the prompt did carries no readable
answer; ranks say nothing about causal use (perturb-latent does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOP_K = 5


def lens_ranks(lm, vectors: np.ndarray, token_ids: list[int]) -> tuple[np.ndarray, list[list[int]]]:
    """Vocabulary rank (0 = top) of each of ``token_ids`` under lm_head(v) for each vector [n, H] -> ([n, len(ids)],
    top-``TOP_K`` token ids per vector)."""
    import torch

    if len(vectors) == 0:
        return np.zeros((0, len(token_ids)), dtype=np.int64), []
    head = lm.model.lm_head
    with torch.no_grad():
        v = torch.as_tensor(np.asarray(vectors), dtype=head.weight.dtype, device=head.weight.device)
        logits = head(v).float()
        ids = torch.as_tensor(token_ids, device=logits.device)
        chosen = logits[:, ids]  # [n, m]
        ranks = (logits[:, None, :] > chosen[:, :, None]).sum(-1)  # tokens strictly above: ties share the best rank
        top = logits.topk(min(TOP_K, logits.shape[-1]), -1).indices
    return ranks.cpu().numpy().astype(np.int64), top.cpu().tolist()


def lens_record(lm, latents: np.ndarray, last_prompt: np.ndarray | None, option_ids: list[int], gold: int,
                answer: int | None) -> dict[str, Any]:
    """Per-sample logit-lens record: per latent step the rank of the gold / answer letter and the top tokens, and the
    same for the last prompt token (reference)."""
    ids = [option_ids[gold]] + ([option_ids[answer]] if answer is not None else [])
    ranks, top = lens_ranks(lm, latents, ids)
    rec: dict[str, Any] = {"gold_rank": ranks[:, 0].tolist(),
                           "answer_rank": ranks[:, 1].tolist() if answer is not None else None,
                           "top_tokens": [lm.tokenizer.convert_ids_to_tokens(t) for t in top]}
    if last_prompt is not None and np.asarray(last_prompt).size:
        r0, _ = lens_ranks(lm, np.asarray(last_prompt)[None], ids)
        rec["prompt_gold_rank"] = int(r0[0, 0])
    return rec


def summarise_lens(records: list[dict]) -> dict[str, Any]:
    """Per latent step: mean reciprocal rank of the gold letter, share of samples whose top-1 is the gold letter,
    median rank; the same for the last prompt token (reference) and the answer letter."""
    recs = [r["logit_lens"] for r in records if isinstance(r.get("logit_lens"), dict)]
    if not recs:
        return {"skipped": "no latent vectors were captured"}
    k = max(len(r["gold_rank"]) for r in recs)
    steps = []
    for i in range(k):
        g = np.array([r["gold_rank"][i] for r in recs if len(r["gold_rank"]) > i])
        a = np.array([r["answer_rank"][i] for r in recs if r.get("answer_rank") and len(r["answer_rank"]) > i])
        steps.append({"step": i, "n": int(len(g)), "gold_mrr": float(np.mean(1.0 / (1 + g))),
                      "gold_top1": float(np.mean(g == 0)), "gold_median_rank": float(np.median(g)),
                      "answer_mrr": float(np.mean(1.0 / (1 + a))) if len(a) else None})
    ref = np.array([r["prompt_gold_rank"] for r in recs if "prompt_gold_rank" in r])
    return {"n": len(recs), "steps": steps,
            "reference_last_prompt_token": {"n": int(len(ref)), "gold_mrr": float(np.mean(1.0 / (1 + ref))),
                                            "gold_top1": float(np.mean(ref == 0))} if len(ref) else None}
