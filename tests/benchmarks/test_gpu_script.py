"""benchmarks/gpu.py on a shrunken config on CPU: the script builds the exact Qwen2.5-VL layout from its config
without any download, runs every measurement and writes its JSON and markdown table; the engine's tokens equal HF
generate's and the shared prefix's equal the copying fork's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_run_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("lc_gpu_bench", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    cfg = gpu.build_config(gpu.QWEN25_VL_7B)  # the real 7B configuration builds (config only, no weights)
    assert cfg.text_config.num_hidden_layers == 28 and cfg.vision_config.depth == 32
    assert cfg.text_config.num_key_value_heads == 4 and cfg.image_token_id == 151655
    rc = gpu.main(["--tiny", "--device", "cpu", "--sizes", "64x2", "--max-new-tokens", "4", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    run = res["precisions"]["bf16"]["runs"]["64"]
    assert run["hf_token_agreement"] == 1.0 and run["fork_vs_shared_identical"]
    assert run["engine_n9"]["kv_cache_gib"] < run["fork_n9"]["kv_cache_gib"]
    assert run["engine_n1"]["generated_tokens"] == 2 * 4 and run["engine_n9"]["rows"] == 18
    assert "skipped" in res["precisions"]["4bit"]  # no CUDA here
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("| precision |") and "| bf16 | 64 x 2 |" in md
