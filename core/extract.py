"""Answer extractors: model reply text -> option letter (multiple choice) or normalised text (open questions).

Every extractor has the signature ``fn(text, options) -> str | None``: ``options`` is the list of option texts
(``None`` for open questions); the return value is an option letter (``"A"``...), the normalised answer text for
open questions, or ``None`` when nothing can be extracted (scored as wrong). Register new ones with
``@register_extractor("name")``; look them up with :func:`get_extractor`.

Extractors and their sources:

- ``letter`` -- the lmms-eval V* cascade order (leading letter; "answer is X"; "(X)"; "X." / "X)"; standalone
  letter) hardened for long reasoning outputs: only letters of existing options count, letters inside words never
  count, the article "A"/pronoun "I" followed by a lowercase word is not a letter, "answer is X" / "(X)" / "X." take
  the LAST occurrence (final statements win), a standalone letter must be the only one; then option-text matching.
- ``lmms_eval_vstar`` -- lmms-eval ``vstar_bench/utils.py::extract_answer_letter``, verbatim.
- ``leading_letter`` -- lmms-eval ``blink/utils.py::_extract_answer_letter``, verbatim (first character if it is a
  letter, case-insensitive).
- ``boxed`` -- content of the last ``\\boxed{...}`` (nested braces; mathruler ``extract_boxed_content``), with
  ``\\text{}``-style wrappers removed; a letter or an option text inside is mapped to the letter.
- ``answer_tag_first_letter`` -- LVR: text after the last ``<answer>`` up to ``</answer``, first whitespace token,
  first character.
- ``mme_rw`` -- MME-RealWorld ``extract_characters_regex`` (official ``evaluation/eval_your_results.py``).
- ``vlmeval_exact`` -- VLMEvalKit ``can_infer`` (``can_infer_option`` then ``can_infer_text``), no LLM judge.
"""

from __future__ import annotations

import re
from typing import Callable

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.registry import Registry
from latentcheck.core.tasks import LETTERS

Extractor = Callable[[str, "list[str] | None"], "str | None"]
EXTRACTORS: Registry[Extractor] = Registry("answer extractor")


def register_extractor(name: str) -> Callable[[Extractor], Extractor]:
    """Decorator: register ``fn(text, options) -> str | None`` under ``name`` (a taken name is an error)."""
    return EXTRACTORS.decorator(name)


def get_extractor(name: str) -> Extractor:
    """The extractor registered under ``name``; unknown names give a LatentcheckError listing the known ones."""
    return EXTRACTORS[name]


def strip_latent_span(text: str, start: str, end: str) -> str:
    """Remove every ``start ... end`` span (markers included); an unclosed ``start`` removes to the end of the text.

    Latent-reasoning models (Monet, Mirage, LVR) decode their latent steps into arbitrary tokens; letters inside those
    spans must not be read as answers. Stray ``end`` markers are removed too.
    """
    if not start or not end:
        raise LatentcheckError("strip_latent_span needs non-empty start and end markers")
    out: list[str] = []
    i = 0
    while True:
        j = text.find(start, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find(end, j + len(start))
        if k < 0:
            break
        i = k + len(end)
    return "".join(out).replace(end, "")


def normalize_text(text: str | None) -> str | None:
    """Open-answer normalisation: trim, collapse whitespace, lowercase, drop surrounding quotes and a final period."""
    if text is None:
        return None
    s = " ".join(text.split()).lower()
    s = s.strip("\"'`* ")
    s = s.rstrip(".").strip()
    return s or None


def _valid_letters(options: list[str] | None, default: str = "ABCD") -> str:
    return LETTERS[: len(options)] if options else default


# ---------------------------------------------------------------------------------------------------------------
# letter: hardened lmms-eval cascade
# ---------------------------------------------------------------------------------------------------------------
_WHOLE_LETTER = re.compile(r"^[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:!]?$")
_LEADING = re.compile(r"^[\(\[]?([A-Z])(?:[\)\]\.:]|\n|$)")
_ANSWER_IS = re.compile(
    r"(?i:\b(?:answer|choice|option)\b\s*(?:is\s*:?|:|：)\s*(?:(?:option|choice)\s+)?)[\*\s]*"
    r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z0-9])|([a-z])(?=[\s\*]*[.!)\]]?\s*$))")
_PAREN = re.compile(r"\(([A-Z])\)")
_LETTER_PUNCT = re.compile(r"(?<![A-Za-z0-9])([A-Z])[.)\]](?![A-Za-z0-9])")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])")
_FOLLOWED_BY_WORD = re.compile(r"[AI]\s+([a-z]+)")
# Words after which a capital "A" is still an option letter ("A or B", "A is correct").
_LETTER_CONTEXT_WORDS = frozenset(
    "or and is was are be because since but vs versus seems looks appears then as would should could might may "
    "must can will fits matches".split())


def _is_article(text: str, pos: int) -> bool:
    """True if the capital at ``pos`` reads as a word, not an option letter.

    The pronoun "I" followed by a lowercase word, or the article "A" followed by a lowercase word at the start of a
    sentence ("A red car is ...", but not "... is A because").
    """
    m = _FOLLOWED_BY_WORD.match(text, pos)
    if m is None or m.group(1) in _LETTER_CONTEXT_WORDS:
        return False
    if text[pos] == "I":
        return True
    before = text[:pos].rstrip(" \t\"'(*")
    return before == "" or before[-1] in ".!?:\n"


def match_option_text(text: str, options: list[str]) -> str | None:
    """Letter of the single option whose text occurs in ``text`` (case-insensitive, whole words).

    If several options match and one of them contains all the others ("dark red" vs "red"), that one wins.
    """
    low = text.lower()
    hits = []
    for i, opt in enumerate(options):
        o = opt.strip().lower()
        if o and re.search(r"(?<![A-Za-z0-9])" + re.escape(o) + r"(?![A-Za-z0-9])", low):
            hits.append((i, o))
    hits = [(i, o) for i, o in hits if not any(o != o2 and o in o2 for _, o2 in hits)]
    return LETTERS[hits[0][0]] if len(hits) == 1 else None


@register_extractor("letter")
def extract_letter(text: str, options: list[str] | None) -> str | None:
    """Hardened lmms-eval V* cascade; see the module docstring. Open questions: normalised text."""
    if options is None:
        return normalize_text(text)
    valid = _valid_letters(options)
    s = text.strip()
    if not s:
        return None
    m = _WHOLE_LETTER.match(s)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    m = _LEADING.match(s)
    if m and m.group(1) in valid and not _is_article(s, m.start(1)):
        return m.group(1)
    found = [(g1 or g2 or g3).upper() for g1, g2, g3 in _ANSWER_IS.findall(s)]
    found = [x for x in found if x in valid]
    if found:
        return found[-1]
    for pattern in (_PAREN, _LETTER_PUNCT):
        found = [x for x in pattern.findall(s) if x in valid]
        if found:
            return found[-1]
    standalone = {m.group(1) for m in _STANDALONE.finditer(s)
                  if m.group(1) in valid and not _is_article(s, m.start(1))}
    if len(standalone) == 1:
        return standalone.pop()
    return match_option_text(s, options)


@register_extractor("lmms_eval_vstar")
def extract_lmms_eval_vstar(text: str, options: list[str] | None) -> str | None:
    """lmms-eval ``vstar_bench/utils.py::extract_answer_letter`` verbatim (A-D, on the upper-cased reply)."""
    response = text.strip().upper()
    patterns = [
        r"^([A-D])\s*[\.)\]]*",
        r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",
        r"\(([A-D])\)",
        r"([A-D])\s*(?:\.|\)|])",
        r"(?:^|\s)([A-D])(?:\s|$)",
    ]
    for pattern in patterns:
        match = re.search(pattern, response, re.IGNORECASE)
        if match:
            return match.group(1).upper()
    letters = re.findall(r"[A-D]", response)
    if len(letters) == 1:
        return letters[0]
    if response and response[0] in "ABCD":
        return response[0]
    return None


@register_extractor("leading_letter")
def extract_leading_letter(text: str, options: list[str] | None) -> str | None:
    """lmms-eval ``blink/utils.py::_extract_answer_letter`` verbatim: the first letter if the reply starts with one."""
    m = re.match(r"[\(\s]*([A-Z])[\)\.\s]*", text.strip(), flags=re.IGNORECASE)
    return m.group(1).upper() if m else None


# ---------------------------------------------------------------------------------------------------------------
# boxed
# ---------------------------------------------------------------------------------------------------------------
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced nested braces (mathruler semantics), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return text[i:j].strip()
            depth -= 1
    return None


def _unwrap_latex(s: str) -> str:
    prev = None
    while prev != s:
        prev, s = s, _WRAPPER.sub(r"\1", s)
    return s.strip().strip("$").strip()


@register_extractor("boxed")
def extract_boxed(text: str, options: list[str] | None) -> str | None:
    """Last ``\\boxed{}``: letter or option text inside -> letter; open questions -> the (unwrapped) content."""
    content = last_boxed(text)
    if content is None:
        return None
    content = _unwrap_latex(content)
    if options is None:
        return content or None
    if not content:
        return None
    valid = _valid_letters(options)
    m = _WHOLE_LETTER.match(content)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    low = content.lower().rstrip(".").strip()
    for i, opt in enumerate(options):
        if low == opt.strip().lower():
            return LETTERS[i]
    return extract_letter(content, options)


# ---------------------------------------------------------------------------------------------------------------
# LVR
# ---------------------------------------------------------------------------------------------------------------
@register_extractor("answer_tag_first_letter")
def extract_answer_tag_first_letter(text: str, options: list[str] | None) -> str | None:
    """LVR: after the last ``<answer>`` (whole text if none) up to ``</answer``; first token's first character."""
    tail = text.split("<answer>")[-1].split("</answer")[0]
    tokens = tail.split()
    return tokens[0][0] if tokens else None


# ---------------------------------------------------------------------------------------------------------------
# MME-RealWorld
# ---------------------------------------------------------------------------------------------------------------
# The official list misses two commas, so Python concatenates neighbouring literals; these are the strings that are
# actually removed (same in VLMEvalKit). "Best answer: C" therefore still yields "B" from "Best", as officially.
MME_RW_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)


@register_extractor("mme_rw")
def extract_mme_rw(text: str, options: list[str] | None) -> str | None:
    """MME-RealWorld ``extract_characters_regex``.

    Strip the answer prefixes; more than 10 words with no A-E capital -> None; else the first A-E capital; else the
    letter of the first choice string ``"(X) text"`` that contains the whole reply (case-insensitive).
    One deliberate deviation: an empty reply gives None (officially ``"" in choice`` picks "A").
    """
    s = text.strip()
    for prefix in MME_RW_PREFIXES:
        s = s.replace(prefix, "")
    if not s.strip():
        return None
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return None
    m = re.search(r"[ABCDE]", s)
    if m is None:
        for i, opt in enumerate(options or []):
            choice = f"({LETTERS[i]}) {opt}"
            if s.lower() in choice.lower():
                return choice[1]
        return None
    return m[0]


# ---------------------------------------------------------------------------------------------------------------
# VLMEvalKit exact matching
# ---------------------------------------------------------------------------------------------------------------
_VLMEVAL_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def can_infer_option(text: str, letters: str) -> str | None:
    """VLMEvalKit ``can_infer_option``: exactly one standalone option letter, among the last four tokens."""
    if "Failed to obtain answer via API" in text or any(r in text for r in _VLMEVAL_REFUSALS):
        return None  # VLMEvalKit: False / 'Z' (= wrong)
    mod = text
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = mod.split()
    hits = [c for c in letters if c in splits]
    if len(hits) == 1 and splits.index(hits[0]) > len(splits) - 5:
        return hits[0]
    return None


def can_infer_text(text: str, options: list[str]) -> str | None:
    """VLMEvalKit ``can_infer_text``: exactly one option text contained in a not-too-long reply."""
    low = text.lower()
    if len(low) > 2 * sum(len(str(o)) for o in options):
        return None
    cands = [LETTERS[i] for i, o in enumerate(options) if str(o).lower() in low]
    return cands[0] if len(cands) == 1 else None


@register_extractor("vlmeval_exact")
def extract_vlmeval_exact(text: str, options: list[str] | None) -> str | None:
    """VLMEvalKit ``can_infer`` under exact matching (no judge); None where VLMEvalKit would give 'Z'/False."""
    if options is None:
        return normalize_text(text)
    return can_infer_option(text, _valid_letters(options)) or can_infer_text(text, options)


_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def can_infer_option_latest(text: str, letters: str) -> str | None:
    """``can_infer_option`` as of VLMEvalKit a67ace50 (2026-06, ``vlmeval/utils/matching_util.py``): refusals and
    an explicit standalone ``Z`` (with no option letter) are answers ('Z' = wrong, no text fallback); one option
    letter among the last words as before (c3371551); then the newer fallback for verbose chain-of-thought replies,
    ``(correct) answer is **X**`` anywhere in the reply (letters A-D)."""
    if "Failed to obtain answer via API" in text:
        return None
    if any(r in text for r in _VLMEVAL_REFUSALS):
        return "Z"
    mod = text
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    hits = [c for c in letters if c in splits]
    if len(hits) == 1 and splits.index(hits[0]) > len(splits) - 5:
        return hits[0]
    if not hits and sum(z in splits for z in ("Z", "")) == 1:
        return "Z"
    m = _VERBOSE_ANSWER.search(text or "")
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None


@register_extractor("vlmeval_exact_latest")
def extract_vlmeval_exact_latest(text: str, options: list[str] | None) -> str | None:
    """``can_infer`` with :func:`can_infer_option_latest` (an explicit 'Z' is wrong and skips the text match)."""
    if options is None:
        return normalize_text(text)
    opt = can_infer_option_latest(text, _valid_letters(options))
    if opt == "Z":
        return None
    return opt or can_infer_text(text, options)


# ---------------------------------------------------------------------------------------------------------------
# open answers (TableVQA)
# ---------------------------------------------------------------------------------------------------------------
_ANSWER_PREFIX = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)


@register_extractor("answer_text")
def extract_answer_text(text: str, options: list[str] | None) -> str | None:
    """The whole reply, stripped, with a leading "Answer:" removed (VLMEvalKit TableVQABench strips ``^Answer: ``;
    the official script scores the raw reply). The benchmark's own matcher normalises it further."""
    t = _ANSWER_PREFIX.sub("", text.strip()).strip()
    return t or None


__all__ = ["EXTRACTORS", "Extractor", "register_extractor", "get_extractor", "strip_latent_span", "normalize_text",
           "last_boxed", "match_option_text", "can_infer_option", "can_infer_text", "MME_RW_PREFIXES",
           "extract_letter", "extract_boxed", "extract_mme_rw", "extract_vlmeval_exact",
           "extract_answer_tag_first_letter", "extract_lmms_eval_vstar", "extract_leading_letter",
           "extract_answer_text", "answer_text", "can_infer_option_latest", "extract_vlmeval_exact_latest"]
