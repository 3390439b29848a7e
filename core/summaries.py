"""Typed summary records: the one shape of every number an analysis reports, and the one way to print it.

Every interval-carrying number in a ``summary.json`` is one of the records below. They all share ONE CI shape::

    {"estimate": 0.62, "lo": 0.48, "hi": 0.74, "n": 50, "method": "wilson", ...extra fields of the record}

- ``estimate`` — the point estimate (``None`` when nothing was measured, ``nan`` when undefined, ``+-inf`` when
  unbounded: ``summary.json`` writes the last two as ``null``, see ``core.records.to_jsonable``);
- ``lo`` / ``hi`` — the interval (95% unless the analysis says otherwise);
- ``n`` — the number of samples the estimate is computed over (after any filtering);
- ``method`` — how the interval was computed (:data:`METHODS`).

Records (all frozen dataclasses, keyword-only, built by the classmethods that call ``core.stats``):

=================  ===========================================================================================
``Estimate``       any quantity with an interval (``Estimate.bootstrap(values)``: percentile bootstrap of the mean)
``Proportion``     k of n with a Wilson interval (``Proportion.wilson(k, n)``, ``Proportion.of(flags)``);
                   extra field ``successes``
``TriggerRate``    a Proportion of samples whose latent mode ran (``TriggerRate.of_samples(flags, lengths)``);
                   extra ``mean_length`` / ``mean_length_all`` (the ``latent_trigger`` block, core/trigger.py)
``FoldAccuracy``   a cross-validated accuracy (mean of the folds; Wilson on the pooled out-of-fold hits); extra
                   ``successes``, ``std``, ``per_fold``, ``n_splits``, ``chance``
``Score``          a benchmark's official number exactly as its scorer gives it (``official[metric]``), its
                   ``aggregation`` (micro / macro / group_average), an interval where it is a proportion or a mean
                   of proportions (``Score.micro``, ``Score.mean_of``); ``official`` = the scorer's whole output
``Ratio``          mean(num) / mean(den), paired bootstrap (``Ratio.bootstrap(num, den)``); extra ``n_undefined``
``Effect``         a contrast (difference) with an interval and optionally a test: ``p_value``, ``test``
                   (``Effect.paired(a, b)`` = mean(b) - mean(a), paired bootstrap)
``AccuracyEffect`` paired 0/1 outcomes of a condition vs a base: ``base`` / ``cond`` (Proportion), ``delta``
                   (Effect, p_value = exact McNemar), ``n01`` / ``n10`` / ``flips`` / ``flip_rate``
``Mediation``      TE / NIE / NDE / interaction (Effect) + ``proportion_mediated`` (Ratio) over one bootstrap
=================  ===========================================================================================

Serialisation is the same everywhere: ``record.to_dict()`` (nested records become dicts, field order = declaration
order) and ``Record.from_dict(d)`` (unknown keys are an error; missing optional fields take their default), and
``core.records.write_json_atomic`` / ``to_jsonable`` accept the records themselves. Every summary written through
``core.analysis.finish`` carries ``"schema": SUMMARY_SCHEMA`` (``latentcheck.summary/4``; files without the key are
version 1). Version 2 made perturb-input's and perturb-latent's intervals these records; version 3 the accuracy dicts
(``accuracy, lo, hi, n, correct`` -> ``Proportion``), the flat paired-accuracy rows (``delta, delta_lo, delta_hi,
mcnemar_p, n01, n10`` -> ``AccuracyEffect``) and the mediation entries (-> ``Mediation``); version 4 the rest (the
``latent_trigger`` block -> ``TriggerRate``, bench ``scores`` -> ``Score``, probe ``by_category`` -> ``Proportion``,
the nearest-centroid separability -> ``FoldAccuracy``, perturb-latent ``curves`` -> lists of records);
docs/architecture.md has the field-by-field tables. A stored summary is read back only through :func:`read_summary`, which refuses another
schema version in one line (rerunning the analysis with ``--resume`` rewrites it from the kept samples).

Extending (e.g. multiplicity-adjusted p-values, equivalence tests, minimum detectable effects): add a field with a
default to the record (``p_holm: float | None = None``), fill it where the record is built (``dataclasses.replace``
on a frozen record), and it is serialised, read back and exported with everything else — readers that do not know
the field ignore it. A new kind of number is a new subclass of ``Estimate`` (keeps the CI shape) registered in
:data:`RECORD_TYPES` so :func:`from_dict` can rebuild it.

Formatting (the CLI and the report print numbers only through these): :func:`fmt_num`, :func:`fmt_pct`,
:func:`fmt_p`, :func:`fmt_ci` (``0.52 [0.41, 0.63]``, also straight from a record or its dict). Missing values print
as ``-``, infinities as ``inf`` / ``-inf``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from latentcheck.core.errors import LatentcheckError

SUMMARY_SCHEMA = "latentcheck.summary/4"
SUMMARY_SCHEMA_FAMILY = "latentcheck.summary/"


def summary_schema_problem(doc: Any, where: str | Any) -> str | None:
    """None when ``doc`` is a summary of the current schema, else the one-line reason (naming ``where`` and the
    schema found) why this version does not read it."""
    if not isinstance(doc, Mapping):
        return f"{where}: not a latentcheck summary (a JSON object expected)"
    found = doc.get("schema")
    if found == SUMMARY_SCHEMA:
        return None
    return (f"{where}: summary schema {found or 'latentcheck.summary/1 (no schema key)'} is not "
            f"{SUMMARY_SCHEMA}, the one this version reads; rerun the analysis into that folder (--resume reuses "
            f"its samples and rewrites the summary)")


def read_summary(path: str | Any) -> dict[str, Any]:
    """The summary.json (or, in a bench folder from before bench wrote summary.json, results.json) at ``path`` -- the ONE place a stored summary is read back: a file
    of another schema version is refused with one line naming the file and its schema (no conversion: the samples
    are kept, and rerunning the analysis with ``--resume`` rewrites the summary in the current schema)."""
    from pathlib import Path

    from latentcheck.core.records import read_json_object

    p = Path(path)
    doc = read_json_object(p, "summary")  # one line for a corrupt, truncated, non-UTF-8 or too deeply nested file
    problem = summary_schema_problem(doc, p)
    if problem:
        raise LatentcheckError(problem)
    return doc

# The interval methods used in this package (a record may name another; these are the ones core.stats computes).
METHODS: dict[str, str] = {
    "wilson": "Wilson score interval of a binomial proportion",
    "percentile_bootstrap": "nonparametric percentile bootstrap over samples",
    "paired_bootstrap": "percentile bootstrap over samples, paired quantities resampled jointly",
    "paired_bootstrap_floored": "paired bootstrap whose upper end lies below the measurement's resolution, raised to "
                                "it (the quantity cannot be told from round-off below that floor)",
    "tango_score": "Tango's score interval for a paired difference of proportions (never zero-width)",
    "multinomial_score": "score interval for the mean of a variable on a known finite support (the multinomial "
                         "generalisation of Tango's; the mediation interaction; never zero-width)",
    "bonferroni_score": "conservative: the TE, NDE and NIE score intervals at alpha/3 combined (the interaction in "
                        "summaries written before the multinomial score interval; read, no longer written)",
    "mover_wilson": "unweighted mean of proportions of different samples: MOVER with each one's Wilson limits "
                    "(a macro average over sub-tasks)",
    "bonferroni_wilson": "unweighted mean of proportions that may depend on each other (the same questions in "
                         "every group): the mean of their Wilson limits at alpha / K (conservative)",
    "wilson_pooled_folds": "Wilson interval of the pooled out-of-fold hits of a cross-validation (each sample "
                           "predicted once); the estimate is the mean of the fold accuracies",
    "none": "no interval (lo / hi are None)",
}

# How a benchmark's official number aggregates its samples (the Score record's ``aggregation``).
AGGREGATIONS: dict[str, str] = {
    "micro": "correct samples / samples (a proportion: Wilson interval)",
    "macro": "unweighted mean of the accuracies of groups of different samples (sub-tasks, splits: MOVER-Wilson)",
    "group_average": "unweighted mean of the accuracies of groups that repeat the same questions (HR-Bench's cycle "
                     "groups: Bonferroni-Wilson, valid under any dependence)",
}


def _plain(value: Any) -> Any:
    """Nested records -> dicts (tuples -> lists), everything else unchanged."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Record:
    """Base of every summary record: ``to_dict`` / ``from_dict`` and read access by key (``r["lo"]``)."""

    kind: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, nested records as dicts, in declaration order (what summary.json holds)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "$"):
        """Rebuild the record from its dict; unknown keys and missing required fields are errors naming ``where``."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise LatentcheckError(f"{where}: expected a {cls.__name__} object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise LatentcheckError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise LatentcheckError(f"{where}: {cls.__name__} needs field '{name}'")
                continue
            sub = _record_type(hints.get(name))
            value = data[name]
            kwargs[name] = sub.from_dict(value, f"{where}.{name}") if sub and value is not None else value
        return cls(**kwargs)

    # read access by key, so code that reads summary dicts reads records the same way
    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def _record_type(hint: Any) -> type[Record] | None:
    """The Record subclass in a field's type hint (``Proportion`` or ``Proportion | None``), else None."""
    candidates = typing.get_args(hint) or (hint,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Record):
            return c
    return None


@dataclass(frozen=True, kw_only=True)
class Estimate(Record):
    """A quantity with an interval: the one CI shape (``estimate, lo, hi, n, method``)."""

    kind: ClassVar[str] = "estimate"
    estimate: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    method: str = "none"

    @classmethod
    def bootstrap(cls, values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                  **extra: Any) -> "Estimate":
        """Mean of ``values`` with a percentile-bootstrap interval (``core.stats.bootstrap_ci``)."""
        from latentcheck.core.stats import bootstrap_ci

        d = bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
        return cls(estimate=d["estimate"], lo=d["lo"], hi=d["hi"], n=len(values), method="percentile_bootstrap",
                   **extra)

    @classmethod
    def missing(cls, **extra: Any) -> "Estimate":
        """Nothing measured (no samples): every number ``None``, n = 0."""
        return cls(estimate=None, lo=None, hi=None, n=0, method="none", **extra)

    @property
    def defined(self) -> bool:
        """True when the estimate is a finite number."""
        return _finite(self.estimate)

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval lies entirely above or below ``value`` (False when an end is missing)."""
        return (_finite(self.lo) and self.lo > value) or (_finite(self.hi) and self.hi < value)

    def within(self, low: float, high: float) -> bool:
        """True when both ends are finite and the interval lies inside [low, high]."""
        return _finite(self.lo) and _finite(self.hi) and low <= self.lo and self.hi <= high


@dataclass(frozen=True, kw_only=True)
class Proportion(Estimate):
    """``successes`` of ``n`` with a Wilson interval (``estimate`` = successes / n; None when n = 0)."""

    kind: ClassVar[str] = "proportion"
    successes: int = 0
    method: str = "wilson"

    @classmethod
    def wilson(cls, successes: int, n: int, alpha: float = 0.05) -> "Proportion":
        from latentcheck.core.stats import wilson_ci

        if n == 0:
            return cls(estimate=None, lo=None, hi=None, n=0, successes=0)
        lo, hi = wilson_ci(successes, n, alpha)
        return cls(estimate=successes / n, lo=lo, hi=hi, n=int(n), successes=int(successes))

    @classmethod
    def of(cls, flags: Iterable[Any], alpha: float = 0.05) -> "Proportion":
        """The proportion of truthy ``flags``."""
        flags = [bool(f) for f in flags]
        return cls.wilson(sum(flags), len(flags), alpha)


@dataclass(frozen=True, kw_only=True)
class TriggerRate(Proportion):
    """How often latent mode (or an imagination span) ran in one condition (core/trigger.py): ``successes`` of
    ``n`` samples triggered (Wilson interval), ``mean_length`` = mean latent length over the samples that triggered,
    ``mean_length_all`` = over all samples."""

    kind: ClassVar[str] = "trigger_rate"
    mean_length: float | None = None
    mean_length_all: float | None = None

    @classmethod
    def of_samples(cls, flags: Sequence[Any], lengths: Sequence[float], alpha: float = 0.05) -> "TriggerRate":
        """From the samples' triggered flags and latent lengths (paired by index)."""
        flags = [bool(f) for f in flags]
        p = Proportion.of(flags, alpha)
        trig = [float(x) for f, x in zip(flags, lengths) if f]
        return cls(estimate=p.estimate, lo=p.lo, hi=p.hi, n=p.n, successes=p.successes,
                   mean_length=sum(trig) / len(trig) if trig else None,
                   mean_length_all=sum(float(x) for x in lengths) / len(flags) if flags else None)


@dataclass(frozen=True, kw_only=True)
class FoldAccuracy(Estimate):
    """A cross-validated classification accuracy (the nearest-centroid task separability): ``estimate`` = the mean of
    the fold accuracies (sklearn's ``cross_val_score``), ``std`` / ``per_fold`` / ``n_splits`` over the folds,
    ``chance`` = the majority-class rate; the interval is Wilson's on the pooled out-of-fold hits (``successes`` of
    ``n``: every sample is predicted once), which equals the estimate's own proportion when the folds are of equal
    size."""

    kind: ClassVar[str] = "fold_accuracy"
    method: str = "wilson_pooled_folds"
    successes: int = 0
    std: float | None = None
    per_fold: list[float] | None = None
    n_splits: int | None = None
    chance: float | None = None

    @classmethod
    def from_folds(cls, fold_hits: Sequence[tuple[int, int]], chance: float | None = None,
                   alpha: float = 0.05) -> "FoldAccuracy":
        """From (hits, size) per fold."""
        import numpy as np

        acc = np.array([h / m for h, m in fold_hits], dtype=float)
        k, n = sum(int(h) for h, _ in fold_hits), sum(int(m) for _, m in fold_hits)
        p = Proportion.wilson(k, n, alpha)
        return cls(estimate=float(acc.mean()), lo=p.lo, hi=p.hi, n=n, successes=k, std=float(acc.std()),
                   per_fold=[float(a) for a in acc], n_splits=len(fold_hits), chance=chance)


@dataclass(frozen=True, kw_only=True)
class Score(Estimate):
    """A benchmark's official number: ``estimate`` is exactly what the benchmark authors' scoring code gives
    (``official[metric]``), ``aggregation`` how it pools the samples (:data:`AGGREGATIONS`), with an interval where
    it is a proportion (``micro``: Wilson on ``successes`` of ``n``) or a mean of proportions (``macro`` /
    ``group_average``: ``parts`` holds each group's Proportion; ``core.stats.mean_of_proportions_ci``).
    ``official`` is the scorer's whole output, untouched (per-category breakdowns, secondary numbers such as
    TableVQA's ``paper_overall``, ``not_comparable`` reasons)."""

    kind: ClassVar[str] = "score"
    method: str = "wilson"
    metric: str = "accuracy"
    aggregation: str = "micro"
    successes: int | None = None
    parts: dict[str, Proportion] | None = None
    official: dict[str, Any] | None = None

    @classmethod
    def micro(cls, official: Mapping[str, Any], successes: int, n: int, metric: str = "accuracy",
              alpha: float = 0.05) -> "Score":
        """A pooled accuracy: the official value with the Wilson interval of ``successes`` of ``n``."""
        p = Proportion.wilson(successes, n, alpha)
        return cls(estimate=official.get(metric), lo=p.lo, hi=p.hi, n=p.n, successes=p.successes, metric=metric,
                   aggregation="micro", official=dict(official))

    @classmethod
    def mean_of(cls, official: Mapping[str, Any], parts: Mapping[str, tuple[int, int]], aggregation: str = "macro",
                metric: str = "accuracy", alpha: float = 0.05) -> "Score":
        """An unweighted mean of the groups' accuracies (``parts``: group -> (correct, n)): the official value with
        MOVER-Wilson (``macro``: groups of different samples) or Bonferroni-Wilson (``group_average``: groups that
        repeat the same questions) limits."""
        from latentcheck.core.stats import mean_of_proportions_ci

        if aggregation not in ("macro", "group_average"):
            raise LatentcheckError(f"Score.mean_of: aggregation must be macro or group_average, got {aggregation!r}")
        ci = mean_of_proportions_ci(list(parts.values()), alpha, dependent=aggregation == "group_average")
        return cls(estimate=official.get(metric), lo=ci["lo"], hi=ci["hi"], n=ci["n"], method=ci["method"],
                   metric=metric, aggregation=aggregation,
                   parts={g: Proportion.wilson(k, n, alpha) for g, (k, n) in parts.items()}, official=dict(official))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "$"):
        rec = super().from_dict(data, where)
        if isinstance(rec, Score) and rec.parts:
            rec = dataclasses.replace(rec, parts={g: Proportion.from_dict(v, f"{where}.parts.{g}")
                                                  for g, v in rec.parts.items()})
        return rec


@dataclass(frozen=True, kw_only=True)
class Ratio(Estimate):
    """mean(num) / mean(den) over paired samples; ``n_undefined`` resamples were 0/0 (see stats.bootstrap_ratio)."""

    kind: ClassVar[str] = "ratio"
    n_undefined: int = 0
    method: str = "paired_bootstrap"
    # the smallest ratio the measurement resolves (numerator resolution / mean denominator); when the bootstrap's
    # upper end lies below it, the upper end is raised to it (method ``paired_bootstrap_floored``)
    resolution_floor: float | None = None

    @classmethod
    def bootstrap(cls, num: Sequence[float], den: Sequence[float], n_boot: int = 2000,  # type: ignore[override]
                  alpha: float = 0.05, seed: int = 0, resolution: float | None = None) -> "Ratio":
        """mean(num) / mean(den) with a paired bootstrap interval (``core.stats.bootstrap_ratio``). ``resolution``:
        the smallest numerator value the measurement distinguishes from round-off; numerators below it are not
        resolved, so the interval's upper end is at least ``resolution / mean(den)`` (never a zero-width [0, 0]
        when nothing moved beyond round-off)."""
        from latentcheck.core.stats import bootstrap_ratio

        d = bootstrap_ratio(num, den, n_boot=n_boot, alpha=alpha, seed=seed)
        floor, method, hi = None, "paired_bootstrap", d["hi"]
        mean_den = float(sum(den)) / len(den) if len(den) else 0.0
        if resolution is not None and mean_den > 0 and _finite(d["estimate"]):
            floor = float(resolution) / mean_den
            if _finite(hi) and hi < floor:
                hi, method = floor, "paired_bootstrap_floored"
        return cls(estimate=d["estimate"], lo=d["lo"], hi=hi, n=len(num), n_undefined=d["n_undefined"],
                   method=method, resolution_floor=floor)


@dataclass(frozen=True, kw_only=True)
class Effect(Estimate):
    """A contrast (a difference: condition - base, or an effect of a mediation decomposition) with its interval and,
    when a test was run, its two-sided ``p_value`` and the ``test``'s name (e.g. ``mcnemar_exact``)."""

    kind: ClassVar[str] = "effect"
    method: str = "paired_bootstrap"
    p_value: float | None = None
    test: str | None = None
    p_holm: float | None = None  # Holm-adjusted p over the comparisons of a run (core.stats.holm)
    mde: float | None = None  # minimum detectable |effect| at 80% power (core.stats.paired_mde)
    boot_lo: float | None = None  # the percentile bootstrap as a second column when ``method`` is a score interval
    boot_hi: float | None = None
    n01: int | None = None  # discordant pairs (0 -> 1, 1 -> 0) when the effect is a paired 0/1 difference
    n10: int | None = None

    @classmethod
    def paired(cls, a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
               seed: int = 0) -> "Effect":
        """mean(b) - mean(a) over samples paired by index (``core.stats.paired_bootstrap_diff``)."""
        from latentcheck.core.stats import paired_bootstrap_diff

        d = paired_bootstrap_diff(a, b, n_boot=n_boot, alpha=alpha, seed=seed)
        return cls(estimate=d["estimate"], lo=d["lo"], hi=d["hi"], n=len(a))


@dataclass(frozen=True, kw_only=True)
class AccuracyEffect(Record):
    """A condition's accuracy vs a base on the same samples (paired 0/1 correctness): Wilson intervals for both,
    ``delta`` = cond - base (paired bootstrap; ``p_value`` = exact McNemar), the discordant pairs ``n01`` (wrong ->
    right) and ``n10`` (right -> wrong), ``flips`` = n01 + n10 and ``flip_rate`` = flips / n."""

    kind: ClassVar[str] = "accuracy_effect"
    n: int
    base: Proportion
    cond: Proportion
    delta: Effect
    n01: int
    n10: int
    flips: int
    flip_rate: float

    @classmethod
    def paired(cls, base_correct: Sequence[Any], cond_correct: Sequence[Any], seed: int = 0, n_boot: int = 2000,
               alpha: float = 0.05) -> "AccuracyEffect":
        """``core.stats.accuracy_effect`` as a record."""
        from latentcheck.core.stats import accuracy_effect

        d = accuracy_effect(base_correct, cond_correct, seed=seed, n_boot=n_boot, alpha=alpha)
        n = d["n"]
        k_base, k_cond = (int(sum(bool(v) for v in xs)) for xs in (base_correct, cond_correct))
        return cls(
            n=n,
            base=Proportion(estimate=d["acc_base"], lo=d["acc_base_lo"], hi=d["acc_base_hi"], n=n,
                            successes=k_base),
            cond=Proportion(estimate=d["acc_cond"], lo=d["acc_cond_lo"], hi=d["acc_cond_hi"], n=n,
                            successes=k_cond),
            delta=Effect(estimate=d["delta"], lo=d["delta_lo"], hi=d["delta_hi"], n=n, method=d["interval"],
                         p_value=d["mcnemar_p"], test="mcnemar_exact", mde=d["mde"], boot_lo=d["delta_boot_lo"],
                         boot_hi=d["delta_boot_hi"]),
            n01=d["n01"], n10=d["n10"], flips=d["flips"], flip_rate=d["flip_rate"])


@dataclass(frozen=True, kw_only=True)
class Mediation(Record):
    """Natural effects of the input on the outcome through the latents (``core.stats.mediation_effects``): total
    ``te``, natural indirect ``nie``, natural direct ``nde``, ``interaction`` = TE - NDE - NIE, and
    ``proportion_mediated`` = NIE / TE (pure), ``total_nie`` = TE - NDE, ``total_nde`` = TE - NIE and
    ``proportion_mediated_total`` = total NIE / TE. Bootstrap over one shared set of resamples of ``n`` samples; for
    0/1 outcomes the differences carry Tango score intervals (each Effect's ``method``)."""

    kind: ClassVar[str] = "mediation"
    n: int
    te: Effect
    nie: Effect
    nde: Effect
    interaction: Effect
    proportion_mediated: Ratio
    total_nie: Effect | None = None
    total_nde: Effect | None = None
    proportion_mediated_total: Ratio | None = None
    means: dict[str, float] | None = None  # mean outcome of each of y00 / y11 / y01 / y10
    method: str = "paired_bootstrap"

    @classmethod
    def from_outcomes(cls, y00: Sequence[float], y11: Sequence[float], y01: Sequence[float], y10: Sequence[float],
                      seed: int = 0, n_boot: int = 2000, alpha: float = 0.05) -> "Mediation":
        import numpy as np

        from latentcheck.core.stats import mediation_effects

        d = mediation_effects(y00, y11, y01, y10, seed=seed, n_boot=n_boot, alpha=alpha)
        n = d["n"]
        eff = {k: Effect(estimate=d[k]["estimate"], lo=d[k]["lo"], hi=d[k]["hi"], n=n, method=d[k]["method"],
                         boot_lo=d[k].get("boot_lo"), boot_hi=d[k].get("boot_hi"), mde=d[k].get("mde"),
                         n01=d[k].get("n01"), n10=d[k].get("n10"))
               for k in ("te", "nie", "nde", "interaction", "total_nie", "total_nde")}
        pm = {k: Ratio(estimate=d[k]["estimate"], lo=d[k]["lo"], hi=d[k]["hi"], n=n, n_undefined=d[k]["n_undefined"])
              for k in ("proportion_mediated", "proportion_mediated_total")}
        means = {y: float(np.asarray(v, dtype=float).mean()) for y, v in
                 (("y00", y00), ("y11", y11), ("y01", y01), ("y10", y10))} if n else None
        return cls(n=n, **eff, **pm, means=means)


# name -> record type, for readers that rebuild records from a summary by kind
RECORD_TYPES: dict[str, type[Record]] = {
    t.kind: t for t in (Estimate, Proportion, TriggerRate, FoldAccuracy, Score, Ratio, Effect, AccuracyEffect,
                        Mediation)}


def from_dict(kind: str, data: Mapping[str, Any], where: str = "$") -> Record:
    """Rebuild a record of the named ``kind`` (a key of :data:`RECORD_TYPES`)."""
    if kind not in RECORD_TYPES:
        raise LatentcheckError(f"{where}: unknown summary record kind {kind!r}; known: {', '.join(RECORD_TYPES)}")
    return RECORD_TYPES[kind].from_dict(data, where)


# ------------------------------------------------------------------------------------------------ formatting

MISSING = "-"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(value: Any, digits: int = 3, signed: bool = False, scale: float = 1.0, style: str = "f") -> str:
    """One number: ``0.123`` (``signed``: ``+0.123``; ``style='g'``: significant digits); ``-`` when missing or
    nan, ``inf`` / ``-inf`` for infinities; ``scale`` multiplies first (100 for percent)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value * scale:{'+' if signed else ''}.{digits}{style}}"


def fmt_pct(value: Any, digits: int = 1, signed: bool = False) -> str:
    """A proportion as percent without the sign: 0.523 -> ``52.3``."""
    return fmt_num(value, digits, signed=signed, scale=100.0)


def fmt_p(p: Any) -> str:
    """A p-value with three significant digits (``0.0312``, ``1``)."""
    return fmt_num(p, 3, style="g")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_ci(est: Any, lo: Any = None, hi: Any = None, *, digits: int = 2, signed: bool = False, pct: bool = False,
           n: bool = False) -> str:
    """``0.52 [0.41, 0.63]``; ``est`` may be a record or its dict (then lo / hi / n come from it; ``None`` prints
    ``-``). Without an interval only the estimate prints; ``pct`` prints percent; ``n`` appends `` (n=50)``."""
    count = None
    if isinstance(est, (Record, Mapping)):
        rec = est
        value = rec.get("estimate", rec.get("accuracy"))  # summary v1 accuracy dicts used "accuracy"
        est, lo, hi, count = value, rec.get("lo"), rec.get("hi"), rec.get("n")
    scale = 100.0 if pct else 1.0
    text = fmt_num(est, digits, signed, scale)
    if lo is not None or hi is not None:
        lo_text, hi_text = fmt_num(lo, digits, signed, scale), fmt_num(hi, digits, signed, scale)
        if lo_text == hi_text and _finite(lo) and _finite(hi) and hi > lo:
            # rounding would print an interval of non-zero width as [0.00, 0.00]: show significant digits instead
            lo_text, hi_text = fmt_num(lo, 2, signed, scale, "g"), fmt_num(hi, 2, signed, scale, "g")
        text += f" [{lo_text}, {hi_text}]"
    if n and count is not None:
        text += f" (n={count})"
    return text


__all__ = [
    "SUMMARY_SCHEMA", "summary_schema_problem", "read_summary", "METHODS", "AGGREGATIONS", "Record", "Estimate",
    "Proportion", "TriggerRate", "FoldAccuracy", "Score", "Ratio", "Effect", "AccuracyEffect", "Mediation",
    "RECORD_TYPES", "from_dict", "fmt_num", "fmt_pct", "fmt_p", "fmt_ci", "MISSING",
]
