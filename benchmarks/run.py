"""Side-by-side performance benchmarks on the toy models (not part of the test suite; see docs/performance.md).

    python benchmarks/run.py                    # everything, 3 repeats (10-15 minutes on 2 busy CPU cores)
    python benchmarks/run.py --only a,b --repeats 5 --json bench.json

(a) perturb-latent, 64 samples x (baseline + 8 vector interventions): the engine (one shared prefill per sample, the
    conditions forked as rows of one batched decode) vs perturb-latent's ``--naive`` path (one full engine generation
    per condition at batch size 1) vs the reference way, a plain loop written here after the CapImagine README
    pseudo-code (paper.md s1.2): a patched greedy loop over ``model(...)`` at batch size 1, latent steps fed back as
    ``inputs_embeds``, one full generation (prefill included) per condition. All three must give identical tokens.
(b) engine overhead: time per decode step of ``Engine.run`` on a batch (its decode loop timer; also "all-in": the
    run's wall time minus its prefill) vs the bare ``model.model.language_model(...)`` + ``lm_head`` call with the same
    batch, padding, mask, positions and a forked cache.
(c) ``bench`` (generic benchmark, toy-world multiple-choice test split), 200 samples, --batch-size 8 (and 32) vs 1;
    identical predictions asserted.
(d) peak memory of ``perturb-input`` at 100 vs 1000 samples, each in its own subprocess (ru_maxrss; tracemalloc peak
    in a second subprocess so its bookkeeping does not inflate the RSS).
(e) at a shape where KV matters (>= 1k image tokens per prompt, random medium checkpoint): KV memory and time of
    N = 9 conditions vs 1, today's fork (prompt KV copied per condition) vs the shared prefix (benchmarks/kv.py).
(f) a mixed-length workload (budgets 8..256 tokens): the engine (rows leave when done) vs today's engine (rows idle to
    the longest row) vs HF ``generate`` at the same batch size, identical outputs asserted (benchmarks/kv.py).

Compared variants run interleaved (A, B, A, B, ...) and the table reports medians; every process uses one intra-op
thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``). The model is the toy zoo's ``toy-latent`` when it is
built, else a random tiny checkpoint of the same architecture (``toy/tiny.build_tiny_checkpoint``, profile
toy-latent) run with ``--force-latent`` (the random model never emits the latent-start token by itself).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kv  # noqa: E402  (parts e and f)

# perturb-latent's vector interventions (its DEFAULT_SPECS minus the sequence ones) plus a scale
INTERVENTIONS = ("identity", "shared:source=mean", "noise:sigma=1", "noise_replace", "near_zero", "zero",
                 "index_mean", "scale:alpha=0.5")
TARGETS = {"a": (">=", 8.0), "b": ("<=", 1.3), "c": (">=", 3.0), "d": ("<=", 1.2), "e": ("<=", 1.3),
           "f": (">=", 2.0), "f_hf": (">=", 1.0), "e_time": (">=", 1.0)}


# ---------------------------------------------------------------------------------------------- set-up
def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


@dataclass
class Setup:
    """The model under test and the data."""

    model_path: str
    source: str
    force_latent: bool
    lm: Any = None
    tasks: list = field(default_factory=list)


def resolve_model(workdir: Path) -> tuple[str, str, bool]:
    """(checkpoint folder, description, force_latent): the zoo's toy-latent if built, else a tiny random one."""
    from latentcheck.core.errors import ModelLoadError
    from latentcheck.toy.zoo import zoo_model_path

    try:
        path = zoo_model_path("toy-latent")
        return str(path), f"toy zoo toy-latent ({path})", False
    except ModelLoadError:
        from latentcheck.toy.tiny import build_tiny_checkpoint

        ck = workdir / "tiny-toy-latent"
        if not (ck / "config.json").exists():
            build_tiny_checkpoint(ck, family="toy", size="tiny", seed=0, profile="toy-latent")
        return str(ck), "tiny random checkpoint, toy-latent architecture (zoo not built), --force-latent", True


def load(workdir: Path) -> Setup:
    from latentcheck.core.loader import load_model
    from latentcheck.core.runner import read_all_tasks
    from latentcheck.toy.zoo import default_data

    path, source, force = resolve_model(workdir)
    lm = load_model(path, profile="toy-latent")
    tasks = read_all_tasks(default_data("test"), 200, strict=True)
    return Setup(path, source, force, lm, tasks)


def interleave(variants: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run the variants A, B, ..., A, B, ... ``repeats`` times; wall times per variant and each one's last result."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            gc.collect()
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, last


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------- (a) reference loop
def reference_generate(lm, prompt, spec, stats, seed: int, force_latent: bool, max_new_tokens: int,
                       option_ids: list[int] | None) -> tuple[list[int], np.ndarray | None]:
    """The CapImagine README decoding loop, batch size 1, for a toy-latent-style profile (latent entry after the
    start token, K fixed latents, forced end token, placeholder ids recorded, last-layer post-norm hidden state fed
    back). Returns (generated ids, log p(option letters) after the end token)."""
    torch = _torch()
    from transformers import DynamicCache

    from latentcheck.core.interventions import VectorContext, apply_vector

    L, tk, model = lm.profile.latent, lm.tokens, lm.model
    if not (L.entry == "after_start" and L.length == "fixed" and L.exit == "force_end"
            and L.record_id == "placeholder" and L.feedback_layer == -1 and L.post_norm and lm.head is None
            and lm.profile.image_visibility == "all" and lm.profile.latents_visible_after
            and lm.profile.latents_see_input and not lm.profile.decoding.do_sample):
        raise SystemExit(f"the reference loop implements the toy-latent protocol only, not {lm.profile.name!r}")
    embed = model.get_input_embeddings()
    ids = prompt.input_ids[None]
    vision = {}
    if prompt.pixel_values is not None:
        vision = dict(pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
                      mm_token_type_ids=(ids == tk.image).int())
    generated: list[int] = []
    in_latent, latent_count, blocks = False, 0, 0
    answer_logits = None
    with torch.no_grad():
        model.model.rope_deltas = None  # the model caches the mRoPE delta of the last prefill
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, cache=cache, use_cache=True, output_hidden_states=True, **vision)
        for step in range(max_new_tokens):
            next_id = int(out.logits[0, -1].argmax())
            if step == 0 and force_latent:
                next_id = tk.start
            latent_embedding = None
            if in_latent:
                if latent_count < L.k:  # feed the last hidden state (the README's intervention point)
                    h = out.hidden_states[-1][:, -1]
                    if spec is not None:
                        h = apply_vector(spec, h, torch.tensor([latent_count]),
                                         VectorContext(keys=[prompt.key], seed=seed, stats=stats))
                    latent_embedding = h
                    next_id = tk.placeholder
                    latent_count += 1
                else:  # forced end, counter reset
                    next_id, in_latent, latent_count = tk.end, False, 0
                    blocks += 1
            elif next_id == tk.start and (L.max_blocks == 0 or blocks < L.max_blocks):
                in_latent, latent_count = True, 0
            generated.append(next_id)
            if not in_latent and next_id != tk.end and next_id in tk.eos:
                break
            if step == max_new_tokens - 1:
                break
            emb = latent_embedding[:, None] if latent_embedding is not None else embed(torch.tensor([[next_id]]))
            out = model(inputs_embeds=emb, cache=cache, use_cache=True, output_hidden_states=True)
            if next_id == tk.end and answer_logits is None:
                answer_logits = out.logits[0, -1]
    lp = None
    if option_ids and answer_logits is not None:
        lp = torch.log_softmax(answer_logits.float(), -1)[option_ids].numpy().astype(np.float64)
    return generated, lp


def bench_a(s: Setup, repeats: int, n_samples: int = 64, batch_size: int = 8) -> dict:
    from latentcheck.core.engine import Condition, Engine, Request
    from latentcheck.core.interventions import LatentStats, parse_spec
    from latentcheck.core.prompts import build_prompt, option_token_ids, task_text
    from latentcheck.perturb.latents import execute

    lm = s.lm
    tasks = s.tasks[:n_samples]
    prompts = [build_prompt(lm, t.id, task_text(t, lm.profile), t.load_image()) for t in tasks]
    opts = [option_token_ids(lm, len(t.options)) for t in tasks]
    specs = [parse_spec(x) for x in INTERVENTIONS]
    engine = Engine(lm, seed=0)
    base = engine.run([Request(p, option_ids=o, force_latent=s.force_latent) for p, o in zip(prompts, opts)],
                      batch_size=batch_size)  # calibration (untimed): dataset statistics for shared / index_mean
    engine.stats = LatentStats.from_latents([t[0].latents for t in base])
    conds = [Condition()] + [Condition(x.label, x) for x in specs]
    reqs = [Request(p, conds, option_ids=o, force_latent=s.force_latent) for p, o in zip(prompts, opts)]
    max_new = lm.profile.decoding.max_new_tokens

    def reference():
        return [[reference_generate(lm, p, c.intervention, engine.stats, 0, s.force_latent, max_new, o)
                 for c in conds] for p, o in zip(prompts, opts)]

    times, last = interleave({"engine": lambda: execute(engine, reqs, batch_size),
                              "naive": lambda: execute(engine, reqs, batch_size, naive=True),
                              "reference": reference}, repeats)
    eng, nai, ref = last["engine"], last["naive"], last["reference"]
    n = len(prompts) * len(conds)
    same_naive = sum(eng[i][j].token_ids == nai[i][j].token_ids for i in range(len(prompts))
                     for j in range(len(conds)))
    same_ref = sum(eng[i][j].token_ids == ref[i][j][0] for i in range(len(prompts)) for j in range(len(conds)))
    lp_naive = max(float(np.abs(eng[i][j].option_logprobs - nai[i][j].option_logprobs).max())
                   for i in range(len(prompts)) for j in range(len(conds)) if eng[i][j].option_logprobs is not None)
    lp_ref = max((float(np.abs(eng[i][j].option_logprobs - ref[i][j][1]).max()) for i in range(len(prompts))
                  for j in range(len(conds)) if eng[i][j].option_logprobs is not None and ref[i][j][1] is not None),
                 default=float("nan"))
    return {"generations": n, "samples": len(prompts), "conditions": len(conds), "batch_size": batch_size,
            "times": times, "median_s": {k: med(v) for k, v in times.items()},
            "ratio_reference": med(times["reference"]) / med(times["engine"]),
            "ratio_naive": med(times["naive"]) / med(times["engine"]),
            "identical_tokens_naive": f"{same_naive}/{n}", "identical_tokens_reference": f"{same_ref}/{n}",
            "max_option_logprob_diff_naive": lp_naive, "max_option_logprob_diff_reference": lp_ref,
            "ok": same_naive == n and same_ref == n}


# ---------------------------------------------------------------------------------------------- (b) engine overhead
def bench_b(s: Setup, repeats: int, configs=((8, 9, None), (8, 1, 64))) -> dict:
    """Engine decode step vs the bare text model + lm_head call with the same inputs and a forked cache.

    engine: the engine's decode loop (``Trace.timing["batch_decode_s"]``: choosing tokens, interventions, state,
    masks, the forward) / forward steps; engine_all_in: (``Engine.run`` wall time - its prefill) / forward steps, i.e.
    also the cache fork, set-up, option scores and trace assembly; raw: ``language_model(inputs_embeds, position_ids,
    2-D attention_mask, cache)`` + ``lm_head`` per step, inputs prepared outside the timer; raw_4d: the same with a
    prepared 4-D mask (what the engine passes to SDPA models; information only)."""
    torch = _torch()
    from latentcheck.core.engine import PAD, Condition, Engine, Request
    from latentcheck.core.interventions import LatentStats, parse_spec
    from latentcheck.core.prompts import build_prompt, option_token_ids, task_text

    lm = s.lm
    out: dict[str, Any] = {"configs": {}}
    for n_samples, n_conds, max_new in configs:
        tasks = s.tasks[:n_samples]
        prompts = [build_prompt(lm, t.id, task_text(t, lm.profile), t.load_image()) for t in tasks]
        specs = [parse_spec(x) for x in INTERVENTIONS][:n_conds - 1]
        conds = [Condition()] + [Condition(x.label, x) for x in specs]
        engine = Engine(lm, seed=0)
        base = engine.run([Request(p, force_latent=s.force_latent) for p in prompts], batch_size=n_samples)
        engine.stats = LatentStats.from_latents([t[0].latents for t in base])
        reqs = [Request(p, conds, option_ids=option_token_ids(lm, len(t.options)), force_latent=s.force_latent,
                        max_new_tokens=max_new) for p, t in zip(prompts, tasks)]
        steps_seen: list[int] = []

        def engine_step() -> tuple[float, float]:
            t0 = time.perf_counter()
            traces = engine.run(reqs, batch_size=n_samples)
            wall = time.perf_counter() - t0
            tm = traces[0][0].timing
            steps_seen.append(int(tm["steps"]))
            n_fwd = max(1, tm["steps"] - 1)
            return tm.get("batch_decode_s", float("nan")) / n_fwd, (wall - tm["batch_prefill_s"]) / n_fwd

        def raw_step(four_d: bool) -> float:
            n_fwd = max(1, steps_seen[-1] - 1)
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                h, cache, st = engine.prefill(prompts, [lm.profile.image_visibility] * len(prompts))
                idx = torch.arange(len(prompts)).repeat_interleave(len(conds))
                cache.batch_select_indices(idx)
                R = len(idx)
                valid = st["kinds"][idx] != PAD
                masks = [torch.cat([valid, torch.ones((R, k + 1), dtype=torch.bool)], 1) for k in range(n_fwd)]
                masks = [m[:, None, None, :] if four_d else m.long() for m in masks]
                embs = [engine.embed(torch.randint(0, 100, (R, 1), generator=gen)) for _ in range(n_fwd)]
                pos0 = st["next_pos"][idx]
                poss = [(pos0 + k).view(1, R, 1).expand(3, R, 1) for k in range(n_fwd)]
                t0 = time.perf_counter()
                for k in range(n_fwd):
                    hs = engine.text_model(inputs_embeds=embs[k], position_ids=poss[k], attention_mask=masks[k],
                                           cache=cache, use_cache=True).last_hidden_state
                    lm.model.lm_head(hs[:, -1])
                return (time.perf_counter() - t0) / n_fwd

        engine_step()  # warm-up; also fixes the number of steps the raw loop runs
        per: dict[str, list[float]] = {"engine": [], "engine_all_in": [], "raw": [], "raw_4d": []}
        for _ in range(max(repeats, 5)):
            loop, all_in = engine_step()
            per["engine"].append(loop)
            per["engine_all_in"].append(all_in)
            per["raw"].append(raw_step(False))
            per["raw_4d"].append(raw_step(True))
        label = (f"{n_samples} samples x {n_conds} conditions = {n_samples * n_conds} rows, {steps_seen[-1]} steps "
                 f"(max_new_tokens {max_new or lm.profile.decoding.max_new_tokens})")
        m = {k: med(v) for k, v in per.items()}
        out["configs"][label] = {"rows": n_samples * n_conds, "steps": steps_seen[-1], "per_step_s": per,
                                 "median_ms": {k: v * 1e3 for k, v in m.items()},
                                 "ratio": m["engine"] / m["raw"], "ratio_all_in": m["engine_all_in"] / m["raw"],
                                 "ratio_vs_raw_4d": m["engine"] / m["raw_4d"]}
    return out


# ---------------------------------------------------------------------------------------------- (c) bench
def bench_c(s: Setup, repeats: int, workdir: Path, n_samples: int = 200, batch_sizes=(8, 32)) -> dict:
    """``run_bench`` (generic benchmark = the toy world's multiple-choice test split) at --batch-size 1 and at each of
    ``batch_sizes`` (the first one, the CLI default 8, is the one checked against the target)."""
    from latentcheck.bench.runner import run_bench
    from latentcheck.core.runner import CommonOptions, load_records

    counter = {"n": 0}

    def run(bs):
        def go():
            counter["n"] += 1
            o = CommonOptions(out=str(workdir / f"bench-bs{bs}-{counter['n']}"), limit=n_samples, batch_size=bs,
                              quiet=True, seed=0)
            res = run_bench(o, lm=s.lm, force_latent=s.force_latent)
            return {r["key"]: r["pred"] for r in load_records(res["results_path"])
                    if r.get("type", "sample") == "sample"}
        return go

    variants = {f"batch {b}": run(b) for b in batch_sizes}
    variants["batch 1"] = run(1)
    times, last = interleave(variants, repeats)
    one = last["batch 1"]
    same = {k: sum(v[key] == one.get(key) for key in v) for k, v in last.items() if k != "batch 1"}
    m = {k: med(v) for k, v in times.items()}
    return {"samples": len(one), "batch_sizes": list(batch_sizes), "times": times, "median_s": m,
            "ratios": {k: m["batch 1"] / m[k] for k in m if k != "batch 1"},
            "ratio": m["batch 1"] / m[f"batch {batch_sizes[0]}"],
            "identical_predictions": {k: f"{v}/{len(one)}" for k, v in same.items()},
            "ok": len(one) == n_samples and all(v == n_samples for v in same.values())}


# ---------------------------------------------------------------------------------------------- (d) memory
def _current_rss_kb() -> int | None:
    """Resident set size now (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_child(args) -> None:
    """Subprocess body: one perturb-input run; prints a JSON line with its memory figures."""
    import resource
    import tracemalloc

    _torch()
    from latentcheck.core.loader import load_model
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.inputs import run_perturb_input

    lm = load_model(args.model, profile="toy-latent")
    after_load = _current_rss_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    opts = CommonOptions(out=args.out, data=args.data, limit=args.memory_child, batch_size=8, quiet=True, seed=0)
    res = run_perturb_input(opts, lm=lm, force_start=args.force_latent, plots=False)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
    print(json.dumps({"n": args.memory_child, "ok": res.counts.get("ok"), "seconds": seconds,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "rss_after_load_kb": after_load, "tracemalloc_peak_b": peak}))


def bench_d(s: Setup, repeats: int, workdir: Path, sizes=(100, 1000), tracemalloc: bool = True) -> dict:
    from latentcheck.toy.world import write_world

    world = workdir / "world"
    if not (world / "tasks_test.jsonl").exists():
        write_world(world, n_train=0, n_val=0, n_test=max(sizes), seed=0)
    data = str(world / "tasks_test.jsonl")

    def child(n: int, trace: bool) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n), "--model", s.model_path,
               "--data", data, "--out", str(workdir / f"pi-{n}-{'tm' if trace else 'rss'}-{time.time_ns()}")]
        cmd += ["--force-latent"] if s.force_latent else []
        cmd += ["--tracemalloc"] if trace else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"memory child failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
        return json.loads(lines[-1])

    runs: dict[str, list[dict]] = {f"{n}": [] for n in sizes}
    traced: dict[str, list[dict]] = {f"{n}": [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            runs[f"{n}"].append(child(n, False))
    if tracemalloc:
        for n in sizes:
            traced[f"{n}"].append(child(n, True))
    lo, hi = f"{sizes[0]}", f"{sizes[-1]}"
    rss = {k: med([r["maxrss_kb"] for r in v]) for k, v in runs.items()}
    base = {k: med([r["rss_after_load_kb"] for r in v]) for k, v in runs.items()}
    out = {"runs": runs, "maxrss_mb": {k: v / 1024 for k, v in rss.items()},
           "after_load_mb": {k: v / 1024 for k, v in base.items()},
           "ratio": rss[hi] / rss[lo], "growth_ratio": max(0.0, rss[hi] - base[hi]) / max(1.0, rss[lo] - base[lo]),
           "seconds": {k: med([r["seconds"] for r in v]) for k, v in runs.items()}}
    if tracemalloc:
        peak = {k: med([r["tracemalloc_peak_b"] for r in v]) for k, v in traced.items()}
        out.update(tracemalloc_peak_mb={k: v / 2 ** 20 for k, v in peak.items()},
                   tracemalloc_ratio=peak[hi] / peak[lo], traced_runs=traced)
    return out


# ---------------------------------------------------------------------------------------------- report
def check(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return f"{op} {target:g} {'PASS' if ok else 'FAIL'}"


def table(results: dict) -> str:
    rows = ["| | measurement | median A | median B | ratio | target |", "|---|---|---|---|---|---|"]
    if "a" in results:
        a = results["a"]
        m = a["median_s"]
        rows.append(f"| a | perturb-latent {a['samples']} samples x {a['conditions']} conditions: reference loop "
                    f"(batch 1, full generation per condition) / engine (batch {a['batch_size']}) | "
                    f"{m['reference']:.2f} s | {m['engine']:.2f} s | {a['ratio_reference']:.1f}x | "
                    f"{check('a', a['ratio_reference'])} |")
        rows.append(f"| a | perturb-latent --naive path / engine | {m['naive']:.2f} s | {m['engine']:.2f} s | "
                    f"{a['ratio_naive']:.1f}x | {check('a', a['ratio_naive'])} |")
    if "b" in results:
        for label, b in results["b"]["configs"].items():
            m = b["median_ms"]
            rows.append(f"| b | engine decode step / bare language_model + lm_head step ({label}) | "
                        f"{m['engine']:.2f} ms | {m['raw']:.2f} ms | {b['ratio']:.2f}x | {check('b', b['ratio'])} |")
            rows.append(f"| b | ... all-in: (Engine.run - prefill) per step, incl. fork, set-up, option scores, "
                        f"assembly | {m['engine_all_in']:.2f} ms | {m['raw']:.2f} ms | {b['ratio_all_in']:.2f}x | "
                        f"(stricter; {check('b', b['ratio_all_in'])}) |")
            rows.append(f"| b | ... engine decode step / bare call given a prepared 4-D mask | {m['engine']:.2f} ms | "
                        f"{m['raw_4d']:.2f} ms | {b['ratio_vs_raw_4d']:.2f}x | "
                        f"(stricter; {check('b', b['ratio_vs_raw_4d'])}) |")
    if "c" in results:
        c = results["c"]
        m = c["median_s"]
        for i, b in enumerate(c["batch_sizes"]):
            r = c["ratios"][f"batch {b}"]
            rows.append(f"| c | bench, {c['samples']} multiple-choice samples: --batch-size 1 / --batch-size {b} | "
                        f"{m['batch 1']:.2f} s | {m[f'batch {b}']:.2f} s | {r:.1f}x | "
                        f"{check('c', r) if i == 0 else '(info)'} |")
    if "d" in results:
        d = results["d"]
        k = list(d["maxrss_mb"])
        rows.append(f"| d | perturb-input peak RSS (ru_maxrss), {k[-1]} / {k[0]} samples | {d['maxrss_mb'][k[-1]]:.0f} MB "
                    f"| {d['maxrss_mb'][k[0]]:.0f} MB | {d['ratio']:.2f}x | {check('d', d['ratio'])} |")
        rows.append(f"| d | ... peak RSS minus the RSS right after loading the model, {k[-1]} / {k[0]} | "
                    f"{d['maxrss_mb'][k[-1]] - d['after_load_mb'][k[-1]]:.0f} MB | "
                    f"{d['maxrss_mb'][k[0]] - d['after_load_mb'][k[0]]:.0f} MB | {d['growth_ratio']:.2f}x | (info) |")
        if "tracemalloc_peak_mb" in d:
            t = d["tracemalloc_peak_mb"]
            rows.append(f"| d | ... tracemalloc peak (Python allocations), {k[-1]} / {k[0]} | {t[k[-1]]:.1f} MB | "
                        f"{t[k[0]]:.1f} MB | {d['tracemalloc_ratio']:.2f}x | (info) |")
    if "e" in results:
        e = results["e"]
        kv, m, sp = e["kv_cache_mb"], e["median_s"], e["subprocess"]
        head = f"{e['samples']} samples x {e['image_tokens']} image tokens ({e['prompt_tokens']}-token prompts)"
        rows.append(f"| e | KV cache, shared prefix: N=9 / N=1 conditions, {head} | {kv['shared N=9']:.1f} MB | "
                    f"{kv['shared N=1']:.1f} MB | {e['kv_ratio_shared_9_vs_1']:.2f}x | "
                    f"{check('e', e['kv_ratio_shared_9_vs_1'])} |")
        rows.append(f"| e | ... today's fork: N=9 / N=1 | {kv['fork N=9']:.1f} MB | {kv['fork N=1']:.1f} MB | "
                    f"{e['kv_ratio_fork_9_vs_1']:.2f}x | (today) |")
        rows.append(f"| e | ... peak RSS growth of the run (fresh subprocess), shared N=9 / N=1 | "
                    f"{sp['shared N=9']['growth_mb']:.0f} MB | {sp['shared N=1']['growth_mb']:.0f} MB | "
                    f"{e['rss_ratio_shared_9_vs_1']:.2f}x | (info; fork {e['rss_ratio_fork_9_vs_1']:.2f}x) |")
        rows.append(f"| e | time N=9: today's fork / shared prefix | {m['fork N=9']:.2f} s | {m['shared N=9']:.2f} s | "
                    f"{e['time_ratio_fork_vs_shared_9']:.2f}x | {check('e_time', e['time_ratio_fork_vs_shared_9'])} |")
        rows.append(f"| e | ... time N=1: today's fork / shared prefix (no forks: the same path) | "
                    f"{m['fork N=1']:.2f} s | {m['shared N=1']:.2f} s | {m['fork N=1'] / m['shared N=1']:.2f}x | (info) |")
    if "f" in results:
        f = results["f"]
        m = f["median_s"]
        head = f"{f['requests']} requests, budgets 8..256, {f['generated_tokens']} tokens, batch {f['batch_size']}"
        rows.append(f"| f | mixed lengths ({head}): today's engine / engine | {m['today']:.2f} s | {m['engine']:.2f} s "
                    f"| {f['ratio_vs_today']:.2f}x | {check('f', f['ratio_vs_today'])} |")
        rows.append(f"| f | ... HF generate (batches by prompt length) / engine | {m['hf_generate']:.2f} s | "
                    f"{m['engine']:.2f} s | {f['ratio_vs_hf']:.2f}x | {check('f_hf', f['ratio_vs_hf'])} |")
        rows.append(f"| f | ... HF generate (batches by budget) / engine | "
                    f"{m['hf_generate_budget_sorted']:.2f} s | {m['engine']:.2f} s | "
                    f"{f['ratio_vs_hf_budget_sorted']:.2f}x | (info) |")
        rows.append(f"| f | ... fixed batches, rows leave (session 3) / engine (continuous batching) | "
                    f"{m['engine_fixed_batches']:.2f} s | {m['engine']:.2f} s | {f['ratio_vs_fixed_batches']:.2f}x "
                    f"| (info) |")
        st, ps = f["steps"], f["decode_s_per_step"]
        rows.append(f"| f | ... decode steps: today / engine (floor: a full batch, ceil(tokens / batch) = "
                    f"{f['floor_steps']}); fixed batches {st['engine_fixed_batches']['steps']} | "
                    f"{st['today']['steps']} | {st['engine']['steps']} | "
                    f"{st['today']['steps'] / st['engine']['steps']:.2f}x | (info) |")
        rows.append(f"| f | ... decode time per step: today / engine | {ps['today'] * 1e3:.1f} ms | "
                    f"{ps['engine'] * 1e3:.1f} ms | {ps['today'] / ps['engine']:.2f}x | (info) |")
        rows.append(f"| f | ... prefill time: engine (admissions of 1-2 samples) / today (4 batches of 8) | "
                    f"{st['engine']['prefill_s']:.2f} s | {st['today']['prefill_s']:.2f} s | "
                    f"{st['engine']['prefill_s'] / st['today']['prefill_s']:.2f}x | (info) |")
        rows.append(f"| f | ... today / best possible here (floor steps x engine's step cost + batched prefill) | "
                    f"{m['today']:.2f} s | {f['best_possible_s']:.2f} s | {f['best_possible_ratio_vs_today']:.2f}x "
                    f"| (bound) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated parts to run (a,b,c,d,e,f)")
    ap.add_argument("--f-requests", type=int, default=32, help="(f): number of requests")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per variant (medians reported)")
    ap.add_argument("--memory-repeats", type=int, default=1, help="subprocess runs per size for (d)")
    ap.add_argument("--no-tracemalloc", action="store_true", help="(d): skip the tracemalloc subprocesses")
    ap.add_argument("--memory-sizes", default="100,1000", help="(d): the two sample counts compared")
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    ap.add_argument("--workdir", help="keep checkpoints, data and outputs here (default: a temporary folder)")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--force-latent", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return 0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    torch = _torch()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="latentcheck-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "repeats": args.repeats, "load_before": load_avg()}
    try:
        s = load(workdir)
        env["model"] = s.source
        print(f"model: {s.source}\nthreads: {env['threads']}, cpus: {env['cpus']}, load average: {env['load_before']}",
              flush=True)
        steps = {"a": lambda: bench_a(s, args.repeats), "b": lambda: bench_b(s, args.repeats),
                 "c": lambda: bench_c(s, args.repeats, workdir),
                 "d": lambda: bench_d(s, args.memory_repeats, workdir, sizes=tuple(int(x) for x in args.memory_sizes.split(",")),
                                      tracemalloc=not args.no_tracemalloc),
                 "e": lambda: kv.bench_e(workdir, args.repeats, interleave=interleave, med=med),
                 "f": lambda: kv.bench_f(workdir, args.repeats, n=args.f_requests, interleave=interleave, med=med)}
        for p in parts:
            t0 = time.perf_counter()
            results[p] = steps[p]()
            results[p]["load_after"] = load_avg()
            print(f"({p}) done in {time.perf_counter() - t0:.0f} s, load average {results[p]['load_after']}",
                  flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    env["load_after"] = load_avg()
    print()
    print(table(results))
    if "e" in results:
        print(f"(e) identical tokens fork vs shared: {results['e']['identical_tokens']}; max |option log-prob diff|: "
              f"{results['e']['max_option_logprob_diff']:.1e}")
    if "f" in results:
        print(f"(f) identical outputs engine / today / HF generate: {results['f']['identical_outputs']}")
    for p in ("a", "c"):
        if p in results:
            r = results[p]
            extra = (f"identical tokens: naive {r['identical_tokens_naive']}, reference {r['identical_tokens_reference']}"
                     f"; max |option log-prob diff|: naive {r['max_option_logprob_diff_naive']:.1e}, reference "
                     f"{r['max_option_logprob_diff_reference']:.1e}") if p == "a" else \
                f"identical predictions: {r['identical_predictions']}"
            print(f"({p}) {extra}")
    print(f"load average before/after: {env['load_before']} / {env['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=1, default=float))
    bad = [p for p in ("a", "c", "e", "f") if p in results and not results[p]["ok"]]
    if bad:
        print(f"ANSWERS DIFFER in part(s) {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
