"""Fake-null guard: how often latent mode (or, for text-imagination models, an imagination span) actually ran.

An intervention on latents that were never produced changes nothing, so a low trigger rate turns every latent
analysis into a fake null (latent-models.md s11.3, Monet#20). Every analysis summary therefore carries a
``latent_trigger`` block (:func:`trigger_block`): per condition a ``TriggerRate`` record (core/summaries.py): the
number of samples, the trigger rate with its Wilson interval, and the mean latent length (fed vectors / imagination tokens) over the samples that triggered and
over all samples. When the baseline rate is below :data:`MIN_TRIGGER_RATE` the block carries a ``warning`` and the
command prints it loudly (:func:`warn_trigger`); the audit refuses X -> Z / Z -> Y verdicts on such runs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

MIN_TRIGGER_RATE = 0.8  # baseline trigger rate below which latent results are flagged (= the audit's default)


def trigger_stats(flags: Sequence[bool], lengths: Sequence[float]) -> dict[str, Any]:
    """One condition's :class:`core.summaries.TriggerRate` as its dict: ``estimate`` = the trigger rate,
    ``successes`` of ``n`` triggered [Wilson ``lo``, ``hi``], ``mean_length`` over the samples that triggered and
    ``mean_length_all`` over all samples."""
    from latentcheck.core.summaries import TriggerRate

    return TriggerRate.of_samples(flags, lengths).to_dict()


def trigger_block(conditions: Mapping[str, tuple[Sequence[bool], Sequence[float]]], baseline: str, kind: str,
                  unit: str = "fed latent vectors", threshold: float = MIN_TRIGGER_RATE) -> dict[str, Any] | None:
    """The summary block: ``conditions`` maps a condition name to (triggered flags, latent lengths) of its samples;
    ``baseline`` names the un-intervened condition the warning is judged on. None for plain profiles (no latent
    mode to trigger)."""
    if kind == "plain":
        return None
    stats = {name: trigger_stats(*fl) for name, fl in conditions.items()}
    base = stats.get(baseline) or {}
    what = "an imagination span" if kind == "text_imagination" else "latent mode"
    warning = None
    if base.get("n") and base["estimate"] < threshold:
        warning = (f"{what} triggered in {base['estimate']:.0%} of {base['n']} {baseline} samples (< {threshold:.0%}): "
                   "interventions on latents that never ran are fake nulls; check the profile or pass "
                   "--force-latent")
    return {"baseline": baseline, "unit": unit, "threshold": threshold, "conditions": stats, "warning": warning}


def baseline_rate(block: Mapping[str, Any] | None) -> tuple[float | None, int | None]:
    """(baseline trigger rate, n) of a ``latent_trigger`` block (None, None when absent)."""
    if not block:
        return None, None
    b = (block.get("conditions") or {}).get(block.get("baseline")) or {}
    return b.get("estimate"), b.get("n")


def warn_trigger(block: Mapping[str, Any] | None, command: str, quiet: bool = False) -> None:
    """Print the block's warning loudly (also under --quiet: a fake null must not pass silently)."""
    from latentcheck.core.progress import warn

    if block and block.get("warning"):
        warn(f"{command}: {block['warning']}")


__all__ = ["MIN_TRIGGER_RATE", "trigger_stats", "trigger_block", "baseline_rate", "warn_trigger"]
