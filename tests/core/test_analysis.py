"""core/analysis.py: the one result type, the common tail, and the registry the audit loops over."""

from __future__ import annotations

import json

import pytest

from latentcheck.core.analysis import ANALYSES, Analysis, AnalysisResult, finish, not_main, register_analysis
from latentcheck.core.errors import LatentcheckError


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
                                                                   "schema": "latentcheck.summary/3"}
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
