"""The one loader: dtype/quantization choices, offline errors, profile resolution."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from latentcheck.core.errors import ModelLoadError, ProfileError
from latentcheck.core.loader import load_model


def test_cpu_default_is_fp32_unquantized(load_tiny):
    lm = load_tiny("mirage", "mirage")
    assert lm.device == "cpu" and lm.quant == "none" and lm.dtype == "float32"
    assert next(lm.model.parameters()).dtype == torch.float32
    assert type(lm.processor).__name__ == "Qwen2_5_VLImageOnlyProcessor"
    assert lm.tokens.start == lm.tokenizer.convert_tokens_to_ids("<|latent_start|>")


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_bitsandbytes_loads_on_cpu_when_asked(tiny_checkpoint, quant, caplog):
    pytest.importorskip("bitsandbytes")
    path = tiny_checkpoint("mirage", "mirage")
    with caplog.at_level("WARNING"):
        lm = load_model(str(path), quant=quant)
    names = {type(m).__name__ for m in lm.model.modules()}
    assert ("Linear8bitLt" if quant == "8bit" else "Linear4bit") in names
    assert "slower than fp32" in caplog.text
    # the vision tower and lm_head stay unquantized
    assert type(lm.model.lm_head).__name__ == "Linear"
    assert all(type(m).__name__ == "Linear" for n, m in lm.model.named_modules()
               if n.startswith("model.visual") and "Linear" in type(m).__name__)


def test_auto_detects_profile_from_tokens(load_tiny):
    assert load_tiny("monet", None).profile.name == "monet"
    assert load_tiny("lvr", None).profile.name == "lvr"
    assert load_tiny("plain", None).profile.name == "qwen2_5_vl"


def test_missing_checkpoint_and_missing_token_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("some-org/some-model-not-in-cache")
    with pytest.raises(ProfileError, match=r"<\|lvr_start\|>"):
        load_model(str(tiny_checkpoint("plain", "qwen2_5_vl")), profile="lvr")


def test_cli_errors_are_one_line_with_nonzero_exit(tiny_checkpoint, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "q?"}) + "\n")
    for args in (["perturb-latent", "--model", str(tmp_path / "missing"), "--data", str(data)],
                 ["perturb-latent", "--model", str(tiny_checkpoint("plain", "qwen2_5_vl")), "--profile", "lvr",
                  "--data", str(data)]):
        r = subprocess.run([sys.executable, "-m", "latentcheck", *args, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and "error:" in r.stderr
        assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 3


def test_user_profile_file(tiny_checkpoint, tmp_path):
    from latentcheck.core.profiles import get_profile

    src = get_profile("mirage").path
    text = open(src).read().replace('name = "mirage"', 'name = "my-mirage"').replace("k = 8", "k = 3")
    f = tmp_path / "mine.toml"
    f.write_text(text)
    lm = load_model(str(tiny_checkpoint("mirage", "mirage")), profile=str(f))
    assert lm.profile.name == "my-mirage" and lm.profile.latent.k == 3
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('entry = "after_start"', 'entry = "sideways"'))
    with pytest.raises(ProfileError, match=r"\[latent\] entry"):
        get_profile(str(bad))


def test_lvr_projection_head_is_loaded_and_applied_to_fed_vectors(tiny_checkpoint, tmp_path):
    """LVR's optional lvr_head (LayerNorm + Linear-GELU-Linear) comes from the checkpoint and transforms every fed
    vector: latent 0 with the head == head(latent 0 of the same weights without it)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from latentcheck.core.engine import Engine, Request
    from latentcheck.core.prompts import build_prompt

    from ..conftest import make_image  # noqa: TID252

    src = tiny_checkpoint("lvr", "lvr")
    with_head = tmp_path / "with-head"
    shutil.copytree(src, with_head)
    sd = load_file(str(with_head / "model.safetensors"))
    H = sd["lm_head.weight"].shape[1]
    g = torch.Generator().manual_seed(0)
    sd.update({"lvr_head.ln.weight": 1 + 0.1 * torch.randn(H, generator=g), "lvr_head.ln.bias": torch.zeros(H),
               "lvr_head.mlp.0.weight": 0.05 * torch.randn(2 * H, H, generator=g),
               "lvr_head.mlp.0.bias": torch.zeros(2 * H),
               "lvr_head.mlp.2.weight": 0.05 * torch.randn(H, 2 * H, generator=g), "lvr_head.mlp.2.bias": torch.zeros(H)})
    save_file(sd, str(with_head / "model.safetensors"), metadata={"format": "pt"})
    lm_h = load_model(str(with_head), profile="lvr")
    lm_0 = load_model(str(src), profile="lvr")
    assert lm_h.head is not None and lm_0.head is None
    outs = []
    for lm in (lm_h, lm_0):
        p = build_prompt(lm, "k", "What colour is the circle?", make_image(3))
        outs.append(Engine(lm).run([Request(p, force_latent=True, max_new_tokens=6)])[0][0])
    with torch.no_grad():
        expect = lm_h.head(torch.as_tensor(outs[1].latents[0])[None])[0].numpy()
    assert outs[0].latent_count == outs[1].latent_count > 0
    assert abs(outs[0].latents[0] - expect).max() < 1e-5
    assert abs(outs[0].latents[0] - outs[1].latents[0]).max() > 1e-3
    # a profile that demands the head fails clearly on a checkpoint without one
    from latentcheck.core.profiles import get_profile

    prof = get_profile("lvr")
    prof.latent.projection = "lvr_head"
    with pytest.raises(ModelLoadError, match="lvr_head"):
        load_model(str(src), profile=prof)
