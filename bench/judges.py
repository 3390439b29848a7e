"""LLM judges for the benchmark protocols that need one, on top of the one text-generation layer (core/backends.py).

A :class:`JudgeProtocol` is data: what the judge is asked (``build(task, reply) -> ChatPrompt``, the official prompt
text), how its reply is read (``parse(text, task)``), with which decoding (``params``, the official settings), and
when it is asked (``when``):

* ``kind="correct"``: the judge says whether the reply is right (HR-Bench yes/no; Monet 1/0);
* ``kind="choice"``: the judge says which option the reply chose (BLINK matcher, VLMEvalKit matcher); the benchmark's
  correctness rule is applied to that letter;
* ``kind="extract"``: the judge extracts the final answer text (Monet's "LLM-as-a-judge" answer extraction), mapped
  to an option letter by the ``letter`` extractor.

``when``: ``always`` (HR-Bench, BLINK: every reply goes to the judge, as officially), ``rule_failed`` (only replies the
variant's rule extractor could not read: Monet), ``vlmevalkit`` (VLMEvalKit ``extract_answer_from_item`` on its main
branch: the judge reads the replies that ``can_infer`` cannot; some 2025 branches also sent every reply of 10+
characters, not followed here).

:class:`Judge` runs a protocol through any backend (``local`` / ``openai``, usually behind the persistent reply cache)
and returns one verdict per item, recorded per sample: ``{"used", "protocol", "prompt", "reply", "value", "error",
"cached", "judge"}`` (``judge`` = the backend identity). A judge call that fails is recorded with its ``error`` and
scored as the rule says (never dropped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from latentcheck.core.backends import ChatPrompt, GenParams, TextBackend
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.extract import can_infer_option, can_infer_text, get_extractor
from latentcheck.core.tasks import LETTERS, Task

KINDS = ("correct", "choice", "extract")
WHEN = ("always", "rule_failed", "vlmevalkit")


@dataclass(frozen=True)
class JudgeProtocol:
    name: str
    kind: str
    build: Callable[[Task, str], ChatPrompt]
    parse: Callable[[str, Task], Any]
    params: GenParams
    when: str
    source: str


# ---------------------------------------------------------------------------------------------- HR-Bench
HRBENCH_PREFIX = ("You are a helpful and precise assistant for checking the quality of the answer. "
                  "Please answer in only yes or no. ")


def _gold_letter(task: Task) -> str:
    letter = task.answer_letter
    if letter is None or not task.options:
        raise LatentcheckError(f"task {task.id!r}: the judge needs a gold option")
    return letter


def hrbench_prompt(task: Task, reply: str) -> ChatPrompt:
    """DreamMr/HR-Bench ``hrbench/vlmeval/dataset/utils/hrbench.py`` ``build_prompt`` + ``pipeline_eval`` prefix."""
    label = _gold_letter(task)
    opts = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(task.options or []))
    prompt = f"{task.question}\n"
    if task.options:
        prompt += "Options:\n" + opts + "Please select the correct answer from the options above. \n"
    gt = f"{label}. {task.options[LETTERS.index(label)]}"
    content = (f"Given the following question: {prompt}, the correct answer is: {gt}. Does the following answer "
               f"correctly answers the question, answer:{reply}?")
    return ChatPrompt(HRBENCH_PREFIX + content)


_YES_NO = re.compile(r"^(yes|no)", re.IGNORECASE)


def parse_yes_no(text: str, task: Task) -> bool:
    """``parse_score``: 1 iff the lower-cased reply starts with "yes"."""
    m = _YES_NO.match(text.lower())
    return bool(m and m.group(0) == "yes")


# ---------------------------------------------------------------------------------------------- BLINK
BLINK_TEMPLATE = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, and you need to find which option is most "
    "similar to the answer. "
    "If the answer says things like refuse to answer, I'm sorry cannot help, etc., output (Z)"
    "If the meaning of all options are significantly different from the answer, or the answer does not select any "
    "option, output (Z)"
    "Your should output one of the choices, (A),(B),(C),(D),(E) (if they are valid options), or (Z)\n"
    "Example 1: \n"
    "Question: Which point is closer to the camera?\nSelect from the following choices.\nOptions: (A) Point A\n"
    "(B) Point B\n(Z) Failed\nAnswer: Point B, where the child is sitting, is closer to the camera.\nYour output: (B)\n"
    "Example 2: \n"
    "Question: Which point is closer to the camera?\nSelect from the following choices.\nOptions: (A) Point A\n"
    "(B) Point B\n(Z) Failed\nAnswer: I'm sorry, but I can't assist with that request.\nYour output: (Z)\n"
    "Example 3: \n"
    "Question: Which point is corresponding to the reference point?\nSelect from the following choices.\n"
    "Options: (A) Point A\n(B) Point B\n(Z) Failed\nAnswer:The reference point (REF) on the first image is at the "
    "tip of the pot, which is the part used to Poke if the pots were used for that action. Looking at the second "
    "image, we need to find the part of the object that would correspond to poking.\n(A) Point A is at the tip of "
    "the spoon's handle, which is not used for poking.\n(B) Point B is at the bottom of the spoon, which is not used "
    "for poking.\n(C) Point C is on the side of the pspoonot, which is not used for poking.\n(D) Point D is at the "
    "tip of the spoon, which is not used for poking.\n\nTherefore, there is no correct answer in the choices\n"
    "Your output: (Z)\n"
    "Example 4: \n"
    "Question: {}?\nOptions: {}\n(Z) Failed\nAnswer: {}\nYour output: ")


def blink_prompt(task: Task, reply: str) -> ChatPrompt:
    """zeyofu/BLINK_Benchmark ``eval/multiple_choice.py`` ``build_prompt`` (GPT-3.5-turbo matcher, T=0): question
    + "Select from the following choices.", options ``(A) text`` one per line."""
    opts = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(task.options or []))
    question = f"{task.question}\nSelect from the following choices."
    return ChatPrompt(BLINK_TEMPLATE.format(question, opts, reply))


_PAREN_LETTER = re.compile(r"\(([A-Z])\)")


def parse_paren_letter(text: str, task: Task) -> str | None:
    """First ``(X)`` in the matcher's reply (a bare leading letter too); ``(Z)`` or a letter outside the options ->
    None (wrong)."""
    m = _PAREN_LETTER.search(text) or re.match(r"\s*([A-Z])\b", text)
    if not m:
        return None
    letter = m.group(1)
    return letter if letter in LETTERS[:len(task.options or [])] else None


# ---------------------------------------------------------------------------------------------- VLMEvalKit
VLMEVALKIT_TEMPLATE = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, and you need to find which option is most "
    "similar to the answer. If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: ")


def vlmevalkit_prompt(task: Task, reply: str) -> ChatPrompt:
    """VLMEvalKit ``vlmeval/dataset/utils/multiple_choice.py`` ``build_prompt`` with ``build_option_str``."""
    opts = "There are several options: \n" + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(task.options or []))
    return ChatPrompt(VLMEVALKIT_TEMPLATE.format(task.question, opts, reply))


def parse_can_infer(text: str, task: Task) -> str | None:
    """VLMEvalKit reads the judge's reply with ``can_infer`` (option letter, then option text); Z -> None."""
    letters = LETTERS[:len(task.options or [])]
    return can_infer_option(text, letters) or can_infer_text(text, task.options or [])


# ---------------------------------------------------------------------------------------------- Monet
MONET_SYSTEM = ("Imagine you are an intelligent teacher. Thoroughly read the provided instruction to ensure a solid "
                "understanding of the information provided.")
MONET_EXTRACT_DEMO = (
    "Please read the following example. Then extract the answer from the model response and type it at the end of "
    "the prompt.\nIf the question requires a full sentence with a correct word filled in, please provide the word "
    "only.\nIf there is no answer in the model response, please return 'No answer'.\n\n"
    "Question: There is a single rectangle with multiple color layers in the image. What is the color of the "
    "boundary of the rectangle? The answer should be one of \u2018red\u2019, \u2018yellow\u2019, \u2018green\u2019, "
    "or \u2018blue\u2019.\nModel response: The color of the boundary of the circle is red.\nExtracted answer: red\n\n"
    "Question: How many line segments are in the image? Answer should be a number.\nModel response: There are 4 "
    "dashed line segments in the image.\nExtracted answer: 4\n\n"
    "Question: Choose the word in parentheses that correctly describes the image. Rewrite the sentence with the "
    "chosen word.\nIn the image, shape (A/B) has sides curved inward.\nModel response: In the image, shape B has "
    "sides curved inward.\nExtracted answer: B\n\n"
    "Question: In this image, choose the path which is a single line segment between points A and B from the "
    "following options. Provide your answer as a single uppercase letter: (A) the purple path (B) the blue path "
    "(C) the green path (D) the red path\nModel response: B\nExtracted answer: B\n\n"
    "Question: Choose the most appropriate color to fill in the box marked with \u2018?\u2019 in the image. The answer "
    "is one of \u2018a\u2019, \u2018b\u2019, \u2018c\u2019, or \u2018d\u2019.\nModel response: The correct color to "
    "fill in the box marked with '?' is (a) blue.\\n\\nThe colors are following a gradient pattern from red, to a more "
    "purple hue, and finally to blue. The logical next color in the sequence would be blue, as it extends the "
    "progression seen in the previous squares.\nExtracted answer: a")


def monet_prompt(task: Task, reply: str) -> ChatPrompt:
    """Monet ``new/AAA_vllm_toolkit/extract_and_check.py`` ``extract_answer_api``: system prompt + demo + the
    question (with its lettered options) and the response."""
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(task.options or []))
    question = f"{task.question}\n{opts}" if opts else task.question
    return ChatPrompt(f"{MONET_EXTRACT_DEMO}\n\nQuestion: {question}\nModel response: {reply}\nExtracted Answer: ",
                      system=MONET_SYSTEM)


def parse_monet_extraction(text: str, task: Task) -> str | None:
    """The text after the last "Extracted answer:" (else the whole reply), read as an option by the ``letter``
    extractor; "No answer" -> None."""
    ans = text.split("Extracted answer:")[-1].strip()
    if not ans or ans.lower().startswith("no answer"):
        return None
    return get_extractor("letter")(ans, task.options)


# ---------------------------------------------------------------------------------------------- registry
PROTOCOLS: dict[str, JudgeProtocol] = {p.name: p for p in (
    JudgeProtocol("hrbench", "correct", hrbench_prompt, parse_yes_no,
                  GenParams(max_new_tokens=16, temperature=0.2, top_p=0.8, top_k=40), "always",
                  "DreamMr/HR-Bench hrbench/vlmeval/dataset/utils/hrbench.py (build_prompt, pipeline_eval: "
                  "top_p 0.8, top_k 40, T 0.2; parse_score ^(yes|no))"),
    JudgeProtocol("blink", "choice", blink_prompt, parse_paren_letter, GenParams(max_new_tokens=16), "always",
                  "zeyofu/BLINK_Benchmark eval/multiple_choice.py (GPT-3.5-turbo matcher, T 0)"),
    JudgeProtocol("vlmevalkit", "choice", vlmevalkit_prompt, parse_can_infer, GenParams(max_new_tokens=16),
                  "vlmevalkit", "open-compass/VLMEvalKit vlmeval/dataset/utils/multiple_choice.py "
                  "(extract_answer_from_item: can_infer, else build_prompt + can_infer on the judge's reply)"),
    JudgeProtocol("monet", "extract", monet_prompt, parse_monet_extraction,
                  GenParams(max_new_tokens=1024, temperature=0.7), "rule_failed",
                  "NOVAglow646/Monet new/AAA_vllm_toolkit/extract_and_check.py (boxed / 'Answer:' rules first, "
                  "then extract_answer_api: demo_prompt_extract, T 0.7)"),
)}


def get_protocol(name: str) -> JudgeProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise LatentcheckError(f"unknown judge protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


def needs_judge(protocol: JudgeProtocol, task: Task, reply: str, rule_pred: str | None) -> bool:
    """Whether ``protocol`` asks the judge about this reply (``when``)."""
    if protocol.when == "always":
        return True
    if protocol.when == "rule_failed":
        return rule_pred is None
    return parse_can_infer(reply, task) is None  # vlmevalkit: can_infer first, whatever the variant's extractor


class Judge:
    """A judge protocol on a text backend. ``run(items)`` with items ``(task, reply, rule_pred)`` -> verdicts."""

    def __init__(self, backend: TextBackend, protocol: str | JudgeProtocol, params: GenParams | None = None):
        self.backend = backend
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self.params = params or self.protocol.params

    def run(self, items: Sequence[tuple[Task, str, str | None]]) -> list[dict[str, Any]]:
        asks = [i for i, (t, reply, rule) in enumerate(items)
                if t.options and needs_judge(self.protocol, t, reply, rule)]
        out: list[dict[str, Any]] = [{"used": False} for _ in items]
        prompts = [self.protocol.build(items[i][0], items[i][1]) for i in asks]
        for i, p, c in zip(asks, prompts, self.backend.generate(prompts, self.params)):
            task = items[i][0]
            value = None if c.text is None else self.protocol.parse(c.text, task)
            out[i] = {"used": True, "protocol": self.protocol.name, "kind": self.protocol.kind,
                      "prompt": p.text, "system": p.system, "reply": c.text, "value": value, "error": c.error,
                      "cached": c.cached, "judge": self.backend.identity}
        return out

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        p = self.protocol
        return {"protocol": p.name, "kind": p.kind, "when": p.when, "source": p.source, "params": asdict(self.params),
                "backend": self.backend.identity}


__all__ = ["JudgeProtocol", "Judge", "PROTOCOLS", "get_protocol", "needs_judge", "hrbench_prompt", "blink_prompt",
           "vlmevalkit_prompt", "monet_prompt", "parse_yes_no", "parse_paren_letter", "parse_can_infer",
           "parse_monet_extraction", "HRBENCH_PREFIX"]
