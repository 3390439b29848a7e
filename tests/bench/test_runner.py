"""bench runner end to end on tiny checkpoints: the prompt the model receives, results.json contents, interventions
(identity == baseline), likelihood ranking vs a direct model(...) computation, the judge (only on failures), resume,
bad input, image localisation, and the paired comparison."""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from latentcheck.bench import get_benchmark
from latentcheck.bench import runner as bench_runner
from latentcheck.bench.compare import compare_runs, load_samples
from latentcheck.bench.registry import PromptVariant
from latentcheck.core.backends import GenParams, make_backend
from latentcheck.bench.judges import Judge
from latentcheck.bench.runner import (localize_task, option_mean_ce, option_reply_ids,
                                      option_reply_text, run_bench)
from latentcheck.core.engine import Engine
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.extract import EXTRACTORS, register_extractor
from latentcheck.core.records import provenance
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import Task

SUFFIX = "Answer with the option's letter from the given choices directly."
Q1 = "What is the color of the woman's bag?"
Q2 = "Is the dog on the left or right side of the bench?"


def _img(seed: int, size=(40, 28)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png(seed: int, size=(40, 28)) -> bytes:
    buf = io.BytesIO()
    _img(seed, size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def toy_tasks(tmp_path):
    """Shared task JSONL: 6 samples in two categories, images as files."""
    rows = []
    for i in range(6):
        (tmp_path / f"img{i}.png").write_bytes(_png(i))
        rows.append({"id": f"s{i}", "image": f"img{i}.png", "question": f"What colour is shape {i}?",
                     "options": ["red", "green", "blue", "yellow"], "answer": "ABCD"[i % 4],
                     "category": "colour" if i % 2 == 0 else "shape"})
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def vstar_dir(tmp_path):
    root = tmp_path / "vstar_bench"
    (root / "direct_attributes").mkdir(parents=True)
    (root / "relative_position").mkdir()
    (root / "direct_attributes" / "sa_1.png").write_bytes(_png(1, (48, 32)))
    (root / "direct_attributes" / "sa_1.json").write_text(json.dumps({
        "target_object": ["bag"], "bbox": [[10, 5, 8, 6]], "question": Q1, "options": ["black", "white", "red",
                                                                                         "blue"]}))
    (root / "relative_position" / "sa_2.png").write_bytes(_png(2, (56, 28)))
    (root / "relative_position" / "sa_2.json").write_text(json.dumps({
        "target_object": ["dog", "bench"], "bbox": [[2, 3, 4, 5]], "question": Q2, "options": ["right", "left"]}))
    lines = [
        {"image": "direct_attributes/sa_1.png", "question_id": 0, "category": "direct_attributes", "label": "A",
         "text": f"{Q1}\n(A) black\n(B) white\n(C) red\n(D) blue\n{SUFFIX}"},
        {"image": "relative_position/sa_2.png", "question_id": 1, "category": "relative_position", "label": "B",
         "text": f"{Q2}\n(A) left\n(B) right\n{SUFFIX}"},
    ]
    (root / "test_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.fixture
def blink_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("idx", pa.string()), ("question", pa.string()), ("sub_task", pa.string())]
                       + [(f"image_{k}", img_t) for k in range(1, 5)]
                       + [("choices", pa.list_(pa.string())), ("answer", pa.string()), ("prompt", pa.string()),
                          ("explanation", pa.string())])
    q = "Which image is the missing part?"
    rows = []
    for i, n_img in enumerate((3, 2)):
        row = {"idx": f"val_Jigsaw_{i}", "question": q, "sub_task": "Jigsaw", "choices": ["the second image",
               "the third image"], "answer": "(A)", "explanation": "",
               "prompt": q + "\nSelect from the following choices.\n\n(A) the second image\n(B) the third image"}
        for k in range(1, 5):
            row[f"image_{k}"] = {"bytes": _png(10 * i + k, (28, 28)), "path": f"{i}_{k}.png"} if k <= n_img else None
        rows.append(row)
    path = tmp_path / "Jigsaw" / "val-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _opts(tmp_path, data, name="run", **kw) -> CommonOptions:
    return CommonOptions(data=str(data), out=str(tmp_path / name), quiet=True, **kw)


def _samples(result) -> list[dict]:
    return load_samples(result["results_path"])[1]


@pytest.fixture
def spy_requests(monkeypatch):
    """Records every Request the benchmark engine receives."""
    seen = []
    orig = Engine.run

    def run(self, requests, *a, **k):
        seen.extend(requests)
        return orig(self, requests, *a, **k)

    monkeypatch.setattr(Engine, "run", run)
    return seen


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("bench_name,variant", [("generic", None), ("generic", "official"), ("vstar", "generate"),
                                                ("vstar", "lmms-eval"), ("vstar", "monet")])
def test_model_receives_the_benchmark_prompt(load_tiny, tmp_path, toy_tasks, vstar_dir, spy_requests, bench_name,
                                             variant):
    lm = load_tiny("toy", "toy-direct")
    data = toy_tasks if bench_name == "generic" else vstar_dir
    res = run_bench(_opts(tmp_path, data, limit=2), bench_name, variant, lm=lm, decoding={"max_new_tokens": 2})
    bench = replace(get_benchmark(bench_name), variants={**get_benchmark(bench_name).variants,
                                                         "profile": bench_runner.profile_variant(lm)})
    tasks = {t.id: t for t in bench.load(data, limit=2)}
    assert len(spy_requests) == 2
    for req in spy_requests:
        task = tasks[req.prompt.key]
        expected = bench.prompt(task, res["variant"]["name"])
        assert lm.tokenizer.decode(req.prompt.input_ids[req.prompt.question_mask]) == expected
        assert int((req.prompt.input_ids == lm.tokenizer.convert_tokens_to_ids("<|vision_start|>")).sum()) == 1
        system = bench.system_prompt(res["variant"]["name"])
        assert (f"<|im_start|>system\n{system}<|im_end|>" in req.prompt.text) == bool(system)
    assert res["variant"]["name"] == (variant or ("profile" if bench_name == "generic" else "official"))
    if variant == "monet":
        assert "\\boxed{}" in res["variant"]["system_prompt"] and res["extractor"] == "boxed"


def test_blink_sends_all_images(load_tiny, tmp_path, blink_file, spy_requests):
    lm = load_tiny("toy", "toy-direct")
    res = run_bench(_opts(tmp_path, blink_file), "blink:Jigsaw", lm=lm, decoding={"max_new_tokens": 2})
    n_images = {r.prompt.key: int(r.prompt.image_grid_thw.shape[0]) for r in spy_requests}
    assert n_images == {"val_Jigsaw_0": 3, "val_Jigsaw_1": 2}
    vs = lm.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert [int((r.prompt.input_ids == vs).sum()) for r in spy_requests] == [n_images[r.prompt.key]
                                                                            for r in spy_requests]
    assert {r["id"]: r["n_images"] for r in _samples(res)} == n_images
    assert set(res["scores"]["official"]["per_subtask"]) == {"Jigsaw"} and res["subtasks"] == ["Jigsaw"]


# ---------------------------------------------------------------------------------------------- summary.json
def test_summary_json_per_category_scores_latency_and_settings(load_tiny, tmp_path, toy_tasks):
    lm = load_tiny("toy", "toy-direct")
    res = run_bench(_opts(tmp_path, toy_tasks, batch_size=4), lm=lm, decoding={"max_new_tokens": 3})
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    samples = _samples(res)
    assert len(samples) == 6 and on_disk["counts"]["ok"] == 6
    base = on_disk["conditions"]["baseline"]
    for cat in ("colour", "shape"):
        rows = [s for s in samples if s["category"] == cat]
        assert base["per_category"][cat]["n"] == 3
        assert base["per_category"][cat]["successes"] == sum(s["correct"] for s in rows)
        assert on_disk["scores"]["official"]["per_category"][cat]["n"] == 3
        lat = base["latency"]["per_category"][cat]
        assert lat["n"] == 3 and lat["timing"]["row_s"] > 0 and lat["tokens"] == pytest.approx(np.mean([s["tokens"]
                                                                                           for s in rows]))
        assert lat["latent_steps"] == 0  # a plain profile never feeds latents
    for s in samples:
        t = s["timing"]
        # 6 samples, batch size 4 -> one decode stream of 6 rows (continuous batching: samples 5 and 6 take the rows
        # of finished ones), its time shared by its rows
        assert t["batch_rows"] == 6 and t["row_s"] == pytest.approx(t["batch_total_s"] / t["batch_rows"])
        assert 1 <= s["tokens"] <= 3
    assert on_disk["processor"]["max_pixels"] == lm.info["max_pixels"]
    assert on_disk["decoding"]["max_new_tokens"] == 3 and on_disk["decoding"]["do_sample"] is False
    assert on_disk["variant"]["name"] == "profile" and on_disk["extractor"] == "letter"
    assert on_disk["chance"]["these_samples"] == pytest.approx(0.25)
    lo, hi = base["accuracy"]["lo"], base["accuracy"]["hi"]  # a core.summaries.Proportion
    assert 0 <= lo <= base["accuracy"]["estimate"] + 1e-12 and base["accuracy"]["estimate"] <= hi <= 1
    assert base["accuracy"]["method"] == "wilson" and base["accuracy"]["n"] == 6
    # results.json: the same numbers in lmms-eval's shape, task = the benchmark
    lmms = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config"} <= set(lmms)
    task = on_disk["benchmark"]
    row = lmms["results"][task]
    assert row["alias"] == task and lmms["versions"][task] == on_disk["schema"]
    assert row["conditions/baseline/accuracy,none"] == base["accuracy"]["estimate"]
    assert (row["conditions/baseline/accuracy_lo,none"], row["conditions/baseline/accuracy_hi,none"]) == (lo, hi)
    assert row["conditions/baseline/accuracy_stderr,none"] == "N/A"
    assert lmms["higher_is_better"][task]["conditions/baseline/accuracy"] is True
    assert lmms["n-samples"][task] == {"original": 6, "effective": 6}
    assert lmms["config"]["batch_size"] == 4 and lmms["configs"][task]["command"] == "bench"
    assert res.lmms_path == str(tmp_path / "run" / "results.json")


def test_hrbench_tsv_cycle_scores(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-direct")
    tsv = tmp_path / "hr_bench_4k.tsv"
    cols = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]
    with open(tsv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(cols)
        for i in range(4):
            w.writerow([i, f"What is shown {i}?", "ABCD"[i], "single" if i < 2 else "cross", "a", "b", "c", "d",
                        f"cycle{i % 2}", base64.b64encode(_png(i)).decode()])
    with pytest.raises(LatentcheckError, match="MD5 mismatch"):
        run_bench(_opts(tmp_path, tsv), "hrbench4k", lm=lm)
    res = run_bench(_opts(tmp_path, tsv), "hrbench4k", lm=lm, verify=False, decoding={"max_new_tokens": 2})
    samples = _samples(res)
    by = {s["id"]: s["correct"] for s in samples}
    c0 = (by["0"] + by["2"]) / 2
    c1 = (by["1"] + by["3"]) / 2
    assert res["scores"]["estimate"] == pytest.approx((c0 + c1) / 2)
    assert set(res["scores"]["official"]["average"]) == {"all", "single", "cross"}
    assert {s["meta"]["cycle_category"] for s in samples} == {"cycle0", "cycle1"}


# ---------------------------------------------------------------------------------------------- interventions
def test_interventions_per_condition_and_identity_equals_baseline(load_tiny, tmp_path, toy_tasks):
    lm = load_tiny("toy", "toy-latent")
    res = run_bench(_opts(tmp_path, toy_tasks, limit=4), interventions=["identity", "zero", "noise:sigma=4"],
                    lm=lm, force_latent=True, decoding={"max_new_tokens": 10})
    assert list(res["conditions"]) == ["baseline", "identity", "zero", "noise:sigma=4.0"]
    samples = _samples(res)
    for s in samples:
        ident = s["interventions"]["identity"]
        assert (ident["text"], ident["pred"], ident["correct"]) == (s["text"], s["pred"], s["correct"])
        assert s["latent_steps"] == 4 and s["timing"]["batch_rows"] == 4 * 4  # 4 samples x 4 conditions
    ident = res["conditions"]["identity"]
    assert ident["accuracy"] == res["conditions"]["baseline"]["accuracy"]
    assert (ident["effect"]["n01"], ident["effect"]["n10"], ident["answer_flips"]) == (0, 0, 0)
    # the vector interventions really reach the model: zeroed latents change some generation
    assert any(s["interventions"]["zero"]["text"] != s["text"] for s in samples)
    for c in res["conditions"].values():
        assert c["scores"]["n"] == 4 and c["scores"]["official"]["n"] == 4 and c["latency"]["overall"]["latent_steps"] == 4


def test_intervention_errors(load_tiny, tmp_path, toy_tasks, vstar_dir):
    with pytest.raises(LatentcheckError, match="sequence intervention"):
        run_bench(_opts(tmp_path, toy_tasks), interventions=["swap"], lm=load_tiny("toy", "toy-latent"))
    with pytest.raises(LatentcheckError, match="latent vectors"):
        run_bench(_opts(tmp_path, toy_tasks), interventions=["zero"], lm=load_tiny("toy", "toy-direct"))
    with pytest.raises(LatentcheckError, match="generation scoring"):
        run_bench(_opts(tmp_path, vstar_dir), "vstar", scoring="likelihood", interventions=["zero"],
                  lm=load_tiny("toy", "toy-latent"))
    with pytest.raises(LatentcheckError, match="--data is required"):
        run_bench(CommonOptions(out=str(tmp_path / "x")), "vstar", lm=load_tiny("toy", "toy-direct"))
    with pytest.raises(LatentcheckError, match="no likelihood variant"):
        run_bench(_opts(tmp_path, toy_tasks), scoring="likelihood", lm=load_tiny("toy", "toy-direct"))


# ---------------------------------------------------------------------------------------------- likelihood
def _direct_mean_ce(lm, prompt, reply_ids) -> float:
    ids = torch.cat([prompt.input_ids, torch.tensor(reply_ids)])
    mm = (ids == lm.tokens.image).int()[None]
    with torch.no_grad():
        logits = lm.model(input_ids=ids[None], pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
                          mm_token_type_ids=mm).logits[0]
    P, n = prompt.length, len(reply_ids)
    lp = torch.log_softmax(logits[P - 1:P - 1 + n].float(), -1)
    return float(-lp[torch.arange(n), torch.tensor(reply_ids)].mean())


def test_likelihood_picks_lowest_mean_ce_like_a_direct_forward(load_tiny, tmp_path, vstar_dir, spy_requests):
    lm = load_tiny("toy", "toy-direct")
    assert option_reply_text(lm, "left") == "left<|im_end|>\n"
    res = run_bench(_opts(tmp_path, vstar_dir, batch_size=2), "vstar", lm=lm)  # the default is the authors' protocol
    assert res["variant"]["name"] == "official" and res["scoring"] == "likelihood" and not spy_requests
    bench = get_benchmark("vstar")
    samples = {s["id"]: s for s in _samples(res)}
    from latentcheck.core.prompts import build_prompt

    for task in bench.load(vstar_dir):
        text, options, gold = bench.likelihood_inputs(task)
        assert text == task.question and samples[task.id]["prompt"] == text  # no options in the prompt
        prompt = build_prompt(lm, task.id, text, task.load_image())
        direct = [_direct_mean_ce(lm, prompt, option_reply_ids(lm, o)) for o in options]
        got = samples[task.id]["option_mean_ce"]
        assert got == pytest.approx(direct, abs=2e-4)
        assert samples[task.id]["pred"] == "ABCD"[int(np.argmin(direct))]
        assert samples[task.id]["correct"] == (int(np.argmin(direct)) == gold)
    assert set(res["conditions"]["baseline"]["per_category"]) == {"direct_attributes", "relative_position"}


def test_option_mean_ce_batched_equals_single(load_tiny):
    lm = load_tiny("toy", "toy-direct")
    from latentcheck.core.prompts import build_prompt

    eng = Engine(lm)
    prompts = [build_prompt(lm, "a", "short?", _img(0)), build_prompt(lm, "b", "a much longer question here?",
                                                                      _img(1, (56, 28)))]
    replies = [[option_reply_ids(lm, o) for o in ("red", "green blue")], [option_reply_ids(lm, "x")]]
    both = option_mean_ce(eng, prompts, replies)
    for p, r, b in zip(prompts, replies, both):
        assert option_mean_ce(eng, [p], [r])[0] == pytest.approx(b, abs=1e-4)


# ---------------------------------------------------------------------------------------------- judge
@register_extractor("test_bench_fail_marked") if "test_bench_fail_marked" not in EXTRACTORS else (lambda f: f)
def _fail_marked(text, options):
    """Fails (None) exactly on tasks whose first option is 'fail-me'; else answers A."""
    return None if options and options[0] == "fail-me" else "A"


def test_local_judge_asked_per_protocol_and_recorded(load_tiny, tmp_path, monkeypatch):
    """Monet protocol (rule failures only) on the local backend: who is asked, what is recorded, rule vs judged."""
    rows = []
    for i in range(4):
        (tmp_path / f"j{i}.png").write_bytes(_png(i))
        rows.append({"id": f"j{i}", "image": f"j{i}.png", "question": "Which colour?",
                     "options": ["fail-me" if i % 2 else "red", "green"], "answer": "A"})
    data = tmp_path / "judge.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    g = get_benchmark("generic")
    bench = replace(g, variants={"official": PromptVariant("official", g.variants["official"].build,
                                                           "test_bench_fail_marked", judge="monet")})
    lm = load_tiny("toy", "toy-direct")
    backend = make_backend("local", lm, cache=tmp_path / "judge.sqlite")
    judge = Judge(backend, "monet", GenParams(max_new_tokens=3))
    asked = []
    orig = Judge.run

    def spy(self, items):
        asked.extend(items)
        return orig(self, items)

    monkeypatch.setattr(Judge, "run", spy)
    res = run_bench(_opts(tmp_path, data), bench, "official", judge=judge, lm=lm, decoding={"max_new_tokens": 2})
    assert sorted(t.id for t, _, _ in asked) == ["j0", "j1", "j2", "j3"]  # offered all; the protocol picks
    for s in _samples(res):
        failed = s["id"] in ("j1", "j3")
        assert s["judge"]["used"] is failed and s["extracted"] == (None if failed else "A")
        if failed:
            assert s["judge"]["protocol"] == "monet" and s["judge"]["judge"] == backend.identity
            assert s["judge"]["prompt"].startswith("Please read the following example.")
            assert "Model response: " + s["reply"] in s["judge"]["prompt"]
            assert isinstance(s["judge"]["reply"], str) and s["pred"] == s["judge"]["value"]
            assert s["correct_rule"] is False
        else:
            assert s["pred"] == "A" and s["correct"] is True and s["correct_rule"] is True
    base = res["conditions"]["baseline"]
    assert base["judge"]["asked"] == 2 and base["latency"]["overall"]["judge_used"] == 2
    assert base["accuracy_rule"]["successes"] == 2 and res["scores_rule"]["estimate"] == 0.5
    assert res["judge"]["protocol"] == "monet" and res["judge"]["backend"] == backend.identity
    assert backend.stats["calls"] == 2


# ---------------------------------------------------------------------------------------------- robustness
def test_resume_makes_no_duplicates(load_tiny, tmp_path, toy_tasks):
    lm = load_tiny("toy", "toy-direct")
    opts = _opts(tmp_path, toy_tasks, batch_size=2)
    first = run_bench(opts, lm=lm, decoding={"max_new_tokens": 2})
    path = tmp_path / "run" / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))  # provenance + 2 samples: an interrupted run
    again = run_bench(replace(opts, resume=True), lm=lm, decoding={"max_new_tokens": 2})
    ids = [s["id"] for s in _samples(again)]
    assert sorted(ids) == [f"s{i}" for i in range(6)] and len(ids) == len(set(ids))
    assert again["conditions"]["baseline"]["accuracy"] == first["conditions"]["baseline"]["accuracy"]


def test_bad_records_become_errors(load_tiny, tmp_path, toy_tasks):
    data = tmp_path / "bad.jsonl"
    data.write_text(toy_tasks.read_text() + json.dumps({"id": "missing", "image": "nope.png", "question": "q?",
                                                        "options": ["a", "b"], "answer": "A"}) + "\n"
                    + json.dumps({"id": "noq", "options": ["a", "b"]}) + "\n")
    res = run_bench(_opts(tmp_path, data), lm=load_tiny("toy", "toy-direct"), decoding={"max_new_tokens": 2})
    assert res["counts"]["ok"] == 6 and res["counts"]["errors"] == 2 and res["exit_code"] == 3
    errors = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
              if '"type": "error"' in x]
    assert {e["field"] for e in errors} == {"image", "question"}


def test_large_embedded_images_are_localised(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_runner, "LOCALIZE_MIN_CHARS", 16)
    uri = "data:image/png;base64," + base64.b64encode(_png(3)).decode()
    t = Task(id="t", question="q", image=uri, meta={"images": [uri, uri]})
    lt = localize_task(t, tmp_path / "cache")
    assert lt.image.endswith(".png") and lt.meta["images"] == [lt.image, lt.image]
    assert np.array_equal(np.asarray(lt.load_image()), np.asarray(t.load_image()))
    assert len(list((tmp_path / "cache").iterdir())) == 1


# ---------------------------------------------------------------------------------------------- compare
def _write_samples(path, rows, with_provenance=True):
    lines = [json.dumps(provenance("bench", {}))] if with_provenance else []
    lines += [json.dumps({"type": "sample", "key": i, "id": i, "category": c, "pred": p, "correct": ok})
              for i, c, p, ok in rows]
    path.write_text("\n".join(lines) + "\n")


def test_compare_hand_counted(tmp_path):
    # id:      1  2  3  4  5  6  7  8   (9 only in A, 10 only in B)
    # A right: 1  1  0  0  0  0  1  0
    # B right: 1  0  1  1  1  1  1  0   -> n01 (A wrong, B right) = 3,4,5,6 = 4; n10 = 2 -> 1
    # category x: 1-4 -> n01 = 3,4 (2), n10 = 2 (1); category y: 5-8 -> n01 = 5,6 (2), n10 = 0
    a = [1, 1, 0, 0, 0, 0, 1, 0]
    b = [1, 0, 1, 1, 1, 1, 1, 0]
    cats = ["x"] * 4 + ["y"] * 4
    _write_samples(tmp_path / "a.jsonl", [(str(i + 1), cats[i], "A", bool(a[i])) for i in range(8)]
                   + [("9", "x", "A", True)])
    (tmp_path / "b").mkdir()
    _write_samples(tmp_path / "b" / "samples.jsonl", [(str(i + 1), cats[i], "B" if i < 6 else "A", bool(b[i]))
                                                      for i in range(8)] + [("10", "y", "A", False)],
                   with_provenance=False)
    r = compare_runs(tmp_path / "a.jsonl", tmp_path / "b", n_boot=500)
    o = r["overall"]
    assert (r["n_paired"], r["only_a"], r["only_b"]) == (8, ["9"], ["10"])
    assert (o["n01"], o["n10"], o["both_right"], o["both_wrong"]) == (4, 1, 2, 1)
    assert o["base"]["estimate"] == pytest.approx(3 / 8) and o["cond"]["estimate"] == pytest.approx(6 / 8)
    assert o["delta"]["estimate"] == pytest.approx(3 / 8)
    assert o["delta"]["p_value"] == pytest.approx(2 * (1 + 5) / 2 ** 5)  # 2 P(X <= 1), X ~ Bin(5, 1/2)
    assert (r["per_category"]["x"]["n01"], r["per_category"]["x"]["n10"]) == (2, 1)
    assert (r["per_category"]["y"]["n01"], r["per_category"]["y"]["n10"]) == (2, 0)
    assert sorted(r["a_wrong_b_right"]) == ["3", "4", "5", "6"] and r["a_right_b_wrong"] == ["2"]
    assert r["answer_changed"] == 6


def test_compare_conditions_and_bad_input(tmp_path):
    rec = {"type": "sample", "key": "1", "id": "1", "category": "x", "pred": "A", "correct": True,
           "interventions": {"zero": {"pred": "B", "correct": False}}}
    (tmp_path / "r.jsonl").write_text(json.dumps(provenance("bench", {})) + "\n" + json.dumps(rec) + "\n")
    r = compare_runs(tmp_path / "r.jsonl", tmp_path / "r.jsonl", condition_b="zero", n_boot=100)
    assert (r["overall"]["n10"], r["overall"]["n01"]) == (1, 0)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "1", "correct": "yes"}) + "\n")
    with pytest.raises(LatentcheckError, match="correct"):
        compare_runs(tmp_path / "bad.jsonl", tmp_path / "r.jsonl")
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "2", "correct": 1}) + "\n")
    with pytest.raises(LatentcheckError, match="no sample id occurs in both"):
        compare_runs(tmp_path / "other.jsonl", tmp_path / "r.jsonl")
