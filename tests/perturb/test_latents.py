"""perturb-latent: interventions on the fed-back latents, on tiny random Qwen2.5-VL-class models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.interventions import parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids, task_text
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import Task
from latentcheck.perturb.latents import (DEFAULT_SPECS, degeneration, execute, option_kl, parse_float_list,
                                         plan_interventions, run_perturb_latent, sequence_conditions)

QUESTION = "What colour is the circle?"


OPTIONS = ["red", "green", "blue", "yellow"]


def write_tasks(folder, n, question=QUESTION, seed=0):
    """n multiple-choice tasks sharing one question text, each with its own random 112 px PNG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    path = folder / "tasks.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
            f.write(json.dumps({"id": f"t{i}", "image": f"im{i}.png", "question": question, "options": OPTIONS,
                                "answer": "ABCD"[i % 4]}) + "\n")
    return path


def run(lm, tmp_path, specs, n=3, name="out", **kw):
    data = write_tasks(tmp_path / "data", n)
    opts = CommonOptions(data=str(data), out=str(tmp_path / name), batch_size=4, quiet=True)
    kw.setdefault("mediation", "none")
    kw.setdefault("plots", False)
    return run_perturb_latent(opts, specs, force_latent=True, n_boot=200, lm=lm, **kw)


def samples_of(result):
    return [json.loads(line) for line in open(result.results_path)][1:]


# ------------------------------------------------------------------------------------------- pure helpers
def test_plan_expands_sweeps_and_per_index_and_dedupes():
    plan = plan_interventions(["zero", "noise:sigma=1"], parse_float_list("0.1, 1,2"), ["index_mean"], n_latents=3)
    labels = [p.label for p in plan]
    # noise:sigma=1 from the user and from the sweep are the same intervention -> kept once (first wins)
    assert labels == ["zero", "noise:sigma=1.0", "noise:sigma=0.1", "noise:sigma=2.0",
                      "index_mean@0", "index_mean@1", "index_mean@2"]
    assert [p.x for p in plan if p.group == "sigma_sweep"] == [0.1, 2.0]
    assert [p.spec.steps for p in plan if p.group == "per_index:index_mean"] == [[0], [1], [2]]
    assert [p.label for p in plan_interventions()] == [parse_spec(s).label for s in DEFAULT_SPECS]
    with pytest.raises(LatentcheckError, match="without @steps"):
        plan_interventions(per_index=["zero@1"])
    with pytest.raises(LatentcheckError, match="not a number"):
        parse_float_list("0.1,abc")
    with pytest.raises(LatentcheckError, match="unknown intervention"):
        plan_interventions(["zeroo"])


def test_option_kl_renormalises_over_options():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3); inputs are unnormalised log-probs
    base = np.log([0.5, 0.5]) - 3.0
    cond = np.log([0.25, 0.75]) - 7.0
    assert option_kl(base, cond) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-12)
    assert option_kl(base, base + 1.0) == pytest.approx(0.0, abs=1e-12)
    assert option_kl(None, cond) is None


def test_degeneration_rule():
    eos = [99]
    distinct = list(range(1, 11))
    assert degeneration(distinct + [99], [False] * 11, eos, True, "eos") is None
    assert degeneration([7] * 8, [False] * 8, eos, True, "eos") == "repeated_1gram"
    abc = [1, 2, 3] * 4  # a 3-gram repeated 4 times covers all 12 tokens; no single token covers half
    assert degeneration(abc, [False] * 12, eos, True, "eos") == "repeated_3gram"
    # placeholders inside the latent span do not count
    assert degeneration([5] * 8 + [1, 2, 3], [True] * 8 + [False] * 3, eos, True, "eos") is None
    # ran out of budget without an extractable answer
    assert degeneration([1, 2], [False, False], eos, False, "length") == "length_without_answer"
    assert degeneration([1, 2], [False, False], eos, True, "length") is None


# ------------------------------------------------------------------------------------------- model runs
def test_identity_equals_baseline_and_zero_changes_a_mediated_model(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-mediated")
    res = run(lm, tmp_path, ["identity", "zero", "noise:sigma=1"])
    recs = samples_of(res)
    assert len(recs) == 3
    for r in recs:
        b, ident, zero = r["baseline"], r["interventions"]["identity"], r["interventions"]["zero"]
        assert b["triggered"] and b["latent_count"] == lm.profile.latent.k
        assert ident["text"] == b["text"] and ident["option_logprobs"] == b["option_logprobs"]
        assert ident["kl"] == 0.0 and ident["d_logp_gold"] == 0.0 and not ident["flipped"]
        # the answer reads the image only through the latent span: zeroing the fed vectors moves the options
        assert np.abs(np.subtract(zero["option_logprobs"], b["option_logprobs"])).max() > 1e-3
        assert zero["kl"] > 0
        # stored effects are consistent with the stored log-probs
        gold = "ABCD".index(r["gold"])
        assert zero["d_logp_gold"] == pytest.approx(zero["option_logprobs"][gold] - b["option_logprobs"][gold])
        assert zero["kl"] == pytest.approx(option_kl(np.array(b["option_logprobs"]),
                                                     np.array(zero["option_logprobs"])))
    row = {x["label"]: x for x in res.summary["interventions"]}
    assert row["identity"]["effect"]["delta"]["estimate"] == 0 and row["identity"]["answer_flip_rate"] == 0
    assert row["identity"]["d_logp_gold"]["estimate"] == 0 and row["identity"]["kl"]["estimate"] == 0
    assert row["zero"]["kl"]["estimate"] > 0
    assert res.summary["baseline"]["trigger_rate"] == 1.0


def test_bypass_model_shows_no_change(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-bypass")
    specs = ["zero", "noise:sigma=3", "near_zero", "shared:source=random", "index_mean", "noise_replace", "swap",
             "shuffle", "reverse"]
    res = run(lm, tmp_path, specs)
    assert res.summary["calibration"]["n_samples"] == 3
    for r in samples_of(res):
        b = r["baseline"]
        for label, o in r["interventions"].items():
            assert o["answer"] == b["answer"] and o["text"].rsplit("<|latent_end|>", 1)[1] == \
                b["text"].rsplit("<|latent_end|>", 1)[1], label
            assert np.abs(np.subtract(o["option_logprobs"], b["option_logprobs"])).max() <= 1e-5, label
            assert not o["flipped"] and o["kl"] <= 1e-8
    for row in res.summary["interventions"]:
        assert row["effect"]["delta"]["estimate"] == 0 and row["answer_flip_rate"] == 0
        assert abs(row["d_logp_gold"]["estimate"]) <= 1e-5


def test_swap_oracle_model_reading_answer_only_from_latents(load_tiny):
    """Hide the image from everything after it (visibility none): the answer can then only depend on the fed
    vectors. Feeding A the swap of B's latents must give exactly B's option distribution (same question text)."""
    from ..conftest import make_image  # noqa: TID252

    lm = load_tiny("toy", "toy-latent")
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    task = Task(id="q", question=QUESTION, options=OPTIONS, answer="A")
    prompts = {k: build_prompt(lm, k, task_text(task, lm.profile), make_image(seed)) for k, seed in (("a", 1),
                                                                                                     ("b", 2))}
    base = execute(eng, [Request(prompts[k], option_ids=opts, force_latent=True) for k in "ab"], 2)
    lat = {k: base[i][0].latents for i, k in enumerate("ab")}
    assert np.abs(lat["a"] - lat["b"]).max() > 1e-3  # the latents do depend on the image
    swap = plan_interventions(["swap"])
    reqs = []
    for k, other in (("a", "b"), ("b", "a")):
        conds, skipped = sequence_conditions(swap, k, lat[k], lat[other], seed=0)
        assert not skipped
        reqs.append(Request(prompts[k], conds + [Condition("own", override=lat[k])], option_ids=opts,
                            force_latent=True, image_visibility="none"))
    (a_swap, a_own), (b_swap, b_own) = execute(eng, reqs, 2)
    assert np.abs(a_swap.option_logprobs - b_own.option_logprobs).max() <= 1e-5
    assert np.abs(b_swap.option_logprobs - a_own.option_logprobs).max() <= 1e-5
    assert np.abs(a_own.option_logprobs - b_own.option_logprobs).max() > 1e-4  # so the oracle is not vacuous
    # without a partner, swap is skipped with a reason
    conds, skipped = sequence_conditions(swap, "a", lat["a"], None, seed=0)
    assert conds == [] and "partner" in skipped["swap"]


def test_swap_in_a_run_feeds_the_partners_baseline_latents(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-latent")
    res = run(lm, tmp_path, ["swap", "reverse"], n=3)
    recs = {r["key"]: r for r in samples_of(res)}
    partners = {k: r["partner"] for k, r in recs.items()}
    # default partner rule: another sample with a different gold answer (here every gold differs)
    assert all(k != v and v in recs and recs[v]["gold"] != recs[k]["gold"] for k, v in partners.items())
    # independent oracle: the partner's own baseline latents, fed as an override on the sample's prompt
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    from PIL import Image

    def prompt(key):
        i = int(key[1:])
        t = Task(id=key, question=QUESTION, options=OPTIONS, answer="A")
        return build_prompt(lm, key, task_text(t, lm.profile), Image.open(tmp_path / "data" / f"im{i}.png")
                            .convert("RGB"))

    for key, pk in partners.items():
        pl = eng.run([Request(prompt(pk), option_ids=opts, force_latent=True)])[0][0].latents
        own = eng.run([Request(prompt(key), option_ids=opts, force_latent=True)])[0][0].latents
        conds = [Condition("x", override=pl), Condition("r", override=own[::-1].copy())]
        want, rev = eng.run([Request(prompt(key), conds, option_ids=opts, force_latent=True)])[0]
        got = recs[key]["interventions"]
        assert np.abs(np.subtract(got["swap"]["option_logprobs"], want.option_logprobs)).max() <= 1e-4
        assert np.abs(np.subtract(got["reverse"]["option_logprobs"], rev.option_logprobs)).max() <= 1e-4


def test_naive_and_batched_paths_agree(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-mediated")
    specs = ["zero", "noise:sigma=0.5@1", "index_mean", "shuffle", "swap", "drop"]
    fast = run(lm, tmp_path, specs, n=3, name="fast", mediation="image")
    slow = run(lm, tmp_path, specs, n=3, name="slow", mediation="image", naive=True)
    a, b = samples_of(fast), samples_of(slow)
    assert [r["key"] for r in a] == [r["key"] for r in b]

    def outcomes(r):
        yield "baseline", r["baseline"]
        yield from r["interventions"].items()
        for kind, m in r["mediation"].items():
            for y in ("y11", "y01", "y10"):
                yield f"{kind}:{y}", m[y]

    for ra, rb in zip(a, b):
        for (la, oa), (lb, ob) in zip(outcomes(ra), outcomes(rb)):
            assert la == lb
            assert oa["text"] == ob["text"] and oa["answer"] == ob["answer"], la
            assert np.abs(np.subtract(oa["option_logprobs"], ob["option_logprobs"])).max() <= 1e-4, la
    assert fast.summary["calibration"]["keys"] == ["t0", "t1", "t2"]


def test_calibration_statistics_are_the_baseline_means(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-latent")
    res = run(lm, tmp_path, ["index_mean"], n=3, calibration_size=2)
    cal = res.summary["calibration"]
    assert cal["keys"] == ["t0", "t1"] and cal["n_vectors"] == 2 * lm.profile.latent.k
    recs = {r["key"]: r for r in samples_of(res)}
    assert recs["t2"]["interventions"]["index_mean"]["latent_count"] == lm.profile.latent.k
    # oracle: mean of the first two samples' baseline latents, computed independently
    from PIL import Image

    eng = Engine(lm)
    lat = []
    for i in range(2):
        t = Task(id=f"t{i}", question=QUESTION, options=OPTIONS, answer="A")
        p = build_prompt(lm, t.id, task_text(t, lm.profile), Image.open(tmp_path / "data" / f"im{i}.png")
                         .convert("RGB"))
        lat.append(eng.run([Request(p, option_ids=option_token_ids(lm, 4), force_latent=True)])[0][0].latents)
    z = np.load(tmp_path / "out" / "latent_stats.npz")
    np.testing.assert_allclose(z["index_mean"], (lat[0] + lat[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(z["mean"], np.concatenate(lat).mean(0), atol=1e-5)


def test_user_errors(load_tiny, tmp_path):
    lm = load_tiny("toy", "toy-latent")
    with pytest.raises(LatentcheckError, match="image-visibility"):
        run(lm, tmp_path, ["zero"], image_visibility="sometimes")
    with pytest.raises(LatentcheckError, match="mediation"):
        run(lm, tmp_path, ["zero"], mediation="audio")
    plain = load_tiny("plain", "qwen2_5_vl")
    with pytest.raises(LatentcheckError, match="latent profile"):
        run(plain, tmp_path, ["zero"])
