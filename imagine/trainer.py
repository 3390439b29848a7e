"""``caption-imagine train`` on the Hugging Face ``Trainer`` (paper §5.3 at real scale).

Why the HF ``Trainer`` and not TRL's ``SFTTrainer``: CapImagine SFT is plain next-token cross-entropy on the
assistant turn, which the ``Trainer`` does. What ``SFTTrainer`` adds on top (dataset formatting through the
processor's chat template, packing, completion-only masks) would all be replaced here, because the prompt must be
built exactly as latentcheck builds it at inference (``core/prompts.build_prompt`` with the model's profile) and the
labels must cover exactly the assistant turn. ``SFTTrainer`` is a ``Trainer`` subclass, so mixed precision,
gradient checkpointing, DeepSpeed / FSDP (through ``accelerate launch --config_file``), W&B / TensorBoard logging,
schedules, checkpoint rotation and best-model selection are the same machinery either way.

Data (``SFTDataset`` + ``SFTCollator``): per build-data record the prompt ids of ``build_prompt`` (images expanded,
pixel values from the same fast path as the engine) followed by the tokenized response + ``<|im_end|>``; labels are
-100 on the prompt and the response tokens themselves on the assistant turn (the imagination spans included: they
are part of the response). Batches are right-padded (labels -100, attention 0) and the model's own forward computes
the mRoPE positions; ``tests/imagine/test_trainer.py`` checks that this loss equals the engine-based teacher-forced
loss of ``core/training.example_loss`` (the prefill the engine decodes with). ``--max-length``: a response is cut to
fit; a record whose prompt alone reaches the limit (images are never cut) is skipped with an error record naming it.

Precision: ``bf16`` = autocast with fp32 master weights (the model is loaded in fp32; the optimizer updates fp32
weights), ``fp32``, ``fp16`` (CUDA only), ``auto`` = bf16 on a bf16-capable GPU, fp32 on CPU. QLoRA keeps its 4-bit
base (compute dtype bf16 on GPU) and fp32 adapters.

Checkpoints (``out/checkpoints/checkpoint-N``, every ``save_every`` steps, the newest ``keep_checkpoints`` plus the
best one kept): model or adapter weights (safetensors), ``optimizer.pt`` / ``scheduler.pt`` (plain tensor state,
loaded by the Trainer with ``torch.load(weights_only=True)``), the RNG states as ``rng_state.json`` +
``rng_state.safetensors`` (no pickle; the Trainer's ``rng_state.pth`` is not written), ``trainer_state.json`` and
``training_args.json`` (the Trainer's pickled ``training_args.bin`` is not written). ``trainer_state.json`` is written
last, so ``resume`` takes the newest checkpoint that has it (a folder torn by a kill is ignored). DeepSpeed and FSDP
write their engines' own sharded state instead (their formats, their loaders).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from latentcheck.core.errors import LatentcheckError, RecordError

if TYPE_CHECKING:  # pragma: no cover
    from latentcheck.imagine.train import LoraSettings

ACCELERATE_CONFIGS_DIR = Path(__file__).resolve().parent / "accelerate_configs"
ACCELERATE_CONFIGS = ("zero2", "zero3", "fsdp")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
REPORT_TO = ("none", "tensorboard", "wandb")
BEST_METRICS = ("accuracy", "loss")
SCHEDULERS = ("cosine", "cosine_with_min_lr", "linear", "constant_with_warmup")
PRESETS = ("7b", "toy")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainSettings:
    """Hyper-parameters of ``caption-imagine train``. Defaults: the ``7b`` preset (see ``preset``)."""

    epochs: float = 4.0
    max_steps: int = -1  # > 0: this many optimizer steps (overrides epochs)
    lr: float = 1e-5
    batch_size: int = 128  # global (effective) batch: micro_batch x processes x accumulation
    micro_batch: int = 1  # examples per forward pass on each process
    warmup_ratio: float = 0.03
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    scheduler: str = "cosine"
    min_lr_rate: float = 0.1  # cosine_with_min_lr: the floor as a fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 4096
    precision: str = "auto"
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU
    save_every: int = 100
    eval_every: int = 0  # 0: at every checkpoint
    keep_checkpoints: int = 2
    best_metric: str = "accuracy"
    report_to: str = "none"
    seed: int = 0
    target_score: float | None = None
    logging_steps: int = 1
    dataloader_workers: int = 0


def preset(name: str) -> TrainSettings:
    """``7b``: the paper's setting as far as known (paper.md §5.3: Monet's codebase and stage-1 script — lr 1e-5,
    effective batch 128 via accumulation, 4 epochs, max length 4096; bf16 with gradient checkpointing on GPU).
    ``toy``: the zoo's recipe for tiny models (lr 1e-3, 900 steps, batch 32, 30 warm-up steps, cosine to 10%)."""
    if name == "7b":
        return TrainSettings()
    if name == "toy":
        return TrainSettings(epochs=1.0, max_steps=900, lr=1e-3, batch_size=32, micro_batch=32, warmup_ratio=0.0,
                             warmup_steps=30, scheduler="cosine_with_min_lr", weight_decay=0.01, max_length=1024,
                             precision="fp32", gradient_checkpointing=False, save_every=50)
    raise LatentcheckError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")


def accelerate_config_path(name: str) -> Path:
    """The shipped ``accelerate launch --config_file`` file ``zero2`` / ``zero3`` / ``fsdp``."""
    if name not in ACCELERATE_CONFIGS:
        raise LatentcheckError(f"unknown accelerate config {name!r} (shipped: {', '.join(ACCELERATE_CONFIGS)})")
    return ACCELERATE_CONFIGS_DIR / f"{name}.yaml"


def check_accelerate_config(name_or_path: str) -> dict:
    """Validate an accelerate config file as ``accelerate launch --config_file`` would use it: accelerate's own
    parser and environment preparation, then the plugin accelerate builds from that environment (and, for DeepSpeed
    with the ``deepspeed`` package installed, the Trainer's filling of the "auto" values). Returns a summary."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = accelerate_config_path(name_or_path) if name_or_path in ACCELERATE_CONFIGS else Path(name_or_path)
    if not path.is_file():
        raise LatentcheckError(f"unknown accelerate config {name_or_path!r} (shipped: {', '.join(ACCELERATE_CONFIGS)}"
                               ", or a file path)")
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "latentcheck"])
    args, defaults, _ = _validate_launch_command(args)
    info: dict[str, Any] = {"path": str(path), "num_processes": args.num_processes,
                            "mixed_precision": args.mixed_precision}
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(list(defaults.deepspeed_config) + ["mixed_precision"])
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp:
        env = prepare_multi_gpu_env(args)
    else:
        raise LatentcheckError(f"{path} configures neither DeepSpeed nor FSDP")
    env = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        if args.use_deepspeed:
            from accelerate.utils import DeepSpeedPlugin

            plugin = DeepSpeedPlugin()
            info.update(distributed_type="DEEPSPEED", zero_stage=plugin.zero_stage,
                        deepspeed_config=plugin.deepspeed_config)
            try:
                import deepspeed  # noqa: F401  (the Trainer's DeepSpeed config needs the package)
                from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
            except ImportError:
                info["trainer_filled"] = None
            else:
                from transformers import TrainingArguments

                ta = TrainingArguments(output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "latentcheck-ds-check"),
                                       per_device_train_batch_size=1, gradient_accumulation_steps=16,
                                       learning_rate=1e-5, bf16=False, use_cpu=True, report_to=[])
                hf = HfTrainerDeepSpeedConfig(dict(plugin.deepspeed_config))
                hf.trainer_config_process(ta)
                info["trainer_filled"] = hf.config
        else:
            from accelerate.utils import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin()
            info.update(distributed_type="FSDP", fsdp_version=plugin.fsdp_version,
                        transformer_cls_names_to_wrap=plugin.transformer_cls_names_to_wrap,
                        state_dict_type=str(plugin.state_dict_type))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return info


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Feature:
    """One tokenized training example."""

    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: Any = None
    image_grid_thw: Any = None
    cut: bool = False  # the response was cut to fit max_length
    positions: Any = None  # LongTensor [3, L]: the engine's mRoPE positions of the prompt, continued for the response


def record_feature(lm, rec, max_length: int, max_pixels: int | None = None) -> Feature:
    """Prompt ids + response ids, labels only on the response (the assistant turn); the response is cut to
    ``max_length``. A prompt that alone reaches ``max_length`` raises a RecordError (images are never cut)."""
    from latentcheck.core.tasks import DEFAULT_MAX_PIXELS
    from latentcheck.imagine.train import record_prompt, response_ids

    prompt = record_prompt(lm, rec, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    ids = prompt.input_ids.tolist()
    resp = response_ids(lm, rec.response)
    room = max_length - len(ids)
    if room < 1:
        raise RecordError(rec.name, "question", f"the prompt is {len(ids)} tokens (image tokens included), not "
                                                f"shorter than --max-length {max_length}")
    import torch

    cut = len(resp) > room
    resp = resp[:room]
    start = int(prompt.positions.max()) + 1
    tail = (start + torch.arange(len(resp))).view(1, -1).expand(3, -1)
    positions = torch.cat([prompt.positions.to(torch.long), tail], 1)
    return Feature(rec.id, ids + resp, [-100] * len(ids) + resp, prompt.pixel_values, prompt.image_grid_thw, cut,
                   positions)


class SFTDataset:
    """Map-style dataset of build-data records; the prompt (images decoded) is built when an item is read."""

    def __init__(self, lm, records: list, max_length: int, max_pixels: int | None = None):
        self.lm, self.records, self.max_length, self.max_pixels = lm, records, max_length, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Feature:
        return record_feature(self.lm, self.records[i], self.max_length, self.max_pixels)


def check_records(lm, records: list, max_length: int, max_pixels: int | None = None
                  ) -> tuple[list, list[RecordError], int]:
    """(records that fit, error records, number of responses cut by ``max_length``): one pass that builds every
    prompt, so a record that cannot be trained on is reported before training instead of failing a step."""
    kept, errors, cut = [], [], 0
    for rec in records:
        try:
            f = record_feature(lm, rec, max_length, max_pixels)
        except RecordError as e:
            errors.append(e)
            continue
        kept.append(rec)
        cut += int(f.cut)
    return kept, errors, cut


@dataclass
class SFTCollator:
    """Right-padded batch: input_ids / attention_mask / labels (-100 on padding), the engine's 3-D mRoPE positions
    (``position_ids`` [3, B, L]; without them transformers 5 falls back to 1-D positions unless ``mm_token_type_ids``
    is passed -- the oracle test catches that), pixel values concatenated and image grids stacked in example order
    (the model scatters them into the image-pad tokens in that order)."""

    pad_id: int

    def __call__(self, feats: list[Feature]) -> dict:
        import torch

        n = max(len(f.input_ids) for f in feats)
        ids = torch.full((len(feats), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(feats), n), -100, dtype=torch.long)
        att = torch.zeros((len(feats), n), dtype=torch.long)
        pos = torch.zeros((3, len(feats), n), dtype=torch.long)
        for i, f in enumerate(feats):
            k = len(f.input_ids)
            ids[i, :k] = torch.tensor(f.input_ids)
            labels[i, :k] = torch.tensor(f.labels)
            att[i, :k] = 1
            pos[:, i, :k] = f.positions
        batch = {"input_ids": ids, "attention_mask": att, "labels": labels, "position_ids": pos}
        pix = [f.pixel_values for f in feats if f.pixel_values is not None]
        if pix:
            batch["pixel_values"] = torch.cat(pix, 0)
            batch["image_grid_thw"] = torch.cat([f.image_grid_thw for f in feats if f.image_grid_thw is not None], 0)
        return batch


# ----------------------------------------------------------------------------------------------- checkpoints
def complete_checkpoints(ckdir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of ``ckdir`` whose ``trainer_state.json`` (written last) exists, oldest first."""
    ckdir = Path(ckdir)
    if not ckdir.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in ckdir.iterdir() if d.is_dir() and (m := _CHECKPOINT.match(d.name))
             and (d / "trainer_state.json").is_file()]
    return [d for _, d in sorted(found)]


def _rng_states() -> tuple[dict, dict]:
    """(JSON-able states, tensors) of python, numpy and torch (CPU and CUDA) RNGs."""
    import numpy as np
    import torch

    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    tensors = {"numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    return meta, tensors


def _set_rng_states(meta: dict, tensors: dict) -> None:
    import numpy as np
    import torch

    v, state, g = meta["python"]
    random.setstate((v, tuple(state), g))
    n = meta["numpy"]
    np.random.set_state((n["name"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _trainer_class():
    """The ``Trainer`` subclass (built lazily: transformers is imported only when training)."""
    from transformers import PreTrainedModel, Trainer
    from transformers.trainer import TRAINING_ARGS_NAME

    class CapImagineTrainer(Trainer):
        """HF Trainer with generation accuracy as the validation metric and a checkpoint with no pickle in it."""

        accuracy_fn: Callable[[], float] | None = None
        has_loss_eval: bool = False

        def _rng_file(self, folder: str) -> str:
            suffix = "" if self.args.world_size <= 1 else f"_{self.args.process_index}"
            return os.path.join(folder, f"rng_state{suffix}")

        def _save_rng_state(self, output_dir: str) -> None:
            from safetensors.torch import save_file

            from latentcheck.core.records import write_json_atomic

            os.makedirs(output_dir, exist_ok=True)
            meta, tensors = _rng_states()
            save_file({k: t.contiguous() for k, t in tensors.items()}, self._rng_file(output_dir) + ".safetensors")
            write_json_atomic(Path(self._rng_file(output_dir) + ".json"), meta)

        def _load_rng_state(self, checkpoint: str | None) -> None:
            if checkpoint is None:
                return
            base = self._rng_file(checkpoint)
            if not (os.path.isfile(base + ".json") and os.path.isfile(base + ".safetensors")):
                raise LatentcheckError(f"checkpoint {checkpoint} has no RNG state {base}.json/.safetensors; resume "
                                       "with the same number of processes it was written with")
            from safetensors.torch import load_file

            _set_rng_states(json.loads(Path(base + ".json").read_text()), load_file(base + ".safetensors"))

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            output_dir = output_dir or self.args.output_dir
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            if (isinstance(model, PreTrainedModel) and not self.is_deepspeed_enabled and not self.is_fsdp_enabled):
                # save_pretrained writes Qwen2.5-VL's original key names ("visual.*", "model.layers.*"), which the
                # Trainer's own reload (resume, best model: a plain load_state_dict) silently fails to match; the
                # checkpoint keeps the module's names instead (from_pretrained reads both)
                if self.args.should_save:
                    from safetensors.torch import save_model

                    os.makedirs(output_dir, exist_ok=True)
                    save_model(model, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
                    model.config.save_pretrained(output_dir)
            else:
                super()._save(output_dir, state_dict)
            pickled = Path(output_dir) / TRAINING_ARGS_NAME
            if self.args.should_save:
                pickled.unlink(missing_ok=True)  # torch.save(TrainingArguments) is a pickle; keep JSON instead
                (Path(output_dir) / "training_args.json").write_text(self.args.to_json_string())

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
            metrics: dict[str, float] = {}
            if self.has_loss_eval:
                metrics.update(super().evaluate(eval_dataset, ignore_keys, metric_key_prefix))
            if self.accuracy_fn is not None:
                self.model.eval()
                metrics[f"{metric_key_prefix}_accuracy"] = float(self.accuracy_fn())
                self.model.train()
                self.log({f"{metric_key_prefix}_accuracy": metrics[f"{metric_key_prefix}_accuracy"]})
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return CapImagineTrainer


def _callbacks(settings: TrainSettings, stop_after: int | None, on_step):
    from transformers import TrainerCallback

    class Control(TrainerCallback):
        """``--stop-after`` (checkpoint, then stop: a time-boxed job), ``--target-score`` (stop once the validation
        accuracy reaches it), and per-step progress."""

        def on_step_end(self, args, state, control, **kw):
            if stop_after is not None and state.global_step >= stop_after and state.global_step < state.max_steps:
                control.should_save = True
                control.should_training_stop = True
                state.stateful_callbacks.setdefault("latentcheck", {})["stopped_after"] = state.global_step
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            if on_step and logs and "loss" in logs:
                on_step(state.global_step - 1, {"loss": float(logs["loss"])})

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            acc = (metrics or {}).get("eval_accuracy")
            if settings.target_score is not None and acc is not None and acc >= settings.target_score:
                control.should_training_stop = True
                control.should_save = True
                state.stateful_callbacks.setdefault("latentcheck", {})["reached_target_at"] = state.global_step
            return control

    return [Control()]


# ----------------------------------------------------------------------------------------------- entry point
def _precision(settings: TrainSettings, device_type: str) -> str:
    import torch

    p = settings.precision
    if p not in PRECISIONS:
        raise LatentcheckError(f"--precision must be one of {', '.join(PRECISIONS)}, got {p!r}")
    if p == "auto":
        return "bf16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if p == "fp16" and device_type != "cuda":
        raise LatentcheckError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return p


def _check(settings: TrainSettings) -> None:
    if settings.best_metric not in BEST_METRICS:
        raise LatentcheckError(f"--best-metric must be one of {', '.join(BEST_METRICS)}")
    if settings.report_to not in REPORT_TO:
        raise LatentcheckError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {settings.report_to!r}")
    if settings.scheduler not in SCHEDULERS:
        raise LatentcheckError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {settings.scheduler!r}")
    for name in ("batch_size", "micro_batch", "max_length"):
        if getattr(settings, name) < 1:
            raise LatentcheckError(f"--{name.replace('_', '-')} must be >= 1")
    if settings.max_steps <= 0 and settings.epochs <= 0:
        raise LatentcheckError("give --epochs > 0 or --steps > 0")


def accumulation(batch_size: int, micro_batch: int, world: int) -> int:
    """Gradient-accumulation steps so that micro_batch x world x steps == batch_size (must divide evenly)."""
    if batch_size % (micro_batch * world):
        raise LatentcheckError(f"--batch-size {batch_size} is not a multiple of --micro-batch {micro_batch} x "
                               f"{world} process(es)")
    return batch_size // (micro_batch * world)


def training_arguments(settings: TrainSettings, out_dir: Path, precision: str, world: int, cpu: bool,
                       has_eval: bool, gradient_checkpointing: bool):
    """The ``transformers.TrainingArguments`` of a run."""
    from transformers import TrainingArguments

    save = settings.save_every if settings.save_every > 0 else None
    eval_every = settings.eval_every or settings.save_every
    kw: dict[str, Any] = {}
    if has_eval:
        kw.update(eval_strategy="steps", eval_steps=eval_every, metric_for_best_model=settings.best_metric,
                  greater_is_better=settings.best_metric == "accuracy", load_best_model_at_end=save is not None,
                  per_device_eval_batch_size=settings.micro_batch)
    if settings.scheduler == "cosine_with_min_lr":
        kw["lr_scheduler_kwargs"] = {"min_lr_rate": settings.min_lr_rate}
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), seed=settings.seed,
        data_seed=settings.seed, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        learning_rate=settings.lr, weight_decay=settings.weight_decay, max_grad_norm=settings.grad_clip,
        lr_scheduler_type=settings.scheduler, warmup_steps=settings.warmup_steps or settings.warmup_ratio,
        per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=accumulation(settings.batch_size, settings.micro_batch, world),
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=cpu,
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        save_strategy="steps" if save else "no", save_steps=save or 500,
        # the newest checkpoint (resume) and the best one are both kept: with a limit of 1 the Trainer keeps only the best
        save_total_limit=max(settings.keep_checkpoints, 2 if has_eval else 1),
        logging_strategy="steps", logging_steps=settings.logging_steps,
        report_to=[] if settings.report_to == "none" else [settings.report_to],
        remove_unused_columns=False, dataloader_num_workers=settings.dataloader_workers,
        ddp_find_unused_parameters=False, ddp_backend="gloo" if cpu and world > 1 else None,
        disable_tqdm=True, **kw)


def hf_train(lm, records: list, settings: TrainSettings, out_dir: str | os.PathLike, *, method: str = "full",
             lora=None, val_records: list | None = None, resume: bool = False, stop_after: int | None = None,
             max_pixels: int | None = None, merge: bool = True, on_step=None, eval_batch_size: int = 16,
             card: dict | None = None) -> dict:
    """Fine-tune ``lm`` on build-data ``records`` with the HF Trainer (module docstring); returns the log, also
    written to ``out_dir/train_log.json``; exports ``out_dir/model`` (and ``adapter/``) unless stopped early."""
    import torch
    from transformers import set_seed

    from latentcheck.core.records import write_json_atomic
    from latentcheck.imagine.train import METHODS, export_model, prepare_model, val_evaluator_records

    _check(settings)
    if method not in METHODS:
        raise LatentcheckError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    if lm.profile.kind != "text_imagination":
        raise LatentcheckError(f"profile {lm.profile.name!r} is not a text-imagination profile; load the base with "
                               "--profile capimagine (or toy-capimagine) so prompts and markers match the data")
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    cpu = lm.device == "cpu"
    precision = _precision(settings, "cpu" if cpu else "cuda")
    gc = settings.gradient_checkpointing if settings.gradient_checkpointing is not None else not cpu
    if settings.best_metric == "loss" and not val_records:
        raise LatentcheckError("--best-metric loss needs --val")
    set_seed(settings.seed)  # before adapters are created: LoRA initialisation follows the seed
    peft_model = prepare_model(lm, method, lora, gradient_checkpointing=gc)
    model = peft_model if peft_model is not None else lm.model
    kept, errors, cut = check_records(lm, records, settings.max_length, max_pixels)
    if not kept:
        raise LatentcheckError(f"no training record fits --max-length {settings.max_length}: "
                               + "; ".join(str(e) for e in errors[:3]))
    if settings.report_to == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "logs"))
    args = training_arguments(settings, out, precision, world, cpu, bool(val_records), gc)
    val_kept: list = []
    if val_records:
        val_kept, val_errors, _ = check_records(lm, val_records, settings.max_length, max_pixels)
        errors += val_errors
    Trainer = _trainer_class()
    trainer = Trainer(model=model, args=args, train_dataset=SFTDataset(lm, kept, settings.max_length, max_pixels),
                      eval_dataset=SFTDataset(lm, val_kept, settings.max_length, max_pixels) if val_kept else None,
                      data_collator=SFTCollator(lm.tokens.pad), callbacks=_callbacks(settings, stop_after, on_step))
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):  # the CLI shows its own progress; logs go to train_log.json
        trainer.remove_callback(cb)
    trainer.has_loss_eval = bool(val_kept) and settings.best_metric == "loss"
    if val_records and settings.best_metric == "accuracy":
        if trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled
                                       and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3):
            raise LatentcheckError("generation accuracy needs whole weights on each process; with ZeRO-3 / FSDP "
                                   "select the best checkpoint by --best-metric loss")
        trainer.accuracy_fn = val_evaluator_records(lm, val_records, eval_batch_size, trainer.accelerator)
    ckpts = complete_checkpoints(out / "checkpoints") if resume else []
    resumed_from = int(_CHECKPOINT.match(ckpts[-1].name).group(1)) if ckpts else None
    result = trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)
    state = trainer.state
    marks = state.stateful_callbacks.get("latentcheck", {}) if isinstance(state.stateful_callbacks, dict) else {}
    stopped = marks.get("stopped_after") == state.global_step and state.global_step < state.max_steps
    hist = state.log_history
    log: dict[str, Any] = {
        "trainer": "transformers.Trainer", "method": method, "n_examples": len(kept), "n_val": len(val_kept),
        "errors": [{"record": e.record, "field": e.field, "message": e.message} for e in errors],
        "responses_cut_by_max_length": cut, "precision": precision, "gradient_checkpointing": gc,
        "processes": world, "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "losses": [h["loss"] for h in hist if "loss" in h and "eval_loss" not in h],
        "evals": [{"step": h["step"], **{k[5:]: v for k, v in h.items() if k.startswith("eval_")
                                         and k[5:] in BEST_METRICS}} for h in hist
                  if any(k in h for k in ("eval_accuracy", "eval_loss"))],
        "best_metric": settings.best_metric if val_records else None, "best_score": state.best_metric,
        "best_step": state.best_global_step, "best_checkpoint": state.best_model_checkpoint,
        "steps_done": state.global_step, "max_steps": state.max_steps, "epochs": state.epoch,
        "resumed_from": resumed_from, "stopped_early": stopped, "reached_target_at": marks.get("reached_target_at"),
        "train_loss": result.training_loss, "seconds": result.metrics.get("train_runtime"),
        "trainable_params": sum(p.numel() for p in lm.model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in lm.model.parameters()),
        "settings": asdict(settings), "lora": asdict(lora) if (lora is not None and method != "full") else None,
    }
    if trainer.is_world_process_zero():
        if not stopped:
            lm.model.eval()
            if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
                trainer.save_model(str(out / "model"))  # gathers sharded weights (zero3_save_16bit_model / FSDP)
                log["exported"] = {"model": str(out / "model")}
            else:
                log["exported"] = export_model(lm, out, method, peft_model, merge=merge,
                                               card={**(card or {}), **_card_summary(log)})
        write_json_atomic(out / "train_log.json", log)
    trainer.accelerator.wait_for_everyone()
    torch.set_grad_enabled(True)
    return log


def _card_summary(log: dict) -> dict:
    keys = ("method", "n_examples", "n_val", "precision", "steps_done", "epochs", "best_metric", "best_score",
            "best_step", "train_loss", "trainable_params", "total_params", "settings", "lora")
    return {k: log.get(k) for k in keys}


def run_train(data: str, out: str, model: str = "toy-direct", profile: str | None = None, method: str = "full",
              val: str | None = None, settings=None, lora: LoraSettings | None = None, resume: bool = False,
              stop_after: int | None = None, limit: int | None = None, val_limit: int | None = None,
              device: str = "auto", max_pixels: int | None = None, trust_remote_code: bool = False,
              merge: bool = True, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """``caption-imagine train``: load the base (fp32 master weights for full/LoRA, 4-bit for QLoRA), read the
    build-data records, fine-tune with the HF Trainer (``imagine/trainer.hf_train``). Returns the training log (also
    ``out/train_log.json``)."""
    from latentcheck.core.loader import load_model
    from latentcheck.core.runner import distributed
    from latentcheck.imagine.train import METHODS, default_train_profile, read_sft_records

    if method not in METHODS:
        raise LatentcheckError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    settings = settings or TrainSettings()
    rank, world = distributed()
    if world > 1 and device == "auto":
        import torch

        if torch.cuda.is_available():  # one GPU per process (DDP / ZeRO / FSDP), not device_map="auto" sharding
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    records = read_sft_records(data, limit=limit)
    val_records = read_sft_records(val, limit=val_limit) if val else None
    lm = load_model(model, profile=profile or default_train_profile(model),
                    quant="4bit" if method == "qlora" else "none", device=device,
                    trust_remote_code=trust_remote_code, max_pixels=max_pixels,
                    dtype=None if method == "qlora" else "float32")
    card = {"data": str(data), "val": str(val) if val else None}
    log = hf_train(lm, records, settings, out, method=method, lora=lora, val_records=val_records, resume=resume,
                   stop_after=stop_after, max_pixels=max_pixels, merge=merge, on_step=on_step, card=card)
    log["base_model"] = lm.describe()
    log.update(card)
    if rank == 0:
        from latentcheck.core.records import write_json_atomic

        write_json_atomic(Path(out) / "train_log.json", log)
    return log
