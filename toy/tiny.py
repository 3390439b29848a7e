"""Tiny Qwen2.5-VL-class checkpoints built offline (same transformers class as the real 7B models).

Used by the tests (random weights, one family of token strings per real model) and by the toy zoo (trained weights).
Recipe: cpu-notes.md sections 2-3 (locally trained byte-level BPE, Qwen chat template, PIL image processor).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Token strings of each real model family (latent-models.md table in s0), in the authors' order.
FAMILY_TOKENS = {
    "mirage": ["<|latent_pad|>", "<|latent_start|>", "<|latent_end|>"],
    "monet": ["<abs_vis_token_pad>", "<abs_vis_token>", "</abs_vis_token>", "<observation>", "</observation>"],
    "lvr": ["<|lvr_start|>", "<|lvr|>", "<|lvr_latent_end|>", "<|lvr_end|>"],
    "plain": [],
    # the toy zoo: Mirage-style latent tokens plus text-imagination markers
    "toy": ["<|latent_pad|>", "<|latent_start|>", "<|latent_end|>", "<imagine>", "</imagine>"],
}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

SIZES = {
    "tiny": dict(hidden=128, layers=2, heads=4, kv=2, inter=256, mrope=[4, 6, 6], vdepth=2, vhidden=64, vheads=4,
                 vinter=128, full=[1]),
    "small": dict(hidden=128, layers=4, heads=4, kv=2, inter=384, mrope=[4, 6, 6], vdepth=2, vhidden=96, vheads=4,
                  vinter=192, full=[1]),
    "medium": dict(hidden=256, layers=4, heads=4, kv=2, inter=512, mrope=[8, 12, 12], vdepth=4, vhidden=128,
                   vheads=4, vinter=256, full=[1, 3]),
}

_WORDS = ("the a an is of in on at to what which where colour color shape red green blue yellow circle square "
          "triangle cross top bottom left right answer option options question image zoom zooming into region "
          "small large object with and or not it this that there are be was please select correct letter from "
          "given choices directly put your final within boxed think see look view shows show highlighted "
          "I will generate a zoomed-in view The answer best describe describes number how many A B C D E").split()


def _corpus(seed: int = 0, n_sentences: int = 6000, n_ascii: int = 1500) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))))
    for c in ("red", "green", "blue", "yellow"):
        for s in ("circle", "square", "triangle", "cross"):
            for q in ("top left", "top right", "bottom left", "bottom right"):
                lines.append(f"What colour is the {s}?\nA. red\nB. green\nC. blue\nD. yellow")
                lines.append(f"Where is the {s}?\nA. top left\nB. top right\nC. bottom left\nD. bottom right")
                lines.append(f"the {s} is {c}, in the {q}")
    printable = [chr(i) for i in range(32, 127)] + ["\n"]
    for _ in range(n_ascii):
        lines.append("".join(rng.choice(printable) for _ in range(rng.randint(5, 40))))
    return lines


def build_tokenizer(family: str = "toy", vocab_size: int = 2048, seed: int = 0):
    """A byte-level BPE tokenizer with Qwen's special tokens plus one model family's token strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = BASE_SPECIAL + FAMILY_TOKENS[family]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     additional_special_tokens=special[1:], model_max_length=4096,
                                     padding_side="left", clean_up_tokenization_spaces=False)
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_config(tok, size: str = "tiny"):
    """A Qwen2_5_VLConfig of the given tiny size whose special ids are read from the tokenizer."""
    from transformers import Qwen2_5_VLConfig

    s = SIZES[size]
    vocab = tok.get_vocab()
    ids = {t: vocab[t] for t in BASE_SPECIAL}
    vocab_size = (len(tok) + 63) // 64 * 64
    text_config = dict(
        vocab_size=vocab_size, hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
        max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": s["mrope"]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        use_sliding_window=False)
    vision_config = dict(
        depth=s["vdepth"], hidden_size=s["vhidden"], num_heads=s["vheads"], intermediate_size=s["vinter"],
        hidden_act="silu", in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        window_size=56, fullatt_block_indexes=s["full"], out_hidden_size=s["hidden"], tokens_per_second=2)
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


ARCHS = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen2", "qwen3")  # the Qwen families the one engine runs
TEXT_ONLY_ARCHS = ("qwen2", "qwen3")


def build_arch_config(tok, arch: str = "qwen2_5_vl", size: str = "tiny"):
    """A tiny config of one Qwen family (same transformers classes as the real checkpoints): Qwen2.5-VL (as
    :func:`build_config`), Qwen2-VL, Qwen3-VL (DeepStack features injected after decoder layers 0 and 1) or the
    text-only Qwen2 / Qwen3 causal LMs. Special ids are read from the tokenizer."""
    from transformers import Qwen2Config, Qwen2VLConfig, Qwen3Config, Qwen3VLConfig

    if arch == "qwen2_5_vl":
        return build_config(tok, size)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    s = SIZES[size]
    vocab = tok.get_vocab()
    ids = {t: vocab[t] for t in BASE_SPECIAL}
    vocab_size = (len(tok) + 63) // 64 * 64
    text = dict(vocab_size=vocab_size, hidden_size=s["hidden"], intermediate_size=s["inter"],
                num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if arch in ("qwen2", "qwen3"):
        cls = Qwen2Config if arch == "qwen2" else Qwen3Config
        return cls(**text, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                   tie_word_embeddings=False, use_sliding_window=False)
    if arch == "qwen2_vl":
        vision = dict(depth=s["vdepth"], embed_dim=s["vhidden"], hidden_size=s["hidden"], mlp_ratio=2,
                      num_heads=s["vheads"], in_channels=3, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": s["mrope"]}
        return Qwen2VLConfig(text_config=dict(text, use_sliding_window=False), vision_config=vision,
                             tie_word_embeddings=False, **special)
    head_dim = s["hidden"] // s["heads"]
    half = head_dim // 2
    sec = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]  # Qwen3-VL's 24/20/20 split, scaled
    text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                    "mrope_section": sec, "mrope_interleaved": True})
    vision = dict(depth=s["vdepth"], hidden_size=s["vhidden"], intermediate_size=s["vinter"], num_heads=s["vheads"],
                  in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  out_hidden_size=s["hidden"], num_position_embeddings=64,
                  deepstack_visual_indexes=list(range(min(2, s["vdepth"]))))
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **special)


def image_processor(min_pixels: int = 56 * 56, max_pixels: int = 224 * 224, patch_size: int = 14):
    """The torchvision-free Qwen2-VL image processor."""
    try:
        from transformers import Qwen2VLImageProcessorPil as ImageProc
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import Qwen2VLImageProcessor as ImageProc
    return ImageProc(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=2,
                     temporal_patch_size=2)


def build_tiny_checkpoint(out_dir: str | Path, family: str = "toy", size: str = "tiny", seed: int = 0,
                          profile: str | None = None, tokenizer=None, embed_std: float | None = None,
                          arch: str = "qwen2_5_vl") -> Path:
    """Build a random-weight tiny checkpoint folder (model, tokenizer, image processor, template) of one Qwen
    family (``arch``, see :func:`build_arch_config`; Qwen2.5-VL by default).

    ``profile`` is stored in config.json as ``latentcheck_profile`` so the loader can pick it without guessing.
    ``embed_std`` rescales token embeddings (random-init embeddings are ~50x smaller than post-norm hiddens).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

    from latentcheck.core.loader import ImageOnlyProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else build_tokenizer(family)
    cfg = build_arch_config(tok, arch, size)
    if profile:
        cfg.latentcheck_profile = profile
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if arch in TEXT_ONLY_ARCHS else AutoModelForImageTextToText
    model = auto.from_config(cfg).eval()
    if embed_std is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, embed_std)
    vocab = tok.get_vocab()
    model.generation_config = GenerationConfig(
        eos_token_id=[vocab["<|im_end|>"], vocab["<|endoftext|>"]], pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=vocab["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out)
    if arch not in TEXT_ONLY_ARCHS:
        ip = image_processor(patch_size=16, min_pixels=64 * 64, max_pixels=256 * 256) if arch == "qwen3_vl" \
            else image_processor()
        ImageOnlyProcessor(image_processor=ip, tokenizer=tok, chat_template=CHAT_TEMPLATE).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "latentcheck.json").write_text(json.dumps({"family": family, "size": size, "seed": seed, "arch": arch}))
    return out
