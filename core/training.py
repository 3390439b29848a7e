"""The ONE training loop: supervised fine-tuning of Qwen2.5-VL-class models, teacher-forced text (SFT, CapImagine)
or with a latent span (Coconut-style: the model's own fed-back hidden states, exactly as the engine decodes them).

Used by the toy zoo (``toy/zoo.py``) and by ``caption-imagine train``. A latent example is decoded in the same
order as the engine: prefill the prompt, feed the start token, feed K own hidden states, then teacher-force the answer
— with the same masks (image / latent visibility) — so training and inference see identical computations.

Long runs (``train(..., checkpoint_dir=...)``): a checkpoint folder ``step-NNNNNNN/`` is written every
``cfg.save_every`` steps and at the end, atomically (written as a hidden temp folder, then renamed; ``latest`` names
the newest). It holds ``trainable.safetensors`` (every parameter that trains, by ``state_dict`` name: the language
model for a full fine-tune, only the adapter for LoRA), ``optimizer``, ``scheduler`` and ``rng`` (numpy batch
sampler, torch, python, CUDA), each as a ``.json`` skeleton plus a ``.safetensors`` file of its tensors (nothing is
pickled, so a planted checkpoint file cannot run code; :func:`save_state` / :func:`load_state`), and
``trainer_state.json`` (step, loss/eval log, best score, config). Checkpoints of format 1 (``*.pt``) are still read,
with ``torch.load(weights_only=True)`` only. The best
evaluated weights live in ``best/`` (same format). ``resume=True`` restores all of it, so an interrupted run that is
resumed ends with exactly the weights of an uninterrupted one (deterministic CPU kernels; tested).

Multi-GPU: pass an ``accelerate.Accelerator``. The loss is computed inside a small ``nn.Module`` wrapping the model,
and that module and the optimizer go through ``accelerator.prepare`` (DDP), so gradients are averaged across
processes; every process draws the same global batch from the seeded sampler and takes its strided share.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from latentcheck.core.engine import Engine
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.prompts import Prompt

CHECKPOINT_FORMAT = 2  # 1: optimizer/scheduler/rng as torch .pt files (read with weights_only=True)


@dataclass
class Example:
    """One training example: a prompt, the response token ids (teacher forced), and for latent examples the
    supervision targets of the K latents."""

    prompt: Prompt | Callable[[], Prompt]  # a callable builds the prompt when the example is drawn (lazy images)
    response_ids: list[int]
    loss_mask: list[bool]  # which response positions are predicted (CE)
    latent_targets: Any = None  # [K, H] tensor or None
    n_latent: int = 0  # K (latent examples): response_ids = answer part after the latent span
    meta: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 30
    grad_clip: float = 1.0
    latent_weight: float = 1.0
    seed: int = 0
    eval_every: int = 0
    freeze_vision: bool = False
    micro_batch: int = 0  # >0: accumulate gradients over micro-batches of this size (same update, less memory)
    save_every: int = 0  # with a checkpoint_dir: checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # step-* folders kept (the best weights are kept separately)
    target_score: float | None = None  # stop early once an evaluation reaches this score


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def example_loss(engine: Engine, batch: list[Example], latent_weight: float = 1.0) -> tuple[Any, dict]:
    """Loss of a batch (all latent or all plain examples), teacher-forced through ``Engine.score`` (the engine's own
    prefill, masks and, for latent examples, its forced span of K own feedback vectors)."""
    import torch
    import torch.nn.functional as F

    dev = engine.device
    K = batch[0].n_latent
    lat_losses = []
    if K:
        targets = torch.stack([ex.latent_targets for ex in batch]).to(dev)

        def on_latent(k: int, z) -> None:
            lat_losses.append(1 - F.cosine_similarity(z, targets[:, k].to(z.dtype), dim=-1))

    sc = engine.score([ex.prompt for ex in batch], [[ex.response_ids] for ex in batch], latent_steps=K,
                      on_latent=on_latent if K else None)
    tok_ce = -sc.logprobs  # [B, n]: CE of response token j (responses are padded to one length)
    lm_mask = torch.tensor([ex.loss_mask for ex in batch], device=dev)
    stats: dict[str, float] = {}
    if K:
        # the start token is predicted from the prompt; the first response token (the span's end) is forced, so the
        # answer CE counts tokens 1.. ; the latents are pulled towards their targets
        lat = torch.stack(lat_losses, 1).mean(1)
        stats["latent_cos_loss"] = float(lat.detach().mean())
        m = lm_mask[:, 1:]
        ce = (tok_ce[:, 1:] * m).sum(1) / m.sum(1).clamp(min=1)
        loss = (-sc.start_logprob + ce + latent_weight * lat).mean()
    else:
        ce = (tok_ce * lm_mask).sum(1) / lm_mask.sum(1).clamp(min=1)
        loss = ce.mean()
    stats["answer_ce"] = float(ce.detach().mean())
    stats["loss"] = float(loss.detach())
    return loss, stats


def pad_responses(batch: list[Example], pad_id: int) -> list[Example]:
    """Right-pad response ids (masked out of the loss) so a batch is rectangular."""
    n = max(len(ex.response_ids) for ex in batch)
    out = []
    for ex in batch:
        k = n - len(ex.response_ids)
        out.append(Example(ex.prompt, ex.response_ids + [pad_id] * k, ex.loss_mask + [False] * k,
                           ex.latent_targets, ex.n_latent, ex.meta))
    return out


def resolve_prompt(ex: Example) -> Example:
    """The example with a concrete prompt (a lazy prompt callable is built now)."""
    if isinstance(ex.prompt, Prompt) or not callable(ex.prompt):
        return ex
    return Example(ex.prompt(), ex.response_ids, ex.loss_mask, ex.latent_targets, ex.n_latent, ex.meta)


def trainable_parameters(model, params=None) -> list[tuple[str, Any]]:
    """(state-dict name, parameter) of every parameter that trains, in ``model.named_parameters()`` order."""
    wanted = None if params is None else {id(p) for p in params}
    return [(n, p) for n, p in model.named_parameters()
            if p.requires_grad and (wanted is None or id(p) in wanted)]


def _loss_module(model, latent_weight: float):
    """An ``nn.Module`` whose forward is the batch loss, so DDP (accelerate) can wrap it; ``.engine`` is set after
    device placement."""
    import torch

    class _LossModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.engine: Engine | None = None

        def forward(self, batch):
            return example_loss(self.engine, batch, latent_weight)

    return _LossModule()


def _rng_state(rng: np.random.Generator) -> dict:
    import torch

    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    import torch

    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _pack(obj: Any, tensors: dict[str, Any]) -> Any:
    """A JSON skeleton of a nested state (dicts, lists, tuples, numbers, strings, tensors): tensors go to ``tensors``
    under a generated name; tuples and dicts with non-string keys are tagged so that :func:`_unpack` restores them."""
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training checkpoint")


def _unpack(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    return obj


def save_state(obj: Any, stem: Path) -> None:
    """Write a nested state (an optimizer's or scheduler's ``state_dict``, RNG states) as ``stem.json`` plus
    ``stem.safetensors``: no pickle, so reading it back can never run code."""
    from safetensors.torch import save_file

    from latentcheck.core.records import write_json_atomic

    tensors: dict[str, Any] = {}
    skeleton = _pack(obj, tensors)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    write_json_atomic(stem.with_suffix(".json"), skeleton, indent=None)


def load_state(stem: Path) -> Any:
    """Read what :func:`save_state` wrote; a checkpoint of format 1 (``stem.pt``) is read with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers."""
    import torch
    from safetensors.torch import load_file

    if stem.with_suffix(".json").exists():
        return _unpack(json.loads(stem.with_suffix(".json").read_text()), load_file(str(stem.with_suffix(".safetensors"))))
    try:
        return torch.load(stem.with_suffix(".pt"), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unpickling refusal names the file, never runs it
        raise LatentcheckError(f"cannot read checkpoint file {stem.with_suffix('.pt')}: {e.__class__.__name__} "
                               f"({str(e).splitlines()[0][:200] if str(e) else ''}); only tensors and plain values "
                               "are read back") from None


def _write_tensors(named: list[tuple[str, Any]], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({n: p.detach().to("cpu").contiguous() for n, p in named}, str(path))


def load_trainable(named: list[tuple[str, Any]], path: str | os.PathLike) -> None:
    """Copy saved trainable tensors (``trainable.safetensors``) into the parameters, by name; names must match."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path))
    names = [n for n, _ in named]
    missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
    if missing or extra:
        raise LatentcheckError(f"checkpoint {path} does not match the trainable parameters (missing {missing[:3]}, "
                               f"unexpected {extra[:3]}); resume with the same --method and model")
    with torch.no_grad():
        for n, p in named:
            p.copy_(saved[n].to(p.device, p.dtype))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def save_checkpoint(ckdir: str | os.PathLike, step: int, named, opt, sched, rng, state: dict,
                    keep: int = 2) -> Path:
    """Write ``ckdir/step-NNNNNNN`` atomically (temp folder + rename), point ``latest`` at it, prune old ones."""

    from latentcheck.core.records import write_json_atomic

    ckdir = Path(ckdir)
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_tensors(named, tmp / "trainable.safetensors")
    save_state(opt.state_dict(), tmp / "optimizer")
    save_state(sched.state_dict(), tmp / "scheduler")
    save_state(_rng_state(rng), tmp / "rng")
    write_json_atomic(tmp / "trainer_state.json", {**state, "step": step, "format": CHECKPOINT_FORMAT,
                                                   "param_names": [n for n, _ in named]})
    _replace_dir(tmp, ckdir / name)
    latest_tmp = ckdir / f".latest.{os.getpid()}.tmp"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, ckdir / "latest")
    old = sorted(d for d in ckdir.glob("step-*") if d.is_dir() and d.name != name)
    for d in old[: max(0, len(old) - max(0, keep - 1))]:
        shutil.rmtree(d, ignore_errors=True)
    return ckdir / name


def latest_checkpoint(ckdir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of ``ckdir`` (``latest`` pointer, else the highest step), or None."""
    ckdir = Path(ckdir)
    pointer = ckdir / "latest"
    if pointer.exists():
        cand = ckdir / pointer.read_text().strip()
        if (cand / "trainer_state.json").exists():
            return cand
    done = sorted(d for d in ckdir.glob("step-*") if (d / "trainer_state.json").exists())
    return done[-1] if done else None


def _save_best(ckdir: Path, named, step: int, score: float) -> None:
    from latentcheck.core.records import write_json_atomic

    tmp = ckdir / f".tmp-best-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_tensors(named, tmp / "trainable.safetensors")
    write_json_atomic(tmp / "best.json", {"step": step, "score": score})
    _replace_dir(tmp, ckdir / "best")


def train(lm, examples: list[Example], cfg: TrainConfig, on_step: Callable[[int, dict], None] | None = None,
          evaluate: Callable[[], float] | None = None, params=None, *, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, accelerator=None, stop_after: int | None = None) -> dict:
    """Train ``lm.model`` in place on ``examples``; returns a log dict. ``evaluate`` (optional) is called every
    ``cfg.eval_every`` steps and at the end; the best-scoring weights are restored at the end.

    ``checkpoint_dir``: save resumable checkpoints there (module docstring; every ``cfg.save_every`` steps and at the
    end) and keep the best weights on disk instead of in memory. ``resume``: continue from its newest checkpoint
    (a fresh start when there is none). ``stop_after``: stop (with a checkpoint) once this many steps are done, as a
    time-boxed job would; the learning-rate schedule still follows ``cfg.steps``. ``accelerator``: see the module
    docstring. ``lm.model`` may carry peft adapters (only parameters with ``requires_grad`` train).
    Log: losses, evals, best_score / best_step, steps_done, resumed_from, stopped_early, checkpoint, seconds.
    """
    import torch

    model = lm.model
    model.train()
    if cfg.freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    named = trainable_parameters(model, params)
    if not named:
        raise LatentcheckError("nothing to train: no parameter requires a gradient")
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    rank, world, is_main = 0, 1, True
    wrapped = None
    if accelerator is not None:
        wrapped, opt = accelerator.prepare(_loss_module(model, cfg.latent_weight), opt)
        accelerator.unwrap_model(wrapped).engine = Engine(lm)
        rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    engine = Engine(lm)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    log: dict[str, Any] = {"losses": [], "evals": []}
    best_score, best_step, best_mem = -1.0, None, None
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    log["resumed_from"] = None
    if resume:
        if ckdir is None:
            raise LatentcheckError("resume needs a checkpoint folder")
        ck = latest_checkpoint(ckdir)
        if ck is not None:
            state = json.loads((ck / "trainer_state.json").read_text())
            load_trainable(named, ck / "trainable.safetensors")
            opt.load_state_dict(load_state(ck / "optimizer"))
            sched.load_state_dict(load_state(ck / "scheduler"))
            _set_rng_state(rng, load_state(ck / "rng"))
            start = int(state["step"])
            log["losses"], log["evals"] = list(state["log"]["losses"]), list(state["log"]["evals"])
            best_score, best_step = state["best"]["score"], state["best"]["step"]
            log["resumed_from"] = start
            if state["log"].get("reached_target_at") is not None:  # the run had already stopped at its target
                log["reached_target_at"] = state["log"]["reached_target_at"]
            changed = sorted(k for k, v in asdict(cfg).items() if state.get("config", {}).get(k, v) != v)
            if changed:
                log["config_changed_on_resume"] = changed

    def write_checkpoint(done: int) -> None:
        if ckdir is None:
            return
        if is_main:
            state = {"log": {"losses": log["losses"], "evals": log["evals"],
                             "reached_target_at": log.get("reached_target_at")},
                     "best": {"score": best_score, "step": best_step}, "config": asdict(cfg)}
            log["checkpoint"] = str(save_checkpoint(ckdir, done, named, opt, sched, rng, state,
                                                    keep=cfg.keep_checkpoints))
        if accelerator is not None:
            accelerator.wait_for_everyone()

    t0 = time.perf_counter()
    stopped = False
    done = start
    end = start if log.get("reached_target_at") is not None else cfg.steps  # resumed after an early stop
    for step in range(start, end):
        if stop_after is not None and step >= stop_after:
            stopped = True
            break
        idx = rng.choice(len(examples), size=min(cfg.batch_size, len(examples)), replace=False)
        if world > 1:
            idx = idx[rank::world]
            if len(idx) == 0:
                raise LatentcheckError(f"batch size {cfg.batch_size} is smaller than the number of processes {world}")
        share = [examples[i] for i in idx]
        size = cfg.micro_batch if cfg.micro_batch > 0 else len(share)
        chunks = [share[j:j + size] for j in range(0, len(share), size)]
        opt.zero_grad(set_to_none=True)
        stats = {}
        for j, chunk in enumerate(chunks):
            batch = pad_responses([resolve_prompt(ex) for ex in chunk], lm.tokens.pad)
            weight = len(chunk) / len(share)  # the step's loss is the mean over the whole share
            if wrapped is not None:
                with (accelerator.no_sync(wrapped) if j < len(chunks) - 1 else contextlib.nullcontext()):
                    loss, part = wrapped(batch)
                    accelerator.backward(loss * weight if len(chunks) > 1 else loss)
            else:
                loss, part = example_loss(engine, batch, cfg.latent_weight)
                (loss * weight if len(chunks) > 1 else loss).backward()
            for k, v in part.items():
                stats[k] = stats.get(k, 0.0) + v * weight if len(chunks) > 1 else v
        if wrapped is not None:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
            stats = {k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                     for k, v in stats.items()}
        else:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        done = step + 1
        log["losses"].append(stats["loss"])
        if on_step:
            on_step(step, stats)
        last = step == cfg.steps - 1
        if evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
            model.eval()
            score = evaluate()
            model.train()
            log["evals"].append({"step": done, "score": score})
            if score > best_score:
                best_score, best_step = score, done
                if ckdir is None:
                    best_mem = {n: p.detach().clone() for n, p in named}
                elif is_main:
                    _save_best(ckdir, named, done, score)
            if cfg.target_score is not None and score >= cfg.target_score and not last:
                log["reached_target_at"] = done
                if ckdir is not None:
                    write_checkpoint(done)
                break
        at_stop = stop_after is not None and done >= stop_after and not last
        if (cfg.save_every and done % cfg.save_every == 0) or last or at_stop:
            write_checkpoint(done)
        if at_stop:
            stopped = True
            break
    if stopped and ckdir is not None and latest_checkpoint(ckdir) != ckdir / f"step-{done:07d}":
        write_checkpoint(done)
    model.eval()
    if not stopped and best_step is not None:
        if best_mem is not None:
            with torch.no_grad():
                for n, p in named:
                    p.copy_(best_mem[n])
        elif ckdir is not None and (ckdir / "best" / "trainable.safetensors").exists():
            load_trainable(named, ckdir / "best" / "trainable.safetensors")
        log["best_score"] = best_score
        log["best_step"] = best_step
    log["steps_done"] = done
    log["stopped_early"] = stopped
    log["seconds"] = time.perf_counter() - t0
    return log

def iter_batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
