"""The toy zoo: tiny Qwen2.5-VL-class models trained on the toy world with known causal structure.

- ``toy-direct``: the base model, trained from scratch to answer directly (the zoo's "Qwen2.5-VL").
- ``toy-latent``: fine-tuned from the base to emit <|latent_start|>, feed back K=4 own hidden states (supervised
  toward the zoomed crop's visual features, Mirage stage-1 style) and answer; the answer may still read the image.
- ``toy-mediated`` (positive control): same, but only the latent span may attend to the image (training and
  inference), so the image reaches the answer only through the latents.
- ``toy-vector`` (vector-mediated control): only the latent-start position may attend to the image and no later
  position attends to it, so the image reaches the answer ONLY through the fed vectors (the behavioural probe's
  positive control).
- ``toy-bypass`` (negative control): same, but no later position may attend to the latent span, so the latents are
  unused by construction.
- ``toy-capimagine``: the base fine-tuned with ``caption-imagine train`` on text-imagination data built by
  ``caption-imagine build-data`` from the toy world's interleaved file.

Weights are looked up in ``$LATENTCHECK_ZOO``, then ``~/.cache/latentcheck/zoo``, then the copy shipped inside the
package (``toy/zoo/``); ``latentcheck zoo build`` rebuilds them reproducibly (seeded).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latentcheck.core.errors import LatentcheckError, ModelLoadError

PACKAGED = Path(__file__).parent / "zoo"
WORLD_SEED = 0
ZOO_SIZES = {"train": 6000, "val": 200, "test": 400}
SINGLE_OBJECT_EVERY = 3  # curriculum: every 3rd training image shows only the target (see docs/zoo.md)
TARGET_SCORE = 0.97  # stop training once validation accuracy reaches this
EXAMPLE_CHUNK = 1024  # training examples built (and their visual features cached) per chunk; a multiple of 64


@dataclass
class ZooSpec:
    name: str
    kind: str  # direct | latent | capimagine | capimagine-prose
    profile: str
    base: str | None
    steps: int
    lr: float
    how: str
    latent_weight: float = 1.0
    latent_targets: str = "rows"  # rows: crop tokens pooled by row; centre: the crop-centre mean; object: the asked
    # object's own merged token in the main image
    world: str = "v3"  # the toy world's variant it is trained and evaluated on (toy/world.py VARIANTS)
    n_train: int | None = None  # training samples (None: ZOO_SIZES["train"])


ZOO: dict[str, ZooSpec] = {s.name: s for s in [
    ZooSpec("toy-direct", "direct", "toy-direct", None, 1200, 3e-3,
            "trained from scratch (language model; random frozen vision tower) to answer the option letter"),
    ZooSpec("toy-latent", "latent", "toy-latent", "toy-direct", 400, 1e-3,
            "base + latent SFT: 4 fed-back latents supervised toward the crop's features (cos) + answer CE"),
    ZooSpec("toy-mediated", "latent", "toy-mediated", "toy-direct", 800, 1e-3,
            "base + latent SFT with the image visible only to the latent span (positive control); latents "
            "supervised toward the crop centre (the target's visual features)", 1.0, "centre"),
    ZooSpec("toy-vector", "latent", "toy-vector", "toy-mediated", 800, 1e-3,
            "toy-mediated + latent SFT with the image visible only to the latent-start position, which no later "
            "position sees (vector-mediated control: the image reaches the answer only through the fed vectors); "
            "latents supervised toward the crop centre", 1.0, "centre"),
    ZooSpec("toy-binding", "latent", "toy-binding", "toy-mediated", 8000, 1e-3,
            "toy-mediated fine-tuned on the binding world (the shape of the object the question names by its colour, "
            "among 1-3 objects in their own colours; options in shuffled order); only the latent span may attend to "
            "the image; latents supervised toward the asked object's own merged image token (question-reading "
            "control)", 3.0, "object", "binding", 24000),
    ZooSpec("toy-bypass", "latent", "toy-bypass", "toy-direct", 300, 1e-3,
            "base + latent SFT; the span cannot see the input and nothing after it can see the span "
            "(negative control)"),
    ZooSpec("toy-capimagine", "capimagine", "toy-capimagine", "toy-direct", 900, 1e-3,
            "base + caption-imagine train (full fine-tune, vision frozen) on text-imagination data"),
    ZooSpec("toy-capimagine-prose", "capimagine-prose", "toy-capimagine", "toy-capimagine", 300, 1e-3,
            "toy-capimagine + caption-imagine train on the HF Trainer (full fine-tune, vision frozen) on "
            "text-imagination data written WITHOUT markers: the imagination is plain prose, like the released "
            "CapImagine-7B's"),
]}


def cache_root() -> Path:
    return Path(os.environ.get("LATENTCHECK_CACHE", Path.home() / ".cache" / "latentcheck"))


def zoo_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("LATENTCHECK_ZOO"):
        dirs.append(Path(os.environ["LATENTCHECK_ZOO"]))
    dirs += [cache_root() / "zoo", PACKAGED]
    return dirs


def zoo_model_path(name: str) -> Path:
    """Folder of a trained zoo model (first found in ``zoo_dirs()``)."""
    if name not in ZOO:
        raise ModelLoadError(f"unknown toy model {name!r}; the zoo has: {', '.join(ZOO)}")
    for d in zoo_dirs():
        if (d / name / "config.json").exists():
            return d / name
    raise ModelLoadError(f"toy model {name!r} is not built; run `latentcheck zoo build`")


def world_of(model: Any) -> str:
    """The toy world a model was trained on: a zoo name's spec, or the ``world`` of a folder's zoo card; else v3."""
    if isinstance(model, str) and model in ZOO:
        return ZOO[model].world
    if isinstance(model, (str, os.PathLike)):
        card = Path(model) / "zoo_card.json"
        try:
            return json.loads(card.read_text()).get("world", "v3") if card.is_file() else "v3"
        except (OSError, ValueError):
            return "v3"
    return "v3"


def default_data(split: str = "test", world: str = "v3") -> Path:
    """The toy world's task file for ``split`` (written on first use; deterministic); ``world="binding"``: the
    binding world's (toy/world.py)."""
    from latentcheck.toy.world import BINDING_WORLD_VERSION, VARIANTS, WORLD_VERSION, write_world

    if world not in VARIANTS:
        raise LatentcheckError(f"unknown toy world {world!r} (expected one of {', '.join(VARIANTS)})")
    name = f"toyworld-v{WORLD_VERSION}" if world == "v3" else f"toyworld-binding-v{BINDING_WORLD_VERSION}"
    root = cache_root() / f"{name}-seed{WORLD_SEED}"
    path = root / f"tasks_{split}.jsonl"
    if not path.exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        write_world(tmp, n_train=ZOO_SIZES["train"] // 6, n_val=ZOO_SIZES["val"], n_test=ZOO_SIZES["test"],
                    seed=WORLD_SEED, variant=world)
        if root.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, root)
    return path


# ---------------------------------------------------------------------------------------------- examples
def training_samples(n: int, world: str = "v3"):
    """The zoo's training set: toy-world train samples, every SINGLE_OBJECT_EVERY-th with the target alone
    (a curriculum: tiny models trained from scratch find the target far sooner with some distractor-free images).
    ``world="binding"``: the binding world's shape questions (the asked object must be found by its colour) on
    images of 1, 2 and 3 objects in turn (``BINDING_CURRICULUM``)."""
    from latentcheck.toy.world import BINDING_CURRICULUM, QUESTION_TYPES, main_question_types, make_sample

    if world == "binding":
        return [make_sample(i, "train", WORLD_SEED, main_question_types(world)[0], variant="binding",
                            n_objects=BINDING_CURRICULUM[i % len(BINDING_CURRICULUM)])
                for i in range(n)]
    return [make_sample(i, "train", WORLD_SEED, QUESTION_TYPES[i % len(QUESTION_TYPES)],
                        n_objects=1 if i % SINGLE_OBJECT_EVERY == SINGLE_OBJECT_EVERY - 1 else None)
            for i in range(n)]


def _latent_targets(lm, samples, k: int, mode: str = "rows", batch: int = 64):
    """Mirage stage-1 style targets: ``rows`` average-pools the crop's merged visual tokens into k groups (one per
    latent); ``centre`` gives every latent the mean of the crop's central 2x2 tokens (the target itself);
    ``object`` gives every latent the main image's merged token of the asked object's cell (the binding world: the
    grid is aligned to the merged tokens, raster order)."""
    import torch

    from latentcheck.core.fastpaths import image_inputs
    from latentcheck.toy.world import GRID

    images = [s.image for s in samples] if mode == "object" else [s.crop for s in samples]
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch):  # chunks: bit-identical to one batch here (measured), far less memory
            pixel_values, grid = image_inputs(lm.processor.image_processor, images[i:i + batch])
            feats += list(lm.model.model.get_image_features(pixel_values, grid).pooler_output)
    if mode == "object":  # one merged token per grid cell, raster order
        return [f[s.meta["target"]["cell"][0] * GRID + s.meta["target"]["cell"][1]].expand(k, -1).clone()
                for s, f in zip(samples, feats)]
    if mode == "centre":
        g = int(round(feats[0].shape[0] ** 0.5))
        return [f.view(g, g, -1)[g // 4: g - g // 4, g // 4: g - g // 4].reshape(-1, f.shape[-1]).mean(0,
                keepdim=True).expand(k, -1).clone() for f in feats]
    return [f.view(k, -1, f.shape[-1]).mean(1) for f in feats]


def build_examples(lm, samples, kind: str, k: int = 4, targets_from=None, latent_targets: str = "rows"):
    """Training examples (kind ``direct`` or ``latent``) for toy samples; ``targets_from``: the model whose vision
    tower makes the latent targets. toy-capimagine's examples come from caption-imagine build-data instead."""
    from latentcheck.core.prompts import build_prompt, task_text
    from latentcheck.core.tasks import Task
    from latentcheck.core.training import Example

    tok = lm.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    exs = []
    targets = _latent_targets(targets_from or lm, samples, k, latent_targets) \
        if kind == "latent" else None
    for i, s in enumerate(samples):
        task = Task(id=s.id, question=s.question, options=s.options, answer=s.answer)
        prompt = build_prompt(lm, s.id, task_text(task, lm.profile), s.image)
        letter = tok.encode(s.answer, add_special_tokens=False)
        if kind == "latent":
            resp = [lm.tokens.end] + letter + [im_end]
            exs.append(Example(prompt, resp, [False] + [True] * (len(resp) - 1), targets[i], k))
        else:
            resp = letter + [im_end]
            exs.append(Example(prompt, resp, [True] * len(resp)))
    return exs


def cache_image_features(lm, examples, batch: int = 64) -> None:
    """Attach the (frozen) vision tower's output to each example's prompt, so training skips the vision forward,
    and drop the pixels (the engine uses the cached features)."""
    import torch

    from latentcheck.core.engine import Engine

    eng = Engine(lm)
    prompts = [ex.prompt for ex in examples if ex.prompt.pixel_values is not None]
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            for p, f in zip(chunk, eng.image_features(chunk)):
                p.image_embeds = f.detach()
                p.pixel_values = None  # the engine reads the cached features; the pixels were ~90% of the memory


def evaluate_accuracy(lm, samples, batch_size: int = 32, **request_kw) -> float:
    """Held-out accuracy from generated text with the profile's extractor."""
    from latentcheck.core.engine import Engine, Request
    from latentcheck.core.answers import read_trace
    from latentcheck.core.prompts import build_prompt, task_text
    from latentcheck.core.tasks import Task

    eng = Engine(lm)
    reqs = []
    for s in samples:
        task = Task(id=s.id, question=s.question, options=s.options, answer=s.answer)
        reqs.append(Request(build_prompt(lm, s.id, task_text(task, lm.profile), s.image), **request_kw))
    traces = eng.run(reqs, batch_size=batch_size)
    correct = 0
    for s, tr in zip(samples, traces):
        correct += int(read_trace(lm, tr[0], s.options).answer == s.answer)
    return correct / max(1, len(samples))


# ---------------------------------------------------------------------------------------------- build
def build_model(name: str, out_root: Path, seed: int = 0, on_step: Callable[[int, dict], None] | None = None,
                steps: int | None = None, n_train: int | None = None) -> dict[str, Any]:
    """Train one zoo model into ``out_root/name``; returns its card (accuracy, chance, how it was made)."""
    import torch

    spec = ZOO[name]
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible reductions, and tiny models are dispatch-bound anyway
    try:
        return _build_model(spec, name, out_root, seed, on_step, steps, n_train, t0)
    finally:
        torch.set_num_threads(threads)


def _build_model(spec, name, out_root, seed, on_step, steps, n_train, t0):
    import torch

    from latentcheck.core.loader import load_model
    from latentcheck.toy.tiny import build_tiny_checkpoint
    from latentcheck.toy.world import QUESTION_TYPES, main_question_types, make_samples
    from latentcheck.core.training import TrainConfig, train

    out = out_root / name
    tmp = out_root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if spec.base is None:
        build_tiny_checkpoint(tmp, family="toy", size="tiny", seed=seed, profile=spec.profile)
    else:
        base = out_root / spec.base
        if not (base / "config.json").exists():
            raise LatentcheckError(f"{name} is fine-tuned from {spec.base}, which is not built in {out_root}")
        shutil.copytree(base, tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["latentcheck_profile"] = spec.profile
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    # the exact Conv3d patch embedding (no CPU fast path): the build stays byte-identical to the shipped weights
    lm = load_model(str(tmp), profile=spec.profile, device="cpu", quant="none", fast_paths=False)
    n = n_train or spec.n_train or ZOO_SIZES["train"]
    train_samples = training_samples(n, spec.world)
    main_types = main_question_types(spec.world)
    val = make_samples(ZOO_SIZES["val"], "val", WORLD_SEED, main_types, variant=spec.world)
    cfg = TrainConfig(steps=steps or spec.steps, lr=spec.lr, seed=seed, eval_every=100, freeze_vision=True,
                      grad_clip=100.0, warmup=20, target_score=TARGET_SCORE, latent_weight=spec.latent_weight)
    if spec.kind in ("capimagine", "capimagine-prose"):
        log, data_counts = _train_capimagine(lm, tmp, cfg, on_step, n, prose=spec.kind == "capimagine-prose")
    else:
        exs = []
        for i in range(0, len(train_samples), EXAMPLE_CHUNK):  # the pixels of one chunk at a time in memory
            chunk = build_examples(lm, train_samples[i:i + EXAMPLE_CHUNK], spec.kind,
                                   latent_targets=spec.latent_targets)
            cache_image_features(lm, chunk)  # the vision tower is frozen for every zoo model
            exs += chunk
        log = train(lm, exs, cfg, on_step=on_step, evaluate=lambda: evaluate_accuracy(lm, val))
        data_counts = {"train_examples": len(exs)}
    test = make_samples(ZOO_SIZES["test"], "test", WORLD_SEED, main_types, variant=spec.world)
    acc = evaluate_accuracy(lm, test)
    derived = make_samples(ZOO_SIZES["test"], "test", WORLD_SEED, [t for t in QUESTION_TYPES
                                                                   if t not in main_types], variant=spec.world)
    derived_acc = evaluate_accuracy(lm, derived) if not spec.kind.startswith("capimagine") else None
    held = [s for s in test if s.meta["heldout_combo"]]
    card = {"name": name, "profile": spec.profile, "kind": spec.kind, "base": spec.base, "how": spec.how,
            "seed": seed, "world": spec.world, "steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size, "data": data_counts,
            "latent_weight": spec.latent_weight if spec.kind == "latent" else None,
            "latent_targets": spec.latent_targets if spec.kind == "latent" else None,
            "test_accuracy": acc, "test_n": len(test), "chance": 0.25, "test_question_types": list(main_types),
            "derived_accuracy": derived_acc,
            "heldout_combo_accuracy": evaluate_accuracy(lm, held) if held else None, "heldout_n": len(held),
            "val_curve": log.get("evals", []), "stopped_at": log.get("reached_target_at"),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": float(np.mean(log["losses"][-20:]))}
    lm.model.save_pretrained(tmp)
    (tmp / "zoo_card.json").write_text(json.dumps(card, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return card


def _train_capimagine(lm, folder: Path, cfg, on_step, n: int, prose: bool = False):
    """CapImagine on the toy: build-data from the interleaved file (metadata captions), then SFT. ``prose``: the
    data is written without imagination markers and the fine-tune runs on the HF Trainer (``imagine/trainer.py``,
    the path of ``caption-imagine train``); otherwise the one core loop (the recipe of the shipped toy-capimagine)."""
    from dataclasses import replace

    from latentcheck.imagine.build_data import MetadataCaptioner, build_data
    from latentcheck.imagine.train import read_sft_records, sft_examples_from_file, train_sft
    from latentcheck.imagine.trainer import hf_train, preset
    from latentcheck.toy.world import write_world

    world = folder / "world"
    write_world(world, n_train=n // 3, n_val=ZOO_SIZES["val"], n_test=0, seed=WORLD_SEED)
    markers = ("", "") if prose else ("<imagine>", "</imagine>")
    data = folder / "capimagine_train.jsonl"
    counts = build_data(world / "interleaved_train.json", "monet-sft", data, MetadataCaptioner(), markers=markers)
    val_data = folder / "capimagine_val.jsonl"
    build_data(world / "interleaved_val.json", "monet-sft", val_data, MetadataCaptioner(), markers=markers)
    if prose:
        settings = replace(preset("toy"), max_steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, warmup_steps=cfg.warmup,
                           grad_clip=cfg.grad_clip, batch_size=cfg.batch_size, micro_batch=cfg.batch_size,
                           eval_every=50, save_every=50, target_score=cfg.target_score)
        log = hf_train(lm, read_sft_records(data), settings, folder / "hf-train",
                       val_records=read_sft_records(val_data), on_step=on_step)
        shutil.rmtree(folder / "hf-train", ignore_errors=True)
    else:
        log = train_sft(lm, sft_examples_from_file(lm, data), cfg, val_path=val_data, on_step=on_step)
    shutil.rmtree(world, ignore_errors=True)
    for p in (data, val_data, data.with_suffix(".dropped.jsonl"), val_data.with_suffix(".dropped.jsonl")):
        p.unlink(missing_ok=True)
    return log, {k: counts[k] for k in ("read", "kept", "dropped")}


def build_zoo(out_root: str | Path | None = None, names: list[str] | None = None, seed: int = 0,
              on_model: Callable[[str], None] | None = None,
              on_step: Callable[[str, int, dict], None] | None = None) -> list[dict]:
    """Build the zoo (base first) into ``out_root`` (default: the user cache); returns the cards."""
    root = Path(out_root) if out_root else cache_root() / "zoo"
    root.mkdir(parents=True, exist_ok=True)
    names = names or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise LatentcheckError(f"unknown zoo model(s) {unknown}; the zoo has: {', '.join(ZOO)}")
    order = [n for n in ZOO if n in names]
    cards = []
    for n in order:
        if on_model:
            on_model(n)
        cards.append(build_model(n, root, seed=seed,
                                 on_step=(lambda s, st, _n=n: on_step(_n, s, st)) if on_step else None))
    return cards


def zoo_cards() -> list[dict]:
    """Each zoo model with its card (or a note that it is not built)."""
    out = []
    for name, spec in ZOO.items():
        try:
            path = zoo_model_path(name)
            card = json.loads((path / "zoo_card.json").read_text()) if (path / "zoo_card.json").exists() else {}
            card.update(path=str(path), built=True)
        except ModelLoadError:
            card = {"name": name, "built": False, "how": spec.how}
        card.setdefault("name", name)
        out.append(card)
    return out
