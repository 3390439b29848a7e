"""GPU benchmark: the engine on a random-weight model with the exact Qwen2.5-VL-7B configuration (nothing is
downloaded), bf16 and 4-bit (bitsandbytes NF4, language-model linears; skipped when bitsandbytes is missing).

    python benchmarks/gpu.py --out gpu-results            # one GPU, < 10 minutes
    python benchmarks/gpu.py --tiny --device cpu --out x   # the same script on a shrunken config (smoke run)

For 1k and 8k visual tokens per prompt it measures, per precision:
- prefill tokens/s (the engine's prefill incl. the vision tower) and decode tokens/s (generated tokens of all rows
  / the decode loop's time) for N = 1 and N = 9 conditions per sample;
- peak GPU memory (``torch.cuda.max_memory_allocated`` above the loaded model) and the engine's KV-cache bytes, for
  N = 1 vs 9 conditions, with the shared prefix (``Engine()``) and with today's fork (``shared_prefix=False``: the
  prompt's KV copied per condition);
- HF ``model.generate`` at the same batch size and length (N = 1): time, tokens/s, peak memory, and the fraction of
  generated tokens equal to the engine's.
Writes ``results.json`` and ``results.md`` (a markdown table) into ``--out``. Needs torch, transformers and
accelerate only (the project's own imports, numpy and pydantic, come with them: transformers needs numpy, and
huggingface-hub 2.x needs typer, which needs pydantic); bitsandbytes optional.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Qwen/Qwen2.5-VL-7B-Instruct config.json (the values that shape compute and memory)
QWEN25_VL_7B = {
    "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                 hidden_act="silu", tie_word_embeddings=False, use_sliding_window=False, sliding_window=32768,
                 max_window_layers=28, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=3584,
                   patch_size=14, spatial_merge_size=2, spatial_patch_size=14, temporal_patch_size=2,
                   window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
    "ids": dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                vision_end_token_id=151653, vision_token_id=151654),
}
TINY = {  # --tiny: the same layout shrunk (CPU smoke runs)
    "text": dict(QWEN25_VL_7B["text"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
    "vision": dict(QWEN25_VL_7B["vision"], depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                   out_hidden_size=64, fullatt_block_indexes=[1]),
    "ids": QWEN25_VL_7B["ids"],
}
SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
           "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}


def import_latentcheck():
    """Import ``latentcheck`` from THIS checkout (its root is the package), installed or not."""
    d = Path(tempfile.mkdtemp(prefix="lc-import-"))
    (d / "latentcheck").symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(d))


def build_config(spec: dict):
    from transformers import Qwen2_5_VLConfig

    cfg = Qwen2_5_VLConfig(text_config=dict(spec["text"]), vision_config=dict(spec["vision"]), **spec["ids"])
    cfg.text_config._attn_implementation = "sdpa"
    cfg._attn_implementation = "sdpa"
    return cfg


def build_tokenizer(vocab_size: int):
    """A real word-level tokenizer over the full id range (every id decodes to a word; the special tokens sit at
    Qwen2.5-VL's ids), so the engine can resolve tokens and decode without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    for s, i in SPECIAL.items():
        vocab.pop(f"w{i}", None)
        vocab[s] = i
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=list(SPECIAL))


def build_model(spec: dict, device: str, dtype, quant: str):
    """Random weights (seeded) in the exact configuration; ``quant='4bit'``: the language model's linear layers
    replaced by bitsandbytes NF4 layers (vision tower and lm_head kept, as the project's loader does)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = build_config(spec)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    model.eval()
    if quant == "4bit":
        import bitsandbytes as bnb

        lm = model.model.language_model
        for name, mod in list(lm.named_modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=dtype, quant_type="nf4", device="cpu")
                    q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                    if child.bias is not None:
                        q.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                    setattr(mod, child_name, q.to(device))
                    del child
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return model


def loaded_model(model, tokenizer, device: str, dtype: str, quant: str):
    """The project's LoadedModel around the random model (plain Qwen2.5-VL profile; EOS disabled so every run
    generates exactly its budget)."""
    from latentcheck.core.loader import LoadedModel
    from latentcheck.core.profiles import get_profile, resolve_tokens

    prof = get_profile("qwen2_5_vl")
    tokens = resolve_tokens(prof, tokenizer, model)
    tokens.eos = []
    return LoadedModel(model=model, processor=None, tokenizer=tokenizer, profile=prof, tokens=tokens,
                       model_id="random-qwen2.5-vl-7b-config", path="", device=device, dtype=dtype, quant=quant,
                       weight_hash="random-seed-0")


def make_prompt(key: str, visual_tokens: int, spec: dict, seed: int, device: str):
    """A prompt of ``visual_tokens`` merged image tokens (grid 1 x 2a x 2b patches, a*b = visual_tokens) with random
    pixel values and ~40 text tokens around it."""
    import torch

    from latentcheck.core.prompts import Prompt

    a = 1 << ((visual_tokens.bit_length() - 1) // 2)
    b = visual_tokens // a
    g = torch.Generator().manual_seed(seed)
    v = spec["vision"]
    patch_dim = v["in_chans"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    pix = torch.randn((2 * a) * (2 * b), patch_dim, generator=g)
    ids_text = torch.randint(1000, 100000, (40,), generator=g)
    im = SPECIAL
    ids = torch.cat([torch.tensor([im["<|im_start|>"]]), ids_text[:10], torch.tensor([im["<|vision_start|>"]]),
                     torch.full((a * b,), im["<|image_pad|>"]), torch.tensor([im["<|vision_end|>"]]), ids_text[10:],
                     torch.tensor([im["<|im_end|>"], im["<|im_start|>"]])])
    image_mask = ids == im["<|image_pad|>"]
    qmask = torch.zeros_like(image_mask)
    qmask[12 + a * b:12 + a * b + 30] = True
    return Prompt(key=key, input_ids=ids, pixel_values=pix, image_grid_thw=torch.tensor([[1, 2 * a, 2 * b]]),
                  image_mask=image_mask, question_mask=qmask)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> int:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def _peak(device: str, base: int) -> float:
    import torch

    return (torch.cuda.max_memory_allocated() - base) / 2 ** 30 if device.startswith("cuda") else float("nan")


def run_engine(lm, prompts, n_conditions: int, max_new: int, shared: bool | None, device: str) -> dict:
    import torch

    from latentcheck.core.engine import Condition, Engine, Request

    eng = Engine(lm) if shared is None else Engine(lm, shared_prefix=shared, retire_rows=shared)
    reqs = [Request(p, [Condition(f"c{i}") for i in range(n_conditions)], max_new_tokens=max_new) for p in prompts]
    base = _peak_reset(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        traces = eng.generate(reqs, batch_size=len(prompts))
    _sync(device)
    wall = time.perf_counter() - t0
    t = traces[0][0].timing
    rows = len(prompts) * n_conditions
    gen = sum(len(tr.token_ids) for row in traces for tr in row)
    prompt_tokens = sum(p.length for p in prompts)
    return {"wall_s": wall, "prefill_s": t["batch_prefill_s"], "decode_s": t["batch_decode_s"], "rows": rows,
            "generated_tokens": gen, "prefill_tok_per_s": prompt_tokens / t["batch_prefill_s"],
            "decode_tok_per_s": gen / max(t["batch_decode_s"], 1e-9), "peak_gib": _peak(device, base),
            "kv_cache_gib": t["kv_cache_bytes"] / 2 ** 30, "tokens": [tr.token_ids for tr in (r[0] for r in traces)]}


def run_hf(model, prompts, max_new: int, device: str, pad: int) -> dict:
    """HF generate on the same prompts (left-padded batch, greedy, exactly ``max_new`` tokens)."""
    import torch

    B = len(prompts)
    L = max(p.length for p in prompts)
    ids = torch.full((B, L), pad, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - p.length:] = p.input_ids
        att[i, L - p.length:] = 1
    dt = next(model.model.visual.parameters()).dtype
    pix = torch.cat([p.pixel_values for p in prompts]).to(device, dt)
    grid = torch.cat([p.image_grid_thw for p in prompts]).to(device)
    types = (ids == SPECIAL["<|image_pad|>"]).long()
    base = _peak_reset(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), mm_token_type_ids=types.to(device),
                             pixel_values=pix, image_grid_thw=grid, max_new_tokens=max_new, min_new_tokens=max_new,
                             do_sample=False, pad_token_id=pad)
    _sync(device)
    wall = time.perf_counter() - t0
    gen = out[:, L:].tolist()
    return {"wall_s": wall, "generated_tokens": B * max_new, "tok_per_s": B * max_new / wall,
            "peak_gib": _peak(device, base), "tokens": gen}


def measure(spec: dict, device: str, quant: str, sizes: list[tuple[int, int]], max_new: int) -> dict:
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    model = build_model(spec, device, dtype, quant)
    tok = build_tokenizer(spec["text"]["vocab_size"])
    lm = loaded_model(model, tok, device, str(dtype).replace("torch.", ""), quant)
    out: dict[str, Any] = {"build_s": time.perf_counter() - t0,
                           "model_gib": (torch.cuda.memory_allocated() / 2 ** 30) if device.startswith("cuda")
                           else None, "runs": {}}
    for vis, batch in sizes:
        prompts = [make_prompt(f"p{i}", vis, spec, i, device) for i in range(batch)]
        run_engine(lm, prompts[:1], 1, 2, None, device)  # warm-up (kernels, allocator)
        r = {"visual_tokens": vis, "batch": batch, "prompt_tokens": prompts[0].length}
        r["engine_n1"] = run_engine(lm, prompts, 1, max_new, None, device)
        r["engine_n9"] = run_engine(lm, prompts, 9, max_new, None, device)
        r["fork_n9"] = run_engine(lm, prompts, 9, max_new, False, device)
        r["hf_generate_n1"] = run_hf(model, prompts, max_new, device, lm.tokens.pad)
        eng_t, hf_t = r["engine_n1"].pop("tokens"), r["hf_generate_n1"].pop("tokens")
        same = sum(a == b for x, y in zip(eng_t, hf_t) for a, b in zip(x, y))
        r["hf_token_agreement"] = same / max(1, sum(len(x) for x in eng_t))
        n9, f9 = r["engine_n9"].pop("tokens"), r["fork_n9"].pop("tokens")
        r["fork_vs_shared_identical"] = n9 == f9
        for k in ("engine_n9", "fork_n9"):
            r[k].pop("tokens", None)
        out["runs"][str(vis)] = r
        print(f"[{quant}] {vis} visual tokens x {batch}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    del model, lm
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def table(res: dict) -> str:
    rows = ["| precision | visual tokens x batch | prefill tok/s | decode tok/s N=1 | decode tok/s N=9 | "
            "HF generate tok/s (N=1) | engine / HF | peak GiB N=1 | peak GiB N=9 shared | peak GiB N=9 fork | "
            "KV MiB N=1 / N=9 shared / N=9 fork | tokens = HF |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for q, m in res["precisions"].items():
        if "skipped" in m:
            rows.append(f"| {q} | skipped: {m['skipped']} |" + " |" * 10)
            continue
        for vis, r in m["runs"].items():
            e1, e9, f9, hf = r["engine_n1"], r["engine_n9"], r["fork_n9"], r["hf_generate_n1"]
            ratio = (e1["generated_tokens"] / e1["wall_s"]) / hf["tok_per_s"]
            rows.append(f"| {q} | {vis} x {r['batch']} | {e1['prefill_tok_per_s']:.0f} | {e1['decode_tok_per_s']:.0f} | "
                        f"{e9['decode_tok_per_s']:.0f} | {hf['tok_per_s']:.0f} | {ratio:.2f}x | {e1['peak_gib']:.2f} | "
                        f"{e9['peak_gib']:.2f} | {f9['peak_gib']:.2f} | {e1['kv_cache_gib'] * 1024:.1f} / "
                        f"{e9['kv_cache_gib'] * 1024:.1f} / {f9['kv_cache_gib'] * 1024:.1f} | {r['hf_token_agreement']:.0%} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-results", help="folder for results.json and results.md")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="shrunken config and sizes (smoke run)")
    ap.add_argument("--quant", default="bf16,4bit", help="comma-separated: bf16, 4bit")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sizes", help="visual tokens x batch, comma-separated (default 1024x8,8192x2; --tiny 64x2,256x2)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_latentcheck()
    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny --device cpu for a smoke run", file=sys.stderr)
        return 2
    spec = TINY if args.tiny else QWEN25_VL_7B
    sizes = [(64, 2), (256, 2)] if args.tiny else [(1024, 8), (8192, 2)]
    if args.sizes:
        sizes = [tuple(int(v) for v in x.lower().split("x")) for x in args.sizes.split(",")]
    max_new = min(args.max_new_tokens, 8) if args.tiny else args.max_new_tokens
    res: dict[str, Any] = {"env": {"torch": torch.__version__, "transformers": transformers.__version__,
                                   "python": platform.python_version(), "device": args.device,
                                   "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                                   "dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
                                   "config": "tiny" if args.tiny else "Qwen2.5-VL-7B", "max_new_tokens": max_new,
                                   "sizes": sizes},
                           "precisions": {}}
    t0 = time.perf_counter()
    for q in [x.strip() for x in args.quant.split(",") if x.strip()]:
        if q == "4bit":
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                res["precisions"][q] = {"skipped": "bitsandbytes is not installed"}
                continue
            if not args.device.startswith("cuda"):
                res["precisions"][q] = {"skipped": "4-bit needs a CUDA device"}
                continue
        res["precisions"][q] = measure(spec, args.device, q if q == "4bit" else "none", sizes, max_new)
    res["total_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    (out / "results.md").write_text(md + "\n")
    print(md)
    print(f"total {res['total_s']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
