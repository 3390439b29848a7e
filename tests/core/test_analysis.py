"""core/analysis.py: the one result type, the one driver (run_analysis over an AnalysisSpec), the common tail, and
the registry the audit loops over."""

from __future__ import annotations

import dataclasses
import json

import pytest

from latentcheck.core.analysis import (ANALYSES, Analysis, AnalysisContext, AnalysisResult, AnalysisRun, AnalysisSpec,
                                       RecordStage, finish, not_main, register_analysis, run_analysis)
from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.runner import CommonOptions


def test_result_counts_errors_flat_and_nested():
    flat = AnalysisResult("x", counts={"total": 5, "ok": 3, "errors": 2})
    nested = AnalysisResult("probe", counts={"capture": {"ok": 4, "errors": 1}, "behavioural": {"ok": 2, "errors": 2}})
    clean = AnalysisResult("x", counts={"total": 5, "ok": 5, "errors": 0})
    assert (flat.errors, flat.exit_code) == (2, 3)
    assert (nested.errors, nested.exit_code) == (3, 3)
    assert (clean.errors, clean.exit_code) == (0, 0)


def test_finish_writes_the_summary_and_reads_like_it(tmp_path):
    summary = {"command": "demo", "accuracy": {"estimate": 0.5, "lo": 0.1, "hi": 0.9, "n": 4}, "nan": float("nan")}
    res = finish("demo", tmp_path, summary, {"total": 4, "ok": 4, "errors": 0}, str(tmp_path / "samples.jsonl"),
                 [str(tmp_path / "plots" / "a.png")])
    assert json.loads((tmp_path / "summary.json").read_text()) == {**summary, "nan": None,
                                                                   "schema": "latentcheck.summary/4"}
    assert res.summary_path == str(tmp_path / "summary.json") and res.figures == {"a": str(tmp_path / "plots/a.png")}
    assert res["accuracy"]["n"] == 4 and res["summary_path"] == res.summary_path and res["exit_code"] == 0
    assert "accuracy" in res and res.get("missing", 7) == 7 and list(res) == ["command", "accuracy", "nan", "schema"]
    assert res.paths() == {"samples": str(tmp_path / "samples.jsonl"), "summary": str(tmp_path / "summary.json"),
                           "results": str(tmp_path / "results.json"),
                           "figure:a": str(tmp_path / "plots/a.png")}
    with pytest.raises(KeyError):
        res["nothing"]
    worker = not_main("demo", tmp_path, "shard.jsonl", {"ok": 2, "errors": 1})
    assert not worker.is_main and worker.summary_path is None and worker.exit_code == 3


def test_analysis_declares_where_it_applies():
    a = Analysis("demo_stage", "demo", "demo", {"latent": lambda ctx: AnalysisResult("demo"),
                                                "plain": "plain model: nothing to see"},
                 default_reason="only latent models")
    assert a.skip_reason("latent") is None
    assert a.skip_reason("plain") == "plain model: nothing to see"
    assert a.skip_reason("text_imagination") == "text_imagination model: only latent models"
    register_analysis(a)
    try:
        with pytest.raises(LatentcheckError, match="analysis 'demo_stage' is already registered"):
            register_analysis(a)
    finally:
        ANALYSES.remove("demo_stage")


# ------------------------------------------------------------------------------------------------ the one driver
class _StubModel:
    """What the driver needs of a loaded model when an analysis does not run one: ``describe()``."""

    def describe(self) -> dict:
        return {"id": "stub"}


def _task_file(path, ids, bad_line: int | None = None):
    """A task file with ``ids`` (multiple choice, gold A) and, at ``bad_line`` (1-based), a malformed line."""
    lines = [json.dumps({"id": i, "question": f"what is {i}?", "options": ["a", "b"], "answer": "A"}) for i in ids]
    if bad_line is not None:
        lines.insert(bad_line - 1, "{not json")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class Letters(AnalysisSpec):
    """A minimal analysis: per task, the number of letters of its id; ``fail`` ids become error records; the summary
    lists the keys in the order the driver hands the records over; one figure."""

    command = "letters"

    def __init__(self, fail: tuple[str, ...] = ()):
        self.fail, self.seen, self.set_up = fail, [], None

    def setup(self, run: AnalysisRun) -> None:
        self.set_up = (run.lm.describe()["id"], len(run.tasks))

    def block(self, tasks):
        from latentcheck.core.runner import error_record

        self.seen += [t.id for t in tasks]
        return [error_record(t.id, RecordError(t.id, "id", "refused")) if t.id in self.fail else
                {"key": t.id, "letters": len(t.id)} for t in tasks]

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        return [RecordStage("samples", self.block, config={"letters": True})]

    def summarise(self, run: AnalysisRun) -> dict:
        ok = [r for r in run.records["samples"] if r.get("type") == "sample"]
        return {"command": "letters", "order": [r["key"] for r in run.records["samples"]],
                "letters": sum(r["letters"] for r in ok)}

    def figures(self, run: AnalysisRun, summary: dict) -> dict[str, str]:
        return {"bars": str(run.out / "plots" / "bars.png")}


def test_run_analysis_runs_a_spec_end_to_end_with_an_error_record(tmp_path):
    from latentcheck.core.records import read_results

    data = _task_file(tmp_path / "t.jsonl", ["s10", "s2", "s1", "x"], bad_line=3)
    spec = Letters(fail=("x",))
    opts = CommonOptions(data=data, out=str(tmp_path / "run"), quiet=True)
    res = run_analysis(spec, opts, lm=_StubModel())
    assert isinstance(res, AnalysisResult) and res.command == "letters" and res.is_main
    assert spec.set_up == ("stub", 4)  # setup saw the model and the valid tasks
    # one record per item, in file order in the file; the bad line and the refused task are error records
    prov, records = read_results(tmp_path / "run" / "samples.jsonl")
    assert prov["command"] == "letters" and prov["config"]["letters"] is True and prov["config"]["data"] == data
    assert [r["key"] for r in records] == ["s10", "s2", "error@t.jsonl:3", "s1", "x"]
    assert res.counts["ok"] == 3 and res.counts["errors"] == 2 and (res.errors, res.exit_code) == (2, 3)
    # the summary saw the records in the canonical record order (numeric-aware ids), not the file's
    assert res.summary["order"] == ["error@t.jsonl:3", "s1", "s2", "s10", "x"]
    assert res.summary["letters"] == 2 + 2 + 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["letters"] == 7
    assert res.results_path == str(tmp_path / "run" / "samples.jsonl") and res.record_files == {"samples": res.results_path}
    assert res.figures == {"bars": str(tmp_path / "run" / "plots" / "bars.png")}
    assert res.summary_path == str(tmp_path / "run" / "summary.json") and res.seconds > 0


def test_run_analysis_resumes_and_retries_error_records(tmp_path):
    data = _task_file(tmp_path / "t.jsonl", ["a", "b", "c"])
    opts = CommonOptions(data=data, out=str(tmp_path / "run"), quiet=True, batch_size=1)
    first = run_analysis(Letters(fail=("b",)), opts, lm=_StubModel())
    assert first.exit_code == 3
    again = Letters(fail=())
    same = run_analysis(again, dataclasses.replace(opts, resume=True), lm=_StubModel())
    assert again.seen == [] and same.summary == first.summary  # nothing to run: every key is written
    retry = Letters(fail=())
    fixed = run_analysis(retry, dataclasses.replace(opts, resume=True, retry_errors=True), lm=_StubModel())
    assert retry.seen == ["a", "b", "c"]  # the error record's block runs again, whole (core/runner.py)
    assert fixed.exit_code == 0 and fixed.summary["letters"] == 3 and fixed.counts["ok"] == 3


class TwoStages(AnalysisSpec):
    """Two record files: ``first`` over the tasks, then ``second`` built from first's records (its own items), in a
    sub-folder; the result nests the counts and names no single results file."""

    command = "two"
    results_stage = None

    def stages(self, run: AnalysisRun):
        from latentcheck.core.tasks import Task

        yield RecordStage("first", lambda tasks: [{"key": t.id, "n": len(t.options)} for t in tasks],
                          folder="first", command="two.first")
        derived = [Task(id=f"{r['key']}-d", question="again?") for r in run.records["first"]]
        yield RecordStage("second", lambda tasks: [{"key": t.id} for t in tasks], items=derived)

    def summarise(self, run: AnalysisRun) -> dict:
        return {"first": len(run.records["first"]), "second": [r["key"] for r in run.records["second"]]}


def test_run_analysis_chains_record_stages(tmp_path):
    from latentcheck.core.records import read_results

    data = _task_file(tmp_path / "t.jsonl", ["a", "b"])
    res = run_analysis(TwoStages(), CommonOptions(data=data, out=str(tmp_path / "run"), quiet=True), lm=_StubModel())
    assert res.summary["first"] == 2 and res.summary["second"] == ["a-d", "b-d"]
    assert res.counts == {"errors": 0, "first": res.counts["first"], "second": res.counts["second"]}
    assert res.ok == 4 and res.results_path is None
    assert res.record_files == {"first": str(tmp_path / "run" / "first" / "samples.jsonl"),
                                "second": str(tmp_path / "run" / "samples.jsonl")}
    assert read_results(tmp_path / "run" / "first" / "samples.jsonl")[0]["command"] == "two.first"
    assert read_results(tmp_path / "run" / "samples.jsonl")[0]["command"] == "two"


ANALYSIS_MODULES = ("latentcheck.perturb.inputs", "latentcheck.perturb.latents", "latentcheck.probe.behavioural",
                    "latentcheck.bench.runner", "latentcheck.imagine.run", "latentcheck.imagine.intervene",
                    "latentcheck.audit.mechanism")


def test_every_registered_analysis_runs_through_the_driver(monkeypatch, tmp_path):
    """Each audit entry hands the driver a spec for every kind it runs on, and Analysis.run calls run_analysis with
    it on the audit's model (no entry runs the analysis itself)."""
    import importlib
    import types

    import latentcheck.audit.stages  # noqa: F401 - registers the built-in analyses
    from latentcheck.audit.audit import AuditSettings
    from latentcheck.core import analysis as core_analysis

    for module in ANALYSIS_MODULES:  # imported before the patch, so they keep the real driver
        importlib.import_module(module)

    calls = []
    monkeypatch.setattr(core_analysis, "run_analysis",
                        lambda spec, opts, lm=None: calls.append((spec, opts, lm)) or AnalysisResult(spec.command))
    lm = types.SimpleNamespace(profile=types.SimpleNamespace(is_latent=True))
    opts = CommonOptions(out=str(tmp_path))
    seen = 0
    for analysis in ANALYSES.values():
        for kind, how in analysis.kinds.items():
            if isinstance(how, str):
                continue
            ctx = AnalysisContext(lm=lm, opts=opts, settings=AuditSettings(), kind=kind, root=tmp_path)
            res = analysis.run(ctx)
            spec, o, used = calls[-1]
            assert isinstance(spec, AnalysisSpec) and o is opts and used is lm and res.command == spec.command
            seen += 1
    assert seen >= 8 and {"perturb_input", "perturb_latent", "probe", "mechanism", "text_doz", "bench"} <= set(ANALYSES)


@pytest.mark.parametrize("module,function,spec_class", [
    ("latentcheck.perturb.inputs", "run_perturb_input", "PerturbInput"),
    ("latentcheck.perturb.latents", "run_perturb_latent", "PerturbLatent"),
    ("latentcheck.probe.behavioural", "run_probe", "Probe"),
    ("latentcheck.bench.runner", "run_bench", "BenchRun"),
    ("latentcheck.imagine.run", "run_caption_imagine", "CaptionImagineRun"),
    ("latentcheck.imagine.intervene", "run_intervene", "CaptionImagineIntervene"),
])
def test_each_analysis_entry_point_is_its_spec_run_by_the_driver(monkeypatch, tmp_path, module, function,
                                                                  spec_class):
    import importlib

    mod = importlib.import_module(module)
    calls = []
    monkeypatch.setattr(mod, "run_analysis", lambda spec, opts, lm=None: calls.append((spec, opts, lm)) or "ran")
    opts, lm = CommonOptions(out=str(tmp_path)), object()
    assert getattr(mod, function)(opts, lm=lm) == "ran"
    assert len(calls) == 1 and type(calls[0][0]).__name__ == spec_class and calls[0][1:] == (opts, lm)


def test_only_the_driver_calls_the_record_loop():
    """No module of the package but core/analysis.py (the driver) calls core.runner.run_records or reloads records
    with load_records: an analysis declares record stages instead of copying the skeleton."""
    import ast
    from pathlib import Path

    import latentcheck

    root = Path(latentcheck.__file__).parent
    callers = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        folders = path.relative_to(root).parents
        if rel.startswith(("tests/", "benchmarks/")) or \
                any(not (root / f / "__init__.py").exists() for f in folders if str(f) != "."):
            continue  # tests, benchmark scripts, and anything outside the package's modules (a build/ copy)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("run_records", "load_records"):
                    callers.setdefault(name, set()).add(rel)
    assert callers == {"run_records": {"core/analysis.py"}, "load_records": {"core/analysis.py"}}
