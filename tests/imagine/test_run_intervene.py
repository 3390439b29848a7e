"""caption-imagine run / intervene on tiny toy checkpoints: span parsing, corrupters, records and summaries, and the
invariants of the do(Z) protocol (re-feeding the model's own imagination reproduces its uninterrupted answer and option
distribution; the identity corruption has exactly zero effect)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.loader import load_model
from latentcheck.core.runner import CommonOptions
from latentcheck.core.stats import accuracy_effect, wilson_ci
from latentcheck.core.summaries import AccuracyEffect
from latentcheck.toy.world import COLOURS, QUADRANTS, SHAPES, write_world
from latentcheck.core.training import TrainConfig
from latentcheck.imagine.build_data import MetadataCaptioner, build_data
from latentcheck.imagine.intervene import (Corruption, CorruptItem, ModelCorrupter, RuleCorrupter, doz_prefixes,
                                           load_corrupt_prompt, run_intervene)
from latentcheck.imagine.run import imagination_token_range, run_caption_imagine, split_imagination
from latentcheck.imagine.train import sft_examples_from_file, train_sft

PROFILE = "toy-capimagine"
MARKERS = ("<imagine>", "</imagine>")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    """A tiny toy model fine-tuned (100 steps) to write 'I will zoom in on the X. <imagine>...</imagine> The answer
    is \\boxed{L}.', and the toy world's test tasks."""
    root = tmp_path_factory.mktemp("ci-run")
    write_world(root / "world", n_train=32, n_val=0, n_test=8, seed=0)
    build_data(root / "world" / "interleaved_train.json", "monet-sft", root / "train.jsonl", MetadataCaptioner())
    lm = load_model(str(tiny_checkpoint("toy", PROFILE)), profile=PROFILE, device="cpu", quant="none")
    train_sft(lm, sft_examples_from_file(lm, root / "train.jsonl", lazy=False),
              TrainConfig(steps=100, batch_size=8, lr=3e-3, warmup=5), out_dir=root / "ft")
    return lm, root / "ft" / "model", root / "world" / "tasks_test.jsonl", root


def _opts(data, out, limit=6, batch_size=4, **kw):
    return CommonOptions(data=str(data), out=str(out), limit=limit, quiet=True, batch_size=batch_size, **kw)


def _samples(path):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["type"] == "provenance"
    return [r for r in rows[1:] if r["type"] == "sample"]


# ----------------------------------------------------------------------------------------------- parsing
def test_split_imagination():
    assert split_imagination("go <imagine> a red dot </imagine> so A", MARKERS) == \
        ("go <imagine>", " a red dot ", "</imagine> so A")
    assert split_imagination("<imagine>x</imagine><imagine>y</imagine>", MARKERS)[1] == "x"  # the first span
    assert split_imagination("go <imagine> never closed", MARKERS) is None
    assert split_imagination("no span </imagine>", MARKERS) is None


def test_doz_prefixes_cut_after_the_marker_and_keep_spacing():
    split = split_imagination("Look. <imagine> the cube is red </imagine> The answer is A.", MARKERS)
    assert doz_prefixes(split, "the cube is blue", "</imagine>") == {
        "clean": "Look. <imagine> the cube is red </imagine>",
        "corrupt": "Look. <imagine> the cube is blue </imagine>"}


@pytest.mark.parametrize("markers", [MARKERS, ("[[", "]]")])  # special tokens, and plain text split into pieces
def test_imagination_token_range(load_tiny, markers):
    lm = load_tiny("toy", PROFILE)
    text = f"I will zoom in on the circle. {markers[0]}the circle is red, in the top left{markers[1]} The answer"
    ids = lm.tokenizer.encode(text, add_special_tokens=False)
    s, e = imagination_token_range(lm, ids, markers)
    assert lm.tokenizer.decode(ids[s:e]) == "the circle is red, in the top left"
    assert imagination_token_range(lm, ids[: e - 1], markers) is None or markers[1] not in \
        lm.tokenizer.decode(ids[: e - 1])


# ----------------------------------------------------------------------------------------------- corrupters
def test_neutral_edit_swaps_only_the_position_phrase():
    from latentcheck.imagine.intervene import neutral_edit

    text = "the circle is red, in the top left"
    out = neutral_edit(text, "k1")
    assert out != text and out.startswith("the circle is red, in the ") and out.split("in the ")[1] in QUADRANTS
    assert out == neutral_edit(text, "k1")  # seeded by the key
    assert neutral_edit("the circle is red", "k1") is None


def test_rule_corrupter_changes_the_asked_attribute():
    rc = RuleCorrupter(seed=0)
    opts_c, opts_s = list(COLOURS), list(SHAPES)
    c = rc.corrupt_one(CorruptItem("k1", "What colour is the circle?", opts_c, "the circle is red, in the top left",
                                   None))
    new = c.text.split()[3].rstrip(",")
    assert new in COLOURS and new != "red" and c.text == f"the circle is {new}, in the top left"
    assert c.implied == "ABCD"[opts_c.index(new)]
    s = rc.corrupt_one(CorruptItem("k2", "What shape is the red object?", opts_s, "the circle is red", None))
    shape = s.text.split()[1]
    assert shape in SHAPES and shape != "circle" and s.text == f"the {shape} is red"
    assert s.implied == "ABCD"[opts_s.index(shape)]
    assert rc.corrupt_one(CorruptItem("k3", "What colour?", opts_c, "nothing to see", None)).text is None
    # deterministic per key; different keys reach different replacements
    assert rc.corrupt_one(CorruptItem("k1", "What colour is the circle?", opts_c, "the circle is red", None)).text == \
        rc.corrupt_one(CorruptItem("k1", "What colour is the circle?", opts_c, "the circle is red", None)).text
    news = {rc.corrupt_one(CorruptItem(f"k{i}", "What colour is the circle?", opts_c, "the circle is red",
                                       None)).text for i in range(40)}
    assert news == {f"the circle is {c}" for c in COLOURS if c != "red"}


class FakeGenerator:
    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [self.reply(r.prompt) for r in requests]


def test_model_corrupter_and_prompt_file(tmp_path):
    item = CorruptItem("k", "What colour is the circle?", ["red", "blue"], "the circle is red", "A")
    gen = FakeGenerator(lambda p: '"<imagine>The circle is blue.</imagine>"')
    [c] = ModelCorrupter(gen).corrupt([item])
    assert c == Corruption("The circle is blue.", None, "model")
    assert "What colour is the circle?" in gen.prompts[0] and "the circle is red" in gen.prompts[0]
    assert "A. red\nB. blue" in gen.prompts[0] and "{" not in gen.prompts[0]
    assert ModelCorrupter(FakeGenerator(lambda p: "The circle is  RED")).corrupt([item])[0].text is None
    bad = tmp_path / "bad.txt"
    bad.write_text("{imagination} {colour}")
    with pytest.raises(LatentcheckError, match="unknown placeholder"):
        load_corrupt_prompt(bad)
    bad.write_text("{question}")
    with pytest.raises(LatentcheckError, match="imagination"):
        load_corrupt_prompt(bad)


# ----------------------------------------------------------------------------------------------- run / intervene
def test_run_records_and_summary(trained, tmp_path):
    lm, _, tasks, _ = trained
    s = run_caption_imagine(_opts(tasks, tmp_path), lm=lm)
    recs = _samples(tmp_path / "samples.jsonl")
    assert len(recs) == 6 and s["n_samples"] == 6 and s["n_errors"] == 0
    assert all(r["has_imagination"] and r["imagination_tokens"] > 0 for r in recs)  # it learned the format
    for r in recs:
        after = r["text"].split("</imagine>", 1)[1]
        assert r["pred"] == after.split("\\boxed{", 1)[1][0]  # boxed extractor on the text after the span
        assert r["correct"] == (r["pred"] == r["gold"])
        assert abs(sum(r["option_probs"].values()) - 1) < 1e-9
    k = sum(r["correct"] for r in recs)
    assert s["accuracy"]["successes"] == k and (s["accuracy"]["lo"], s["accuracy"]["hi"]) == wilson_ci(k, 6)
    assert s["accuracy"]["method"] == "wilson" and s["accuracy"]["n"] == 6
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"]["estimate"] == k / 6


def test_intervene_invariants_and_summary(trained, tmp_path):
    lm, _, tasks, _ = trained
    run_caption_imagine(_opts(tasks, tmp_path / "run"), lm=lm)
    base = {r["key"]: r for r in _samples(tmp_path / "run" / "samples.jsonl")}
    s = run_intervene(_opts(tasks, tmp_path / "int"), lm=lm, span_tokens=4)
    recs = _samples(tmp_path / "int" / "samples.jsonl")
    assert len(recs) == 6 and all(r["intervened"] for r in recs)
    for r in recs:
        b = base[r["key"]]
        # re-feeding the model's own imagination reproduces the uninterrupted run (greedy), answer AND the option
        # distribution (engine answer point vs the teacher-forced answer prefix)
        assert r["clean"]["pred"] == b["pred"] and r["imagination"] == b["imagination"][0]
        for letter, p in b["option_probs"].items():
            assert abs(r["clean"]["option_probs"][letter] - p) < 1e-5
        before, after = r["imagination"].split(), r["corrupted_imagination"].split()
        diff = [(x, y) for x, y in zip(before, after) if x != y]
        assert len(before) == len(after) and len(diff) == 1
        x, y = (w.strip(",.") for w in diff[0])
        assert (x in COLOURS and y in COLOURS) or (x in SHAPES and y in SHAPES)
        assert r["follows_corruption"] == (r["corrupt"]["pred"] == r["implied"])
    want = accuracy_effect([r["clean"]["correct"] for r in recs], [r["corrupt"]["correct"] for r in recs])
    e = s["effect"]  # the typed record (core.summaries.AccuracyEffect) of the same statistics
    assert (e["base"]["estimate"], e["base"]["lo"], e["base"]["hi"]) == (want["acc_base"], want["acc_base_lo"],
                                                                         want["acc_base_hi"])
    assert (e["cond"]["estimate"], e["delta"]["estimate"], e["delta"]["lo"], e["delta"]["hi"]) == (
        want["acc_cond"], want["delta"], want["delta_lo"], want["delta_hi"])
    assert (e["delta"]["p_value"], e["delta"]["method"], e["n01"], e["n10"]) == (
        want["mcnemar_p"], want["interval"], want["n01"], want["n10"])
    # the neutral-edit control: only the quadrant phrase changes; its effect is summarised next to do(Z)
    neu = [r for r in recs if r.get("neutral_imagination")]
    assert neu and all("neutral" in r for r in neu)
    for r in neu:
        assert r["neutral_imagination"] != r["imagination"]
        for w in COLOURS + SHAPES:
            assert (w in r["neutral_imagination"]) == (w in r["imagination"])
    # per task category: the same paired effect on that category's samples (typed AccuracyEffect)
    assert set(s["per_category"]) == {r["category"] for r in recs}
    for cat, e in s["per_category"].items():
        rs = [r for r in recs if r["category"] == cat]
        assert e["n"] == len(rs) and e["base"]["successes"] == sum(bool(r["clean"]["correct"]) for r in rs)
        assert e["cond"]["successes"] == sum(bool(r["corrupt"]["correct"]) for r in rs)
    assert s["neutral_effect"] == AccuracyEffect.paired([r["clean"]["correct"] for r in neu],
                                                        [r["neutral"]["correct"] for r in neu]).to_dict()
    # text interchange: the partner (another gold answer) lends its imagination; follows = its clean answer
    inter = [r for r in recs if "follows_partner" in r]
    by_key = {r["key"]: r for r in recs}
    for r in inter:
        p = by_key[r["partner"]]
        assert p["gold"] != r["gold"]
        assert r["follows_partner"] == (r["interchange"]["pred"] == p["clean"]["pred"])
    if inter:
        assert s["interchange"]["follows_partner"]["n"] == len(inter)
    assert s["n_intervened"] == 6 and s["skip_reasons"] == {}
    sim = s["similarity"]
    assert sim["n"] == sum(r["imagination_tokens"] >= 4 for r in recs) and len(sim["inter_raw"]) == 4
    assert len(sim["intra_adjacent"]) == 3 and np.asarray(sim["intra_matrix"]).shape == (4, 4)
    assert all((tmp_path / "int" / "plots" / f).exists() for f in ("accuracy.png", "similarity.png"))


def test_per_category_effects_hand_computed_with_holm():
    """Category a: 6 samples, all right -> all wrong (n10 = 6, exact McNemar p = 2 / 2**6 = 0.03125); category b: 4
    samples, 2 right of which 1 turns wrong (n10 = 1, p = 1). Holm over the two: a 2 x 0.03125 = 0.0625, b 1."""
    from latentcheck.imagine.intervene import per_category_effects

    def rec(cat, clean, corrupt):
        return {"category": cat, "clean": {"correct": clean}, "corrupt": {"correct": corrupt}}

    recs = ([rec("a", True, False)] * 6 + [rec("b", True, True), rec("b", True, False), rec("b", False, False),
                                           rec("b", False, False)] + [rec(None, True, True)])
    out = per_category_effects(recs)
    assert list(out) == ["a", "b"]  # no category: counted overall only
    a, b = out["a"], out["b"]
    assert (a["n"], a["base"]["estimate"], a["cond"]["estimate"], a["n10"], a["n01"]) == (6, 1.0, 0.0, 6, 0)
    assert a["delta"]["estimate"] == pytest.approx(-1.0) and a["delta"]["p_value"] == pytest.approx(0.03125)
    assert a["delta"]["lo"] < a["delta"]["hi"]  # never a zero-width interval
    assert (b["n"], b["base"]["estimate"], b["cond"]["estimate"], b["n10"]) == (4, 0.5, 0.25, 1)
    assert b["delta"]["estimate"] == pytest.approx(-0.25) and b["delta"]["p_value"] == pytest.approx(1.0)
    assert a["delta"]["p_holm"] == pytest.approx(0.0625) and b["delta"]["p_holm"] == pytest.approx(1.0)
    c = per_category_effects([rec("c", True, True)] * 4 + [rec("c", False, True)] * 2)["c"]
    assert (c["base"]["lo"], c["base"]["hi"]) == pytest.approx(wilson_ci(4, 6))  # Wilson intervals of both arms
    assert (c["cond"]["lo"], c["cond"]["hi"]) == pytest.approx(wilson_ci(6, 6))
    assert c["delta"]["p_holm"] == pytest.approx(c["delta"]["p_value"])  # one category: nothing to adjust
    assert per_category_effects([rec(None, True, False)]) is None


class Identity:
    def corrupt(self, items):
        return [Corruption(it.imagination, None, "identity") for it in items]


def test_identity_corruption_has_exactly_zero_effect(trained, tmp_path, monkeypatch):
    import latentcheck.imagine.intervene as iv

    lm, _, tasks, _ = trained
    monkeypatch.setattr(iv, "make_corrupter", lambda *a, **k: Identity())
    s = run_intervene(_opts(tasks, tmp_path, limit=4), lm=lm, plots=False)
    recs = _samples(tmp_path / "samples.jsonl")
    assert all(r["clean"] == r["corrupt"] and not r["flipped"] for r in recs)
    assert s["effect"]["delta"]["estimate"] == 0 and s["effect"]["flips"] == 0
    assert s["option_effect"]["delta"]["estimate"] == 0


def test_intervene_resume_and_exported_model(trained, tmp_path, monkeypatch):
    import latentcheck.imagine.intervene as iv

    _, model_dir, tasks, _ = trained
    lm = load_model(str(model_dir), device="cpu", quant="none")  # the exported checkpoint declares its profile
    assert lm.profile.name == PROFILE
    real, calls = iv.intervene_block, []

    def interrupted(*a, **k):  # the second block (of 4 samples at batch size 1) dies
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(iv, "intervene_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_intervene(_opts(tasks, tmp_path, batch_size=1), lm=lm, plots=False, span_tokens=4)
    assert len(_samples(tmp_path / "samples.jsonl")) == 4
    monkeypatch.setattr(iv, "intervene_block", real)
    s = run_intervene(_opts(tasks, tmp_path, batch_size=1, resume=True), lm=lm, plots=False, span_tokens=4)
    keys = [r["key"] for r in _samples(tmp_path / "samples.jsonl")]
    assert len(keys) == len(set(keys)) == 6 and s["n_samples"] == 6
    assert s["similarity"]["n"] + s["similarity"]["n_shorter"] == 6  # hidden states of both runs are used


def test_untrained_model_without_imagination_is_not_intervened(load_tiny, trained, tmp_path):
    lm = load_tiny("toy", PROFILE)
    s = run_intervene(_opts(trained[2], tmp_path, limit=2), lm=lm, plots=False)
    assert s["n_intervened"] == 0 and s["effect"] is None and sum(s["skip_reasons"].values()) == 2


def test_profile_without_imagination_markers_is_refused(load_tiny, tmp_path, trained):
    with pytest.raises(LatentcheckError, match="text-imagination"):
        run_caption_imagine(_opts(trained[2], tmp_path), lm=load_tiny("toy", "toy-direct"))
