"""Registry: names, variants, extractor per variant, generic JSONL benchmark, MD5 helper, chance levels."""

from __future__ import annotations

import hashlib
import json

import pytest

from latentcheck.bench import BENCHMARKS, get_benchmark, verify_md5
from latentcheck.bench.generic import data_uri
from latentcheck.bench.registry import MONET_SYSTEM_PROMPT
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import BadRecord, Task, decode_image


def test_all_benchmarks_listed_with_an_official_variant():
    assert list(BENCHMARKS) == ["vstar", "hrbench4k", "hrbench8k", "mme_realworld", "mme_realworld_lite", "blink",
                                "vsp", "tablevqa", "generic"]
    for b in BENCHMARKS.values():
        assert "official" in b.variants and (b.extractor or b.variant("official").mode == "likelihood")
    # V*: the authors' protocol (likelihood ranking) is the default; generation is a named variant
    assert get_benchmark("vstar").variant("official").mode == "likelihood"
    assert get_benchmark("vstar").variant("generate").extractor == "letter"
    assert get_benchmark("mme_realworld").extractor == "mme_rw"
    assert get_benchmark("vsp").extractor == "boxed"
    with pytest.raises(LatentcheckError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")
    with pytest.raises(LatentcheckError, match="only blink and tablevqa take a selection"):
        get_benchmark("vstar:x")
    assert get_benchmark("tablevqa:vwtq, vtabfact").loader_kwargs == {"splits": ["vwtq", "vtabfact"]}
    with pytest.raises(LatentcheckError, match="unknown TableVQA split"):
        get_benchmark("tablevqa:wtq")
    with pytest.raises(LatentcheckError, match="no prompt variant 'fancy'"):
        get_benchmark("vstar").variant("fancy")


def test_chance_levels():
    # V*: 115 four-option + 76 two-option questions -> (115/4 + 76/2) / 191
    assert get_benchmark("vstar").chance == pytest.approx((28.75 + 38) / 191)
    assert get_benchmark("hrbench4k").chance == 0.25 and get_benchmark("mme_realworld_lite").chance == 0.2
    two = Task(id="a", question="q", options=["x", "y"])
    four = Task(id="b", question="q", options=["w", "x", "y", "z"])
    assert get_benchmark("blink").chance_for([two, four]) == pytest.approx((0.5 + 0.25) / 2)


@pytest.fixture
def generic_file(tmp_path, image_bytes):
    (tmp_path / "a.png").write_bytes(image_bytes((1, 2, 3), (7, 5)))
    recs = [{"id": "q1", "image": "a.png", "question": "What colour?", "options": ["red", "blue"], "answer": "blue",
             "category": "colour"},
            {"id": "q2", "question": "Capital of France?", "answer": "Paris", "category": "open"},
            {"id": "q3", "question": "Broken", "options": ["x", "y"], "answer": "Z"}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


def test_generic_benchmark(generic_file):
    bench = get_benchmark("generic")
    q1, q2, bad = bench.load(generic_file)
    assert isinstance(bad, BadRecord) and bad.error.field == "answer"
    assert bench.prompt(q1) == ("What colour?\nA. red\nB. blue\n"
                                "Answer with the option's letter from the given choices directly.")
    assert bench.prompt(q1, "vlmevalkit") == ("Question: What colour?\nOptions:\nA. red\nB. blue\n"
                                              "Please select the correct answer from the options above. \n")
    assert bench.prompt(q2) == "Capital of France?"
    recs = [bench.record(q1, "B"), bench.record(q2, " paris. "), bench.record(q1, "A")]
    assert [r["correct"] for r in recs] == [True, True, False]
    s = bench.score(recs)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["per_category"]["colour"]["accuracy"] == 0.5 and s["per_category"]["open"]["accuracy"] == 1.0
    assert q1.load_image().size == (7, 5)


def test_monet_variant_uses_boxed_and_system_prompt(generic_file):
    bench = get_benchmark("generic")
    q1 = next(iter(bench.load(generic_file)))
    assert bench.system_prompt("monet") == MONET_SYSTEM_PROMPT and bench.system_prompt() is None
    assert bench.record(q1, "The bag is \\boxed{B}", "monet")["pred"] == "B"
    assert bench.record(q1, "B", "monet")["pred"] is None  # no box -> nothing extracted


def test_verify_md5(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"latentcheck" * 1000)
    good = hashlib.md5(f.read_bytes()).hexdigest()
    assert verify_md5(f, good) == good
    with pytest.raises(LatentcheckError) as e:
        verify_md5(f, "0" * 32)
    assert "0" * 32 in str(e.value) and good in str(e.value)
    with pytest.raises(LatentcheckError, match="not a file"):
        verify_md5(tmp_path, good)


def test_data_uri_sniffs_type_and_decodes(image_b64, image_bytes):
    uri = data_uri(image_b64((5, 6, 7), (3, 2)))
    assert uri.startswith("data:image/png;base64,")
    assert decode_image(uri, "r").getpixel((0, 0)) == (5, 6, 7)
    assert data_uri(image_bytes(fmt="JPEG")).startswith("data:image/jpeg;base64,")
    assert data_uri(uri) == uri


def test_empty_inputs_are_errors(tmp_path):
    (tmp_path / "e.tsv").write_text("index\tquestion\n")
    with pytest.raises(LatentcheckError, match="empty input"):
        list(get_benchmark("hrbench4k").load(tmp_path / "e.tsv", verify=False))
    with pytest.raises(LatentcheckError, match="not found"):
        get_benchmark("vsp").load(tmp_path / "missing.jsonl")
