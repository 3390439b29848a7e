"""Encodes vs uses: LEACE removes a planted linear signal and leaves an orthogonal one; on the zoo, erasing the
answer attribute from the latents costs the mediated control its accuracy and leaves toy-latent's unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.runner import CommonOptions
from latentcheck.probe.erasure import erase, fit_eraser, summarise_erasure
from latentcheck.probe.trained import ProbeConfig, probe_site


def test_leace_removes_a_planted_signal_and_keeps_an_orthogonal_one():
    rng = np.random.default_rng(0)
    n, h = 400, 24
    a = rng.integers(0, 3, n)  # the erased attribute (3 classes)
    b = rng.integers(0, 2, n)  # an independent attribute on an orthogonal direction
    dirs = np.linalg.qr(rng.normal(size=(h, 4)))[0].T
    X = rng.normal(size=(n, h)) * 0.3 + np.eye(3)[a] @ dirs[:3] * 3.0 + b[:, None] * dirs[3] * 3.0
    groups = np.arange(n)
    cfg = ProbeConfig(methods=("linear",), control=False)
    la, lb = [str(v) for v in a], [str(v) for v in b]
    before_a, before_b = probe_site(X, la, groups, cfg)["linear"], probe_site(X, lb, groups, cfg)["linear"]
    Xe = erase(fit_eraser(X, la), X)
    after_a, after_b = probe_site(Xe, la, groups, cfg)["linear"], probe_site(Xe, lb, groups, cfg)["linear"]
    assert before_a["estimate"] > 0.95 and before_b["estimate"] > 0.95
    # no longer decodable: not above chance (1/3); cross-validated accuracy after LEACE may even fall below chance,
    # since held-out samples of a class sit opposite the training folds' equalised class means
    assert after_a["estimate"] < 1 / 3 + 0.05 and after_a["lo"] < 1 / 3
    assert after_b["estimate"] > 0.95  # the orthogonal attribute survives


def test_reading_rules_on_hand_built_records():
    check = {"label": "answer", "before": {"chance": 0.25, "linear": {"estimate": 0.9, "lo": 0.8, "hi": 0.95}},
             "after": {"chance": 0.25, "linear": {"estimate": 0.26, "lo": 0.2, "hi": 0.33}}}
    used = [{"own": {"correct": 1, "pred": "A"}, "erased": {"correct": 0, "pred": "B"},
             "steered": {"correct": 0, "pred": "C"}, "steer_letter": "C"} for _ in range(30)]
    # "unused" is an equivalence claim: 0 changes in 30 cannot show it within +-5 points (needs >= 52), in 100 it can
    unused = [{"own": {"correct": 1, "pred": "A"}, "erased": {"correct": 1, "pred": "A"},
               "steered": {"correct": 1, "pred": "A"}, "steer_letter": "C"} for _ in range(100)]
    assert "need >= 52" in summarise_erasure(unused[:30], check, n_boot=200)["reading"]
    s_used, s_unused = summarise_erasure(used, check, n_boot=200), summarise_erasure(unused, check, n_boot=200)
    assert s_used["reading"] == "encodes and uses" and s_used["follows"]["estimate"] == 1.0
    assert s_unused["reading"] == "encodes, unused" and s_unused["follows"]["estimate"] == 0.0
    blind = {**check, "before": {"chance": 0.25, "linear": {"estimate": 0.27, "lo": 0.2, "hi": 0.35}}}
    assert summarise_erasure(unused, blind, n_boot=200)["reading"] == "does not encode"


@pytest.mark.parametrize("model,reading", [("toy-mediated", "encodes and uses"), ("toy-latent", "encodes, unused")])
def test_zoo_controls(tmp_path, model, reading):
    from latentcheck.probe.behavioural import ProbeOptions, run_probe

    res = run_probe(CommonOptions(model=model, out=str(tmp_path / model), limit=64),
                    ProbeOptions(erase="meta.answer_text", behavioural=False, trained=False, n_boot=300,
                                 probe=ProbeConfig(methods=("linear",), control=False)))
    er = res.summary["erasure"]
    assert er["reading"] == reading, er
    assert er["after"]["linear"]["estimate"] < er["before"]["linear"]["estimate"]
