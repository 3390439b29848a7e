"""Study tables from a fake run folder: layout, differences, CI marks and the reasons of cells without a number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.summaries import SUMMARY_SCHEMA, Score
from latentcheck.reproduce.study import load_study, packaged_studies
from latentcheck.reproduce.tables import build_tables, markdown

STUDY = """
[study]
name = "fake"
title = "A fake study"
source = "tests"

[models.m]
stands_for = "Model M"

[data.d]

[[steps]]
id = "pl"
analysis = "perturb-latent"
model = "m"
data = "d"

[[steps]]
id = "bn"
analysis = "bench"
model = "m"
data = "d"

[[steps]]
id = "missing"
analysis = "bench"
model = "m"
data = "d"

[[tables]]
id = "t"
title = "Table T"
columns = ["A", "B"]
[[tables.rows]]
label = "base"
cells = [{ step = "pl", metric = "accuracy", paper = 80.0, provenance = "table" }, { step = "bn", metric = "accuracy", paper = 50.0, provenance = "figure" }]
[[tables.rows]]
label = "delta"
cells = [{ step = "pl", metric = "delta@zero", paper = -1.0, provenance = "table" }, { step = "missing", metric = "accuracy", paper = 40.0, provenance = "table" }]
[[tables.rows]]
label = "paper only"
cells = [{ paper = 12.5, provenance = "text" }, { step = "pl", metric = "delta@noise:sigma=2" }]
"""


def _write_run(out: Path) -> None:
    pl = {"baseline": {"n": 40, "accuracy": {"estimate": 0.75, "lo": 0.6, "hi": 0.86, "n": 40, "method": "wilson",
                                             "successes": 30}},
          "interventions": [{"label": "zero", "n": 40, "effect": {"delta": {"estimate": -0.3, "lo": -0.45, "hi": -0.15,
                                                                            "n": 40}}},
                            {"label": "noise:sigma=2.0", "n": 0}]}
    bn = {"scores": Score.micro({"n": 20, "correct": 10, "accuracy": 0.5}, 10, 20).to_dict()}
    for sid, summ in (("pl", pl), ("bn", bn)):
        d = out / "steps" / sid
        (d / "run").mkdir(parents=True)
        (d / "run" / "summary.json").write_text(json.dumps({**summ, "schema": SUMMARY_SCHEMA}))
        (d / "step.json").write_text(json.dumps({"id": sid, "status": "done", "summary": str(d / "run" / "summary.json")}))
    d = out / "steps" / "missing"
    d.mkdir(parents=True)
    (d / "step.json").write_text(json.dumps({"id": "missing", "status": "skipped",
                                             "reason": "data role 'd' is not bound (--data d=PATH)"}))


def test_cells_paper_run_difference_marks_and_reasons(tmp_path):
    (tmp_path / "s.toml").write_text(STUDY)
    study = load_study(str(tmp_path / "s.toml"))
    _write_run(tmp_path / "run")
    (t,) = build_tables(study, tmp_path / "run")
    (base_a, base_b), (delta_a, delta_b), (paper_only, skipped_iv) = (cells for _, cells in t.rows)
    # 75% [60, 86] vs paper 80: inside the CI -> no mark; difference -5 points
    assert base_a.ours.estimate == pytest.approx(75.0) and base_a.difference == pytest.approx(-5.0)
    assert base_a.excludes_paper is False
    # bench 10/20 = 50%: the Score's Wilson CI (from the counts); paper 50 (figure) is inside
    assert base_b.ours.lo == pytest.approx(100 * 0.2993, abs=0.01) and base_b.provenance == "figure"
    assert base_b.excludes_paper is False
    # delta -30 [-45, -15] vs paper -1: outside -> marked
    assert delta_a.difference == pytest.approx(-29.0) and delta_a.excludes_paper is True
    assert delta_b.ours is None and "not bound" in delta_b.reason
    assert paper_only.ours is None and paper_only.reason is None and paper_only.paper == 12.5
    assert skipped_iv.ours is None and "skipped for every sample" in skipped_iv.reason
    md = markdown(build_tables(study, tmp_path / "run"), study)
    assert "| A paper | A this run | A diff | B paper | B this run | B diff |" in md
    assert "| base | 80.0 | 75.0 [60.0, 86.0] | -5.0 | ~50.0 | 50.0 [29.9, 70.1] | +0.0 |" in md
    assert "| delta | -1.0 | -30.0 [-45.0, -15.0] | -29.0* | 40.0 | n/a | - |" in md
    assert "- delta / B: step missing skipped: data role 'd' is not bound (--data d=PATH)" in md
    # a stored summary of another schema version is not read: its cells say so (file and schema named)
    f = tmp_path / "run" / "steps" / "pl" / "run" / "summary.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "schema": "latentcheck.summary/2"}))
    (t,) = build_tables(study, tmp_path / "run")
    reason = t.rows[0][1][0].reason
    assert t.rows[0][1][0].ours is None and str(f) in reason and "latentcheck.summary/2" in reason


def test_a_step_that_never_ran_says_so(tmp_path):
    (tmp_path / "s.toml").write_text(STUDY)
    study = load_study(str(tmp_path / "s.toml"))
    (t,) = build_tables(study, tmp_path / "empty")
    assert t.rows[0][1][0].reason == "step pl has not run"


@pytest.mark.parametrize("edit,message", [
    (("[data.d]", "[data.d]\nbenchmrk = \"x\""), "[data.d] benchmrk: unknown key"),
    (('analysis = "bench"', 'analysis = "bnch"'), "[steps[1]] analysis: must be one of"),
    (('step = "pl", metric = "accuracy", paper = 80.0', 'step = "nope", metric = "accuracy", paper = 80.0'),
     "cells[0]] step: unknown step 'nope'"),
    (('metric = "delta@zero"', 'metric = "delta"'), "metric: metric 'delta' needs an argument"),
    (('paper = 80.0, provenance = "table"', 'paper = 80.0'), "provenance: a paper value needs its provenance"),
    (('paper = 80.0', 'paper = "80"'), "paper: expected int/float, got str"),
    (('columns = ["A", "B"]', 'columns = ["A"]'), "cells: 2 cells for 1 columns"),
    (('analysis = "bench"', 'analysis = "bench"\noptions = { judge_urll = "http://x" }'),
     "[steps[1] (bn)] options.judge_urll: unknown option for bench (known: benchmark, variant, scoring, verify, judge_model"),
    (('analysis = "bench"', 'analysis = "bench"\noptions = { judge_concurrency = "4" }'),
     "[steps[1] (bn)] options.judge_concurrency: expected int, got str '4'"),
    (('analysis = "perturb-latent"', 'analysis = "perturb-latent"\noptions = { judge_model = "gpt-4o" }'),
     "[steps[0] (pl)] options.judge_model: unknown option for perturb-latent"),
    (('analysis = "perturb-latent"', 'analysis = "probe"\noptions = { derived = "dq" }'),
     "[steps[0] (pl)] options.derived: names no data role 'dq' (declared: d; or \"same\")"),
])
def test_study_errors_name_file_section_and_key(tmp_path, edit, message):
    p = tmp_path / "s.toml"
    p.write_text(STUDY.replace(*edit, 1))
    with pytest.raises(LatentcheckError) as e:
        load_study(str(p))
    assert str(p) in str(e.value) and message in str(e.value)


def test_packaged_studies_load_and_every_paper_value_has_provenance():
    assert {"paper-2602.22766", "zoo"} <= set(packaged_studies())
    paper = load_study("paper-2602.22766")
    values = [c for t in paper.tables for _, row in [(r.label, r.cells) for r in t.rows] for c in row
              if c.paper is not None]
    assert values and all(c.provenance in ("table", "figure", "text") for c in values)
    t4 = next(t for t in paper.tables if t.id == "table4b")
    assert [c.paper for c in t4.rows[-1].cells] == [0.8, -41.5]  # Mirage mu ~ 0: +0.8 / -41.5
    assert next(t for t in paper.tables if t.id == "table1").rows[-1].cells[0].paper == 85.9  # CapImagine V*


def test_the_documented_example_study_is_valid(tmp_path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reproduce.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my.toml").write_text(block)
    s = load_study(str(tmp_path / "my.toml"))
    assert [st.id for st in s.steps] == ["zy"] and s.tables[0].rows[1].cells[0].metric == "delta@shared:source=mean"


def test_table3_sub_category_cells_from_a_fake_run_folder(tmp_path):
    """The paper study's Table 3: V* Attr / Spatial of CapImagine from the intervene summary's per-category effects
    (computed by the analysis's own code from records), Qwen2.5-VL's from bench's per-category scores; an HR-4K
    intervene run made before per-category effects existed gives its sub-category cells a reason, its Avg a number."""
    from latentcheck.core.stats import wilson_ci
    from latentcheck.core.summaries import AccuracyEffect
    from latentcheck.imagine.intervene import per_category_effects

    def rec(cat, clean, corrupt):
        return {"category": cat, "clean": {"correct": clean}, "corrupt": {"correct": corrupt}}

    # Attr: 9/10 right -> 2/10 after do(Z); Spatial: 4/5 -> 4/5 (no flips)
    recs = ([rec("direct_attributes", True, False)] * 7 + [rec("direct_attributes", True, True)] * 2
            + [rec("direct_attributes", False, False)] + [rec("relative_position", True, True)] * 4
            + [rec("relative_position", False, False)])
    iv = {"effect": AccuracyEffect.paired([r["clean"]["correct"] for r in recs],
                                          [r["corrupt"]["correct"] for r in recs]).to_dict(),
          "per_category": per_category_effects(recs)}
    old_iv = {"effect": iv["effect"]}  # no per_category
    bench = {"scores": Score.micro({"n": 15, "correct": 12, "accuracy": 0.8,
                                    "per_category": {"direct_attributes": {"n": 10, "correct": 8, "accuracy": 0.8},
                                                     "relative_position": {"n": 5, "correct": 4, "accuracy": 0.8}}},
                                   12, 15).to_dict()}
    out = tmp_path / "run"
    for sid, summ in (("t3_vstar", iv), ("t3_hrbench4k", old_iv), ("t1_qwen2_5_vl_vstar", bench)):
        d = out / "steps" / sid
        (d / "run").mkdir(parents=True)
        (d / "run" / "summary.json").write_text(json.dumps({**summ, "schema": SUMMARY_SCHEMA}))
        (d / "step.json").write_text(json.dumps({"id": sid, "status": "done",
                                                 "summary": str(d / "run" / "summary.json")}))
    study = load_study("paper-2602.22766")
    t3 = next(t for t in build_tables(study, out) if t.id == "table3")
    assert t3.columns == ("V* Avg", "V* Attr", "V* Spatial", "HR-4K Avg", "HR-4K FSP", "HR-4K FCP")
    rows = dict(t3.rows)
    qwen, cap, doz, delta = (rows[k] for k in ("Qwen2.5-VL-7B", "CapImagine", "CapImagine do(Z)", "delta"))
    # Qwen2.5-VL V* Attr 8/10 = 80% (Wilson from the counts) vs paper 77.4
    assert qwen[1].ours.estimate == pytest.approx(80.0) and qwen[1].difference == pytest.approx(80.0 - 77.4)
    assert (qwen[1].ours.lo, qwen[1].ours.hi) == pytest.approx(tuple(100 * x for x in wilson_ci(8, 10)))
    # CapImagine Attr 90% [Wilson 9/10] vs paper 87.8; do(Z) 20% vs 20.0
    assert cap[1].ours.estimate == pytest.approx(90.0) and cap[1].paper == 87.8
    assert (cap[1].ours.lo, cap[1].ours.hi) == pytest.approx(tuple(100 * x for x in wilson_ci(9, 10)))
    assert doz[1].ours.estimate == pytest.approx(20.0) and doz[1].difference == pytest.approx(0.0)
    assert cap[2].ours.estimate == pytest.approx(80.0) and doz[2].ours.estimate == pytest.approx(80.0)
    # delta Attr -70 points vs paper -67.8: the paired interval contains it (no mark); Spatial 0 vs -56.6: marked
    assert delta[1].ours.estimate == pytest.approx(-70.0) and delta[1].excludes_paper is False
    assert delta[2].ours.estimate == pytest.approx(0.0) and delta[2].excludes_paper is True
    assert delta[2].ours.lo < 0 < delta[2].ours.hi  # 0 flips of 5: still an interval, never zero-width
    assert delta[0].ours.estimate == pytest.approx(100 * iv["effect"]["delta"]["estimate"])  # Avg: the overall
    # HR-4K: Avg from the old summary, the sub-categories say why they have no number
    assert cap[3].ours.estimate == pytest.approx(100 * iv["effect"]["base"]["estimate"])
    for cells in (cap, doz, delta):
        assert cells[4].ours is None and "no per-category effects" in cells[4].reason
    assert qwen[4].ours is None and "t1_qwen2_5_vl_hrbench4k has not run" in qwen[4].reason
    md = markdown([t3], study)
    d = next(line for line in md.splitlines() if line.startswith("| delta |"))
    assert "| -67.8 | -70.0 [" in d and f"| -56.6 | 0.0 [{delta[2].ours.lo:.1f}, {delta[2].ours.hi:.1f}] | +56.6* |" in d


def test_docs_reproduce_commands_use_live_options_and_the_studys_roles():
    """Every `latentcheck ... reproduce` command in docs/reproduce.md uses options the live CLI defines (the command's
    or the root's), and every ROLE of a paper-study --model / --data / --profile is one the study declares."""
    import re

    import typer

    from latentcheck.cli.app import _register_subcommands, app

    _register_subcommands()
    root = typer.main.get_command(app)
    known = {n for p in root.commands["reproduce"].params + root.params for n in getattr(p, "opts", [])}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reproduce.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", doc, flags=re.S)
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if " reproduce " in f" {c} "]
    assert len(commands) >= 6
    paper = load_study("paper-2602.22766")
    for cmd in commands:
        cmd = cmd.split("#")[0]
        for opt in re.findall(r"(?<!\S)(--[a-z0-9-]+)", cmd):
            assert opt in known, (opt, cmd)
        if "paper-2602.22766" in cmd:
            for flag, role in re.findall(r"--(model|data|profile) ([a-z0-9_]+)=", cmd):
                assert role in (paper.data if flag == "data" else paper.models), (flag, role)
    full = max(commands, key=len)  # the whole-study command binds every role
    assert {r for f, r in re.findall(r"--(model|data) ([a-z0-9_]+)=", full)} == set(paper.models) | set(paper.data)
