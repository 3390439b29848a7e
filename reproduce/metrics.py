"""How a study cell reads one number from a step's ``summary.json``: ``metric`` names, per analysis.

A metric is ``name`` or ``name@argument`` (an intervention label, a treatment, a category, a probe arm, a latent
index). Every metric returns a :class:`~latentcheck.core.summaries.Estimate` (estimate, lo, hi, n) or raises
:class:`MetricUnavailable` with the reason, which the table shows in place of the number. Summaries are read through
``core.summaries.read_summary`` (schema ``latentcheck.summary/4`` only: another version is refused there, in one
line), so the numbers are typed records with ``estimate``. A benchmark's official number (``scores``) is a ``Score``
record (its interval: Wilson, or the interval of a mean of proportions); the breakdown below it
(``scores.official``: per category / sub-task / split) is each benchmark's own (``accuracy`` / ``n`` / ``correct``),
read with a Wilson interval where the number is that proportion.

=================  ==========================  =================================================================
analysis           metric                      meaning
=================  ==========================  =================================================================
perturb-latent     ``accuracy``                baseline accuracy (Wilson CI)
perturb-latent     ``accuracy@LABEL``          accuracy under an intervention (e.g. ``accuracy@shared:source=mean``)
perturb-latent     ``delta@LABEL``             accuracy change under it (intervened - baseline, paired CI)
perturb-latent     ``trigger_rate``            share of baseline samples whose latent mode triggered
perturb-input      ``inter_latent@K``          mean raw inter-instance cosine of latent index K (``last``: the last)
perturb-input      ``inter_ref@REF``           the same for a reference state (image_tokens, question_tokens, ...)
perturb-input      ``intra_adjacent@K``        raw intra-instance cosine of latent steps K and K+1 (``last`` pair)
perturb-input      ``sensitivity@TREATMENT``   latent change / reference change under a treatment (ratio, CI)
probe              ``arm@ARM``                 behavioural probe accuracy of an arm (latents, image, text_only,
                                               shared, noise, random)
bench              ``accuracy``                the benchmark's headline score (official aggregation, its CI)
bench              ``accuracy@CATEGORY``       a category's / sub-task's / split's score (HR-Bench: ``single``,
                                               ``cross`` of its cycle average)
bench              ``score@KEY``               another top-level score (TableVQA ``paper_overall``)
intervene          ``accuracy``                CapImagine baseline accuracy (text imagination kept)
intervene          ``intervened_accuracy``     accuracy after the text do(Z) rewrite
intervene          ``delta``                   intervened - baseline (paired CI)
intervene          ``accuracy@CATEGORY``       the same three per task category (``per_category``: V*
                   ``intervened_accuracy@C``   ``direct_attributes`` / ``relative_position``, HR-Bench ``single`` /
                   ``delta@CATEGORY``          ``cross``; Holm-adjusted p across categories in the summary)
=================  ==========================  =================================================================
"""

from __future__ import annotations

import math
from typing import Any, Callable

from latentcheck.core.summaries import Estimate


class MetricUnavailable(Exception):
    """The step ran but its summary has no such number (the reason is shown in the cell)."""


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def as_estimate(obj: Any, what: str, n: int | None = None) -> Estimate:
    """A summary number in any of the package's shapes -> Estimate."""
    if isinstance(obj, Estimate):
        return obj
    if isinstance(obj, dict):
        for key in ("estimate", "accuracy", "rate", "value", "mean"):
            if key in obj and not isinstance(obj[key], dict):
                est = _num(obj[key])
                break
        else:
            raise MetricUnavailable(f"{what}: no estimate in the summary")
        lo = _num(obj.get("lo", obj.get(f"{key}_lo")))
        hi = _num(obj.get("hi", obj.get(f"{key}_hi")))
        nn = obj.get("n", n)
        return Estimate(estimate=est, lo=lo, hi=hi, n=int(nn) if isinstance(nn, (int, float)) else None,
                        method=str(obj.get("method", "none")) if lo is not None else "none")
    v = _num(obj)
    if v is None:
        raise MetricUnavailable(f"{what}: not measured")
    return Estimate(estimate=v, lo=None, hi=None, n=n, method="none")


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            raise MetricUnavailable("summary has no " + ".".join(path))
        d = d[p]
    return d


def _intervention_row(s: dict, label: str) -> dict:
    """The summary row of an intervention, named as written on the command line or canonically
    (``noise:sigma=1`` finds ``noise:sigma=1.0``)."""
    from latentcheck.core.interventions import parse_spec

    names = {label}
    try:
        names.add(parse_spec(label).label)
    except Exception:  # noqa: BLE001 - an unparsable name is simply looked up as written
        pass
    for row in s.get("interventions") or []:
        if row.get("label") in names:
            if not row.get("n"):
                raise MetricUnavailable(f"intervention {label!r} was skipped for every sample")
            return row
    raise MetricUnavailable(f"the run has no intervention {label!r}")


def _index(items: list, arg: str) -> Any:
    if not items:
        raise MetricUnavailable("no latent indices were measured")
    try:
        return items[-1] if arg == "last" else items[int(arg)]
    except (ValueError, IndexError):
        raise MetricUnavailable(f"latent index {arg!r} not measured (0..{len(items) - 1})") from None


# ------------------------------------------------------------------------------------------------ readers
def _pl_accuracy(s: dict, arg: str | None) -> Estimate:
    if arg is None:
        return as_estimate(_get(s, "baseline", "accuracy"), "accuracy")
    return as_estimate(_get(_intervention_row(s, arg), "effect", "cond"), f"accuracy@{arg}")


def _pl_delta(s: dict, arg: str | None) -> Estimate:
    return as_estimate(_get(_intervention_row(s, arg), "effect", "delta"), f"delta@{arg}")


def _pl_trigger(s: dict, arg: str | None) -> Estimate:
    return as_estimate(_get(s, "baseline", "trigger_rate"), "trigger_rate", _get(s, "baseline").get("n"))


def _pi_inter_latent(s: dict, arg: str | None) -> Estimate:
    row = _index(_get(s, "geometry", "latent_index"), arg or "last")
    return as_estimate(row.get("raw_mean"), "inter_latent", row.get("n"))


def _pi_inter_ref(s: dict, arg: str | None) -> Estimate:
    ref = _get(s, "geometry", "refs", arg)
    return as_estimate(ref.get("raw_mean"), f"inter_ref@{arg}", ref.get("n"))


def _pi_intra(s: dict, arg: str | None) -> Estimate:
    col = _get(s, "geometry", "collapse")
    return as_estimate(_index(list(_get(col, "raw", "adjacent")), arg or "last"), "intra_adjacent", col.get("n"))


def _pi_sensitivity(s: dict, arg: str | None) -> Estimate:
    t = _get(s, "treatments", arg)
    return as_estimate(_get(t, "sensitivity_ratio"), f"sensitivity@{arg}", t.get("n"))


def _probe_arm(s: dict, arg: str | None) -> Estimate:
    beh = _get(s, "behavioural")
    if "skipped" in beh:
        raise MetricUnavailable(f"behavioural probe skipped: {beh['skipped']}")
    return as_estimate(_get(beh, "arms", arg), f"arm@{arg}")


def _score(obj: dict, what: str) -> Estimate:
    """A part of a benchmark's official breakdown: ``accuracy`` with a Wilson CI from ``correct`` / ``n`` when the
    number is that proportion (a part that is not, e.g. one of HR-Bench's per-category cycle averages, keeps its
    value and has no interval here)."""
    if "estimate" in obj:
        return as_estimate(obj, what)
    acc, n, k = _num(obj.get("accuracy")), obj.get("n"), obj.get("correct")
    if acc is None:
        raise MetricUnavailable(f"{what}: not scored")
    if isinstance(n, int) and isinstance(k, int) and n and abs(acc - k / n) < 1e-12:
        from latentcheck.core.summaries import Proportion

        p = Proportion.wilson(k, n)
        return Estimate(estimate=acc, lo=p.lo, hi=p.hi, n=n, method="wilson")
    return Estimate(estimate=acc, lo=None, hi=None, n=n if isinstance(n, int) else None, method="none")


def _bench_accuracy(s: dict, arg: str | None) -> Estimate:
    scores = _get(s, "scores")
    if arg is None:  # the Score record: the official number and its interval
        return as_estimate(scores, "accuracy")
    official = scores.get("official") or {}
    for key in ("per_category", "per_subtask", "per_split", "average"):
        cats = official.get(key)
        if isinstance(cats, dict) and arg in cats:
            v = cats[arg]
            return _score(v, f"accuracy@{arg}") if isinstance(v, dict) else as_estimate(v, f"accuracy@{arg}")
    raise MetricUnavailable(f"the run has no category / sub-task / split {arg!r}")


def _bench_score(s: dict, arg: str | None) -> Estimate:
    return as_estimate(_get(s, "scores", "official", arg), f"score@{arg}")


def _iv(s: dict, key: str, arg: str | None) -> Estimate:
    if arg is not None:  # a category: the typed AccuracyEffect of per_category (base / cond / delta records)
        cats = s.get("per_category")
        if not isinstance(cats, dict):
            raise MetricUnavailable("the intervene summary has no per-category effects (a run before they were "
                                    "added, or tasks without a category)")
        if arg not in cats:
            raise MetricUnavailable(f"the run has no category {arg!r} (it has: {', '.join(cats) or 'none'})")
        eff = cats[arg]
        part = {"accuracy": "base", "intervened_accuracy": "cond", "delta": "delta"}[key]
        return as_estimate(_get(eff, part), f"{key}@{arg}", eff.get("n"))
    eff = _get(s, "effect")
    return as_estimate(_get(eff, {"accuracy": "base", "intervened_accuracy": "cond", "delta": "delta"}[key]), key,
                       eff.get("n"))


METRICS: dict[str, dict[str, tuple[Callable[[dict, str | None], Estimate], bool]]] = {
    # analysis -> metric -> (reader, takes an argument)
    "perturb-latent": {"accuracy": (_pl_accuracy, False), "delta": (_pl_delta, True),
                       "trigger_rate": (_pl_trigger, False)},
    "perturb-input": {"inter_latent": (_pi_inter_latent, False), "inter_ref": (_pi_inter_ref, True),
                      "intra_adjacent": (_pi_intra, False), "sensitivity": (_pi_sensitivity, True)},
    "probe": {"arm": (_probe_arm, True)},
    "bench": {"accuracy": (_bench_accuracy, False), "score": (_bench_score, True)},
    "intervene": {"accuracy": (lambda s, a: _iv(s, "accuracy", a), False),
                  "intervened_accuracy": (lambda s, a: _iv(s, "intervened_accuracy", a), False),
                  "delta": (lambda s, a: _iv(s, "delta", a), False)},
}


def _split(metric: str) -> tuple[str, str | None]:
    name, _, arg = metric.partition("@")
    return name, (arg or None)


def check_metric(analysis: str, metric: str) -> str | None:
    """None when ``metric`` is readable from ``analysis``'s summary, else the problem in words."""
    name, arg = _split(metric)
    known = METRICS.get(analysis, {})
    if name not in known:
        return f"unknown metric {name!r} for {analysis}; known: {', '.join(known)}"
    _, needs = known[name]
    if needs and arg is None:
        return f"metric {name!r} needs an argument ({name}@...)"
    return None


def read_metric(analysis: str, metric: str, summary: dict) -> Estimate:
    """The number a cell shows; MetricUnavailable with the reason when the summary does not have it."""
    problem = check_metric(analysis, metric)
    if problem:
        raise MetricUnavailable(problem)
    name, arg = _split(metric)
    return METRICS[analysis][name][0](summary, arg)
