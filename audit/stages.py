"""The analyses the audit runs, declared once each (``core.analysis.Analysis`` in the registry ``ANALYSES``).

Each entry names its stage, folder and command, and for every model kind either how it runs there (a function of an
:class:`~latentcheck.core.analysis.AnalysisContext` returning the analysis's
:class:`~latentcheck.core.analysis.AnalysisResult`) or why it is skipped. The audit loops over the registry in stage
order (``audit.verdicts.STAGES`` first, then any analysis a plugin registered); nothing in the audit names an analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latentcheck.audit.verdicts import STAGE_FOLDERS
from latentcheck.core.analysis import ANALYSES, Analysis, AnalysisContext, AnalysisResult, finish, register_analysis
from latentcheck.core.errors import LatentcheckError

IMAGINATION_PROBE_TOKENS = 8  # imagination-span states probed per sample (the first tokens, as K latents)
NO_LATENTS = "no fed-back latent vectors to intervene on (Z -> Y uses the text do(Z) stage)"


def _perturb_input(ctx: AnalysisContext) -> AnalysisResult:
    from latentcheck.perturb.inputs import run_perturb_input

    n = ctx.opts.limit or ctx.settings.limits.get("perturb_input") or 100
    return run_perturb_input(ctx.opts, list(ctx.settings.treatments), max_matrix=max(2, n),
                             force_start=ctx.settings.force_latent, n_boot=ctx.settings.n_boot,
                             plots=ctx.settings.plots, lm=ctx.lm)


def _perturb_latent(ctx: AnalysisContext) -> AnalysisResult:
    from latentcheck.perturb.latents import run_perturb_latent

    return run_perturb_latent(ctx.opts, list(ctx.settings.interventions), mediation=list(ctx.settings.mediation),
                              force_latent=ctx.settings.force_latent, n_boot=ctx.settings.n_boot,
                              plots=ctx.settings.plots, lm=ctx.lm,
                              patch_layers=ctx.settings.patch_layers if ctx.settings.mediation else None)


def _mechanism(ctx: AnalysisContext) -> AnalysisResult:
    from latentcheck.audit.mechanism import run_mechanism

    return run_mechanism(ctx)


def _probe(ctx: AnalysisContext) -> AnalysisResult:
    from latentcheck.probe.behavioural import ProbeOptions, run_probe
    from latentcheck.probe.trained import ProbeConfig

    s = ctx.settings
    cfg = ProbeConfig(methods=tuple(s.probe_methods), seed=ctx.opts.seed, n_boot=s.n_boot)
    return run_probe(ctx.opts, ProbeOptions(labels=s.probe_labels, probe=cfg, n_boot=s.n_boot,
                                            derived=s.probe_derived), lm=ctx.lm)


def _probe_imagination(ctx: AnalysisContext) -> AnalysisResult:
    """Trained probes on the imagination-span hidden states the perturb-input stage captured."""
    from latentcheck.core.runner import TensorStore, data_path, read_all_tasks
    from latentcheck.core.tasks import Task
    from latentcheck.perturb.inputs import tensor_dirs
    from latentcheck.probe.trained import ProbeConfig, analyse_states

    dirs = tensor_dirs(ctx.root / STAGE_FOLDERS["perturb_input"])
    if not dirs:
        raise LatentcheckError("no perturb-input tensors to probe (run the perturb_input stage first)")
    o, s = ctx.opts, ctx.settings
    tensors: dict[str, dict] = {}
    for d in dirs:
        for key, arrays in TensorStore(d).load().items():
            lat = arrays.get("orig.latents")
            if lat is None or lat.ndim != 2 or not len(lat):
                continue
            tensors[key] = {"latents": lat[:IMAGINATION_PROBE_TOKENS],
                            **{name.split(".", 1)[1]: a for name, a in arrays.items()
                               if name.startswith("orig.") and name != "orig.latents"}}
    items = read_all_tasks(data_path(o), o.limit, False)
    tasks = {t.id: t for t in items if isinstance(t, Task) and t.id in tensors}
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"command": "probe (imagination hidden states)", "model": ctx.lm.describe(),
                               "source": f"imagination-span hidden states (first {IMAGINATION_PROBE_TOKENS} "
                                         "tokens) captured by the perturb-input stage",
                               "n": len(tasks)}
    plots: list[str] = []
    if len(tasks) < 2:
        summary["trained"] = {"skipped": f"only {len(tasks)} samples with an imagination span"}
        summary["plots"] = []
    else:
        cfg = ProbeConfig(methods=tuple(s.probe_methods), seed=o.seed, n_boot=s.n_boot)
        tr = analyse_states(tensors, tasks, s.probe_labels, cfg, plot_dir=out / "plots" if s.plots else None)
        summary.update(trained=tr.probes, similarity=tr.similarity, plots=tr.plots)
        plots = list(tr.plots)
    return finish("probe", out, summary, {"samples": len(tasks)}, None, plots)


def _text_doz(ctx: AnalysisContext) -> AnalysisResult:
    from latentcheck.imagine.intervene import run_intervene

    return run_intervene(ctx.opts, corrupter="auto", corrupt_model=ctx.settings.corrupt_model,
                         plots=ctx.settings.plots, lm=ctx.lm)


def _bench(ctx: AnalysisContext) -> AnalysisResult:
    from latentcheck.bench.runner import run_bench

    return run_bench(ctx.opts, None, force_latent=ctx.settings.force_latent and ctx.lm.profile.is_latent,
                     n_boot=ctx.settings.n_boot, lm=ctx.lm)


def _register_builtin() -> None:
    for analysis in (
        Analysis("perturb_input", STAGE_FOLDERS["perturb_input"], "perturb-input",
                 {"latent": _perturb_input, "text_imagination": _perturb_input, "plain": _perturb_input},
                 description="X -> Z: do the latents change when the input changes?"),
        Analysis("perturb_latent", STAGE_FOLDERS["perturb_latent"], "perturb-latent",
                 {"latent": _perturb_latent, "text_imagination": f"text_imagination model: {NO_LATENTS}"},
                 default_reason="no latent vectors",
                 description="Z -> Y: interventions on the fed-back latents, mediation"),
        Analysis("probe", STAGE_FOLDERS["probe"], "probe",
                 {"latent": _probe, "text_imagination": _probe_imagination}, default_reason="nothing to probe",
                 description="what the latents (or imagination states) encode"),
        Analysis("mechanism", STAGE_FOLDERS["mechanism"], "perturb-latent + probe --erase (mechanism arms)",
                 {"latent": _mechanism, "text_imagination": f"text_imagination model: {NO_LATENTS}"},
                 default_reason="no latent vectors",
                 description="mechanism: format vs content, attention knockout, LEACE erasure (fewer samples)"),
        Analysis("text_doz", STAGE_FOLDERS["text_doz"], "caption-imagine intervene",
                 {"text_imagination": _text_doz}, default_reason="no text imagination to rewrite",
                 description="Z -> Y for text imagination: rewrite it, does the answer follow?"),
        Analysis("bench", STAGE_FOLDERS["bench"], "bench",
                 {"latent": _bench, "text_imagination": _bench, "plain": _bench},
                 description="a short generic bench (context, no verdict)"),
    ):
        if analysis.name not in ANALYSES:
            register_analysis(analysis)


_register_builtin()

__all__ = ["IMAGINATION_PROBE_TOKENS"]
