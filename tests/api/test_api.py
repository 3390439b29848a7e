"""The Python API as a notebook uses it: a model loaded with transformers, tasks as an in-memory list with PIL images,
no output folder, a DataFrame back; and an intervention registered from outside the package."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def samples():
    from latentcheck.toy.world import make_samples

    return make_samples(6, "test", seed=3)


@pytest.fixture(scope="module")
def hf_model():
    """The toy-latent checkpoint loaded the way a notebook would: transformers directly, no latentcheck loader."""
    import torch
    from transformers import AutoModelForImageTextToText

    from latentcheck.core.loader import resolve_model_path

    path = resolve_model_path("toy-latent")
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def task_dicts(samples):
    return [{"id": s.id, "image": s.image, "question": s.question, "options": s.options, "answer": s.answer}
            for s in samples]


def test_notebook_perturb_latent_on_in_memory_tasks_with_a_preloaded_model(samples, hf_model, tmp_path):
    import latentcheck
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.latents import run_perturb_latent

    res = latentcheck.perturb_latent(hf_model, task_dicts(samples), ["zero", "scale:alpha=0.5"], mediation="none",
                                     n_boot=200, seed=1, batch_size=4)
    assert isinstance(res, latentcheck.AnalysisResult) and res.exit_code == 0 and res.counts["ok"] == 6
    tmp_folder = Path(res.out_dir)
    assert tmp_folder.is_dir() and (tmp_folder / "samples.csv").is_file()
    df = res.to_pandas()
    assert {"key", "section", "condition", "answer", "correct", "logp_gold"} <= set(df.columns)
    assert not any(ch in c for c in df.columns for ch in ":=.")  # plain column names
    assert sorted(df.key.unique()) == sorted(s.id for s in samples)
    assert sorted(df[df.section == "interventions"].condition.unique()) == ["scale:alpha=0.5", "zero"]
    base = df[df.section == "baseline"]
    assert len(base) == 6 and base.correct.mean() == pytest.approx(res.summary["baseline"]["accuracy"]["estimate"])
    # oracle: the same tasks as a JSONL file with PNG images, through the CLI's path (the one loader, load_model)
    data = tmp_path / "tasks.jsonl"
    with open(data, "w") as fh:
        for s in samples:
            s.image.save(tmp_path / f"{s.id}.png")
            fh.write(json.dumps({"id": s.id, "image": f"{s.id}.png", "question": s.question, "options": s.options,
                                 "answer": s.answer}) + "\n")
    ref = run_perturb_latent(CommonOptions(model="toy-latent", data=str(data), out=str(tmp_path / "ref"), seed=1,
                                           batch_size=4, quiet=True), ["zero", "scale:alpha=0.5"],
                             mediation="none", n_boot=200, plots=False)
    ref_df = ref.to_pandas().set_index(["key", "section", "condition"]).sort_index()
    got = df.set_index(["key", "section", "condition"]).sort_index()
    assert list(got.index) == list(ref_df.index)
    assert list(got.answer) == list(ref_df.answer) and list(got.correct) == list(ref_df.correct)
    np.testing.assert_allclose(got.logp_gold.astype(float), ref_df.logp_gold.astype(float), atol=1e-3)
    # the temporary run folder lives as long as the result
    del res, df
    gc.collect()
    assert not tmp_folder.exists()


def test_tasks_from_a_datasets_dataset_and_bad_rows_become_error_records(samples, hf_model, tmp_path):
    datasets = pytest.importorskip("datasets")
    import latentcheck

    rows = task_dicts(samples[:3])
    ds = datasets.Dataset.from_list([{**r, "image": r["image"]} for r in rows],
                                    features=datasets.Features({"id": datasets.Value("string"),
                                                                "image": datasets.Image(),
                                                                "question": datasets.Value("string"),
                                                                "options": datasets.Sequence(datasets.Value("string")),
                                                                "answer": datasets.Value("string")}))
    res = latentcheck.perturb_latent(hf_model, ds, ["zero"], mediation="none", n_boot=100, out=tmp_path / "ds")
    assert res.counts["ok"] == 3 and (tmp_path / "ds" / "samples.parquet").is_file()
    # a saved dataset read by every analysis through --data hf:FOLDER (no download)
    ds.save_to_disk(str(tmp_path / "saved"))
    from latentcheck.core.tasks import Task, read_tasks

    tasks = [t for t in read_tasks(f"hf:{tmp_path / 'saved'}") if isinstance(t, Task)]
    assert [t.id for t in tasks] == [r["id"] for r in rows] and all(Path(t.image).is_file() for t in tasks)
    bad = task_dicts(samples[:2]) + [{"id": "broken", "question": "", "options": ["a", "b"], "answer": "A"}]
    res = latentcheck.perturb_latent(hf_model, bad, ["zero"], mediation="none", n_boot=100)
    assert res.counts["ok"] == 2 and res.errors == 1 and res.exit_code == 3
    err = res.to_pandas().query("section == 'error'").iloc[0]
    assert err.field == "question" and err.record == "tasks.jsonl:3 (id=broken)"


def test_custom_intervention_registered_from_outside_the_package(samples, hf_model, tmp_path):
    """A user's own intervention, defined here (not in latentcheck), runs by name and equals its built-in twin."""
    import latentcheck
    from latentcheck.core.interventions import REGISTRY

    @latentcheck.register_intervention("user_halve", "vector", "multiply every fed-back latent by 0.5")
    def user_halve(v, steps, ctx, spec, seed):
        return v * 0.5

    try:
        res = latentcheck.perturb_latent(hf_model, task_dicts(samples[:4]), ["user_halve", "scale:alpha=0.5"],
                                         mediation="none", n_boot=100)
        df = res.to_pandas().query("section == 'interventions'").set_index(["key", "condition"])
        mine, twin = df.xs("user_halve", level="condition"), df.xs("scale:alpha=0.5", level="condition")
        assert list(mine.answer) == list(twin.answer)
        np.testing.assert_array_equal(mine.logp_gold.astype(float), twin.logp_gold.astype(float))
        assert [r["label"] for r in res.summary["interventions"]] == ["user_halve", "scale:alpha=0.5"]
    finally:
        REGISTRY.remove("user_halve")


def test_bench_from_python_equals_the_file_path(samples, hf_model, tmp_path):
    """bench on an in-memory list with a preloaded HF model: the same replies as the file path through the one
    loader, the DataFrame agrees with the summary, and results.json (lmms-eval's shape) is there while the result
    lives."""
    import latentcheck
    from latentcheck.bench.runner import run_bench
    from latentcheck.core.runner import CommonOptions

    res = latentcheck.benchmark(hf_model, task_dicts(samples), interventions=["zero"], n_boot=100, batch_size=4,
                                decoding={"max_new_tokens": 6})
    assert isinstance(res, latentcheck.AnalysisResult) and res.counts["ok"] == 6 and res.command == "bench"
    df = res.to_pandas()
    base = df[df.section == "baseline"]
    assert len(base) == 6 and base.correct.mean() == pytest.approx(res.summary["scores"]["estimate"])
    assert sorted(df[df.section == "interventions"].condition.unique()) == ["zero"]
    assert json.loads(Path(res.lmms_path).read_text())["results"]["generic"]["alias"] == "generic"
    data = tmp_path / "tasks.jsonl"
    with open(data, "w") as fh:
        for s in samples:
            s.image.save(tmp_path / f"{s.id}.png")
            fh.write(json.dumps({"id": s.id, "image": f"{s.id}.png", "question": s.question, "options": s.options,
                                 "answer": s.answer}) + "\n")
    ref = run_bench(CommonOptions(model="toy-latent", data=str(data), out=str(tmp_path / "ref"), batch_size=4,
                                  quiet=True), interventions=["zero"], n_boot=100, decoding={"max_new_tokens": 6})
    got = df.set_index(["key", "section", "condition"]).sort_index()
    want = ref.to_pandas().set_index(["key", "section", "condition"]).sort_index()
    assert list(got.index) == list(want.index) and list(got.reply) == list(want.reply)
    assert list(got.correct) == list(want.correct)


def test_caption_imagine_from_python_with_a_model_path_and_a_generator(samples, tmp_path):
    import latentcheck

    rows = (t for t in task_dicts(samples[:4]))  # any iterable, consumed once
    res = latentcheck.caption_imagine("toy-capimagine", rows, decoding={"max_new_tokens": 24})
    assert res.command == "caption-imagine run" and res.counts["ok"] == 4
    df = res.to_pandas()
    assert sorted(df.key.unique()) == sorted(s.id for s in samples[:4])
    assert df.correct.mean() == pytest.approx(res.summary["accuracy"]["accuracy"]
                                              if "accuracy" in res.summary["accuracy"]
                                              else res.summary["accuracy"]["estimate"])


def test_audit_from_python_one_model_and_two_side_by_side(samples, tiny_checkpoint, tmp_path):
    import latentcheck
    from latentcheck.audit.audit import AuditResult, ZooAuditResult

    tasks = task_dicts(samples[:4])
    one = latentcheck.audit_model(str(tiny_checkpoint("toy", "toy-bypass")), tasks, stages=["perturb_input"],
                                  limits={"perturb_input": 4}, n_boot=50, force_latent=True)
    assert isinstance(one, AuditResult) and (Path(one.out) / "audit.json").is_file()
    df = one.to_pandas()
    assert list(df.link) == list(one.verdicts) and set(df.link) >= {"xz", "zy", "encodes", "overall"}
    assert list(df.verdict) == [v.verdict for v in one.verdicts.values()]
    both = latentcheck.audit_model({"latent": str(tiny_checkpoint("toy", "toy-latent")),
                                    "bypass": str(tiny_checkpoint("toy", "toy-bypass"))}, tasks,
                                   stages=["perturb_input"], limits={"perturb_input": 4}, n_boot=50,
                                   force_latent=True, out=tmp_path / "both")
    assert isinstance(both, ZooAuditResult) and [r.model for r in both.results] == ["latent", "bypass"]
    frame = both.to_pandas()
    assert list(frame.model.unique()) == ["latent", "bypass"]
    doc = json.loads((tmp_path / "both" / "audit.json").read_text())
    overall = frame[frame.link == "overall"].set_index("model").verdict
    assert {r["model"]: r["overall"] for r in doc["comparison"]} == overall.to_dict()
