"""The ONE answer rule: a generated trace -> (reply text, latent / imagination spans, answer).

Every command reads generated answers through :func:`read_trace` (perturb-input, perturb-latent, probe, bench,
caption-imagine, the audit through them, the zoo's accuracy, the local text backend), so one trace gets one answer
everywhere.

Latent profiles: the spans are the engine's own ``Trace.span_mask`` runs (the start token, the fed positions, and
whatever ids were recorded there: placeholders or garbage sampled ids), never re-parsed from text. The reply is the
generated text outside the spans with the span markers (start / end / inner end / placeholder) and end-of-turn / EOS
tokens removed. The answer is read from the part after the LAST span (the same place the engine scores options: the
answer point follows the imagination); without any span, from the whole reply. A span that never closed (generation
ended inside it: an EOS sampled in a Monet span, the token budget) leaves no answer: ``closed`` is False and
``answer`` is None, whatever text came before the span.

Text-imagination profiles (CapImagine): the span is text between the profile's markers (they are ordinary text, so
they are found in the decoded text; the token ranges are located in the per-token pieces). ``opened=True`` means the
prompt already opened a span (the start marker was forced into the assistant prefix).

Plain profiles: no spans; the reply is the generated text without end-of-turn tokens and the answer is read from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Extractor = Callable[[str, "list[str] | None"], "str | None"]


@dataclass(frozen=True)
class Reading:
    """What the answer rule reads from one trace."""

    reply: str  # generated text outside the spans, markers and end-of-turn tokens removed (what a reader sees)
    answer_text: str  # the part the extractor reads: after the last span (the whole reply without spans); "" if
    # the last span never closed
    spans: tuple[tuple[int, int], ...] = field(default_factory=tuple)  # token ranges [s, e) of the spans
    closed: bool = True  # False: generation ended inside a span (no answer)
    answer: str | None = None  # extractor(answer_text, options); None when nothing can be read

    @property
    def triggered(self) -> bool:
        return bool(self.spans)

    @property
    def span_tokens(self) -> int:
        """Generated tokens inside the spans."""
        return int(sum(e - s for s, e in self.spans))


def _marker_ids(lm) -> set[int]:
    tk = lm.tokens
    out = set(tk.eos or [])
    for t in (tk.start, tk.end, tk.placeholder, tk.inner_end):
        if t is not None:
            out.add(int(t))
    return out


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    runs, s = [], None
    for i, m in enumerate(mask):
        if m and s is None:
            s = i
        elif not m and s is not None:
            runs.append((s, i))
            s = None
    if s is not None:
        runs.append((s, len(mask)))
    return runs


def _decode(lm, ids: list[int]) -> str:
    return lm.tokenizer.decode(ids, skip_special_tokens=False).strip() if ids else ""


def _read_latent(lm, ids: list[int], span_mask: list[bool]) -> tuple[str, str, list[tuple[int, int]], bool]:
    n = len(ids)
    mask = [bool(m) for m in span_mask[:n]] + [False] * max(0, n - len(span_mask))
    spans = _runs(mask)
    closed = not (n and mask[-1])
    drop = _marker_ids(lm)
    reply = _decode(lm, [t for t, m in zip(ids, mask) if not m and t not in drop])
    after = spans[-1][1] if spans else 0
    ans = [t for t, m in zip(ids[after:], mask[after:]) if not m and t not in drop] if closed else []
    return reply, _decode(lm, ans), spans, closed


def _end_strings(lm) -> list[str]:
    eos = [int(t) for t in (lm.tokens.eos or [])]
    return [s for s in lm.tokenizer.convert_ids_to_tokens(eos) if s]


def _read_text(lm, ids: list[int], opened: bool) -> tuple[str, str, list[tuple[int, int]], bool]:
    start_m, end_m = lm.profile.imagination["start"], lm.profile.imagination["end"]
    tok = lm.tokenizer
    pieces = [tok.decode([t], skip_special_tokens=False) for t in ids]
    ends, pos = [], 0
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    text = "".join(pieces)
    # character spans of the imagination contents, and the text outside [start marker, end marker]
    outside, char_spans, closed = [], [], True
    i = 0
    open_now = opened
    last_end = 0
    while True:
        if open_now:
            c0 = i
            open_now = False
        else:
            j = text.find(start_m, i)
            if j < 0:
                outside.append(text[i:])
                break
            outside.append(text[i:j])
            c0 = j + len(start_m)
        k = text.find(end_m, c0)
        if k < 0:
            char_spans.append((c0, len(text)))
            closed = False
            break
        char_spans.append((c0, k))
        i = last_end = k + len(end_m)
    reply = "".join(outside).replace(end_m, "")
    answer = text[last_end:].replace(end_m, "") if closed else ""
    for s in _end_strings(lm):
        reply, answer = reply.replace(s, ""), answer.replace(s, "")
    spans = []
    for c0, c1 in char_spans:
        first = next((k for k, e in enumerate(ends) if e > c0), len(ends))
        stop = next((k for k, e in enumerate(ends) if e > c1), len(ends)) if c1 < len(text) else len(ends)
        spans.append((first, max(first, stop)))
    return reply.strip(), answer.strip(), spans, closed


def read_ids(lm, token_ids: list[int], span_mask: list[bool] | None = None, options: list[str] | None = None,
             extractor: Extractor | str | None = None, opened: bool = False) -> Reading:
    """The answer rule on generated ids (and the engine's span mask for latent profiles); see the module docstring.
    ``extractor``: a registered extractor name or function (default: the profile's)."""
    from latentcheck.core.extract import get_extractor

    prof = lm.profile
    ids = [int(t) for t in token_ids]
    if prof.is_latent:
        reply, ans, spans, closed = _read_latent(lm, ids, list(span_mask or []))
    elif prof.kind == "text_imagination" and prof.imagination.get("start") and prof.imagination.get("end"):
        reply, ans, spans, closed = _read_text(lm, ids, opened)
    else:
        drop = set(lm.tokens.eos or [])
        reply = _decode(lm, [t for t in ids if t not in drop])
        ans, spans, closed = reply, [], True
    fn = get_extractor(extractor or prof.extractor) if not callable(extractor) else extractor
    answer = fn(ans, options) if ans else None
    return Reading(reply=reply, answer_text=ans, spans=tuple(spans), closed=closed, answer=answer)


def read_trace(lm, trace: Any, options: list[str] | None = None, extractor: Extractor | str | None = None,
               opened: bool = False) -> Reading:
    """The answer rule on an engine ``Trace`` (its token ids and span mask)."""
    return read_ids(lm, trace.token_ids, getattr(trace, "span_mask", None), options, extractor, opened)


__all__ = ["Reading", "read_trace", "read_ids"]
