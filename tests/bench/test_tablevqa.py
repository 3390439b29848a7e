"""TableVQA-Bench: split parquets (HF layout) and the VLMEvalKit TSV, official prompts vs snapshots, the official
matchers on hand-computed cases (WTQ denotation, TabFact true/false, FinTabNetQA relieved/exact), the aggregates, and
the bench runner end to end."""

from __future__ import annotations

import csv

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.runner import run_bench
from latentcheck.bench.tablevqa import (fintabnet_forms, fintabnet_match, load_tablevqa, normalize,
                                                  score_tablevqa, split_of_file, tabfact_outcome, tablevqa_is_correct,
                                                  wtq_match)
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.extract import get_extractor
from latentcheck.core.runner import CommonOptions, load_records
from latentcheck.core.tasks import BadRecord, Task, decode_image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
IMG_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([("qa_id", pa.string()), ("image", IMG_TYPE), ("question", pa.string()),
                    ("text_markdown_table", pa.string()), ("text_html_table", pa.string()), ("gt", pa.string())])
QUESTIONS = {"vwtq": "which nation won the most gold medals?", "vwtq_syn": "how many teams scored over 10?",
             "vtabfact": "the team scored 3 goals in the final", "fintabnetqa": "What was the net revenue in 2008?"}
GOLD = {"vwtq": "Norway", "vwtq_syn": "3", "vtabfact": "1", "fintabnetqa": "$3,852 million"}


def _row(split, i, image, gt=None, question=None):
    return {"qa_id": f"{split}_{i}", "image": {"bytes": image, "path": f"{split}_{i}.png"},
            "question": question or QUESTIONS[split], "text_markdown_table": "| a |\n|---|\n| 1 |",
            "text_html_table": "<table></table>", "gt": GOLD[split] if gt is None else gt}


@pytest.fixture
def tvqa_dir(tmp_path, image_bytes):
    img = image_bytes((250, 250, 250), (64, 40))
    data = tmp_path / "TableVQA-Bench" / "data"
    data.mkdir(parents=True)
    for split in ("vwtq", "vwtq_syn", "vtabfact", "fintabnetqa"):
        rows = [_row(split, i, img) for i in range(2)]
        if split == "vtabfact":
            rows.append(_row(split, 2, img, gt="maybe"))  # bad gold
        if split == "vwtq":
            rows.append(_row(split, 2, img, gt=""))  # missing gold
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), data / f"{split}-00000-of-00001.parquet")
    return data.parent


def test_split_from_file_name():
    from pathlib import Path

    assert split_of_file(Path("vwtq_syn-00000-of-00001.parquet")) == "vwtq_syn"
    assert split_of_file(Path("vwtq-00000-of-00001.parquet")) == "vwtq"
    assert split_of_file(Path("test-vtabfact.parquet")) == "vtabfact"
    assert split_of_file(Path("train-0000.parquet")) is None


def test_loads_the_hf_layout_with_splits_and_bad_rows(tvqa_dir):
    out = list(load_tablevqa(tvqa_dir))
    tasks = [t for t in out if isinstance(t, Task)]
    bad = [b for b in out if isinstance(b, BadRecord)]
    assert sorted({t.category for t in tasks}) == ["fintabnetqa", "vtabfact", "vwtq", "vwtq_syn"]
    assert len(tasks) == 8 and all(t.options is None and t.meta == {"split": t.category} for t in tasks)
    assert {t.id: t.answer for t in tasks}["vtabfact_0"] == "1"
    assert sorted((b.error.field, b.where.split("#")[0]) for b in bad) == [
        ("gt", "vtabfact-00000-of-00001.parquet"), ("gt", "vwtq-00000-of-00001.parquet")]
    assert decode_image(tasks[0].image, tasks[0].id).size == (64, 40)
    only = list(get_benchmark("tablevqa:vtabfact,fintabnetqa").load(tvqa_dir))
    assert {t.category for t in only if isinstance(t, Task)} == {"vtabfact", "fintabnetqa"}
    single = tvqa_dir / "data" / "vwtq-00000-of-00001.parquet"
    assert {t.category for t in load_tablevqa(single) if isinstance(t, Task)} == {"vwtq"}
    renamed = tvqa_dir / "part.parquet"
    renamed.write_bytes(single.read_bytes())
    with pytest.raises(LatentcheckError, match="cannot tell the split of part.parquet"):
        list(load_tablevqa(renamed))
    assert {t.category for t in load_tablevqa(renamed, split="vwtq_syn") if isinstance(t, Task)} == {"vwtq_syn"}


def test_loads_the_vlmevalkit_tsv(tmp_path, image_b64):
    tsv = tmp_path / "tablevqa-bench.tsv"
    with open(tsv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["index", "image", "question", "answer", "split"], delimiter="\t")
        w.writeheader()
        for i, split in enumerate(("vwtq", "vtabfact", "fintabnetqa", "nosuch")):
            w.writerow({"index": i, "image": image_b64(), "question": QUESTIONS.get(split, "q"),
                        "answer": GOLD.get(split, "x"), "split": split})
    out = list(load_tablevqa(tsv))
    assert [t.category for t in out if isinstance(t, Task)] == ["vwtq", "vtabfact", "fintabnetqa"]
    assert [(b.where, b.error.field) for b in out if isinstance(b, BadRecord)] == [("tablevqa-bench.tsv#4", "split")]
    assert [t.id for t in load_tablevqa(tsv, splits=["vtabfact"])] == ["1"]
    with pytest.raises(LatentcheckError, match="MD5"):
        list(get_benchmark("tablevqa").load(tsv))  # not the distributed file


def test_prompts_match_snapshots(tvqa_dir, snapshot):
    bench = get_benchmark("tablevqa")
    tasks = {t.category: t for t in bench.load(tvqa_dir) if isinstance(t, Task)}
    assert bench.prompt(tasks["vwtq"]) == snapshot("tablevqa_vwtq.txt")
    assert bench.prompt(tasks["vwtq_syn"]) == snapshot("tablevqa_vwtq.txt").replace(QUESTIONS["vwtq"],
                                                                                    QUESTIONS["vwtq_syn"])
    assert bench.prompt(tasks["vtabfact"]) == snapshot("tablevqa_vtabfact.txt")
    assert bench.prompt(tasks["fintabnetqa"]) == snapshot("tablevqa_fintabnetqa.txt")
    assert bench.prompt(tasks["vwtq"], "monet") == bench.prompt(tasks["vwtq"])
    assert "\\boxed{}" in bench.system_prompt("monet") and bench.system_prompt("official") is None


def test_answer_text_extractor():
    ex = get_extractor("answer_text")
    assert ex("Answer: 2004", None) == "2004"
    assert ex("  answer:Freeman\n", None) == "Freeman"
    assert ex("Apple||Banana", None) == "Apple||Banana"
    assert ex("   ", None) is None


@pytest.mark.parametrize("pred, gold, ok", [
    ("2004", "2004", True),
    ("2004.0", "2004", True),                      # numbers compare by value
    ("Freeman", "freeman", True),
    ("Apple||Banana", "banana|apple", True),       # || -> |, sets
    ("Apple", "apple|banana", False),              # different sizes
    ("Apple||apple", "apple", True),               # duplicates collapse
    ("1,000", "1000", False),                      # "1,000" is a string, not a number
    ("The Beatles (band)", "the beatles", True),   # trailing parenthetical dropped
    ("Paris[1]", "Paris", True),                   # trailing citation dropped
    ('"Hey Jude"', "hey jude", True),              # outer quotes dropped
    ("São Paulo", "Sao Paulo", True),              # diacritics dropped
    ("1.5", "1.50001", False),
    ("3.0000001", "3", True),                      # within 1e-6 of an integer
    ("2004-xx-xx", "2004", True),                  # a bare year is a number
    ("2004-05-xx", "2004-05-xx", True),            # dates
    ("2004-05-xx", "2004-06-xx", False),
    ("the end.", "the end", True),                 # final '.' dropped
    ("a\\pb", "a\\pb", True),                      # TSV unescaping: \\p is a literal bar inside ONE value
    ("a\\pb", "a|b", False),                       # ... so it is not the two values a, b
    (None, "x", False),
])
def test_wtq_denotation(pred, gold, ok):
    assert wtq_match(pred, gold) is ok


def test_wtq_normalisation_details():
    assert normalize("  Hello   World. ") == "hello world"
    assert normalize("“quoted”") == "quoted"
    assert normalize("a – b") == "a - b"


@pytest.mark.parametrize("pred, gold, outcome", [
    ("True", "1", "correct"), ("false.", "0", "correct"), ("True", "0", "wrong"),
    ("It is true or false", "1", "unparsed"), (None, "0", "wrong"),
    ("untrue", "1", "correct"),  # substring test, as in the official script
])
def test_tabfact(pred, gold, outcome):
    assert tabfact_outcome(pred, gold) == outcome


def test_fintabnet_relieved_and_exact():
    assert fintabnet_forms("$3,852 million") == (3852e6, [3852e6, 3852.0])
    assert fintabnet_forms("34.2%") == (0.342, [0.342, 34.2])
    assert fintabnet_match("$3,852 million", "$3,852 million") == (True, True)
    assert fintabnet_match("3852", "$3,852 million") == (True, False)   # unit-free forms agree
    assert fintabnet_match("34.2 %", "34.2%") == (True, True)
    assert fintabnet_match("5 shares", "5") == (True, True)             # unit words dropped
    assert fintabnet_match("October 31", "october 31") == (True, True)  # strings after normalisation
    assert fintabnet_match("3,853 million", "$3,852 million") == (False, False)


def test_aggregates_by_hand():
    def r(split, pred, gold, i):
        t = Task(id=f"{split}{i}", question="q", answer=gold, category=split, meta={"split": split})
        return {"id": t.id, "category": split, "pred": pred, "gold": gold,
                "correct": tablevqa_is_correct(t, pred), "meta": {"split": split}}

    rs = ([r("vwtq", "Norway", "Norway", 0), r("vwtq", "Sweden", "Norway", 1)]            # 1/2
          + [r("vwtq_syn", "3", "3", 0)]                                                   # 1/1
          + [r("vtabfact", "true", "1", 0), r("vtabfact", "true or false", "1", 1),
             r("vtabfact", "false", "1", 2), r("vtabfact", "false", "0", 3)]               # 2/4, 1 unparsed
          + [r("fintabnetqa", "3852", "$3,852 million", 0)])                               # relieved 1/1, exact 0
    s = score_tablevqa(rs)
    assert s["per_split"]["vwtq"]["accuracy"] == 0.5 and s["per_split"]["vwtq_syn"]["accuracy"] == 1.0
    assert s["per_split"]["vtabfact"]["accuracy"] == 0.5 and s["per_split"]["vtabfact"]["unparsed"] == 1
    assert s["per_split"]["fintabnetqa"]["accuracy"] == 1.0 and s["per_split"]["fintabnetqa"]["exact_accuracy"] == 0
    assert s["accuracy"] == pytest.approx(5 / 8)                       # official Average: sample-weighted
    assert s["paper_overall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)  # the paper's Overall
    assert score_tablevqa(rs[:3])["paper_overall"] is None             # not all three paper splits present


def test_bench_end_to_end(load_tiny, tmp_path, tvqa_dir):
    lm = load_tiny("toy", "toy-direct")
    opts = CommonOptions(data=str(tvqa_dir), out=str(tmp_path / "run"), quiet=True, batch_size=3)
    res = run_bench(opts, "tablevqa", lm=lm, decoding={"max_new_tokens": 4})
    recs = [r for r in load_records(res["results_path"]) if r.get("type", "sample") == "sample"]
    errors = [r for r in load_records(res["results_path"]) if r.get("type") == "error"]
    assert len(recs) == 8 and sorted(e["field"] for e in errors) == ["gt", "gt"]
    tasks = {t.id: t for t in load_tablevqa(tvqa_dir) if isinstance(t, Task)}
    for r in recs:  # every stored verdict is the official matcher applied to the stored prediction
        assert r["correct"] == tablevqa_is_correct(tasks[r["key"]], r["pred"])
        assert r["meta"]["split"] == tasks[r["key"]].category
    score = res["conditions"]["baseline"]["scores"]
    scores = score["official"]
    assert score["estimate"] == scores["accuracy"] and score["successes"] == sum(r["correct"] for r in recs)
    assert set(scores["per_split"]) == {"vwtq", "vwtq_syn", "vtabfact", "fintabnetqa"}
    assert scores["paper_overall"] is not None and scores["accuracy"] == pytest.approx(
        sum(r["correct"] for r in recs) / len(recs))
