"""The Python API: every analysis from a notebook, without a command line or a mandatory output folder.

    from latentcheck import load, perturb_latent

    lm = load("toy-latent")                      # or a checkpoint folder, or an HF model you already loaded
    tasks = [{"id": "q1", "image": pil_image, "question": "What colour is the square?",
              "options": ["red", "green", "blue", "yellow"], "answer": "B"}, ...]
    res = perturb_latent(lm, tasks, interventions=["zero", "noise:sigma=0.5"])
    res.summary["interventions"]                 # the numbers summary.json holds (typed records, one CI shape)
    df = res.to_pandas()                         # one row per sample and condition (core/export.py)

- ``model``: a name / folder / cached HF id (loaded through the one loader), a :class:`LoadedModel`, or an already
  loaded Hugging Face model (``wrap``: its processor is rebuilt from its folder unless you pass one).
- ``tasks``: a task JSONL path, ``"hf:..."`` / ``"vstar:..."`` sources (core.tasks), or any iterable of task dicts /
  :class:`Task` objects / a ``datasets.Dataset`` (PIL images are written as PNG files in the run folder).
- ``out``: a folder to keep (samples.jsonl, samples.csv/.parquet, provenance.json, summary.json, plots); without it
  the run lives in a temporary folder that is removed when the result is garbage-collected (``result.out_dir`` is
  valid until then).
- Returns :class:`latentcheck.core.analysis.AnalysisResult` (``summary``, ``counts``, ``errors``, ``exit_code``,
  ``figures``, paths) with ``records()`` and ``to_pandas()``.

Custom interventions and treatments registered from your own code are used by name like the built-in ones (see
docs/api.md)::

    from latentcheck import register_intervention

    @register_intervention("halve", "vector", "multiply every fed-back latent by 0.5")
    def halve(v, steps, ctx, spec, seed):
        return v * 0.5

    perturb_latent(lm, tasks, interventions=["halve"])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable

from latentcheck.core.analysis import AnalysisResult
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.interventions import register as register_intervention
from latentcheck.core.loader import LoadedModel, load_model, wrap_model
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import Task, register_task_source

# names that are not also subpackages (latentcheck.probe / .bench / .audit are packages: once imported, the package
# attribute would shadow a function of the same name)
__all__ = ["load", "wrap_model", "perturb_latent", "perturb_input", "probe_latents", "benchmark", "caption_imagine",
           "caption_imagine_intervene", "audit_model", "register_intervention", "register_treatment",
           "register_task_source", "AnalysisResult", "LoadedModel", "Task"]


def register_treatment(*args: Any, **kwargs: Any):
    """``@register_treatment(name, doc, changes, ...)``: an input treatment for perturb-input (perturb.treatments)."""
    from latentcheck.perturb.treatments import register

    return register(*args, **kwargs)


def load(model: str, profile: str | None = None, **kwargs: Any) -> LoadedModel:
    """Load a model through the one loader (a toy zoo name, a checkpoint folder or an HF id in the local cache)."""
    import latentcheck.bench  # noqa: F401  benchmark files become task sources

    return load_model(model, profile=profile, **kwargs)


def _model(model: Any, profile: str | None, quant: str, device: str) -> LoadedModel | None:
    if model is None:
        return None
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(str(model), profile=profile, quant=quant, device=device)
    if hasattr(model, "config") and hasattr(model, "forward"):
        return wrap_model(model, profile=profile)
    raise LatentcheckError(f"model must be a name/folder, a LoadedModel or a loaded Hugging Face model, got "
                           f"{type(model).__name__}")


def _tasks_file(tasks: Any, folder: Path) -> str | None:
    """A task source string as is; anything iterable is written to ``folder/tasks.jsonl`` row by row (PIL images as
    PNG files under ``folder/task-images``), so the one task reader validates it and a bad row becomes an error
    record naming ``tasks.jsonl:<row + 1>`` and the field, as for a file."""
    from latentcheck.core.errors import RecordError
    from latentcheck.core.tasks import _image_to_str

    if tasks is None:
        return None
    if isinstance(tasks, (str, os.PathLike)):
        return str(tasks)
    path = folder / "tasks.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, row in enumerate(tasks):
            raw = row.to_dict() if isinstance(row, Task) else dict(row) if hasattr(row, "keys") else row
            if isinstance(raw, dict):
                if isinstance(row, Task) and row.base_dir and isinstance(raw.get("image"), str) \
                        and not os.path.isabs(raw["image"]) and not raw["image"].startswith("data:"):
                    raw["image"] = str(Path(row.base_dir) / raw["image"])
                if raw.get("image") is not None and not isinstance(raw["image"], str):
                    try:
                        raw["image"] = _image_to_str(raw["image"], str(raw.get("id")), f"tasks[{i}]",
                                                     folder / "task-images")
                    except RecordError as e:
                        raw["image"] = {"unreadable": e.message}  # the reader reports it on this row
                if raw.get("options") is None and isinstance(raw.get("choices"), (list, tuple)):
                    raw["options"] = list(raw.pop("choices"))
            fh.write(_row_json(raw) + "\n")
    return str(path)


def _row_json(raw: Any) -> str:
    """One row as a JSON line. A value JSON cannot hold (a circular reference, nesting too deep, a key that is not a
    string) becomes ``{core.tasks.UNWRITABLE: reason}`` in its field, which the task reader reports as that row's
    error record naming the field; a whole row that cannot be written becomes a string (the reader: not an
    object)."""
    from latentcheck.core.tasks import UNWRITABLE

    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=True, default=str)

    try:
        return dumps(raw)
    except (ValueError, TypeError, RecursionError) as e:
        why = f"cannot be written as JSON ({type(e).__name__}: {str(e)[:200] or 'nested too deeply'})"
        if not isinstance(raw, dict):
            return dumps(f"row {why}")
        fields: dict[str, Any] = {}
        for k, v in raw.items():
            key = k if isinstance(k, str) else repr(k)
            if not isinstance(k, str):
                fields[key] = {UNWRITABLE: f"a field name must be a string, got {type(k).__name__} {key}"}
                continue
            try:
                dumps(v)
                fields[key] = v
            except (ValueError, TypeError, RecursionError) as fe:
                fields[key] = {UNWRITABLE: f"cannot be written as JSON ({type(fe).__name__}: "
                                           f"{str(fe)[:200] or 'nested too deeply'})"}
        return dumps(fields)


def _run(command: str, fn, model: Any, tasks: Any, out: str | os.PathLike | None, *, profile: str | None = None,
         limit: int | None = None, batch_size: int = 8, seed: int = 0, quant: str = "auto", device: str = "auto",
         resume: bool = False, strict: bool = False, max_pixels: int | None = None, log: str | None = None,
         decoding: dict | None = None, system: str | None = None, **kwargs: Any) -> Any:
    import latentcheck.bench  # noqa: F401  benchmark files become task sources
    from latentcheck.core import tracking

    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix=f"latentcheck-{command}-")
        folder = Path(tmp)
    else:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
    try:
        lm = _model(model, profile, quant, device)
        data = _tasks_file(tasks, folder)
        opts = CommonOptions(model=None if lm is not None else (str(model) if model else None), profile=profile,
                             data=data, out=str(folder), limit=limit, batch_size=batch_size, seed=seed, quant=quant,
                             device=device, quiet=True, resume=resume, strict=strict, max_pixels=max_pixels,
                             decoding=dict(decoding or {}), system=system)
        tracking.configure(log, folder)
        result = fn(opts, lm=lm, **kwargs)
    except BaseException:
        tracking.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    tracking.close()
    if tmp:
        weakref.finalize(result, shutil.rmtree, tmp, True)
    return result


def perturb_latent(model: Any = None, tasks: Any = None, interventions: Iterable[str] | None = None, *,
                   out: str | os.PathLike | None = None, mediation: Iterable[str] | str | None = ("image",),
                   n_boot: int = 2000, plots: bool = False, **kwargs: Any) -> AnalysisResult:
    """Z -> Y: intervene on the fed-back latents (``interventions`` = specs, default: the standard set) and
    measure mediation. ``kwargs``: the common options (``limit``, ``batch_size``, ``seed``, ``device`` ...) and
    perturb-latent's own (``sigma_sweep``, ``per_index``, ``force_latent``, ``max_new_tokens`` ...)."""
    from latentcheck.perturb.latents import run_perturb_latent

    def fn(opts, lm, **kw):
        return run_perturb_latent(opts, list(interventions) if interventions is not None else None, lm=lm, **kw)

    common = {k: kwargs.pop(k) for k in list(kwargs) if k in _COMMON}
    return _run("perturb-latent", fn, model, tasks, out, mediation=mediation, n_boot=n_boot, plots=plots,
                **common, **kwargs)


def perturb_input(model: Any = None, tasks: Any = None, treatments: Iterable[str] | None = None, *,
                  out: str | os.PathLike | None = None, n_boot: int = 2000, plots: bool = False,
                  **kwargs: Any) -> AnalysisResult:
    """X -> Z: do the latents change when the input changes (``treatments`` = specs, default: the standard set)."""
    from latentcheck.perturb.inputs import run_perturb_input
    from latentcheck.perturb.treatments import parse_treatments

    def fn(opts, lm, **kw):
        parsed = parse_treatments(list(treatments)) if treatments is not None else None
        return run_perturb_input(opts, parsed, lm=lm, **kw)

    common = {k: kwargs.pop(k) for k in list(kwargs) if k in _COMMON}
    return _run("perturb-input", fn, model, tasks, out, n_boot=n_boot, plots=plots, **common, **kwargs)


def probe_latents(model: Any = None, tasks: Any = None, *, out: str | os.PathLike | None = None,
                  **kwargs: Any) -> AnalysisResult:
    """What the latents encode: the behavioural probe and trained probes (``kwargs`` = ProbeOptions fields)."""
    from latentcheck.probe.behavioural import ProbeOptions, run_probe

    common = {k: kwargs.pop(k) for k in list(kwargs) if k in _COMMON}

    def fn(opts, lm):
        return run_probe(opts, ProbeOptions(**kwargs), lm=lm)

    return _run("probe", fn, model, tasks, out, **common)


def benchmark(model: Any = None, tasks: Any = None, benchmark: str | None = None, *,
              interventions: Iterable[str] | None = None, out: str | os.PathLike | None = None, n_boot: int = 2000,
              **kwargs: Any) -> AnalysisResult:
    """Score a benchmark (``benchmark`` = a registry name such as ``"vstar"`` or ``"blink:Counting"``, read from
    ``tasks`` = its file/folder; or ``None`` = generic tasks: a list / iterable / ``datasets.Dataset`` / JSONL), with
    optional latent ``interventions``. ``kwargs``: the common options and run_bench's own (``variant``,
    ``scoring``, ``judge``, ``decoding``, ``force_latent`` ...). ``result.summary["scores"]``: the official number
    as a ``Score`` record (``estimate`` with its interval; the benchmark's whole breakdown under ``official``);
    ``to_pandas()``: one row per sample and condition. The lmms-eval-shaped results are ``result.lmms_path`` (results.json)."""
    from latentcheck.bench.runner import run_bench

    decoding = kwargs.pop("decoding", None)  # bench's own decoding overrides (run_bench(decoding=...))

    def fn(opts, lm, **kw):
        return run_bench(opts, benchmark, interventions=list(interventions) if interventions else None, lm=lm,
                         decoding=decoding, **kw)

    common = {k: kwargs.pop(k) for k in list(kwargs) if k in _COMMON}
    return _run("bench", fn, model, tasks, out, n_boot=n_boot, **common, **kwargs)


def caption_imagine(model: Any = None, tasks: Any = None, *, out: str | os.PathLike | None = None,
                    **kwargs: Any) -> AnalysisResult:
    """Run a text-imagination model (caption-imagine run): accuracy, imagination rate and span length."""
    from latentcheck.imagine.run import run_caption_imagine

    return _run("caption-imagine run", lambda opts, lm: run_caption_imagine(opts, lm=lm), model, tasks, out,
                **kwargs)


def caption_imagine_intervene(model: Any = None, tasks: Any = None, corrupter: str = "auto", *,
                              out: str | os.PathLike | None = None, plots: bool = False,
                              **kwargs: Any) -> AnalysisResult:
    """Z -> Y for text imagination: rewrite each imagination (``corrupter``: ``auto`` / a rule / a model) and see
    whether the answer follows. ``kwargs``: the common options and run_intervene's own (``span_tokens`` ...)."""
    from latentcheck.imagine.intervene import run_intervene

    common = {k: kwargs.pop(k) for k in list(kwargs) if k in _COMMON}
    return _run("caption-imagine intervene",
                lambda opts, lm: run_intervene(opts, corrupter=corrupter, plots=plots, lm=lm, **kwargs),
                model, tasks, out, **common)


def audit_model(model: Any = None, tasks: Any = None, *, out: str | os.PathLike | None = None,
                stages: Iterable[str] | None = None, limits: dict[str, int] | None = None, n_boot: int = 2000,
                force_latent: bool = False, rules: str | dict | None = None, report: bool = False,
                plots: bool = False, **kwargs: Any):
    """The whole audit (X -> Z, Z -> Y, what the latents encode) of one model, or several side by side.

    ``model``: one model (name / folder / LoadedModel / loaded HF model), or several as a list of names / folders or
    a dict NAME -> folder (each loaded in turn). ``stages``: a subset of the registered analyses; ``limits``: samples
    per stage (default: docs/audit.md). Returns :class:`~latentcheck.audit.audit.AuditResult` (one model) or
    :class:`~latentcheck.audit.audit.ZooAuditResult` (several); both have ``to_pandas()`` (one row per model and
    link: verdict, status, the numbers line) and the stage results' folders under ``result.out``."""
    from latentcheck.audit.audit import AuditSettings, run_audit, run_zoo_audit
    from latentcheck.audit.verdicts import load_rules, merge_rules

    settings = AuditSettings(n_boot=n_boot, force_latent=force_latent, report=report, plots=plots,
                             **({"stages": list(stages)} if stages is not None else {}),
                             **({"limits": {**AuditSettings().limits, **limits}} if limits else {}))
    verdict_rules = merge_rules(rules) if isinstance(rules, dict) else load_rules(rules)
    several = isinstance(model, dict) or (isinstance(model, (list, tuple)) and len(model) != 1)
    if isinstance(model, (list, tuple)) and len(model) == 1:
        model = model[0]

    def fn(opts, lm):
        if several:
            return run_zoo_audit(opts, settings, verdict_rules, models=model)
        return run_audit(opts, settings, verdict_rules, lm=lm)

    return _run("audit", fn, None if several else model, tasks, out, **kwargs)


_COMMON = {"profile", "limit", "batch_size", "seed", "quant", "device", "resume", "strict", "max_pixels", "log",
           "decoding", "system"}
