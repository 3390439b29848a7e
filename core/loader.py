"""The ONE model loader: every subcommand gets its model, processor and profile from ``load_model``.

GPU: bf16, ``device_map="auto"``, optional bitsandbytes 4-bit (NF4, double quant, bf16 compute) or 8-bit, vision tower
and lm_head kept unquantized; ``quant="auto"`` quantizes (4-bit) only when the bf16 weights would not fit the GPUs.
CPU: fp32, no quantization unless asked (then with a warning), and the vision patch embedding computed as one matmul
(core/fastpaths.py; recorded in ``LoadedModel.info["fast_paths"]``). Offline only: a local folder or a Hugging Face
id that is already in the local cache; nothing is downloaded. ``trust_remote_code`` stays off unless the user passes
it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from latentcheck.core.errors import ModelLoadError
from latentcheck.core.fastpaths import linear_patch_embedding
from latentcheck.core.profiles import (Profile, ResolvedTokens, detect_profile, get_profile, latent_profiles_matching,
                                      resolve_tokens)

log = logging.getLogger(__name__)

QUANT_CHOICES = ("auto", "none", "4bit", "8bit")
SKIP_QUANT_MODULES = ["model.visual", "lm_head"]  # transformers 5 anchors these at the module-name start


def _image_only_processor_class():
    from transformers import Qwen2_5_VLProcessor

    class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL processor without a video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    return Qwen2_5_VLImageOnlyProcessor


class _LazyProcessorClass:
    """Defers importing transformers until the processor class is first needed."""

    _cls = None

    def __call__(self, *args, **kwargs):
        if self._cls is None:
            type(self)._cls = _image_only_processor_class()
        return self._cls(*args, **kwargs)


ImageOnlyProcessor = _LazyProcessorClass()


@dataclass
class LoadedModel:
    """What the loader returns: the only way any command gets a model."""

    model: Any
    processor: Any
    tokenizer: Any
    profile: Profile
    tokens: ResolvedTokens
    model_id: str
    path: str
    device: str
    dtype: str
    quant: str
    weight_hash: str
    head: Any = None  # optional projection head applied to fed-back vectors (LVR lvr_head)
    info: dict = field(default_factory=dict)
    max_prompt_tokens: int | None = None  # longer prompts are error records (core/prompts.build_prompt)
    prompt_limit_source: str = ""  # where the limit comes from, for the error message

    def describe(self) -> dict[str, Any]:
        """Provenance fields for result files."""
        from dataclasses import asdict

        return {"id": self.model_id, "path": self.path, "weight_hash": self.weight_hash,
                "profile": self.profile.name, "profile_file": self.profile.path,
                "profile_kind": self.profile.kind, "protocol": self.profile.description,
                "decoding": asdict(self.profile.decoding),
                "system_prompt": self.profile.prompt.system, "device": self.device,
                "dtype": self.dtype, "quant": self.quant, "projection_head": self.head is not None,
                "max_prompt_tokens": self.max_prompt_tokens, **self.info}


ModelResolver = Callable[[str], "Path | None"]
MODEL_RESOLVERS: list[ModelResolver] = []


def register_model_resolver(resolver: ModelResolver) -> ModelResolver:
    """Register ``resolver(name) -> folder | None``, asked before the file system and the local HF cache.

    latentcheck.toy registers the zoo's names (``toy-*``) this way, so core never imports the toy zoo."""
    if resolver not in MODEL_RESOLVERS:
        MODEL_RESOLVERS.append(resolver)
    return resolver


def resolve_model_path(model: str) -> Path:
    """A registered name (the toy zoo's), a local folder, or a Hugging Face id already in the local cache. Never
    downloads."""
    for resolver in MODEL_RESOLVERS:
        path = resolver(model)
        if path is not None:
            return Path(path)
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"model folder {p} has no config.json (is it a Hugging Face checkpoint folder?)")
        return p
    if "/" in model and not model.startswith((".", "/")):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model, local_files_only=True))
        except Exception:  # noqa: BLE001 - any hub error means "not in the local cache"
            pass
    raise ModelLoadError(f"model {model!r} not found: not a local folder and not in the local Hugging Face cache "
                         "(latentcheck never downloads weights; fetch them on a machine with network access and "
                         "pass the folder)")


FINGERPRINT_CACHE_MIN_BYTES = 64 << 20  # smaller files are simply hashed again
CACHE_DIR_ENV = "LATENTCHECK_CACHE_DIR"


def _cache_dir() -> Path:
    """Where latentcheck caches derived data (``$LATENTCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/latentcheck``)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentcheck"


def file_sha256(path: Path, chunk: int = 16 << 20) -> str:
    """sha256 of a whole file, streamed in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def _cached_file_sha256(f: Path) -> str:
    """:func:`file_sha256`, cached by (absolute path, size, mtime in ns) for large files: a second load of the same
    15 GB checkpoint does not read it again, and a file that changes (size or mtime) is hashed again."""
    st = f.stat()
    if st.st_size < FINGERPRINT_CACHE_MIN_BYTES:
        return file_sha256(f)
    cache = _cache_dir() / "weight-sha256.json"
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = file_sha256(f)
    try:
        from latentcheck.core.records import write_json_atomic

        current = {k: v for k, v in known.items() if not k.startswith(f"{f.resolve()}|")} \
            if isinstance(known, dict) else {}
        write_json_atomic(cache, {**current, key: digest})
    except OSError:  # a read-only home: no cache, same result
        pass
    return digest


def weight_fingerprint(path: Path) -> str:
    """sha256 over the full content of every weight file (name, size and the file's own sha256), streamed; large
    files' digests are cached by path + size + mtime. Two checkpoints that differ anywhere differ here."""
    h = hashlib.sha256()
    files = sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin")))
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}:{_cached_file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} requested but CUDA is not available")
    return device


def _estimate_bf16_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(f.stat().st_size for f in path.glob("*.bin"))


def _quant_config(quant: str, device: str):
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # before bitsandbytes is imported
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"--quant {quant} needs bitsandbytes: pip install 'latentcheck[quant]'") from None
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANT_MODULES)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32 if device == "cpu" else torch.bfloat16,
                              llm_int8_skip_modules=SKIP_QUANT_MODULES)


def build_processor(path: Path, max_pixels: int | None = None, min_pixels: int | None = None):
    """Tokenizer + torchvision-free image processor + chat template, assembled explicitly (never a silent
    tokenizer-only fallback)."""
    from transformers import AutoTokenizer

    try:
        from transformers import Qwen2VLImageProcessorPil as ImageProc
    except ImportError:  # pragma: no cover
        from transformers import Qwen2VLImageProcessor as ImageProc
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {e}") from None
    kw = {}
    if max_pixels:
        kw["max_pixels"] = max_pixels
    if min_pixels:
        kw["min_pixels"] = min_pixels
    try:
        improc = ImageProc.from_pretrained(path, **kw)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the image processor from {path}: {e}") from None
    if kw:  # from_pretrained stores pixel limits in `size`; keep both views consistent
        improc.size = {"shortest_edge": kw.get("min_pixels", improc.size["shortest_edge"]),
                       "longest_edge": kw.get("max_pixels", improc.size["longest_edge"])}
        for k, v in kw.items():
            setattr(improc, k, v)
    template = tok.chat_template
    tpl_file = path / "chat_template.jinja"
    if template is None and tpl_file.exists():
        template = tpl_file.read_text()
    if template is None and (path / "chat_template.json").exists():
        template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
    proc = ImageOnlyProcessor(image_processor=improc, tokenizer=tok, chat_template=template)
    if getattr(proc, "image_processor", None) is None or getattr(proc, "tokenizer", None) is None:
        raise ModelLoadError("processor is missing its image processor or tokenizer")
    return proc


class TextProcessor:
    """The processor of a text-only causal LM: its tokenizer and chat template, no image processor."""

    image_processor = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, **kw):
        return self.tokenizer.apply_chat_template(messages, **kw)


def build_text_processor(path: Path) -> TextProcessor:
    """Tokenizer + chat template of a text-only checkpoint."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {e}") from None
    if tok.chat_template is None and (path / "chat_template.jinja").exists():
        tok.chat_template = (path / "chat_template.jinja").read_text()
    if tok.chat_template is None:
        raise ModelLoadError(f"text-only checkpoint {path} has no chat template")
    return TextProcessor(tok)


def _load_projection_head(path: Path, model, profile: Profile):
    """LVR's optional lvr_head (LayerNorm + Linear-GELU-Linear) read from the checkpoint's safetensors."""
    if profile.latent.projection == "none":
        return None
    from latentcheck.core.heads import load_lvr_head

    head = load_lvr_head(path, model)
    if head is None and profile.latent.projection == "lvr_head":
        raise ModelLoadError(f"profile {profile.name} asks for an lvr_head but {path} has no 'lvr_head.*' weights")
    return head


def load_model(model: str, profile: str | Profile | None = None, quant: str = "auto", device: str = "auto",
               trust_remote_code: bool = False, max_pixels: int | None = None,
               fast_paths: bool | None = None, dtype: str | None = None,
               max_prompt_tokens: int | None = None) -> LoadedModel:
    """Load a checkpoint, its processor and its profile (see module docstring).

    ``fast_paths`` (None = on CPU only): compute the vision patch embedding's stride == kernel Conv3d as one matrix
    product (core/fastpaths.py; ~7x faster on CPU, image features change at float-rounding level, <= 1e-5).
    ``max_prompt_tokens`` (None = the model's ``max_position_embeddings``): longer prompts become error records.
    """
    import torch

    if quant not in QUANT_CHOICES:
        raise ModelLoadError(f"--quant must be one of {', '.join(QUANT_CHOICES)}, got {quant!r}")
    path = resolve_model_path(model)
    dev = _pick_device(device)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot read the config of {path}: {e}") from None
    if quant == "auto":
        if dev == "cpu":
            quant = "none"
        else:
            total = sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
            quant = "4bit" if _estimate_bf16_bytes(path) > 0.8 * total else "none"
    kw: dict[str, Any] = {}
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise ModelLoadError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    dtype = getattr(torch, dtype) if dtype else (torch.float32 if dev == "cpu" else torch.bfloat16)
    if quant != "none":
        if dev == "cpu":
            log.warning("bitsandbytes quantization on CPU works but is slower than fp32; use it only to save memory")
            if quant == "8bit":
                dtype = torch.float16  # CPU int8 matmul casts to fp16 anyway
        kw["quantization_config"] = _quant_config(quant, dev)
    device_map: Any = "cpu" if dev == "cpu" else ("auto" if dev == "cuda" else {"": dev})
    # a config without a vision part is a text-only causal LM (Qwen2 / Qwen3): same engine, no images
    text_only = getattr(config, "vision_config", None) is None
    auto = AutoModelForCausalLM if text_only else AutoModelForImageTextToText
    try:
        m = auto.from_pretrained(path, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                                 **kw).eval()
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model weights from {path}: {e.__class__.__name__}: {e}") from None
    use_fast = dev == "cpu" if fast_paths is None else fast_paths
    fast = ["linear_patch_embedding"] if use_fast and not text_only and linear_patch_embedding(m) else []
    processor = build_text_processor(path) if text_only else build_processor(path, max_pixels=max_pixels)
    tok = processor.tokenizer
    prof = get_profile(profile) if isinstance(profile, str) else (profile or detect_profile(tok, config))
    if prof.processor and not max_pixels and not text_only:
        processor = build_processor(path, max_pixels=prof.processor.get("max_pixels"),
                                    min_pixels=prof.processor.get("min_pixels"))
    tokens = resolve_tokens(prof, tok, m)
    head = _load_projection_head(path, m, prof)
    warnings = []
    # a checkpoint that declares its own (non-latent) profile in its config is what its author says it is
    declared = getattr(config, "latentcheck_profile", None) == prof.name
    latent_like = {} if declared else latent_profiles_matching(prof, tok)
    if latent_like:
        toks = sorted({t for ts in latent_like.values() for t in ts})
        warnings.append(f"profile {prof.name} is {prof.kind}, but this checkpoint's tokenizer has latent tokens "
                        f"{toks} (built-in profiles {', '.join(sorted(latent_like))}): latent mode can never trigger "
                        "under this profile; pass --profile if the checkpoint reasons in latents")
    positions = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config,
                        "max_position_embeddings", None)
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ModelLoadError(f"--max-prompt-tokens must be >= 1, got {max_prompt_tokens}")
    if max_prompt_tokens is not None and (positions is None or max_prompt_tokens < positions):
        limit, source = max_prompt_tokens, "--max-prompt-tokens"
    else:
        limit, source = positions, f"the model's {positions} positions"
    return LoadedModel(model=m, processor=processor, tokenizer=tok, profile=prof, tokens=tokens, model_id=model,
                       path=str(path), device=dev, dtype=str(dtype).replace("torch.", ""), quant=quant,
                       weight_hash=weight_fingerprint(path), head=head,
                       info={"architecture": type(m).__name__, "text_only": text_only,
                             "max_pixels": None if text_only else processor.image_processor.size.get("longest_edge"),
                             "min_pixels": None if text_only else processor.image_processor.size.get("shortest_edge"),
                             "fast_paths": fast, "warnings": warnings},
                       max_prompt_tokens=limit, prompt_limit_source=source)


def wrap_model(model: Any, processor: Any = None, profile: str | Profile | None = None,
               model_id: str | None = None, max_pixels: int | None = None) -> LoadedModel:
    """A :class:`LoadedModel` around a Hugging Face model you already loaded (a notebook, a fine-tuning loop): the
    model is used as it is (device, dtype, any patches); the processor is rebuilt from the model's folder
    (``config._name_or_path``) unless given, the profile is detected from the tokenizer unless given. The weight
    fingerprint is the folder's (the in-memory weights may differ from it: ``info["in_memory"]`` says so)."""
    path = Path(str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "") or ""))
    text_only = getattr(model.config, "vision_config", None) is None
    if processor is None:
        if not path.is_dir():
            raise ModelLoadError("wrap_model: the model does not name a local folder (config._name_or_path = "
                                 f"{str(path)!r}); pass its processor")
        processor = build_text_processor(path) if text_only else build_processor(path, max_pixels=max_pixels)
    tok = processor.tokenizer
    prof = get_profile(profile) if isinstance(profile, str) else (profile or detect_profile(tok, model.config))
    if prof.processor and not max_pixels and not text_only and path.is_dir():
        processor = build_processor(path, max_pixels=prof.processor.get("max_pixels"),
                                    min_pixels=prof.processor.get("min_pixels"))
    first = next(model.parameters())
    device = str(first.device) if first.device.type != "cpu" else "cpu"
    return LoadedModel(model=model.eval(), processor=processor, tokenizer=tok, profile=prof,
                       tokens=resolve_tokens(prof, tok, model), model_id=model_id or str(path) or type(model).__name__,
                       path=str(path), device=device, dtype=str(first.dtype).replace("torch.", ""),
                       quant="none" if not getattr(model, "is_quantized", False) else "preloaded",
                       weight_hash=weight_fingerprint(path) if path.is_dir() else "in-memory",
                       head=_load_projection_head(path, model, prof) if path.is_dir() else None,
                       info={"architecture": type(model).__name__, "text_only": text_only, "in_memory": True})
