"""From "encodes" to "uses": erase a probed attribute from the latents (LEACE) or steer them towards another value,
feed them back, and see whether the answer follows (issue #24, part 5).

For a label (``answer`` by default: the gold option letter; or any probe label such as ``meta.answer_text``) over the
captured latents of the probe's source tasks:

1. LEACE (Belrose et al. 2023, the ``concept-erasure`` package, optional extra ``mech``) is fitted on every latent
   vector with its sample's label (one-hot) and applied to every vector. A cross-validated linear probe on the erased
   vectors shows the erasure worked (accuracy at chance) — the same probe before erasure shows what was encoded.
2. Each source runs three times with the image visible, its latent span overridden by: its own latents (``own``: the
   reference, = the normal run), the erased latents (``erased``), and its latents plus the class-difference direction
   mean(latents of class c') - mean(latents of its own class) for a seeded other class c' (``steered``).
3. The summary gives accuracy under each arm with paired effects (erased vs own, steered vs own) and, when the label's
   values map to answer options (``answer``, or a value that is one of the options' texts), the share of steered
   samples whose answer moved to c''s option ("follows"). Reading: ``encodes and uses`` (probe above chance before
   erasure, erasing it costs accuracy), ``encodes, unused`` (probe above chance, erasing changes nothing),
   ``does not encode`` (probe at chance), or ``inconclusive`` with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import LETTERS, Task


def _require_leace():
    try:
        from concept_erasure import LeaceEraser
    except ImportError:  # pragma: no cover - the extra is installed in the test environment
        raise LatentcheckError("concept erasure needs the optional extra: pip install 'latentcheck[mech]' "
                               "(the concept-erasure package)") from None
    return LeaceEraser


def fit_eraser(X: np.ndarray, labels: list[str]):
    """A LEACE eraser for ``labels`` (one class per distinct value) fitted on X [n, H] (float64)."""
    import torch

    LeaceEraser = _require_leace()
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise LatentcheckError("concept erasure needs at least two label values")
    z = torch.zeros(len(labels), len(classes), dtype=torch.float64)
    z[torch.arange(len(labels)), torch.tensor([classes.index(v) for v in labels])] = 1.0
    return LeaceEraser.fit(torch.as_tensor(np.asarray(X, np.float64)), z)


def erase(eraser, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return eraser(torch.as_tensor(np.asarray(X, np.float64))).numpy()


def class_means(X: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    lab = np.asarray(labels, dtype=object)
    return {v: np.asarray(X, np.float64)[lab == v].mean(0) for v in sorted(set(labels))}


def option_letter(task: Task, label: str, value: str) -> str | None:
    """The option letter a label value stands for: the letter itself for ``answer``, or the option whose text is the
    value; None when the value names no option."""
    if not task.options:
        return None
    if label == "answer":
        return value if value in LETTERS[:len(task.options)] else None
    low = [str(o).strip().lower() for o in task.options]
    return LETTERS[low.index(value.strip().lower())] if value.strip().lower() in low else None


def erasure_block(engine, lm, sources: list[Task], latents: dict[str, np.ndarray], label: str, seed: int,
                  batch_size: int, cfg) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit the eraser and the class means on the sources' latents, run the three arms, return (records, probe
    check). ``cfg``: a ``probe.trained.ProbeConfig`` for the before/after probes."""
    from latentcheck.core.engine import Condition, Request
    from latentcheck.core.prompts import build_prompt, option_token_ids, task_text
    from latentcheck.probe.trained import image_group, label_value, probe_site

    rows = [(t, label_value(t, label)) for t in sources if t.id in latents and len(latents[t.id]) and t.options]
    rows = [(t, v) for t, v in rows if v is not None]
    if len(rows) < 4:
        raise LatentcheckError(f"concept erasure: only {len(rows)} multiple-choice samples with latents and a "
                               f"{label!r} label")
    X = np.concatenate([latents[t.id] for t, _ in rows])
    y = [v for t, v in rows for _ in range(len(latents[t.id]))]
    groups = [image_group(t) for t, _ in rows for _ in range(len(latents[t.id]))]
    eraser = fit_eraser(X, y)
    means = class_means(X, y)
    check = {"label": label, "n_vectors": int(len(X)), "classes": sorted(means),
             "before": probe_site(X, y, groups, cfg), "after": probe_site(erase(eraser, X), y, groups, cfg)}
    rng = np.random.default_rng(seed)
    reqs, meta = [], []
    for t, v in rows:
        own = np.asarray(latents[t.id], np.float32)
        others = [c for c in sorted(means) if c != v]
        target = others[int(rng.integers(len(others)))]
        steered = own + (means[target] - means[v]).astype(np.float32)
        conds = [Condition("own", override=own), Condition("erased", override=erase(eraser, own).astype(np.float32)),
                 Condition("steered", override=steered)]
        prompt = build_prompt(lm, t.id, task_text(t, lm.profile), t.load_image())
        reqs.append(Request(prompt, conds, option_ids=option_token_ids(lm, len(t.options)), force_latent=True))
        meta.append((t, v, target))
    records = []
    for (t, v, target), traces in zip(meta, engine.generate(reqs, batch_size=batch_size)):
        rec: dict[str, Any] = {"key": t.id, "label_value": v, "steer_to": target,
                               "steer_letter": option_letter(t, label, target)}
        for tr in traces:
            lp = tr.option_logprobs
            pred = LETTERS[int(np.argmax(lp))] if lp is not None else None
            rec[tr.condition] = {"pred": pred, "correct": int(pred == t.answer_letter)}
        records.append(rec)
    return records, check


def summarise_erasure(records: list[dict], check: dict[str, Any], seed: int = 0, n_boot: int = 2000,
                      margin: float = 0.05) -> dict[str, Any]:
    """Accuracy per arm, paired effects vs ``own``, steering follow rate and the reading (module docstring)."""
    from latentcheck.core.summaries import AccuracyEffect, Proportion

    own = [r["own"]["correct"] for r in records]
    out: dict[str, Any] = {**check, "n": len(records)}
    for arm in ("erased", "steered"):
        out[arm] = AccuracyEffect.paired(own, [r[arm]["correct"] for r in records], seed=seed, n_boot=n_boot)
    steer = [r for r in records if r.get("steer_letter")]
    if steer:
        out["follows"] = Proportion.of(r["steered"]["pred"] == r["steer_letter"] for r in steer).to_dict()
        out["follows_own"] = Proportion.of(r["own"]["pred"] == r["steer_letter"] for r in steer).to_dict()
    before = check["before"].get("linear") if isinstance(check.get("before"), dict) else None
    chance = check["before"].get("chance") if isinstance(check.get("before"), dict) else None
    if before is None or chance is None:
        out["reading"] = "inconclusive: " + str(check["before"].get("skipped", "no probe before erasure"))
    elif before["lo"] <= chance + margin:
        out["reading"] = "does not encode"
    elif out["erased"].delta.hi < -margin:
        out["reading"] = "encodes and uses"
    else:  # "unused" is a null: an equivalence test (TOST) against the margin, with the n it needs
        from latentcheck.core.stats import paired_tost

        e = out["erased"]
        out["equivalence"] = tost = paired_tost(e.n01, e.n10, e.n, margin)
        if tost["equivalent"]:
            out["reading"] = "encodes, unused"
        elif e.n < tost["min_n"]:
            out["reading"] = (f"inconclusive (n too small for +-{margin * 100:.0f} points: need >= "
                              f"{tost['min_n']})")
        else:
            out["reading"] = "inconclusive: the erased arm's interval overlaps the margin"
    for arm in ("erased", "steered"):
        out[arm] = out[arm].to_dict()
    return out
