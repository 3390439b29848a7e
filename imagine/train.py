"""CapImagine supervised fine-tuning (paper §5.3) on build-data output, through the one training loop.

Records (one JSON object per line, as written by ``imagine/build_data.py``): ``question`` (the user text), ``image``
(relative to the file's folder, absolute, or base64; may be null), ``response`` (the assistant chain with the
imagination between the markers), optional ``options`` (then the user text is rendered with the profile's
question template), optional ``answer`` (used for validation accuracy), optional ``meta.extra_images``.

Prompt: ``build_prompt(lm, id, user_text, images)`` with the model's profile. ``user_text`` is ``task_text`` (question +
options + the profile's suffix) when the record has options; otherwise the question as written plus the profile's
suffix, unless the question already ends with it (build-data questions usually carry their instruction, e.g. the toy
world's "Put your final answer within \\boxed{}."). Target: the tokenized response followed by ``<|im_end|>``; the
loss covers the whole response.

Methods: ``full`` (every language-model weight trains; the vision tower, merger included, is frozen — Monet's setting),
``lora`` (peft adapters on the language model's attention and MLP projections; ``exclude_modules`` keeps the vision
MLPs out, cpu-notes §9), ``qlora`` (the same adapters on a 4-bit NF4 base loaded with ``--quant 4bit``; bitsandbytes,
cpu-notes §8). After training the best validation checkpoint is restored and, with ``out_dir``, exported:
``out_dir/model`` (a loadable checkpoint folder: full weights, or the adapter merged into an unquantized copy of the
base) and, for lora/qlora, ``out_dir/adapter`` (``PeftModel.from_pretrained(base, out_dir/"adapter")``), plus
``out_dir/train_log.json`` and the resumable ``out_dir/checkpoints``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import LETTERS, DEFAULT_MAX_PIXELS, Task, decode_image, json_object, option_index
from latentcheck.core.training import Example, TrainConfig, train

METHODS = ("full", "lora", "qlora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_EXCLUDE = r".*\.visual\..*"  # peft exclude_modules: the suffix list would also hit the vision MLPs
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


@dataclass
class LoraSettings:
    """peft LoRA hyper-parameters (lora / qlora)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS


@dataclass
class SFTRecord:
    """One validated build-data record."""

    id: str
    where: str
    question: str
    response: str
    image: str | None = None
    options: list[str] | None = None
    answer: str | None = None
    extra_images: list[str] = field(default_factory=list)
    base_dir: str | None = None

    @property
    def name(self) -> str:
        return f"{self.where} (id={self.id})"

    def gold(self) -> str | None:
        """Gold answer as an option letter (records with options) or as given."""
        if self.answer is None:
            return None
        if self.options:
            i = option_index(self.answer, self.options)
            return None if i is None else LETTERS[i]
        return self.answer


# ----------------------------------------------------------------------------------------------- reading
def _check_image_ref(value: str, name: str, fname: str, base_dir: str) -> None:
    if value.startswith("data:") or len(value) >= 1024:
        return
    looks_like_path = "/" in value or "." in value[-6:]
    p = Path(value) if os.path.isabs(value) else Path(base_dir) / value
    if looks_like_path and not p.exists():
        raise RecordError(name, fname, f"image file not found: {p}")


def _validate(raw: Any, where: str, base_dir: str) -> SFTRecord:
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    rid = raw.get("id")
    rid = str(rid) if isinstance(rid, (str, int)) and str(rid).strip() else where
    name = f"{where} (id={rid})"
    q = raw.get("question")
    if not isinstance(q, str) or not q.strip():
        raise RecordError(name, "question", "missing or not a non-empty string")
    resp = raw.get("response")
    if not isinstance(resp, str) or not resp.strip():
        raise RecordError(name, "response", "missing or not a non-empty string")
    image = raw.get("image")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise RecordError(name, "image", "must be a path or base64 string (or null)")
        _check_image_ref(image, name, "image", base_dir)
    options = raw.get("options")
    if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, (str, int, float))
                                                                         for o in options):
            raise RecordError(name, "options", "must be a list of at least 2 strings (or absent)")
        options = [str(o) for o in options]
    answer = raw.get("answer")
    if answer is not None:
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise RecordError(name, "answer", f"must be a string, got {type(answer).__name__}")
        answer = str(answer)
        if options is not None and option_index(answer, options) is None:
            raise RecordError(name, "answer", f"{answer!r} is neither an option letter nor one of the options")
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(name, "meta", "must be an object")
    extra = meta.get("extra_images") or []
    if not isinstance(extra, list) or not all(isinstance(x, str) and x for x in extra):
        raise RecordError(name, "meta.extra_images", "must be a list of image paths")
    for i, x in enumerate(extra):
        _check_image_ref(x, name, f"meta.extra_images[{i}]", base_dir)
    return SFTRecord(id=rid, where=where, question=q, response=resp, image=image, options=options, answer=answer,
                     extra_images=list(extra), base_dir=base_dir)


def read_sft_records(path: str | os.PathLike, limit: int | None = None, strict: bool = True,
                     errors: list[RecordError] | None = None) -> list[SFTRecord]:
    """Validated build-data records of a JSONL file. A bad record raises a RecordError naming it and the field
    (``strict``), or is skipped and appended to ``errors``."""
    p = Path(path)
    if not p.is_file():
        raise LatentcheckError(f"training data not found: {p}")
    base = str(p.resolve().parent)
    out: list[SFTRecord] = []
    seen: dict[str, str] = {}
    with open(p, "rb") as fh:  # bytes: each line is decoded on its own (a bad byte is that line's error)
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            where = f"{p.name}:{lineno}"
            try:
                rec = _validate(json_object(line, where), where, base)
                if rec.id in seen:
                    raise RecordError(rec.name, "id", f"duplicate id (first at {seen[rec.id]})")
                seen[rec.id] = where
                out.append(rec)
            except RecordError as e:
                if strict:
                    raise
                if errors is not None:
                    errors.append(e)
    if not out:
        raise LatentcheckError(f"{p} has no usable records")
    return out


def record_user_text(lm, rec: SFTRecord) -> str:
    """The user text of a record under the model's profile (module docstring)."""
    from latentcheck.core.prompts import task_text

    if rec.options:
        return task_text(Task(id=rec.id, question=rec.question, options=rec.options, answer=rec.answer), lm.profile)
    suffix = lm.profile.prompt.suffix
    if not suffix.strip() or rec.question.rstrip().endswith(suffix.strip()):
        return rec.question
    return rec.question + suffix


def record_images(rec: SFTRecord, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """The record's image (PIL), a list when it has extra images, or None."""
    refs = ([rec.image] if rec.image else []) + rec.extra_images
    fields = (["image"] if rec.image else []) + [f"meta.extra_images[{i}]" for i in range(len(rec.extra_images))]
    images = []
    for ref, fname in zip(refs, fields):
        try:
            images.append(decode_image(ref, rec.name, rec.base_dir, max_pixels=max_pixels))
        except RecordError as e:
            raise RecordError(rec.name, fname, e.message) from None
    if not images:
        return None
    return images[0] if len(images) == 1 else images


def record_prompt(lm, rec: SFTRecord, assistant_prefix: str = "", max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """The prompt of a record (images decoded now)."""
    from latentcheck.core.prompts import build_prompt

    return build_prompt(lm, rec.id, record_user_text(lm, rec), record_images(rec, max_pixels),
                        assistant_prefix=assistant_prefix)


def response_ids(lm, response: str) -> list[int]:
    """Tokenized response followed by ``<|im_end|>``."""
    tok = lm.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if im_end is None or im_end == tok.unk_token_id:
        raise LatentcheckError("the tokenizer has no <|im_end|> token (is this a Qwen2.5-VL-class checkpoint?)")
    return tok.encode(response, add_special_tokens=False) + [im_end]


def sft_examples_from_file(lm, path: str | os.PathLike, limit: int | None = None, lazy: bool = True,
                           strict: bool = True, errors: list[RecordError] | None = None,
                           max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Example]:
    """Training examples of a build-data output file (module docstring). ``lazy``: images are decoded and the prompt
    is built each time the example is drawn (memory stays flat on large image sets; ~2 ms per toy prompt)."""
    out = []
    for rec in read_sft_records(path, limit=limit, strict=strict, errors=errors):
        ids = response_ids(lm, rec.response)
        prompt: Any
        if lazy:
            prompt = (lambda r=rec: record_prompt(lm, r, max_pixels=max_pixels))
        else:
            prompt = record_prompt(lm, rec, max_pixels=max_pixels)
        out.append(Example(prompt, ids, [True] * len(ids), meta={"id": rec.id, "where": rec.where}))
    return out


# ----------------------------------------------------------------------------------------------- evaluation
def predict_records(lm, records: list[SFTRecord], batch_size: int = 16) -> list[dict]:
    """Greedy generation for records; per record the predicted answer (profile extractor on the text after the
    imagination) and correctness against the gold answer (None when the record has none)."""
    from latentcheck.core.engine import Engine, Request
    from latentcheck.core.answers import read_trace
    from latentcheck.core.extract import normalize_text

    engine = Engine(lm)
    out = []
    for s in range(0, len(records), batch_size):
        chunk = records[s:s + batch_size]
        traces = engine.run([Request(record_prompt(lm, r)) for r in chunk], batch_size=batch_size)
        for r, tr in zip(chunk, traces):
            pred = read_trace(lm, tr[0], r.options).answer
            gold = r.gold()
            correct = None
            if gold is not None:
                correct = pred == gold if r.options else normalize_text(pred) == normalize_text(gold)
            out.append({"id": r.id, "pred": pred, "gold": gold, "correct": correct, "text": tr[0].text})
    return out


def val_evaluator(lm, val_path: str | os.PathLike, batch_size: int = 16, limit: int | None = None,
                  accelerator=None) -> Callable[[], float]:
    """Held-out accuracy of the generated answer on build-data records of the val split (sharded across processes
    when an accelerator is given)."""
    return val_evaluator_records(lm, read_sft_records(val_path, limit=limit), batch_size, accelerator,
                                 where=str(val_path))


def val_evaluator_records(lm, records: list[SFTRecord], batch_size: int = 16, accelerator=None,
                          where: str = "the validation records") -> Callable[[], float]:
    """``val_evaluator`` on records already read (records without an answer are left out)."""
    records = [r for r in records if r.answer is not None]
    if not records:
        raise LatentcheckError(f"{where} has no record with an answer")

    def evaluate() -> float:
        import torch

        mine = records
        if accelerator is not None and accelerator.num_processes > 1:
            mine = records[accelerator.process_index::accelerator.num_processes]
        with torch.no_grad():
            preds = predict_records(lm, mine, batch_size)
        correct = sum(bool(p["correct"]) for p in preds)
        if accelerator is not None and accelerator.num_processes > 1:
            t = accelerator.reduce(torch.tensor([float(correct), float(len(preds))], device=accelerator.device),
                                   "sum")
            return float(t[0] / t[1])
        return correct / len(preds)

    return evaluate


# ----------------------------------------------------------------------------------------------- model setup
def prepare_model(lm, method: str, lora: LoraSettings | None = None, gradient_checkpointing: bool = False,
                  seed: int | None = None):
    """Freeze the vision tower and, for lora/qlora, inject peft adapters into ``lm.model`` in place (``lm.model``
    stays the same object, so the engine runs through the adapters). Returns the PeftModel wrapper or None.
    ``seed``: seed torch before the adapters are created (their initialisation draws random numbers; the HF-Trainer
    path seeds with ``transformers.set_seed`` before calling this)."""
    if method not in METHODS:
        raise LatentcheckError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    quant = getattr(lm, "quant", "none")
    if method == "qlora" and quant != "4bit":
        raise LatentcheckError("--method qlora needs the base model loaded in 4-bit (--quant 4bit)")
    if method in ("full", "lora") and quant not in ("none", None):
        raise LatentcheckError(f"--method {method} needs an unquantized model (got --quant {quant}); "
                               "use --method qlora for a 4-bit base")
    model = lm.model
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    if method == "full":
        return None
    from peft import LoraConfig, get_peft_model

    lora = lora or LoraSettings()
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        # the core loop decodes with a KV cache (no checkpointing); the HF-Trainer path may checkpoint
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                     target_modules=list(lora.targets), exclude_modules=VISION_EXCLUDE)
    peft_model = get_peft_model(model, cfg)
    if peft_model.base_model.model is not model:  # pragma: no cover - peft contract
        raise LatentcheckError("peft did not inject the adapters in place")
    return peft_model


# ----------------------------------------------------------------------------------------------- export
CARD_FILES = ("README.md", "zoo_card.json", "train_card.json")  # describe the base, not the trained model


def _copy_support_files(src: Path, dst: Path) -> None:
    """Tokenizer, processor, chat template and other non-weight files of the base checkpoint (not its cards)."""
    for f in src.iterdir():
        if (f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != "config.json"
                and f.name not in CARD_FILES):
            shutil.copy2(f, dst / f.name)


def write_model_card(lm, dst: Path, card: dict) -> None:
    """``train_card.json`` (machine-readable) and ``README.md`` (a Hugging Face model card) describing the trained
    model: base, method, data, hyper-parameters, validation result."""
    base = lm.describe()
    full = {"kind": "caption-imagine fine-tune", "base_model": base.get("id"), "base_path": base.get("path"),
            "base_weight_hash": base.get("weight_hash"), "profile": lm.profile.name, **card}
    (dst / "train_card.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
    s = full.get("settings") or {}
    best = full.get("best_score")
    lines = ["---", f"base_model: {full['base_model']}", "library_name: transformers",
             "tags: [latentcheck, capimagine, text-imagination]", "---", "",
             f"# CapImagine fine-tune of {full['base_model']}", "",
             "Trained with `latentcheck caption-imagine train` (text imagination, paper section 5).", "",
             "| | |", "|---|---|",
             f"| base | {full['base_model']} (weights {str(full.get('base_weight_hash'))[:12]}) |",
             f"| profile | {full['profile']} |",
             f"| method | {full.get('method')} (vision tower frozen) |",
             f"| data | {full.get('data')} ({full.get('n_examples')} examples) |",
             f"| validation | {full.get('val')} ({full.get('n_val')} records) |",
             f"| steps / epochs | {full.get('steps_done')} / {full.get('epochs')} |",
             f"| lr / schedule | {s.get('lr')} / {s.get('scheduler')} (warm-up {s.get('warmup_steps') or s.get('warmup_ratio')}) |",
             f"| batch | {s.get('batch_size')} (micro-batch {s.get('micro_batch')}) |",
             f"| precision | {full.get('precision')} |",
             f"| best {full.get('best_metric')} | {best} at step {full.get('best_step')} |",
             f"| final train loss | {full.get('train_loss')} |", ""]
    (dst / "README.md").write_text("\n".join(lines))


def _profile_tag(lm) -> str | None:
    from latentcheck.core.profiles import builtin_profiles

    return lm.profile.name if lm.profile.name in builtin_profiles() else None


def _save_model_folder(lm, model, dst: Path, card: dict | None = None) -> Path:
    """Write a loadable checkpoint folder atomically (temp folder + rename), with a model card when given."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _copy_support_files(Path(lm.path), tmp)
    if card is not None:
        write_model_card(lm, tmp, card)
    tag = _profile_tag(lm)
    if tag:
        model.config.latentcheck_profile = tag  # so the loader picks the profile the model was trained with
    model.save_pretrained(tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def export_model(lm, out_dir: str | os.PathLike, method: str, peft_model=None, merge: bool = True,
                 card: dict | None = None) -> dict:
    """Save the trained model: ``model/`` (full weights or merged adapter) and, with adapters, ``adapter/``;
    ``card``: what was trained (``write_model_card``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    if method == "full":
        paths["model"] = str(_save_model_folder(lm, lm.model, out / "model", card))
        return paths
    adapter = out / "adapter"
    tmp = out / f".adapter.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    if card is not None:
        write_model_card(lm, tmp, {**card, "adapter_only": True})
    if adapter.exists():
        shutil.rmtree(adapter)
    os.replace(tmp, adapter)
    paths["adapter"] = str(adapter)
    if not merge:
        return paths
    if method == "lora":
        merged = peft_model.merge_and_unload()  # in place: lm.model now holds the merged weights
        paths["model"] = str(_save_model_folder(lm, merged, out / "model", card))
    else:  # qlora: merge into an unquantized copy of the base (merging into 4-bit weights would round them)
        from peft import PeftModel

        from latentcheck.core.loader import load_model

        base = load_model(lm.path, profile=lm.profile, quant="none", device=lm.device)
        merged = PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload()
        paths["model"] = str(_save_model_folder(base, merged, out / "model", card))
    return paths


# ----------------------------------------------------------------------------------------------- entry point
def train_sft(lm, examples: list[Example], cfg: TrainConfig, val_path: str | os.PathLike | None = None,
              on_step: Callable[[int, dict], None] | None = None, method: str = "full",
              out_dir: str | os.PathLike | None = None, resume: bool = False, *, lora: LoraSettings | None = None,
              accelerator=None, checkpoint_dir: str | os.PathLike | None = None, stop_after: int | None = None,
              val_limit: int | None = None, eval_batch_size: int = 16, merge: bool = True) -> dict:
    """Fine-tune ``lm`` in place on ``examples`` (``sft_examples_from_file``) with ``method`` (module docstring).

    Every evaluation (``cfg.eval_every`` steps, default = ``cfg.save_every``, and at the end) scores the generated
    answers on ``val_path`` (build-data output of the val split); the best weights are restored at the end.
    ``out_dir``: checkpoints go to ``out_dir/checkpoints`` (or ``checkpoint_dir``) every ``cfg.save_every`` steps and
    the final model is exported (``export_model``); ``resume`` continues from the newest checkpoint. Returns the log
    of ``core.training.train`` plus method, example count, trainable / total parameters and exported paths.
    """
    if method not in METHODS:
        raise LatentcheckError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    if not examples:
        raise LatentcheckError("no training examples")
    if lm.profile.kind != "text_imagination":
        raise LatentcheckError(f"profile {lm.profile.name!r} is not a text-imagination profile; load the base with "
                               "--profile capimagine (or toy-capimagine) so prompts and markers match the data")
    cfg = replace(cfg, freeze_vision=True)
    if not cfg.eval_every and cfg.save_every:
        cfg = replace(cfg, eval_every=cfg.save_every)
    peft_model = prepare_model(lm, method, lora, seed=cfg.seed)
    evaluate = val_evaluator(lm, val_path, eval_batch_size, val_limit, accelerator) if val_path else None
    ckdir = Path(checkpoint_dir) if checkpoint_dir else (Path(out_dir) / "checkpoints" if out_dir else None)
    if resume and ckdir is None:
        raise LatentcheckError("resume needs out_dir (or checkpoint_dir) holding the checkpoints")
    log = train(lm, examples, cfg, on_step=on_step, evaluate=evaluate, checkpoint_dir=ckdir, resume=resume,
                accelerator=accelerator, stop_after=stop_after)
    params = list(lm.model.parameters())
    log.update(method=method, n_examples=len(examples), val_path=str(val_path) if val_path else None,
               trainable_params=sum(p.numel() for p in params if p.requires_grad),
               total_params=sum(p.numel() for p in params), config=asdict(cfg),
               lora=asdict(lora or LoraSettings()) if method != "full" else None)
    is_main = accelerator is None or accelerator.is_main_process
    if out_dir is not None and is_main:
        from latentcheck.core.records import write_json_atomic

        if not log["stopped_early"]:
            card = {k: log.get(k) for k in ("method", "n_examples", "steps_done", "best_score", "best_step",
                                             "trainable_params", "total_params", "config", "lora")}
            log["exported"] = export_model(lm, out_dir, method, peft_model, merge=merge,
                                           card={**card, "trainer": "latentcheck.core.training.train",
                                                 "val": str(val_path) if val_path else None})
        write_json_atomic(Path(out_dir) / "train_log.json", log)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return log


def default_train_profile(model: str) -> str:
    """``toy-capimagine`` for toy zoo models and toy checkpoints, ``capimagine`` otherwise."""
    if model.startswith("toy-"):
        return "toy-capimagine"
    cfg = Path(model).expanduser() / "config.json"
    if cfg.exists():
        try:
            declared = json.loads(cfg.read_text()).get("latentcheck_profile") or ""
        except (OSError, json.JSONDecodeError):
            declared = ""
        if str(declared).startswith("toy-"):
            return "toy-capimagine"
    return "capimagine"
