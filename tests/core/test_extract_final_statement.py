"""Self-correcting replies: every extractor documented to take the FINAL statement takes the last one, and the
extractors documented to take the first (official verbatim ports) keep doing so."""

from __future__ import annotations

import pytest

from latentcheck.core.extract import get_extractor

OPTS = ["red", "green", "blue", "yellow"]

LETTER_CASES = [
    # "answer is X": the last statement wins
    ("The answer is A. Wait, looking again at the colour, the answer is C.", "C"),
    ("Answer: B\nHmm, no. Answer: D", "D"),
    ("My choice is (A)... on reflection my choice is (B).", "B"),
    # "(X)": the last parenthesised letter wins
    ("It could be (A) but the shading says (D)", "D"),
    ("It looked like (B) at first; (C) fits the object better", "C"),
    # "X." / "X)": the last such letter wins
    ("First I thought A. Then I reconsidered and chose B.", "B"),
    ("Options considered: A) no, C) yes", "C"),
]


@pytest.mark.parametrize("reply,want", LETTER_CASES)
def test_letter_takes_the_final_statement(reply, want):
    assert get_extractor("letter")(reply, OPTS) == want


def test_letter_cascade_order_answer_is_beats_parentheses_and_punctuation():
    """Documented order: "answer is X" before "(X)" before "X." (a later "(A)" does not override the statement)."""
    assert get_extractor("letter")("The answer is B, not (A) as in A.", OPTS) == "B"
    assert get_extractor("letter")("(C) is my pick. D. was a distractor", OPTS) == "C"


def test_boxed_takes_the_last_box():
    assert get_extractor("boxed")(r"\boxed{A} ... actually \boxed{D}", OPTS) == "D"
    assert get_extractor("boxed")(r"\boxed{green} no: \boxed{\text{blue}}", OPTS) == "C"


def test_answer_tag_takes_the_last_answer_tag():
    assert get_extractor("answer_tag_first_letter")("<answer>A</answer> wait <answer>C</answer>", OPTS) == "C"


def test_official_ports_keep_their_first_match_rules():
    """lmms-eval's V* extractor and MME-RealWorld's take the FIRST match (verbatim ports, documented)."""
    assert get_extractor("lmms_eval_vstar")("The answer is A. Wait, the answer is C.", OPTS) == "A"
    assert get_extractor("mme_rw")("A is wrong, C is right", OPTS) == "A"
