"""Local models as text generators for CapImagine data construction and text interventions.

``EngineGenerator(lm)`` implements build_data's ``TextGenerator`` protocol with the shared prompt builder and decoding
engine: each ``GenRequest`` (images + prompt text) becomes ``build_prompt(lm, key, text, images)`` (a list of images
gives a multi-image prompt) and the reply is the answer rule's reply (core/answers.py: the generated text without
end-of-turn tokens and without latent / imagination spans). ``build_data_with_models`` wires captioner / refiner / judge models
loaded through the one loader into ``imagine.build_data.build_data``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from latentcheck.core.errors import LatentcheckError


class EngineGenerator:
    """A ``TextGenerator`` over a loaded model (greedy unless the profile samples)."""

    def __init__(self, lm, batch_size: int = 8, max_new_tokens: int | None = None, seed: int = 0,
                 system: str | None = None):
        if batch_size < 1:
            raise LatentcheckError(f"batch_size must be >= 1, got {batch_size}")
        from latentcheck.core.engine import Engine

        self.lm = lm
        self.batch_size = batch_size
        self.system = system
        decoding = lm.profile.decoding
        if max_new_tokens is not None:
            decoding = replace(decoding, max_new_tokens=max_new_tokens)
        self.engine = Engine(lm, decoding=decoding, seed=seed)
        self.calls = 0

    def prompts(self, requests: Sequence[Any]):
        """The engine prompts of ``GenRequest``-like objects (``.images``, ``.prompt``)."""
        from latentcheck.core.prompts import build_prompt

        out = []
        for req in requests:
            images = list(req.images or [])
            image = None if not images else (images[0] if len(images) == 1 else images)
            out.append(build_prompt(self.lm, f"gen-{self.calls}", req.prompt, image, system=self.system))
            self.calls += 1
        return out

    def generate(self, requests: list) -> list[str]:
        from latentcheck.core.answers import read_trace

        if not requests:
            return []
        traces = [t[0] for t in self.engine.generate(self.prompts(requests), batch_size=self.batch_size)]
        return [read_trace(self.lm, t).reply for t in traces]


def _load(model: str, cache: dict, load_kw: dict):
    from latentcheck.core.loader import load_model

    key = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
    if key not in cache:
        cache[key] = load_model(model, **load_kw)
    return cache[key]


def build_data_with_models(input_path: str | os.PathLike, out_path: str | os.PathLike, fmt: str = "auto",
                           captioner: str = "metadata", caption_model: str | None = None,
                           refine_model: str | None = None, judge_model: str | None = None,
                           prompts_dir: str | os.PathLike | None = None, resume: bool = False,
                           limit: int | None = None, kind: str | None = None,
                           dataset_root: str | os.PathLike | None = None,
                           markers: Sequence[str] | None = None, batch_size: int = 8,
                           max_new_tokens: int | None = None, load_kw: dict | None = None) -> dict:
    """Run ``build_data`` with a metadata or model captioner and optional model refiner / judge (each a local
    checkpoint through ``load_model``; one model named twice is loaded once). Returns build_data's counts plus the
    models used."""
    from latentcheck.imagine.build_data import (DEFAULT_MARKERS, MetadataCaptioner, ModelCaptioner, ModelJudge,
                                                ModelRefiner, PromptSet, build_data)

    if captioner not in ("metadata", "model"):
        raise LatentcheckError(f"--captioner must be 'metadata' or 'model', got {captioner!r}")
    if captioner == "model" and not caption_model:
        raise LatentcheckError("--captioner model needs a captioning checkpoint (--model)")
    markers = tuple(markers) if markers is not None else DEFAULT_MARKERS
    prompts = PromptSet.load(prompts_dir) if (prompts_dir or captioner == "model" or refine_model or judge_model) \
        else None
    cache: dict[str, Any] = {}
    kw = load_kw or {}

    def gen(name: str) -> EngineGenerator:
        return EngineGenerator(_load(name, cache, kw), batch_size=batch_size, max_new_tokens=max_new_tokens)

    cap = ModelCaptioner(gen(caption_model), prompts, batch_size, markers) if captioner == "model" \
        else MetadataCaptioner()
    ref = ModelRefiner(gen(refine_model), prompts, batch_size, markers) if refine_model else None
    jud = ModelJudge(gen(judge_model), prompts, batch_size, markers) if judge_model else None
    counts = build_data(input_path, fmt, out_path, cap, refiner=ref, judge=jud, resume=resume, limit=limit,
                        markers=markers, kind=kind, dataset_root=dataset_root)
    counts["models"] = {"captioner": caption_model if captioner == "model" else "metadata",
                        "refiner": refine_model, "judge": judge_model}
    counts["prompts"] = dict(prompts.sources) if prompts is not None else None
    return counts
