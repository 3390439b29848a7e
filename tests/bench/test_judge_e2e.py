"""The judge path end to end: HR-Bench's official yes/no judge and BLINK's matcher through a REAL OpenAI-compatible
server (`transformers serve` on the toy zoo's toy-direct, 127.0.0.1) and through the local backend; the persistent
cache proven by a second run that makes no judge calls."""

from __future__ import annotations

import csv
import re
from collections import defaultdict

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.judges import Judge, blink_prompt, hrbench_prompt, parse_paren_letter, parse_yes_no
from latentcheck.bench.runner import run_bench
from latentcheck.core.backends import make_backend
from latentcheck.core.records import read_results
from latentcheck.core.runner import CommonOptions


def _posts(server, status: str = "") -> int:
    """Chat requests the server has logged (with ``status``, e.g. "200", only those answered so)."""
    server.log.flush()
    with open(server.log.name, encoding="utf-8", errors="replace") as fh:
        return len(re.findall(r'"POST /v1/chat/completions HTTP/1.1" ' + status, fh.read()))


@pytest.fixture
def hr_tsv(tmp_path, image_b64):
    img = image_b64((9, 9, 9), (28, 28))
    rows = [{"index": i, "question": f"What number is on sign {i}?", "answer": gold, "category": cat, "A": "12",
             "B": "15", "C": "21", "D": "51", "cycle_category": cyc, "image": img}
            for i, (cyc, cat, gold) in enumerate([("c0", "single", "A"), ("c0", "cross", "B"),
                                                  ("c1", "single", "B"), ("c1", "cross", "A")])]
    path = tmp_path / "hr_bench_4k.tsv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def _opts(tmp_path, data, name):
    return CommonOptions(data=str(data), out=str(tmp_path / name), quiet=True)


def _samples(res):
    return [r for r in read_results(res["results_path"])[1] if r["type"] == "sample"]


def _cycle_average(samples) -> float:
    """VLMEvalKit report_acc_hrbench by hand: mean over cycle groups of the group's accuracy."""
    groups = defaultdict(list)
    for s in samples:
        groups[s["meta"]["cycle_category"]].append(bool(s["correct"]))
    return sum(sum(g) / len(g) for g in groups.values()) / len(groups)


def test_hrbench_official_judge_through_transformers_serve_with_cache(transformers_server, load_tiny, hr_tsv,
                                                                      tmp_path):
    lm = load_tiny("toy", "toy-direct")
    cache = tmp_path / "judge-cache.sqlite"
    kw = dict(judge=transformers_server.model, judge_url=transformers_server.base_url, judge_cache=str(cache),
              lm=lm, verify=False, decoding={"max_new_tokens": 4})
    before = _posts(transformers_server, "200")
    res = run_bench(_opts(tmp_path, hr_tsv, "run1"), "hrbench4k", **kw)
    assert _posts(transformers_server, "200") - before == 4  # the official protocol judges EVERY reply
    tasks = {t.id: t for t in get_benchmark("hrbench4k").load(hr_tsv, verify=False)}
    samples = _samples(res)
    for s in samples:
        j = s["judge"]
        assert j["used"] and j["protocol"] == "hrbench" and j["error"] is None and j["cached"] is False
        assert j["prompt"] == hrbench_prompt(tasks[s["id"]], s["reply"]).text  # the official text, this reply
        assert j["judge"] == {"backend": "openai", "model": transformers_server.model,
                              "base_url": transformers_server.base_url}
        assert s["correct"] is parse_yes_no(j["reply"], tasks[s["id"]])  # the judge decides, not the rule
    assert res["scores"]["estimate"] == pytest.approx(_cycle_average(samples))
    rule = [dict(s, correct=s["correct_rule"]) for s in samples]
    assert res["scores_rule"]["estimate"] == pytest.approx(_cycle_average(rule))  # side by side
    assert res["judge"]["protocol"] == "hrbench" and res["judge"]["params"]["top_k"] == 40
    assert res["official"]["comparable"] is True, res["official"]["reasons"]
    assert res["conditions"]["baseline"]["judge"] == {"asked": 4, "errors": 0, "cached": 0,
                                                      "changed": sum(s["correct"] != s["correct_rule"]
                                                                     for s in samples)}
    # a rerun pays nothing: not one request reaches the server, same verdicts
    mid = _posts(transformers_server)
    res2 = run_bench(_opts(tmp_path, hr_tsv, "run2"), "hrbench4k", **kw)
    assert _posts(transformers_server) == mid
    again = _samples(res2)
    assert all(s["judge"]["cached"] for s in again)
    assert [(s["judge"]["reply"], s["correct"]) for s in again] == [(s["judge"]["reply"], s["correct"])
                                                                     for s in samples]
    assert res2["conditions"]["baseline"]["judge"]["cached"] == 4


def test_blink_matcher_through_transformers_serve(transformers_server, load_tiny, tmp_path, image_bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = {"bytes": image_bytes((1, 2, 3), (28, 28)), "path": None}
    (tmp_path / "Jigsaw").mkdir()
    pq.write_table(pa.table({"idx": ["val_Jigsaw_1", "val_Jigsaw_2"], "question": ["Which piece fits?"] * 2,
                             "sub_task": ["Jigsaw"] * 2, "image_1": [img] * 2, "image_2": [img] * 2,
                             "image_3": [img] * 2, "image_4": [None] * 2,
                             "choices": [["the second image", "the third image"]] * 2, "answer": ["(A)", "(B)"],
                             "prompt": ["Which piece fits?\nSelect from the following choices.\n\n(A) the second "
                                        "image\n(B) the third image"] * 2}),
                   tmp_path / "Jigsaw" / "val-00000-of-00001.parquet")
    res = run_bench(_opts(tmp_path, tmp_path, "blink"), "blink:Jigsaw", judge=transformers_server.model,
                    judge_url=transformers_server.base_url, judge_cache=str(tmp_path / "c.sqlite"),
                    lm=load_tiny("toy", "toy-direct"), decoding={"max_new_tokens": 4})
    tasks = {t.id: t for t in get_benchmark("blink:Jigsaw").load(tmp_path)}
    for s in _samples(res):
        j = s["judge"]
        assert j["used"] and j["protocol"] == "blink" and j["kind"] == "choice"
        assert j["prompt"] == blink_prompt(tasks[s["id"]], s["reply"]).text
        assert s["pred"] == parse_paren_letter(j["reply"], tasks[s["id"]])
        assert s["correct"] is (s["pred"] == tasks[s["id"]].answer_letter)


def test_local_backend_judge_and_cache(load_tiny, hr_tsv, tmp_path):
    lm = load_tiny("toy", "toy-direct")
    cache = tmp_path / "local-judge.sqlite"
    first = Judge(make_backend("local", lm, cache=cache), "hrbench")
    res = run_bench(_opts(tmp_path, hr_tsv, "l1"), "hrbench4k", judge=first, lm=lm, verify=False,
                    decoding={"max_new_tokens": 4})
    assert first.backend.stats == {"calls": 4, "cache_hits": 0, "errors": 0}
    samples = _samples(res)
    tasks = {t.id: t for t in get_benchmark("hrbench4k").load(hr_tsv, verify=False)}
    for s in samples:
        assert s["judge"]["judge"]["backend"] == "local" and s["judge"]["judge"]["weight_hash"] == lm.weight_hash
        assert s["correct"] is parse_yes_no(s["judge"]["reply"], tasks[s["id"]])
    second = Judge(make_backend("local", lm, cache=cache), "hrbench")
    res2 = run_bench(_opts(tmp_path, hr_tsv, "l2"), "hrbench4k", judge=second, lm=lm, verify=False,
                     decoding={"max_new_tokens": 4})
    assert second.backend.stats == {"calls": 0, "cache_hits": 4, "errors": 0}  # no judge call at all
    assert res2["scores"] == res["scores"]
