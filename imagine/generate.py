"""Model passes of CapImagine data construction and text interventions, on the ONE backend layer (core/backends.py).

``BackendGenerator(backend, params)`` implements build_data's ``TextGenerator`` protocol (and intervene's corrupter
input) over any ``core.backends`` backend: ``local`` (a checkpoint through the one loader, decoded in batches by the
one engine) or ``openai`` (an OpenAI-compatible endpoint -- vLLM / SGLang serving Qwen3-VL-4B or Qwen3-32B, a hosted
model, ``transformers serve`` -- with request concurrency and retries), optionally behind the persistent response
cache (a rerun of the same requests makes no calls). Each ``GenRequest`` (images + prompt text) becomes one
``ChatPrompt``; a request the backend could not answer comes back as a ``GenerationFailure`` (the pass records it as an
error of that sample and goes on). ``build_data_with_models`` wires captioner / refiner / judge into
``imagine.build_data.build_data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from latentcheck.core.errors import LatentcheckError

DEFAULT_REMOTE_MAX_NEW_TOKENS = 512


@dataclass
class GenerationFailure:
    """A request the backend could not answer (its ``Completion.error``); ``part`` says which part of the request
    was at fault (``"text"``, ``"image"``) or None when the input is not to blame (a server error)."""

    error: str
    part: str | None = None

    def __str__(self) -> str:
        return f"generation failed: {self.error}"


@dataclass
class BackendSpec:
    """Where one role's model runs: a local checkpoint (``url`` None) or a served model name at ``url``."""

    model: str
    url: str | None = None
    key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 3
    cache: Any = True  # a path, True (the default cache file) or None (no cache)
    load_kw: dict = field(default_factory=dict)
    batch_size: int = 8

    @property
    def kind(self) -> str:
        return "openai" if self.url else "local"


class BackendGenerator:
    """A ``TextGenerator`` over a ``core.backends`` backend (greedy unless ``temperature`` > 0)."""

    def __init__(self, backend, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 system: str | None = None):
        from latentcheck.core.backends import GenParams

        self.backend = backend
        self.params = GenParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        self.system = system
        self.calls = 0

    @property
    def identity(self) -> dict:
        return dict(self.backend.identity)

    @property
    def stats(self) -> dict:
        return dict(self.backend.stats)

    def generate(self, requests: list) -> list[str | GenerationFailure]:
        from latentcheck.core.backends import ChatPrompt

        if not requests:
            return []
        prompts = []
        for req in requests:
            prompts.append(ChatPrompt(text=req.prompt, system=self.system, images=tuple(req.images or ()),
                                      key=f"gen-{self.calls}"))
            self.calls += 1
        outs = self.backend.generate(prompts, self.params)
        return [o.text if o.error is None and o.text is not None
                else GenerationFailure(o.error or "no reply", getattr(o, "error_part", None)) for o in outs]


def make_generator(spec: BackendSpec, max_new_tokens: int | None = None, loaded: dict | None = None,
                   system: str | None = None) -> BackendGenerator:
    """A generator for one role. Local models named twice are loaded once (``loaded`` maps resolved names to
    ``LoadedModel``); ``max_new_tokens`` None = the local model's profile default, or 512 for a served model."""
    from latentcheck.core.backends import make_backend

    if spec.kind == "local":
        from latentcheck.core.loader import load_model

        loaded = {} if loaded is None else loaded
        p = Path(spec.model).expanduser()
        key = str(p.resolve()) if p.exists() else spec.model
        if key not in loaded:
            loaded[key] = load_model(spec.model, **spec.load_kw)
        lm = loaded[key]
        backend = make_backend("local", lm, batch_size=spec.batch_size, cache=spec.cache)
        n = max_new_tokens or lm.profile.decoding.max_new_tokens
    else:
        backend = make_backend("openai", spec.model, base_url=spec.url, key_env=spec.key_env,
                               concurrency=spec.concurrency, max_retries=spec.max_retries, cache=spec.cache)
        n = max_new_tokens or DEFAULT_REMOTE_MAX_NEW_TOKENS
    return BackendGenerator(backend, n, system=system)


def build_data_with_models(input_path: str | os.PathLike, out_path: str | os.PathLike, fmt: str = "auto",
                           captioner: str = "model", caption: BackendSpec | None = None,
                           refine: BackendSpec | None = None, judge: BackendSpec | None = None,
                           prompts_dir: str | os.PathLike | None = None, resume: bool = False,
                           limit: int | None = None, kind: str | None = None,
                           dataset_root: str | os.PathLike | None = None,
                           markers: Sequence[str] | None = None, batch_size: int = 8,
                           max_new_tokens: int | None = None, chat_json: str | os.PathLike | None = None,
                           retry_errors: bool = False) -> dict:
    """Run ``build_data`` with a model captioner (the paper's setting) or the captions stored with the data
    (``captioner="metadata"``), and optional model refiner / judge, each on its backend (``BackendSpec``). Returns
    build_data's counts plus, per role, the backend identity and call statistics (``calls``, ``cache_hits``,
    ``errors``). ``chat_json``: also write the kept records as Monet-style chat JSON there."""
    from latentcheck.imagine.build_data import (DEFAULT_MARKERS, MetadataCaptioner, ModelCaptioner, ModelJudge,
                                                ModelRefiner, PromptSet, build_data, write_monet_chat)

    if not Path(input_path).is_file():
        raise LatentcheckError(f"input file not found: {input_path}")
    if captioner not in ("metadata", "model"):
        raise LatentcheckError(f"--captioner must be 'metadata' or 'model', got {captioner!r}")
    if captioner == "model" and caption is None:
        raise LatentcheckError("--captioner model needs a captioning model (-m/--model: a local checkpoint, or a "
                               "served model's name with --url); --captioner metadata reuses the captions stored "
                               "with the data (or the <observation> text)")
    markers = tuple(markers) if markers is not None else DEFAULT_MARKERS
    prompts = PromptSet.load(prompts_dir) if (prompts_dir or captioner == "model" or refine or judge) else None
    loaded: dict[str, Any] = {}
    gens = {role: make_generator(spec, max_new_tokens, loaded) for role, spec in
            (("captioner", caption if captioner == "model" else None), ("refiner", refine), ("judge", judge))
            if spec is not None}
    cap = ModelCaptioner(gens["captioner"], prompts, batch_size, markers) if "captioner" in gens \
        else MetadataCaptioner()
    ref = ModelRefiner(gens["refiner"], prompts, batch_size, markers) if "refiner" in gens else None
    jud = ModelJudge(gens["judge"], prompts, batch_size, markers) if "judge" in gens else None
    counts = build_data(input_path, fmt, out_path, cap, refiner=ref, judge=jud, resume=resume, limit=limit,
                        markers=markers, kind=kind, dataset_root=dataset_root, retry_errors=retry_errors)
    counts["models"] = {"captioner": "metadata" if captioner == "metadata" else gens["captioner"].identity,
                        "refiner": gens["refiner"].identity if "refiner" in gens else None,
                        "judge": gens["judge"].identity if "judge" in gens else None}
    counts["calls"] = {role: g.stats for role, g in gens.items()}
    counts["prompts"] = dict(prompts.sources) if prompts is not None else None
    if chat_json is not None:
        counts["chat_json"] = str(write_monet_chat(out_path, chat_json))
    return counts
