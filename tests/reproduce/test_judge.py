"""A study's bench step judged by an LLM through a REAL OpenAI-compatible server (`transformers serve` on the toy
zoo's toy-direct, 127.0.0.1): the step's judge options and `reproduce --judge-*` reach bench, the command line's
winning over the study's."""

from __future__ import annotations

import base64
import csv
import io
import json

from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core.records import read_results


def _png_b64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (9, 9, 9)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def _hr_tsv(path):
    """A 4-row HR-Bench 4K TSV (two cycle groups, one single- and one cross-instance question each)."""
    img = _png_b64()
    rows = [{"index": i, "question": f"What number is on sign {i}?", "answer": gold, "category": cat, "A": "12",
             "B": "15", "C": "21", "D": "51", "cycle_category": cyc, "image": img}
            for i, (cyc, cat, gold) in enumerate([("c0", "single", "A"), ("c0", "cross", "B"),
                                                  ("c1", "single", "B"), ("c1", "cross", "A")])]
    return _tsv(path, rows)


def _vstar_tsv(path):
    """A 2-row VLMEvalKit VStarBench.tsv (V*'s official scoring ranks the options by likelihood: no reply to judge)."""
    img = _png_b64()
    return _tsv(path, [{"index": i, "question": "What is the colour of the cup?", "A": "red", "B": "blue", "C": "",
                        "D": "", "answer": "A", "category": "direct_attributes", "image": img} for i in range(2)])


STUDY = """
[study]
name = "judged"
[models.direct]
default = "toy-direct"
[data.hr]
benchmark = "hrbench4k"
[data.vstar]
benchmark = "vstar"
[[steps]]
id = "vstar"
analysis = "bench"
model = "direct"
data = "vstar"
options = {{ verify = false }}
[[steps]]
id = "hr"
analysis = "bench"
model = "direct"
data = "hr"
options = {{ verify = false, judge_url = "http://127.0.0.1:9/v1", judge_cache = "{cache}" }}
[[tables]]
id = "t"
columns = ["HR-4K"]
[[tables.rows]]
label = "direct"
cells = [{{ step = "hr", metric = "accuracy" }}]
"""


def test_bench_step_judged_through_transformers_serve(transformers_server, tmp_path):
    tsv = _hr_tsv(tmp_path / "hr_bench_4k.tsv")
    cache = tmp_path / "judge.sqlite"
    study = tmp_path / "judged.toml"
    study.write_text(STUDY.format(cache=cache))
    out = tmp_path / "run"
    # the study's judge_url points at a closed port: the command line's --judge-url must replace it
    vstar = _vstar_tsv(tmp_path / "VStarBench.tsv")
    r = CliRunner().invoke(app, ["reproduce", str(study), "--data", f"hr={tsv}", "--data", f"vstar={vstar}",
                                 "--out", str(out), "--quiet",
                                 "--no-report", "--no-plots", "--n-boot", "50",
                                 "--judge-model", transformers_server.model,
                                 "--judge-url", transformers_server.base_url])
    assert r.exit_code == 0, r.output
    step = json.loads((out / "steps" / "hr" / "step.json").read_text())
    assert step["status"] == "done", step
    _, recs = read_results(out / "steps" / "hr" / "run" / "samples.jsonl")
    samples = [s for s in recs if s["type"] == "sample"]
    assert len(samples) == 4
    for s in samples:
        j = s["judge"]
        assert j["used"] and j["protocol"] == "hrbench" and j["error"] is None, j
        assert j["judge"] == {"backend": "openai", "model": transformers_server.model,
                              "base_url": transformers_server.base_url}
    assert cache.is_file()  # the step's own judge_cache reached bench
    summary = json.loads((out / "steps" / "hr" / "run" / "summary.json").read_text())
    assert summary["judge"]["protocol"] == "hrbench"
    assert summary["conditions"]["baseline"]["judge"]["asked"] == 4
    # the V* step ranks options by likelihood: the command line's judge is not applied there, and it runs
    v = json.loads((out / "steps" / "vstar" / "step.json").read_text())
    assert v["status"] == "done", v
    vs = json.loads((out / "steps" / "vstar" / "run" / "summary.json").read_text())
    assert vs["scoring"] == "likelihood" and not vs.get("judge")


def test_judge_overrides_are_checked(tmp_path):
    r = CliRunner().invoke(app, ["reproduce", "zoo", "--judge-concurrency", "0", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--judge-concurrency" in r.output
