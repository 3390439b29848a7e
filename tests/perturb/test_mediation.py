"""Mediation (TE / NIE / NDE with interchange interventions): partner choice, counterfactual inputs, assembly, and
runs on tiny models with known structure."""

from __future__ import annotations

import json
from collections import Counter
from itertools import permutations

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.prompts import build_prompt, option_token_ids, task_text
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import Task
from latentcheck.perturb.latents import run_perturb_latent
from latentcheck.perturb.mediation import (counterfactual_task, derangement, interchange, mediation_arrays,
                                           parse_kinds, partner_map, summarise_mediation)

OPTIONS = ["red", "green", "blue", "yellow"]


def write_tasks(folder, questions, same_image=False, seed=0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "tasks.jsonl", "w") as f:
        for i, q in enumerate(questions):
            name = "im0.png" if same_image else f"im{i}.png"
            if not (folder / name).exists():
                Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(folder / name)
            f.write(json.dumps({"id": f"t{i}", "image": name, "question": q, "options": OPTIONS,
                                "answer": "ABCD"[i % 4]}) + "\n")
    return folder / "tasks.jsonl"


def run(lm, tmp_path, questions, mediation="image", same_image=False, name="out"):
    data = write_tasks(tmp_path / f"data-{name}", questions, same_image)
    opts = CommonOptions(data=str(data), out=str(tmp_path / name), batch_size=4, quiet=True)
    res = run_perturb_latent(opts, ["identity"], mediation=mediation, force_latent=True, n_boot=200, plots=False,
                             lm=lm)
    return res, [json.loads(x) for x in open(res.results_path)][1:]


def lp(outcome):
    return np.array(outcome["option_logprobs"])


# ------------------------------------------------------------------------------------------- partner choice
def test_derangement_has_no_fixed_points_and_is_seeded():
    for n in (2, 3, 7, 50):
        p = derangement(n, seed=3)
        assert sorted(p.tolist()) == list(range(n)) and not np.any(p == np.arange(n))
        assert np.array_equal(p, derangement(n, seed=3))
    assert not np.array_equal(derangement(50, seed=1), derangement(50, seed=2))
    with pytest.raises(LatentcheckError, match="at least 2"):
        derangement(1, 0)


def test_derangement_is_uniform_over_the_derangements_of_three():
    # the derangements of 3 are the two 3-cycles; each should be drawn about half the time
    counts = Counter(tuple(derangement(3, seed=s).tolist()) for s in range(400))
    expected = {p for p in permutations(range(3)) if all(a != b for a, b in zip(p, range(3)))}
    assert set(counts) == expected
    assert all(150 <= c <= 250 for c in counts.values())


def test_partner_with_a_different_gold_answer():
    keys = [f"k{i}" for i in range(12)]
    golds = [0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 3, 3]
    m = partner_map(keys, 5, group_size=6, golds=golds)
    assert m == partner_map(keys, 5, group_size=6, golds=golds)  # seeded
    for i, k in enumerate(keys):
        j = keys.index(m[k])
        assert j // 6 == i // 6 and golds[j] != golds[i]  # same block, different gold
    # a block where every gold is the same falls back to the derangement partner
    same = partner_map(keys[:4], 1, golds=[2, 2, 2, 2])
    assert same == partner_map(keys[:4], 1) and all(k != v for k, v in same.items())


def test_grouped_derangement_stays_in_its_block():
    p = derangement(9, seed=0, group_size=4)  # groups [0..3], [4..8] (a trailing group of one is merged)
    assert set(p[:4].tolist()) == {0, 1, 2, 3} and set(p[4:].tolist()) == {4, 5, 6, 7, 8}
    assert not np.any(p == np.arange(9))
    assert partner_map(["a"], 0) == {"a": None}
    m = partner_map(["a", "b"], 0)
    assert m == {"a": "b", "b": "a"}


def test_counterfactual_inputs_keep_the_original_gold():
    t = Task(id="x", question="What colour is the circle?", options=OPTIONS, answer="B", image="a.png",
             base_dir="/d1")
    p = Task(id="y", question="What shape is the red object?", options=["circle", "square"], answer="A",
             image="b.png", base_dir="/d2")
    ci = counterfactual_task(t, p, "image")
    assert (ci.image, ci.base_dir, ci.question, ci.options, ci.answer) == ("b.png", "/d2", t.question, OPTIONS, "B")
    cq = counterfactual_task(t, p, "question")
    assert (cq.image, cq.base_dir, cq.question, cq.options, cq.answer) == ("a.png", "/d1", p.question,
                                                                          p.options, "B")
    assert parse_kinds("image,question") == ["image", "question"] and parse_kinds("none") == []
    with pytest.raises(LatentcheckError, match="unknown mediation"):
        parse_kinds("audio")


# ------------------------------------------------------------------------------------------- assembly
def _rec(key, y00, y11, y01, y10, lps=(0.0, 0.0, 0.0, 0.0), skipped=False):
    def o(c, l):
        return {"correct": bool(c), "logp_gold": l}

    med = {"skipped": "no partner"} if skipped else {"partner": "p", "y11": o(y11, lps[1]), "y01": o(y01, lps[2]),
                                                      "y10": o(y10, lps[3])}
    return {"type": "sample", "key": key, "baseline": o(y00, lps[0]), "mediation": {"image": med}}


def test_summary_effects_from_hand_made_records():
    recs = [_rec("a", 1, 0, 0, 1, (-1.0, -3.0, -2.0, -1.0)),
            _rec("b", 1, 1, 1, 1, (-1.0, -1.0, -1.0, -1.0)),
            _rec("c", 0, 0, 0, 0, (-2.0, -2.0, -2.0, None)),  # logp of one run missing: out of the logp analysis
            _rec("d", 0, 0, 1, 0, (-2.0, -4.0, -1.0, -2.0)),
            _rec("e", 1, 1, 1, 1, skipped=True)]
    arrs, used = mediation_arrays(recs, "image", "correct")
    assert used == ["a", "b", "c", "d"]
    s = summarise_mediation(recs, ["image"], n_boot=200)["image"]
    c = s["correct"]
    # TE = mean(y11 - y00) = (-1 + 0 + 0 + 0) / 4; NIE = mean(y01 - y00) = (-1 + 0 + 0 + 1) / 4; NDE = 0
    assert c["n"] == 4 and c["te"]["estimate"] == -0.25 and c["nie"]["estimate"] == 0.0
    assert c["nde"]["estimate"] == 0.0 and c["proportion_mediated"]["estimate"] == 0.0
    g = s["logp_gold"]
    # samples a, b, d: TE = (-2 + 0 - 2) / 3, NIE = (-1 + 0 + 1) / 3, NDE = (0 + 0 + 0) / 3
    assert g["n"] == 3
    assert g["te"]["estimate"] == pytest.approx(-4 / 3) and g["nie"]["estimate"] == pytest.approx(0.0)
    assert s["n_skipped"] == 1 and s["primary_outcome"] == "correct"


# ------------------------------------------------------------------------------------------- model runs
def test_interchange_runs_feed_the_right_latents(load_tiny, tmp_path):
    """y01 = original prompt fed the counterfactual run's latents; y10 = counterfactual prompt fed the baseline's
    latents (independent engine oracle); with the latents visible, the interchange moves the options."""
    from PIL import Image

    lm = load_tiny("toy", "toy-latent")
    qs = ["What colour is the circle?", "What colour is the square?", "What colour is the cross?"]
    res, recs = run(lm, tmp_path, qs, mediation="image,question")
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    folder = tmp_path / "data-out"

    def prompt(key, q, img):
        t = Task(id=key, question=q, options=OPTIONS, answer="A")
        return build_prompt(lm, key, task_text(t, lm.profile), Image.open(folder / img).convert("RGB"))

    for r in recs:
        i = int(r["key"][1:])
        j = int(r["mediation"]["image"]["partner"][1:])
        assert r["partner"] == f"t{j}" and j != i
        for kind, cf_prompt in (("image", prompt("cf", qs[i], f"im{j}.png")),
                                ("question", prompt("cf", qs[j], f"im{i}.png"))):
            own = prompt(r["key"], qs[i], f"im{i}.png")
            base = eng.run([Request(own, option_ids=opts, force_latent=True)])[0][0]
            cf = eng.run([Request(cf_prompt, option_ids=opts, force_latent=True)])[0][0]
            y01 = eng.run([Request(own, [Condition("x", override=cf.latents)], option_ids=opts,
                                   force_latent=True)])[0][0]
            y10 = eng.run([Request(cf_prompt, [Condition("x", override=base.latents)], option_ids=opts,
                                   force_latent=True)])[0][0]
            m = r["mediation"][kind]
            for got, want in ((r["baseline"], base), (m["y11"], cf), (m["y01"], y01), (m["y10"], y10)):
                assert np.abs(lp(got) - want.option_logprobs).max() <= 1e-4, kind
            gold = "ABCD".index(r["gold"])
            assert m["y11"]["logp_gold"] == pytest.approx(float(cf.option_logprobs[gold]))
        assert np.abs(lp(r["mediation"]["image"]["y01"]) - lp(r["baseline"])).max() > 1e-4
    med = res.summary["mediation"]["image"]["logp_gold"]
    y00 = np.array([x["baseline"]["logp_gold"] for x in recs])
    y11 = np.array([x["mediation"]["image"]["y11"]["logp_gold"] for x in recs])
    assert med["n"] == 3 and med["te"]["estimate"] == pytest.approx(float(np.mean(y11 - y00)))


def test_bypass_model_has_no_indirect_effect(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-bypass")
    res, recs = run(lm, tmp_path, ["What colour is the circle?"] * 3)
    for r in recs:
        m = r["mediation"]["image"]
        # latents are invisible to the answer: swapping them changes nothing (NIE = 0, NDE = TE per sample)
        assert np.abs(lp(m["y01"]) - lp(r["baseline"])).max() <= 1e-5
        assert np.abs(lp(m["y10"]) - lp(m["y11"])).max() <= 1e-5
    g = res.summary["mediation"]["image"]["logp_gold"]
    assert abs(g["nie"]["estimate"]) <= 1e-5 and g["nde"]["estimate"] == pytest.approx(g["te"]["estimate"], abs=1e-5)
    assert res.summary["mediation"]["image"]["correct"]["nie"]["estimate"] == 0


def test_identical_inputs_give_zero_effects(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-mediated")
    res, recs = run(lm, tmp_path, ["What colour is the circle?"] * 3, same_image=True)
    g = res.summary["mediation"]["image"]["logp_gold"]
    for name in ("te", "nie", "nde"):
        assert abs(g[name]["estimate"]) <= 1e-5
    for r in recs:
        for y in ("y11", "y01", "y10"):
            assert np.abs(lp(r["mediation"]["image"][y]) - lp(r["baseline"])).max() <= 1e-5


def test_single_sample_skips_mediation_with_a_reason(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-latent")
    res, recs = run(lm, tmp_path, ["What colour is the circle?"])
    assert "partner" in recs[0]["mediation"]["image"]["skipped"]
    assert res.summary["mediation"]["image"]["n_skipped"] == 1
    assert res.summary["mediation"]["image"]["correct"] == {"n": 0}


# ------------------------------------------------------------------------------------------- the span mediator
def test_span_mediator_carries_everything_in_the_mediated_control(load_tiny, tmp_path):
    """toy-mediated (only the span sees the image): patching the whole span from the image-swapped run gives that
    run's answer exactly (span NIE = TE per sample) and patching the original span into the swapped run gives the
    original answer (span NDE = 0); the span replay's own outcome equals the engine's baseline."""
    lm = load_tiny("toy", "toy-mediated")
    res, recs = run(lm, tmp_path, ["What colour is the circle?"] * 4)
    for r in recs:
        sp = r["mediation"]["image"]["span"]
        assert sp["y00"]["logp_gold"] == pytest.approx(r["baseline"]["logp_gold"], abs=1e-4)
        assert sp["y11"]["logp_gold"] == pytest.approx(r["mediation"]["image"]["y11"]["logp_gold"], abs=1e-4)
        assert sp["y01"]["logp_gold"] == pytest.approx(sp["y11"]["logp_gold"], abs=1e-4)
        assert sp["y10"]["logp_gold"] == pytest.approx(sp["y00"]["logp_gold"], abs=1e-4)
        assert sp["y01"]["answer"] == sp["y11"]["answer"]
    g = res.summary["mediation"]["image"]["span"]["logp_gold"]
    assert g["nie"]["estimate"] == pytest.approx(g["te"]["estimate"], abs=1e-4)
    assert abs(g["nde"]["estimate"]) <= 1e-4 and abs(g["te"]["estimate"]) > 1e-4
    ia = res.summary["mediation"]["image"]["span"]["interchange"]["follows_counterfactual"]
    assert ia["estimate"] == 1.0 and ia["n"] == 4


def test_span_mediator_is_inert_in_the_bypass_control(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-bypass")
    res, recs = run(lm, tmp_path, ["What colour is the circle?"] * 3)
    for r in recs:
        sp = r["mediation"]["image"]["span"]
        assert sp["y01"]["logp_gold"] == pytest.approx(sp["y00"]["logp_gold"], abs=1e-5)
        assert sp["y10"]["logp_gold"] == pytest.approx(sp["y11"]["logp_gold"], abs=1e-5)
    assert res.summary["mediation"]["image"]["span"]["logp_gold"]["nie"]["estimate"] == pytest.approx(0, abs=1e-5)


def test_interchange_accuracy_from_hand_made_records():
    def o(a):
        return {"answer": a, "correct": a == "A", "logp_gold": 0.0}

    def rec(key, a00, a11, a01, pg):
        return {"type": "sample", "key": key, "baseline": o(a00),
                "mediation": {"image": {"partner": "p", "partner_gold": pg, "y11": o(a11), "y01": o(a01),
                                        "y10": o(a00)}}}

    recs = [rec("a", "A", "B", "B", "B"), rec("b", "A", "C", "A", "C"), rec("c", "A", "A", "A", "D"),
            rec("d", "B", "D", "D", "C")]
    ia = interchange(recs, "image")
    assert ia["follows_counterfactual"]["estimate"] == 0.75 and ia["follows_counterfactual"]["n"] == 4
    assert ia["follows_counterfactual_changed"]["estimate"] == pytest.approx(2 / 3)  # a, b, d changed
    assert ia["follows_partner_gold"]["estimate"] == 0.25  # only a follows the partner's gold
    assert ia["follows_counterfactual"]["lo"] < 0.75 < ia["follows_counterfactual"]["hi"]
