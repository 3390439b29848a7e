"""The analyses the audit runs, declared once each (``core.analysis.Analysis`` in the registry ``ANALYSES``).

Each entry names its stage, folder and command, and for every model kind either how it runs there (a function of an
:class:`~latentcheck.core.analysis.AnalysisContext` returning the analysis's
:class:`~latentcheck.core.analysis.AnalysisSpec` with the audit's settings, which ``Analysis.run`` hands to the one
driver, ``core.analysis.run_analysis``, on the audit's model) or why it is skipped. The audit loops over the
registry in stage order (``audit.verdicts.STAGES`` first, then any analysis a plugin registered); nothing in the
audit names an analysis.
"""

from __future__ import annotations

from typing import Any

from latentcheck.audit.verdicts import STAGE_FOLDERS
from latentcheck.core.analysis import (ANALYSES, Analysis, AnalysisContext, AnalysisRun, AnalysisSpec, RecordStage,
                                      register_analysis)
from latentcheck.core.errors import LatentcheckError

IMAGINATION_PROBE_TOKENS = 8  # imagination-span states probed per sample (the first tokens, as K latents)
NO_LATENTS = "no fed-back latent vectors to intervene on (Z -> Y uses the text do(Z) stage)"


def _perturb_input(ctx: AnalysisContext) -> AnalysisSpec:
    from latentcheck.perturb.inputs import PerturbInput

    n = ctx.opts.limit or ctx.settings.limits.get("perturb_input") or 100
    return PerturbInput(list(ctx.settings.treatments), max_matrix=max(2, n), force_start=ctx.settings.force_latent,
                        n_boot=ctx.settings.n_boot, plots=ctx.settings.plots)


def _perturb_latent(ctx: AnalysisContext) -> AnalysisSpec:
    from latentcheck.perturb.latents import PerturbLatent

    s = ctx.settings
    return PerturbLatent(list(s.interventions), mediation=list(s.mediation), force_latent=s.force_latent,
                         n_boot=s.n_boot, plots=s.plots, patch_layers=s.patch_layers if s.mediation else None)


def _mechanism(ctx: AnalysisContext) -> AnalysisSpec:
    from latentcheck.audit.mechanism import Mechanism

    return Mechanism(ctx.settings)


def _probe(ctx: AnalysisContext) -> AnalysisSpec:
    from latentcheck.probe.behavioural import Probe, ProbeOptions
    from latentcheck.probe.trained import ProbeConfig

    s = ctx.settings
    cfg = ProbeConfig(methods=tuple(s.probe_methods), seed=ctx.opts.seed, n_boot=s.n_boot)
    return Probe(ProbeOptions(labels=s.probe_labels, probe=cfg, n_boot=s.n_boot, derived=s.probe_derived))


class ImaginationProbe(AnalysisSpec):
    """Trained probes on the imagination-span hidden states the perturb-input stage captured (text-imagination
    models): no record stage of its own, the summary from the stored tensors."""

    command = "probe"
    results_stage = None

    def __init__(self, ctx: AnalysisContext):
        self.root, self.settings = ctx.root, ctx.settings

    def read_items(self, opts) -> tuple[str, list]:
        from latentcheck.core.runner import data_path, read_all_tasks

        path = data_path(opts)
        return path, read_all_tasks(path, opts.limit, False)

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        return []

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        from latentcheck.core.runner import TensorStore
        from latentcheck.perturb.inputs import tensor_dirs
        from latentcheck.probe.trained import ProbeConfig, analyse_states

        dirs = tensor_dirs(self.root / STAGE_FOLDERS["perturb_input"])
        if not dirs:
            raise LatentcheckError("no perturb-input tensors to probe (run the perturb_input stage first)")
        o, s, out = run.opts, self.settings, run.out
        tensors: dict[str, dict] = {}
        for d in dirs:
            for key, arrays in TensorStore(d).load().items():
                lat = arrays.get("orig.latents")
                if lat is None or lat.ndim != 2 or not len(lat):
                    continue
                tensors[key] = {"latents": lat[:IMAGINATION_PROBE_TOKENS],
                                **{name.split(".", 1)[1]: a for name, a in arrays.items()
                                   if name.startswith("orig.") and name != "orig.latents"}}
        tasks = {t.id: t for t in run.tasks if t.id in tensors}
        self.n = len(tasks)
        out.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"command": "probe (imagination hidden states)", "model": run.lm.describe(),
                                   "source": f"imagination-span hidden states (first {IMAGINATION_PROBE_TOKENS} "
                                             "tokens) captured by the perturb-input stage",
                                   "n": len(tasks)}
        self.plots: list[str] = []
        if len(tasks) < 2:
            summary["trained"] = {"skipped": f"only {len(tasks)} samples with an imagination span"}
            summary["plots"] = []
        else:
            cfg = ProbeConfig(methods=tuple(s.probe_methods), seed=o.seed, n_boot=s.n_boot)
            tr = analyse_states(tensors, tasks, s.probe_labels, cfg, plot_dir=out / "plots" if s.plots else None)
            summary.update(trained=tr.probes, similarity=tr.similarity, plots=tr.plots)
            self.plots = list(tr.plots)
        return summary

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> list[str]:
        return self.plots

    def counts(self, run: AnalysisRun) -> dict[str, Any]:
        return {"samples": self.n}


def _text_doz(ctx: AnalysisContext) -> AnalysisSpec:
    from latentcheck.imagine.intervene import CaptionImagineIntervene

    return CaptionImagineIntervene(corrupter="auto", corrupt_model=ctx.settings.corrupt_model,
                                   plots=ctx.settings.plots)


def _bench(ctx: AnalysisContext) -> AnalysisSpec:
    from latentcheck.bench.runner import BenchRun

    return BenchRun(None, force_latent=ctx.settings.force_latent and ctx.lm.profile.is_latent,
                    n_boot=ctx.settings.n_boot)


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
                 {"latent": _probe, "text_imagination": ImaginationProbe}, default_reason="nothing to probe",
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
