"""caption-imagine training: examples from build-data output, full / LoRA / QLoRA fine-tuning on a tiny model,
exact adapter/model reloads, resumable checkpoints (interrupted + resumed = uninterrupted, bit for bit), best-weight
restore."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Engine, Request
from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.loader import load_model
from latentcheck.core.prompts import build_prompt, task_text
from latentcheck.core.tasks import Task
from latentcheck.toy.world import MAIN_QUESTION_TYPES, make_samples, write_world
from latentcheck.core.training import TrainConfig, latest_checkpoint, resolve_prompt, train
from latentcheck.imagine.build_data import MetadataCaptioner, build_data
from latentcheck.imagine.train import export_model, sft_examples_from_file, train_sft

PROFILE = "toy-capimagine"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """build-data output of a tiny toy world: (train.jsonl, val.jsonl, world folder)."""
    root = tmp_path_factory.mktemp("ci-world")
    write_world(root / "world", n_train=8, n_val=4, n_test=0, seed=0)
    for split in ("train", "val"):
        counts = build_data(root / "world" / f"interleaved_{split}.json", "monet-sft", root / f"{split}.jsonl",
                            MetadataCaptioner())
        assert counts["kept"] == counts["read"]
    return root / "train.jsonl", root / "val.jsonl", root / "world"


@pytest.fixture(scope="module")
def fresh(tiny_checkpoint):
    """Factory: a freshly loaded tiny toy checkpoint (training mutates it, so never the cached one)."""
    path = str(tiny_checkpoint("toy", PROFILE))

    def make(quant: str = "none"):
        return load_model(path, profile=PROFILE, device="cpu", quant=quant)

    return make


def _logits(lm, world, n: int = 3) -> np.ndarray:
    """Logits of the first n greedy steps on a fixed world sample (engine path)."""
    s = make_samples(1, "train")[0]
    prompt = build_prompt(lm, s.id, task_text(Task(s.id, s.question, options=s.options), lm.profile), s.image)
    return Engine(lm, capture_logits=True).run([Request(prompt, max_new_tokens=n)])[0][0].logits


def _params(lm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def test_examples_match_task_prompts_and_response(fresh, data):
    lm = fresh()
    train_path = data[0]
    exs = sft_examples_from_file(lm, train_path)
    eager = sft_examples_from_file(lm, train_path, lazy=False)
    recs = [json.loads(line) for line in train_path.read_text().splitlines()]
    samples = make_samples(8, "train", 0, MAIN_QUESTION_TYPES)  # what write_world puts in its files
    assert len(exs) == len(recs) == 8
    for s, ex, ex2, rec in zip(samples, exs, eager, recs):
        # the record's question already carries the boxed instruction: it is not appended twice, so the training
        # prompt equals the inference prompt of the same task under the profile
        want = build_prompt(lm, s.id, task_text(Task(s.id, s.question, options=s.options), lm.profile), s.image)
        got = resolve_prompt(ex).prompt
        assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.pixel_values, want.pixel_values)
        assert torch.equal(ex2.prompt.input_ids, want.input_ids)
        shape = s.meta["target"]["shape"]
        assert rec["response"] == (f"I will zoom in on the {shape}. <imagine>{s.caption}</imagine> "
                                   f"The answer is \\boxed{{{s.answer}}}.")
        assert lm.tokenizer.decode(ex.response_ids) == rec["response"] + "<|im_end|>"
        assert all(ex.loss_mask) and len(ex.loss_mask) == len(ex.response_ids)


def test_bad_records_name_the_record_and_field(fresh, tmp_path):
    lm = fresh()
    p = tmp_path / "bad.jsonl"
    good = {"id": "a", "question": "Q?", "image": None, "response": "<imagine>x</imagine> \\boxed{A}"}
    lines = [good, {"id": "b", "question": "Q?", "image": None},
             {"id": "c", "question": "Q?", "image": "img/missing.png", "response": "r"}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(RecordError) as e:
        sft_examples_from_file(lm, p)
    assert e.value.record == "bad.jsonl:2 (id=b)" and e.value.field == "response"
    errors: list = []
    exs = sft_examples_from_file(lm, p, strict=False, errors=errors)
    assert [x.meta["id"] for x in exs] == ["a"]
    assert [(x.record, x.field) for x in errors] == [("bad.jsonl:2 (id=b)", "response"),
                                                     ("bad.jsonl:3 (id=c)", "image")]


def test_full_finetune_learns_freezes_vision_and_reloads_exactly(fresh, data, tmp_path):
    lm = fresh()
    before = _params(lm)
    exs = sft_examples_from_file(lm, data[0])[:2]
    log = train_sft(lm, exs, TrainConfig(steps=4, batch_size=2, lr=2e-3, warmup=0), out_dir=tmp_path)
    assert log["losses"][-1] < log["losses"][0]
    after = _params(lm)
    vis = [n for n in before if n.startswith("model.visual.")]
    assert vis and all(torch.equal(before[n], after[n]) for n in vis)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    reloaded = load_model(str(tmp_path / "model"), device="cpu", quant="none")
    assert reloaded.profile.name == PROFILE  # recorded in the exported config
    assert np.array_equal(_logits(reloaded, data[2]), _logits(lm, data[2]))


def test_lora_trains_only_adapters_and_the_adapter_reloads_exactly(fresh, data, tmp_path):
    from peft import PeftModel

    lm = fresh()
    before = _params(lm)
    exs = sft_examples_from_file(lm, data[0])[:2]
    log = train_sft(lm, exs, TrainConfig(steps=4, batch_size=2, lr=5e-3, warmup=0), method="lora",
                    out_dir=tmp_path / "a", merge=False)
    assert log["losses"][-1] < log["losses"][0]
    after = dict(lm.model.named_parameters())
    lora = [n for n in after if "lora_" in n]
    assert lora and not any(".visual." in n for n in lora)  # exclude_modules kept the vision MLPs out
    base_names = {n.replace(".base_layer", ""): n for n in after if "lora_" not in n}
    assert set(base_names) == set(before)
    assert all(torch.equal(before[n], after[m]) for n, m in base_names.items())
    assert log["trainable_params"] == sum(after[n].numel() for n in lora)
    trained = _logits(lm, data[2])
    base = fresh()
    assert not np.array_equal(_logits(base, data[2]), trained)
    pm = PeftModel.from_pretrained(base.model, str(tmp_path / "a" / "adapter"))
    assert np.array_equal(_logits(base, data[2]), trained)
    # merged export of the same adapter: a plain checkpoint with (numerically) the same function
    export_model(base, tmp_path / "b", "lora", pm, merge=True)
    merged = load_model(str(tmp_path / "b" / "model"), device="cpu", quant="none")
    np.testing.assert_allclose(_logits(merged, data[2]), trained, atol=1e-4)


def test_qlora_one_step_smoke_on_cpu(fresh, data, tmp_path):
    with pytest.raises(LatentcheckError, match="4-bit"):
        train_sft(fresh(), sft_examples_from_file(fresh(), data[0])[:1], TrainConfig(steps=1), method="qlora")
    lm = fresh("4bit")
    assert any(type(m).__name__ == "Linear4bit" for m in lm.model.modules())
    exs = sft_examples_from_file(lm, data[0])[:2]
    log = train_sft(lm, exs, TrainConfig(steps=2, batch_size=2, lr=5e-3, warmup=0), method="qlora",
                    out_dir=tmp_path)
    assert np.isfinite(log["losses"]).all() and len(log["losses"]) == 2
    lora_b = [p for n, p in lm.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().sum()) > 0 for p in lora_b)  # LoRA B starts at zero: it trained
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    merged = load_model(str(tmp_path / "model"), device="cpu", quant="none")
    assert np.isfinite(_logits(merged, data[2])).all()


def test_resume_after_interruption_gives_the_uninterrupted_weights(fresh, data, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=3, lr=2e-3, warmup=1, save_every=2, seed=1)
    train_path, val_path = data[0], data[1]

    def run(out, **kw):
        lm = fresh()
        log = train_sft(lm, sft_examples_from_file(lm, train_path), cfg, val_path=val_path, out_dir=out, **kw)
        return lm, log

    lm_a, log_a = run(tmp_path / "A")
    want = _params(lm_a)

    class Interrupt(Exception):
        pass

    def boom(step, stats):
        if step == 4:  # the 5th step finished, its checkpoint (every 2) not yet written
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "B", on_step=boom)
    ck = tmp_path / "B" / "checkpoints"
    assert latest_checkpoint(ck).name == "step-0000004"
    (ck / ".tmp-step-0000006-999").mkdir()  # a save torn by a crash is ignored
    lm_b, log_b = run(tmp_path / "B", resume=True)
    assert log_b["resumed_from"] == 4 and log_b["steps_done"] == 6
    assert log_b["losses"] == log_a["losses"] and log_b["evals"] == log_a["evals"]
    assert log_b["best_step"] == log_a["best_step"]
    got = _params(lm_b)
    assert all(torch.equal(want[n], got[n]) for n in want)

    _, log_c = run(tmp_path / "C", stop_after=3)  # a time-boxed job
    assert log_c["stopped_early"] and log_c["steps_done"] == 3 and "exported" not in log_c
    assert not (tmp_path / "C" / "model").exists()
    lm_c, log_c2 = run(tmp_path / "C", resume=True)
    assert log_c2["resumed_from"] == 3 and log_c2["losses"] == log_a["losses"]
    got = _params(lm_c)
    assert all(torch.equal(want[n], got[n]) for n in want)


@pytest.mark.parametrize("on_disk", [False, True])
def test_best_evaluated_weights_are_restored(fresh, data, tmp_path, on_disk):
    lm = fresh()
    exs = sft_examples_from_file(lm, data[0])
    scores = iter([0.2, 0.9, 0.5])  # planted: the evaluation after step 4 is the best
    snap = {}

    def on_step(step, stats):
        if step == 3:
            snap.update(_params(lm))

    cfg = TrainConfig(steps=6, batch_size=2, lr=2e-3, warmup=0, eval_every=2, save_every=2, freeze_vision=True)
    log = train(lm, exs, cfg, on_step=on_step, evaluate=lambda: next(scores),
                checkpoint_dir=tmp_path if on_disk else None)
    assert log["best_step"] == 4 and log["best_score"] == 0.9
    assert [e["step"] for e in log["evals"]] == [2, 4, 6]
    got = _params(lm)
    assert all(torch.equal(snap[n], got[n]) for n in snap)
    assert (tmp_path / "best" / "trainable.safetensors").exists() == on_disk


def test_early_stop_at_target_is_kept_across_resume(fresh, data, tmp_path):
    lm = fresh()
    exs = sft_examples_from_file(lm, data[0])
    cfg = TrainConfig(steps=8, batch_size=2, lr=2e-3, warmup=0, eval_every=2, freeze_vision=True, target_score=0.5)
    scores = iter([0.1, 0.6])
    log = train(lm, exs, cfg, evaluate=lambda: next(scores), checkpoint_dir=tmp_path)
    assert log["reached_target_at"] == 4 and log["steps_done"] == 4 and log["best_step"] == 4
    want = _params(lm)
    lm2 = fresh()
    log2 = train(lm2, exs, cfg, evaluate=lambda: pytest.fail("no training after the target"),
                 checkpoint_dir=tmp_path, resume=True)
    assert log2["reached_target_at"] == 4 and log2["steps_done"] == 4 and len(log2["losses"]) == 4
    got = _params(lm2)
    assert all(torch.equal(want[n], got[n]) for n in want)


def test_accelerator_path_matches_the_plain_loop(fresh, data):
    from accelerate import Accelerator

    cfg = TrainConfig(steps=3, batch_size=2, lr=2e-3, warmup=0, freeze_vision=True)
    outs = []
    for acc in (None, Accelerator(cpu=True)):
        lm = fresh()
        log = train(lm, sft_examples_from_file(lm, data[0]), cfg, accelerator=acc)
        outs.append((log["losses"], _params(lm)))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(outs[0][1][n], outs[1][1][n]) for n in outs[0][1])


def test_micro_batches_accumulate_to_the_same_update(fresh, data):
    cfg = TrainConfig(steps=1, batch_size=4, lr=2e-3, warmup=0, grad_clip=1e9, freeze_vision=True)
    outs = []
    for micro in (0, 1, 3):  # whole batch, 4 x 1, 3 + 1 (unequal chunks are weighted by size)
        lm = fresh()
        log = train(lm, sft_examples_from_file(lm, data[0]), TrainConfig(**{**cfg.__dict__, "micro_batch": micro}))
        grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
        outs.append((log["losses"], grads))
    assert outs[0][1]
    for losses, grads in outs[1:]:  # the mean loss and the gradient of the step (not just Adam's normalised step)
        np.testing.assert_allclose(losses, outs[0][0], rtol=1e-6)
        assert grads.keys() == outs[0][1].keys()
        for n, g in grads.items():
            torch.testing.assert_close(g, outs[0][1][n], rtol=1e-4, atol=1e-7)


def test_latest_checkpoint_skips_incomplete_folders(tmp_path):
    (tmp_path / "step-0000002").mkdir()
    (tmp_path / "step-0000002" / "trainer_state.json").write_text("{}")
    (tmp_path / "step-0000004").mkdir()  # no trainer_state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-0000002"
    (tmp_path / "latest").write_text("step-0000009\n")  # dangling pointer
    assert latest_checkpoint(tmp_path).name == "step-0000002"
    shutil.rmtree(tmp_path / "step-0000002")
    assert latest_checkpoint(tmp_path) is None


def test_resume_never_unpickles_a_planted_checkpoint_file(fresh, data, tmp_path):
    """Before: `caption-imagine train --resume` read checkpoints/step-*/rng.pt with torch.load(weights_only=False) and
    a planted file ran its payload. Checkpoints now hold JSON + safetensors; a format-1 .pt file is read with
    weights_only=True, which refuses the payload with a clear error."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PAYLOAD-RAN'}",))

    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup=1, save_every=2, seed=0)
    lm = fresh()
    train_sft(lm, sft_examples_from_file(lm, data[0]), cfg, out_dir=tmp_path / "run", stop_after=2)
    ck = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert {"rng.json", "rng.safetensors", "optimizer.json", "scheduler.json"} <= {f.name for f in ck.iterdir()}
    assert not list(ck.glob("*.pt"))
    for f in ck.glob("rng.*"):
        f.unlink()
    torch.save({"numpy": Payload()}, ck / "rng.pt")
    lm = fresh()
    with pytest.raises(LatentcheckError, match=r"cannot read checkpoint file .*rng.pt: UnpicklingError"):
        train_sft(lm, sft_examples_from_file(lm, data[0]), cfg, out_dir=tmp_path / "run", resume=True)
    assert not (tmp_path / "PAYLOAD-RAN").exists()
