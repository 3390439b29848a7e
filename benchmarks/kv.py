"""Parts (e) and (f) of benchmarks/run.py: the engine at a shape where the KV cache matters.

(e) N = 9 conditions vs 1 on prompts of >= 1k image tokens (a random-weight Qwen2.5-VL-class checkpoint,
    ``toy/tiny`` size ``medium``: 4 layers, 2 KV heads of 64 -> 4 KB of KV per token; 896 px images -> 1024 merged
    image tokens per prompt; image features computed once and passed as ``Prompt.image_embeds``): today's fork
    (``Engine(shared_prefix=False, retire_rows=False)``: the prompt's KV copied once per condition) vs the shared
    prefix (``Engine()``). Time interleaved in one process; memory = the engine's own ``kv_cache_bytes`` (the batch's
    largest KV size) and the peak-RSS growth of a fresh subprocess per (variant, N). Identical tokens asserted.
(f) a mixed-length workload: 32 requests whose token budgets are drawn uniformly from 8..256 (rows end between 8 and
    256 tokens), batch size 8, greedy: the engine (continuous batching: rows leave when done and new samples take
    their place, longest budgets first) vs the engine with fixed batches whose rows leave (session 3) vs today's
    engine (pre-#23: rows idle to the longest row of their batch, batches by prompt length, the copying cache) vs
    HF ``model.generate`` at the same batch size (left-padded, ``max_new_tokens`` = the batch's largest budget, each
    row cut at its own budget). Identical outputs asserted. Also the step counts, each engine variant's decode time
    per step and the step-count floor (a batch kept full: ceil(tokens / batch size) steps), which bound the ratio any
    scheduler could reach on the machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

E_CONDITIONS = ("identity", "zero", "near_zero", "noise:sigma=0.5", "noise:sigma=1", "noise:sigma=2",
                "scale:alpha=0.5", "scale:alpha=2")  # + baseline = 9 conditions
E_IMAGE_PX = 896  # 32 x 32 merged tokens = 1024 image tokens
QUESTION = "What colour is the target?\nA. red\nB. green\nC. blue\nD. yellow"


def checkpoint(workdir: Path) -> Path:
    """The random medium checkpoint (built once in the work folder)."""
    from latentcheck.toy.tiny import build_tiny_checkpoint

    ck = workdir / "medium-toy-latent"
    if not (ck / "config.json").exists():
        build_tiny_checkpoint(ck, family="toy", size="medium", seed=0, profile="toy-latent")
    return ck


def e_prompts(lm, n: int) -> list:
    """``n`` prompts with one 896 px image each (1024 image tokens), image features cached on the prompt."""
    import torch
    from PIL import Image

    from latentcheck.core.engine import Engine
    from latentcheck.core.prompts import build_prompt

    rng = np.random.default_rng(0)
    out = []
    eng = Engine(lm)
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (E_IMAGE_PX, E_IMAGE_PX, 3), dtype=np.uint8))
        p = build_prompt(lm, f"e{i}", QUESTION + " " * i, img)  # (different lengths: left padding)
        with torch.no_grad():
            feats = eng.image_features([p])[0]
        out.append(dataclasses.replace(p, image_embeds=feats))
    return out


def e_requests(lm, prompts, n_conditions: int, max_new: int = 16) -> list:
    from latentcheck.core.engine import Condition, Request
    from latentcheck.core.interventions import parse_spec
    from latentcheck.core.prompts import option_token_ids

    conds = [Condition()] + [Condition(s, parse_spec(s)) for s in E_CONDITIONS][:n_conditions - 1]
    opts = option_token_ids(lm, 4)
    return [Request(p, conds, option_ids=opts, force_latent=True, max_new_tokens=max_new) for p in prompts]


def e_engine(lm, variant: str):
    from latentcheck.core.engine import Engine

    return Engine(lm, shared_prefix=False, retire_rows=False) if variant == "fork" else Engine(lm)


def e_child(workdir: Path, variant: str, n_conditions: int, n_samples: int) -> dict:
    """One (variant, N) in this fresh process: peak-RSS growth of one run after loading and preparing."""
    import torch

    from latentcheck.core.loader import load_model

    torch.set_num_threads(1)
    lm = load_model(str(checkpoint(workdir)), profile="toy-latent", max_pixels=E_IMAGE_PX ** 2)
    prompts = e_prompts(lm, n_samples)
    reqs = e_requests(lm, prompts, n_conditions)
    eng = e_engine(lm, variant)
    import gc

    gc.collect()
    reset = _reset_peak()
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    traces = eng.generate(reqs, batch_size=n_samples)
    dt = time.perf_counter() - t0
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "peak_reset": reset,
            "growth_mb": (peak - before) / 1024, "time_s": dt,
            "kv_cache_mb": traces[0][0].timing["kv_cache_bytes"] / 2 ** 20,
            "prompt_tokens": max(p.length for p in prompts)}


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: now, VmHWM: the peak since the last reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux: ``5`` to /proc/self/clear_refs), so VmHWM is the peak of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_e(workdir: Path, repeats: int, n_samples: int = 4, interleave=None, med=None) -> dict:
    """(e): time interleaved here, memory in one subprocess per (variant, N)."""
    import torch

    from latentcheck.core.loader import load_model

    lm = load_model(str(checkpoint(workdir)), profile="toy-latent", max_pixels=E_IMAGE_PX ** 2)
    prompts = e_prompts(lm, n_samples)
    engines = {v: e_engine(lm, v) for v in ("fork", "shared")}
    reqs = {n: e_requests(lm, prompts, n) for n in (9, 1)}
    variants = {f"{v} N={n}": (lambda v=v, n=n: engines[v].generate(reqs[n], batch_size=n_samples))
                for n in (9, 1) for v in ("fork", "shared")}
    with torch.no_grad():
        times, last = interleave(variants, repeats)
    same = all(a.token_ids == b.token_ids for ra, rb in zip(last["fork N=9"], last["shared N=9"]) for a, b in zip(ra, rb))
    diff = max(float(np.abs(a.option_logprobs - b.option_logprobs).max())
               for ra, rb in zip(last["fork N=9"], last["shared N=9"]) for a, b in zip(ra, rb)
               if a.option_logprobs is not None)
    kv = {k: last[k][0][0].timing["kv_cache_bytes"] / 2 ** 20 for k in variants}
    mem = {}
    for v in ("fork", "shared"):
        for n in (9, 1):
            cmd = [sys.executable, __file__, "--child", str(workdir), v, str(n), str(n_samples)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                 check=True)
            mem[f"{v} N={n}"] = json.loads(out.stdout.strip().splitlines()[-1])
    m = {k: med(t) for k, t in times.items()}
    return {"samples": n_samples, "prompt_tokens": max(p.length for p in prompts),
            "image_tokens": int(prompts[0].image_mask.sum()), "median_s": m, "times_s": times,
            "kv_cache_mb": kv, "subprocess": mem, "identical_tokens": same, "max_option_logprob_diff": diff,
            "kv_ratio_shared_9_vs_1": kv["shared N=9"] / kv["shared N=1"],
            "kv_ratio_fork_9_vs_1": kv["fork N=9"] / kv["fork N=1"],
            "rss_ratio_shared_9_vs_1": mem["shared N=9"]["growth_mb"] / mem["shared N=1"]["growth_mb"],
            "rss_ratio_fork_9_vs_1": mem["fork N=9"]["growth_mb"] / mem["fork N=1"]["growth_mb"],
            "time_ratio_fork_vs_shared_9": m["fork N=9"] / m["shared N=9"], "ok": same and diff <= 1e-4}


# ---------------------------------------------------------------------------------------------- (f)
def f_workload(lm, n: int = 32, seed: int = 0) -> tuple[list, dict]:
    """``n`` plain requests (a 112 px image, questions of different lengths) with budgets uniform in 8..256, and
    each request's image by prompt key (for HF ``generate``)."""
    from PIL import Image

    from latentcheck.core.engine import Request
    from latentcheck.core.prompts import build_prompt

    rng = np.random.default_rng(seed)
    budgets = rng.integers(8, 257, n)
    reqs, images = [], {}
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        q = QUESTION + " Explain." * int(rng.integers(0, 6))
        reqs.append(Request(build_prompt(lm, f"f{i}", q, img), max_new_tokens=int(budgets[i])))
        images[f"f{i}"] = img
    return reqs, images


def hf_generate(lm, reqs, images: dict, batch_size: int) -> list[list[int]]:
    """HF ``model.generate`` at ``batch_size`` (batches in the given order, left-padded, greedy, up to the batch's
    largest budget), each row cut at its own budget and after its first EOS."""
    import torch

    eos = set(lm.tokens.eos)
    out = []
    lm.tokenizer.padding_side = "left"
    for s in range(0, len(reqs), batch_size):
        chunk = reqs[s:s + batch_size]
        enc = lm.processor(text=[r.prompt.text for r in chunk], images=[images[r.prompt.key] for r in chunk],
                           padding=True, return_tensors="pt")
        n = max(r.max_new_tokens for r in chunk)
        with torch.no_grad():
            gen = lm.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokens.pad)
        for r, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:].tolist()):
            ids = row[:r.max_new_tokens]
            for j, t in enumerate(ids):
                if t in eos:
                    ids = ids[:j + 1]
                    break
            out.append(ids)
    return out


def _steps(traces) -> dict:
    """Decode steps, decode time and prefill time of a generate() result, summed over its batches (a continuous
    stream is one batch)."""
    seen = {}
    for row in traces:
        t = row[0].timing
        seen[(t["batch_total_s"], t["steps"])] = t
    return {"steps": sum(t["steps"] for t in seen.values()), "decode_s": sum(t["batch_decode_s"] for t in seen.values()),
            "prefill_s": sum(t["batch_prefill_s"] for t in seen.values()), "batches": len(seen)}


def bench_f(workdir: Path, repeats: int, batch_size: int = 8, n: int = 32, interleave=None, med=None) -> dict:
    """(f): the engine (continuous batching) vs the engine with fixed batches whose rows leave (session 3) vs today's
    engine (pre-#23: rows idle to the longest row of their batch) vs HF generate; plus the step-count floor and each
    variant's decode time per step, to bound what any scheduler could reach on this machine."""
    import math

    import torch

    from latentcheck.core.engine import Engine
    from latentcheck.core.loader import load_model

    lm = load_model(str(checkpoint(workdir)), profile="qwen2_5_vl")  # plain decoding of the same weights
    reqs, images = f_workload(lm, n)
    by_prompt = sorted(range(n), key=lambda i: reqs[i].prompt.length)  # today's batching: by prompt length
    today_reqs = [reqs[i] for i in by_prompt]
    engine, fixed = Engine(lm), Engine(lm, continuous=False)
    today = Engine(lm, shared_prefix=False, retire_rows=False)
    order = sorted(range(n), key=lambda i: (reqs[i].max_new_tokens, reqs[i].prompt.length))
    variants = {
        "engine": lambda: engine.generate(reqs, batch_size=batch_size),
        "engine_fixed_batches": lambda: fixed.generate(reqs, batch_size=batch_size),
        "today": lambda: today.generate(today_reqs, batch_size=batch_size, sort_by_length=False),
        "hf_generate": lambda: hf_generate(lm, [reqs[i] for i in by_prompt], images, batch_size),
        "hf_generate_budget_sorted": lambda: hf_generate(lm, [reqs[i] for i in order], images, batch_size),
    }
    with torch.no_grad():
        times, last = interleave(variants, repeats)
    steps = {k: _steps(last[k]) for k in ("engine", "engine_fixed_batches", "today")}
    want = [t[0].token_ids for t in last["engine"]]
    got_fixed = [t[0].token_ids for t in last["engine_fixed_batches"]]

    def unsort(rows, idx):
        out = [None] * n
        for j, i in enumerate(idx):
            out[i] = rows[j]
        return out

    got_today = unsort([t[0].token_ids for t in last["today"]], by_prompt)
    got_hf = unsort(last["hf_generate"], by_prompt)
    got_hf2 = unsort(last["hf_generate_budget_sorted"], order)
    lengths = [len(x) for x in want]
    tokens = sum(lengths)
    m = {k: med(t) for k, t in times.items()}
    same = want == got_fixed == got_today == got_hf == got_hf2
    # what any scheduler could reach here: a batch kept full from the first step to the last (ceil(tokens / batch)
    # steps, at least the longest row) at the engine's own decode cost per step, plus a batched prefill of every
    # prompt (today's prefill time, 4 batches of 8)
    floor_steps = max(math.ceil(tokens / batch_size), max(lengths))
    per_step = {k: v["decode_s"] / v["steps"] for k, v in steps.items()}
    best_s = floor_steps * per_step["engine"] + steps["today"]["prefill_s"]
    return {"requests": n, "batch_size": batch_size, "generated_tokens": tokens,
            "budgets": [r.max_new_tokens for r in reqs], "lengths": lengths,
            "median_s": m, "times_s": times, "tokens_per_s": {k: tokens / v for k, v in m.items()},
            "steps": steps, "floor_steps": floor_steps, "decode_s_per_step": per_step,
            "best_possible_s": best_s, "best_possible_ratio_vs_today": m["today"] / best_s,
            "ratio_vs_today": m["today"] / m["engine"], "ratio_vs_hf": m["hf_generate"] / m["engine"],
            "ratio_vs_fixed_batches": m["engine_fixed_batches"] / m["engine"],
            "ratio_vs_hf_budget_sorted": m["hf_generate_budget_sorted"] / m["engine"],
            "identical_outputs": same, "ok": same}


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = e_child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    print(json.dumps(res))

