"""Judge protocols: the official prompt texts (hand-written expectations), reply parsing, when each is asked."""

from __future__ import annotations

import pytest

from latentcheck.bench.judges import (PROTOCOLS, Judge, blink_prompt, get_protocol, hrbench_prompt, monet_prompt,
                                      needs_judge, parse_can_infer, parse_monet_extraction, parse_paren_letter,
                                      parse_yes_no, vlmevalkit_prompt)
from latentcheck.core.backends import GenParams
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import Task

TASK = Task(id="1", question="What is the colour of the car?", options=["red", "blue", "green", "white"], answer="B")


def test_hrbench_prompt_is_the_official_text():
    p = hrbench_prompt(TASK, "It is blue.")
    assert p.system is None
    assert p.text == (
        "You are a helpful and precise assistant for checking the quality of the answer. Please answer in only yes "
        "or no. Given the following question: What is the colour of the car?\nOptions:\nA. red\nB. blue\nC. green\n"
        "D. white\nPlease select the correct answer from the options above. \n, the correct answer is: B. blue. "
        "Does the following answer correctly answers the question, answer:It is blue.?")


@pytest.mark.parametrize("reply,ok", [("Yes", True), ("yes, it does", True), ("YES.", True), ("No", False),
                                      ("The answer is yes", False), ("", False), ("  yes", False)])
def test_hrbench_parse_score(reply, ok):
    assert parse_yes_no(reply, TASK) is ok


def test_blink_prompt_and_parse():
    t = Task(id="b", question="Which image is the missing part", options=["the second image", "the third image"],
             answer="A")
    p = blink_prompt(t, "The third one.")
    assert p.text.endswith("Example 4: \nQuestion: Which image is the missing part\nSelect from the following "
                           "choices.?\nOptions: (A) the second image\n(B) the third image\n(Z) Failed\nAnswer: The "
                           "third one.\nYour output: ")
    assert p.text.startswith("You are an AI assistant who will help me to match an answer")
    assert parse_paren_letter("(B)", t) == "B"
    assert parse_paren_letter("Your output: (A) the second image", t) == "A"
    assert parse_paren_letter("(Z) Failed", t) is None
    assert parse_paren_letter("(C)", t) is None  # not an option
    assert parse_paren_letter("B", t) == "B"
    assert parse_paren_letter("no idea", t) is None


def test_vlmevalkit_prompt_parse_and_when():
    p = vlmevalkit_prompt(TASK, "I think the car is blue")
    assert p.text.endswith("Example 3: \nQuestion: What is the colour of the car??\nOptions: There are several "
                           "options: \nA. red\nB. blue\nC. green\nD. white\n\nAnswer: I think the car is blue\n"
                           "Your output: ")
    assert parse_can_infer("B", TASK) == "B" and parse_can_infer("Z", TASK) is None
    assert parse_can_infer("blue", TASK) == "B"
    prot = get_protocol("vlmevalkit")
    assert needs_judge(prot, TASK, "B", None) is False         # can_infer reads it, whatever the variant's rule said
    assert needs_judge(prot, TASK, "The answer is B", None) is False
    assert needs_judge(prot, TASK, "B or maybe C, not sure at all", "B") is True  # two letters: the judge decides
    assert needs_judge(prot, TASK, "I cannot tell from this picture", None) is True
    assert needs_judge(get_protocol("hrbench"), TASK, "B", "B") is True
    assert needs_judge(get_protocol("monet"), TASK, "\\boxed{B}", "B") is False
    assert needs_judge(get_protocol("monet"), TASK, "long text", None) is True


def test_monet_extraction_prompt_and_parse():
    p = monet_prompt(TASK, "After zooming in, the car looks blue.")
    assert p.system.startswith("Imagine you are an intelligent teacher.")
    assert p.text.endswith("Question: What is the colour of the car?\nA. red\nB. blue\nC. green\nD. white\nModel "
                           "response: After zooming in, the car looks blue.\nExtracted Answer: ")
    assert parse_monet_extraction("Extracted answer: B", TASK) == "B"
    assert parse_monet_extraction("blue", TASK) == "B"
    assert parse_monet_extraction("No answer", TASK) is None


def test_judge_run_records_errors_and_skips_open_questions():
    """A judge call that fails (nothing listens on the port) is recorded with its error, never dropped."""
    import socket

    from latentcheck.core.backends import make_backend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    j = Judge(make_backend("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0), "hrbench")
    no_opts = Task(id="open", question="q", answer="x")
    out = j.run([(TASK, "blue", None), (no_opts, "x", None)])
    assert [o["used"] for o in out] == [True, False]
    assert out[0]["value"] is None and "Connection" in out[0]["error"] and out[0]["prompt"].startswith("You are a")
    assert out[0]["judge"]["backend"] == "openai"
    assert j.describe()["source"].startswith("DreamMr/HR-Bench")
    assert j.params == GenParams(max_new_tokens=16, temperature=0.2, top_p=0.8, top_k=40)
    with pytest.raises(LatentcheckError, match="unknown judge protocol"):
        get_protocol("gpt")
    assert set(PROTOCOLS) == {"hrbench", "blink", "vlmevalkit", "monet"}
