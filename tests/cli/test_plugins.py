"""A new intervention and a new benchmark, each from ONE module outside the package, registered with
`latentcheck --plugin FILE` and run through the CLI on the shipped toy zoo. Oracles: the plugin intervention halves
every latent, so every sample must match the built-in `scale:alpha=0.5` exactly (and move away from the baseline on
toy-mediated, which reads its latents); the plugin benchmark asks with the generic official prompt and the letter extractor, so
every prediction must match `bench --benchmark generic --variant official`."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from latentcheck.cli.app import app

INTERVENTION_MODULE = '''
from latentcheck.core.interventions import register


@register("halve_plugin", "vector", "multiply every fed-back latent by one half (a plugin)")
def halve(v, steps, ctx, spec, seed):
    return v * 0.5
'''

BENCHMARK_MODULE = '''
from latentcheck.bench.generic import generic_official_prompt, load_generic
from latentcheck.bench.registry import Benchmark, PromptVariant, register_benchmark
from latentcheck.bench.scoring import score_accuracy

register_benchmark(Benchmark(
    name="plugin_mcq", loader=load_generic,
    variants={"official": PromptVariant("official", generic_official_prompt, extractor="letter",
                                        source="a plugin: the generic MCQ prompt")},
    scorer=score_accuracy, default_data=True, description="a benchmark defined in one plugin module"))
'''


@pytest.fixture
def plugins(tmp_path):
    from latentcheck.bench import BENCHMARKS
    from latentcheck.core.interventions import REGISTRY

    paths = {}
    for name, text in (("intervention", INTERVENTION_MODULE), ("benchmark", BENCHMARK_MODULE)):
        paths[name] = tmp_path / f"lc_plugin_{name}.py"
        paths[name].write_text(textwrap.dedent(text))
    yield paths
    for registry, name in ((REGISTRY, "halve_plugin"), (BENCHMARKS, "plugin_mcq")):
        if name in registry:
            registry.remove(name)


def _invoke(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


def _samples(folder):
    return [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()[1:]]


def test_plugin_intervention_runs_through_perturb_latent(plugins, tmp_path):
    listed = _invoke("--plugin", plugins["intervention"], "perturb-latent", "--list")
    assert "halve_plugin" in listed.output
    out = tmp_path / "pl"
    _invoke("--plugin", plugins["intervention"], "perturb-latent", "-m", "toy-mediated", "--limit", 6,
            "-i", "halve_plugin", "-i", "scale:alpha=0.5", "-i", "zero", "--mediation", "none", "--no-plots",
            "--n-boot", 50, "-q", "-o", out)
    rows = _samples(out)
    assert len(rows) == 6 and all(r["type"] == "sample" for r in rows)
    for r in rows:
        ints = r["interventions"]
        plugin, builtin = ints["halve_plugin"], ints["scale:alpha=0.5"]
        assert plugin["answer"] == builtin["answer"] and plugin["text"] == builtin["text"]
        assert plugin["option_logprobs"] == pytest.approx(builtin["option_logprobs"], abs=1e-6)
    # the plugin really acted on the latents: toy-mediated reads them, so log-probs move away from the baseline
    assert max(abs(x - y) for r in rows for x, y in zip(r["interventions"]["halve_plugin"]["option_logprobs"],
                                                        r["baseline"]["option_logprobs"])) > 1e-3
    summary = json.loads((out / "summary.json").read_text())
    assert [x["label"] for x in summary["interventions"]] == ["halve_plugin", "scale:alpha=0.5", "zero"]


def test_plugin_benchmark_runs_through_bench(plugins, tmp_path):
    listed = _invoke("--plugin", plugins["benchmark"], "bench", "--list")
    assert "plugin_mcq" in listed.output
    mine, generic = tmp_path / "mine", tmp_path / "generic"
    _invoke("--plugin", plugins["benchmark"], "bench", "--benchmark", "plugin_mcq", "-m", "toy-mediated",
            "--limit", 6, "-q", "-o", mine)  # default_data: the toy world test split without --data
    _invoke("bench", "--benchmark", "generic", "--variant", "official", "-m", "toy-mediated", "--limit", 6, "-q",
            "-o", generic)
    a, b = _samples(mine), _samples(generic)
    assert len(a) == len(b) == 6
    assert [(r["key"], r["prompt"], r["pred"], r["correct"]) for r in a] == \
           [(r["key"], r["prompt"], r["pred"], r["correct"]) for r in b]
    res = json.loads((mine / "summary.json").read_text())
    assert res["benchmark"] == "plugin_mcq" and res["conditions"]["baseline"]["accuracy"]["n"] == 6


def test_plugin_names_cannot_replace_builtins(tmp_path):
    clash = tmp_path / "lc_plugin_clash.py"
    clash.write_text("from latentcheck.core.interventions import register\n"
                     "register('zero', 'vector', 'not zero')(lambda v, steps, ctx, spec, seed: v)\n")
    r = CliRunner().invoke(app, ["--plugin", str(clash), "perturb-latent", "--list"])
    assert r.exit_code != 0 and "intervention 'zero' is already registered" in str(r.exception)
