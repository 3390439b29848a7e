"""Tests for imagine/build_data.py: readers, captioners, refine/judge passes, markers, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import BadRecord
from latentcheck.toy.world import write_world
from latentcheck.imagine.build_data import (
    Description, GenRequest, InterleavedSample, MetadataCaptioner, ModelCaptioner, ModelJudge, ModelRefiner,
    PromptSet, Step, _iter_json_array, assemble, build_data, dropped_path_for, extract_boxed, kind_of_subset,
    parse_imagination, parse_verdict, read_interleaved,
)

COLOURS = {"red": (230, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 230), "yellow": (250, 210, 0),
           "grey": (128, 128, 128)}
ZOOM_Q = "What is written on the sign? Put your final answer within \\boxed{}."


# ----------------------------------------------------------------------------------------------- fixtures
def _solid(path: Path, colour: str, size: int = 16) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[colour]).save(path)
    return str(path)


def _marked(path: Path, colour: str) -> str:
    """A grey image with a filled box of ``colour`` (the 'manipulated' version of a grey original)."""
    img = Image.new("RGB", (16, 16), COLOURS["grey"])
    ImageDraw.Draw(img).rectangle([4, 4, 11, 11], fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return str(path)


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _image(rel: str) -> dict:
    return {"type": "image", "image_file_name": rel}


def _monet_sample(question_image: str, turns: list[list[dict]], metadata: dict) -> dict:
    data = [{"role": "system", "content": [_text("sys")]},
            {"role": "user", "content": [_image(question_image), _text(ZOOM_Q)]}]
    data += [{"role": "assistant", "content": t} for t in turns]
    return {"data": data, "metadata": metadata}


def write_monet_zoom(root: Path) -> Path:
    """Visual_CoT/train.json: an observation-only sample, an invalid one, a two-step one, a caption-less one."""
    sub = root / "Visual_CoT"
    _solid(sub / "img" / "q.png", "grey")
    _solid(sub / "img" / "crop_red.png", "red")
    _solid(sub / "img" / "crop_blue.png", "blue")
    _solid(sub / "img" / "crop_green.png", "green")
    samples = [
        _monet_sample("img/q.png", [[
            _text("I will zoom in on the sign. <abs_vis_token></abs_vis_token>"), _image("img/crop_red.png"),
            _text("<observation>The sign reads EXIT.</observation> So the sign says EXIT. \\boxed{EXIT}")]],
            {"id": "vc-0"}),
        _monet_sample("img/q.png", [[  # image not preceded by the abs_vis marker -> Monet's loader drops it
            _text("I will zoom in on the sign."), _image("img/crop_red.png"),
            _text("<observation>EXIT.</observation> \\boxed{EXIT}")]], {"id": "vc-1"}),
        _monet_sample("img/q.png", [  # two steps over two assistant turns, captions in metadata
            [_text("First the left part. <abs_vis_token></abs_vis_token>"), _image("img/crop_blue.png")],
            [_text("<observation>Left half is blue.</observation> Now the right part.\n"
                   "<abs_vis_token></abs_vis_token>"), _image("img/crop_green.png"),
             _text("<observation>Right half is green.</observation> \\boxed{blue-green}")]],
            {"id": "vc-2", "captions": ["A blue panel.", "A green panel."]}),
        _monet_sample("img/q.png", [[  # no caption anywhere -> MetadataCaptioner error
            _text("Zoom. <abs_vis_token></abs_vis_token>"), _image("img/crop_red.png"), _text("\\boxed{X}")]],
            {"id": "vc-3"}),
    ]
    path = sub / "train.json"
    path.write_text(json.dumps(samples, indent=1), encoding="utf-8")
    return path


def write_monet_edit(root: Path) -> Path:
    """ReFocus/train.json: two edit steps marking a red then a yellow box on a grey chart."""
    sub = root / "ReFocus"
    _solid(sub / "q.png", "grey")
    _marked(sub / "m1.png", "red")
    _marked(sub / "m2.png", "yellow")
    sample = _monet_sample("q.png", [[
        _text("Highlight the first bar. <abs_vis_token></abs_vis_token>"), _image("m1.png"),
        _text("<observation>The first bar is 12.</observation> Highlight the second bar. "
              "<abs_vis_token></abs_vis_token>"), _image("m2.png"),
        _text("<observation>The second bar is 30.</observation> So the answer is \\boxed{30}.")]], {"id": "rf-0"})
    path = sub / "train.json"
    path.write_text(json.dumps([sample]), encoding="utf-8")
    return path


def write_mirage(root: Path) -> Path:
    _solid(root / "in.png", "grey")
    _solid(root / "in2.png", "grey")
    _marked(root / "out.png", "blue")
    lines = [
        {"id": "m0", "text_input": "<image>\nWhich way? Answer in \\boxed{}.",
         "text_output": "<think>Draw the path.</think><output_image><think>Done.</think>The answer is \\boxed{L}.",
         "image_input": ["in.png", "in2.png"], "image_output": "out.png", "caption": "A blue path is drawn."},
        {"id": "m1", "text_input": "<image> Which way?", "text_output": "So \\boxed{R}.",  # no <output_image>
         "image_input": "in.png", "image_output": "out.png", "caption": "A blue path."},
        {"id": "m2", "text_input": "<image>Which?", "text_output": "<output_image> a <output_image> b",
         "image_input": "in.png", "image_output": "out.png"},  # 2 tags, 1 image
        {"id": "m3", "text_input": "<image>Which?", "text_output": "<output_image> b",
         "image_input": "in.png", "image_output": "missing.png"},
    ]
    path = root / "mirage.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n", encoding="utf-8")
    return path


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.sum((np.asarray(COLOURS[c]) - rgb) ** 2)))


class FakeGenerator:
    """Deterministic stand-in for the decoding engine; dispatches on the first line of the (test) prompt."""

    def __init__(self, judge_replies: dict[str, str] | None = None, refine=None, fail_after: int | None = None):
        self.calls: list[list[GenRequest]] = []
        self.judge_replies = judge_replies or {}
        self.refine = refine or (lambda chain: chain.replace("I will zoom in", "Let me zoom in"))
        self.fail_after = fail_after

    def generate(self, requests: list[GenRequest]) -> list[str]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(requests)
        return [self._reply(r) for r in requests]

    def _reply(self, r: GenRequest) -> str:
        head, _, body = r.prompt.partition("\n")
        if head == "ZOOM":  # planted signal: the colour of the zoomed image
            pixels = np.asarray(r.images[-1], dtype=float).reshape(-1, 3)
            return f'"The region is {_nearest_colour(pixels.mean(0))}."'
        if head == "EDIT":  # the colour of the pixels that differ between original and manipulated image
            a, b = (np.asarray(im, dtype=float).reshape(-1, 3) for im in r.images)
            changed = np.abs(a - b).sum(1) > 0
            return f"<imagine>A {_nearest_colour(b[changed].mean(0))} box is drawn.</imagine>"
        if head == "REFINE":
            return self.refine(body)
        if head == "JUDGE":
            for key, reply in self.judge_replies.items():
                if key in body:
                    return reply
            return "KEEP"
        raise AssertionError(f"unexpected prompt {r.prompt!r}")


@pytest.fixture()
def prompts(tmp_path: Path) -> PromptSet:
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "caption_zoom.txt").write_text("ZOOM\nQ={question}\nC={chain}")
    (d / "caption_edit.txt").write_text("EDIT\nQ={question}\nC={chain}")
    (d / "refine.txt").write_text("REFINE\n{chain}")
    (d / "judge.txt").write_text("JUDGE\nA={answer}\n{chain}")
    return PromptSet.load(d)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# ----------------------------------------------------------------------------------------------- readers
def test_monet_reader_merges_turns_and_marks_invalid_samples(tmp_path):
    items = list(read_interleaved(write_monet_zoom(tmp_path), "monet-sft"))
    assert all(isinstance(s, InterleavedSample) for s in items)
    s0, s1, s2, _ = items
    assert s0.id == "vc-0" and s0.kind == "zoom" and s0.source == "monet-sft/Visual_CoT"
    assert s0.question == ZOOM_Q and Path(s0.image).name == "q.png"
    assert [Path(st.image).name for st in s0.steps] == ["crop_red.png"]
    assert s0.steps[0].observation == "The sign reads EXIT." and s0.steps[0].observation_leading
    assert s0.steps[0].field == "data[2].content[1].image_file_name"
    assert s1.drop_reason == "assistant image not preceded by <abs_vis_token>"
    assert "data[2].content[1]" in s1.drop_detail
    assert len(s2.steps) == 2 and len(s2.texts) == 3 and s2.steps[1].field == "data[3].content[1].image_file_name"


def test_kind_from_subset_names_metadata_and_override(tmp_path):
    assert [kind_of_subset(n) for n in ("Visual_CoT", "Zebra_CoT_count", "Zebra_CoT_visual_search",
                                        "Zebra_CoT_geometry", "ReFocus", "CoM_w_MathVista", "CogCoM",
                                        "interleaved_val", "train")] == \
        ["zoom", "zoom", "zoom", "zoom", "edit", "edit", "edit", "zoom", None]
    (edit,) = read_interleaved(write_monet_edit(tmp_path), "monet-sft")
    assert edit.kind == "edit" and edit.source == "monet-sft/ReFocus"
    # unknown subset: a bad record naming the field; metadata.dataset_name or kind= resolve it
    _solid(tmp_path / "u" / "q.png", "grey")
    _solid(tmp_path / "u" / "c.png", "red")
    sample = _monet_sample("q.png", [[_text("x <abs_vis_token></abs_vis_token>"), _image("c.png")]], {"id": "u0"})
    path = tmp_path / "u" / "train.json"
    path.write_text(json.dumps([sample]))
    (bad,) = read_interleaved(path, "auto")
    assert isinstance(bad, BadRecord) and bad.error.field == "metadata" and "train.json[0]" in bad.error.record
    assert next(iter(read_interleaved(path, "auto", kind="edit"))).kind == "edit"
    sample["metadata"]["dataset_name"] = "CoM_w_MathVista"
    path.write_text(json.dumps([sample]))
    (s,) = read_interleaved(path, "auto")
    assert s.kind == "edit" and s.source == "monet-sft/CoM_w_MathVista"
    with pytest.raises(LatentcheckError, match="unknown step kind"):
        read_interleaved(path, "auto", kind="crop")


def test_mirage_reader(tmp_path):
    items = list(read_interleaved(write_mirage(tmp_path), "auto"))
    m0, m1, m2, m3, broken = items
    assert m0.question == "Which way? Answer in \\boxed{}." and m0.kind == "edit" and m0.source == "mirage/mirage"
    assert m0.texts == ["<think>Draw the path.</think>", "<think>Done.</think>The answer is \\boxed{L}."]
    assert [Path(p).name for p in m0.extra_images] == ["in2.png"] and m0.metadata["caption"] == "A blue path is drawn."
    assert m1.texts == ["", "So \\boxed{R}."] and m1.question == "Which way?"
    assert isinstance(m2, BadRecord) and m2.error.field == "text_output" and "id=m2" in m2.error.record
    assert isinstance(m3, BadRecord) and m3.error.field == "image_output" and "missing.png" in m3.error.message
    assert isinstance(broken, BadRecord) and broken.error.field == "<line>" and broken.where == "mirage.jsonl:5"


def test_streaming_json_array_matches_json_load(tmp_path):
    values = [{"a": i, "s": "x" * (i * 7), "n": [1.5, {"k": "]"}]} for i in range(20)] + [3, "tail", None]
    path = tmp_path / "arr.json"
    path.write_text(json.dumps(values, indent=2))
    for chunk in (1, 5, 64, 1 << 20):
        assert [v for _, v in _iter_json_array(path, chunk_chars=chunk)] == values
    path.write_text('[{"a": 1}, {"a": ')
    with pytest.raises(LatentcheckError, match="element 1"):
        list(_iter_json_array(path, chunk_chars=4))
    path.write_text('{"a": 1}')
    with pytest.raises(LatentcheckError, match="JSON list"):
        list(_iter_json_array(path))


def test_input_errors_are_clear(tmp_path):
    with pytest.raises(LatentcheckError, match="not found"):
        read_interleaved(tmp_path / "nope.json")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(LatentcheckError, match="empty input"):
        list(read_interleaved(tmp_path / "e.json"))
    with pytest.raises(LatentcheckError, match="unknown input format"):
        read_interleaved(tmp_path / "e.json", "llava")


# ----------------------------------------------------------------------------------------------- assembly
def test_metadata_captioner_and_assembly(tmp_path):
    out = tmp_path / "out" / "caps.jsonl"
    counts = build_data(write_monet_zoom(tmp_path), "monet-sft", out, MetadataCaptioner())
    assert counts["read"] == 4 and counts["kept"] == 2 and counts["dropped"] == 1 and counts["errors"] == 1
    assert counts["dropped_reasons"] == {"assistant image not preceded by <abs_vis_token>": 1}
    kept = {r["id"]: r for r in _lines(out)}
    r0 = kept["vc-0"]  # the observation becomes the imagination, not repeated
    assert r0["response"] == ("I will zoom in on the sign. <imagine>The sign reads EXIT.</imagine> "
                              "So the sign says EXIT. \\boxed{EXIT}")
    assert r0["imagination"] == ["The sign reads EXIT."] and r0["answer"] == "EXIT"
    assert r0["meta"]["caption_origin"] == ["observation"] and r0["kind"] == "zoom"
    assert r0["image"] == "../Visual_CoT/img/q.png" and (out.parent / r0["image"]).exists()
    assert r0["meta"]["step_images"] == ["../Visual_CoT/img/crop_red.png"]
    r2 = kept["vc-2"]  # metadata captions; differing observations stay as plain text
    assert r2["response"] == ("First the left part. <imagine>A blue panel.</imagine> Left half is blue. Now the "
                              "right part.\n<imagine>A green panel.</imagine> Right half is green. \\boxed{blue-green}")
    assert r2["meta"]["caption_origin"] == ["metadata.captions[0]", "metadata.captions[1]"]
    dropped = {d["id"]: d for d in _lines(dropped_path_for(out))}
    assert dropped_path_for(out).name == "caps.dropped.jsonl"
    assert dropped["vc-1"]["reason"] == "assistant image not preceded by <abs_vis_token>"
    err = dropped["vc-3"]["error"]
    assert dropped["vc-3"]["reason"] == "bad record" and err["field"] == "metadata.caption"
    assert "train.json[3]" in err["record"] and "vc-3" in err["record"]


def test_markers_are_configurable(tmp_path):
    path = write_monet_zoom(tmp_path)
    build_data(path, "monet-sft", tmp_path / "a.jsonl", MetadataCaptioner(), markers=("[[", "]]"), limit=1)
    (r,) = _lines(tmp_path / "a.jsonl")
    assert "[[The sign reads EXIT.]]" in r["response"]
    assert parse_imagination(r["response"], ("[[", "]]")) == r["imagination"] == ["The sign reads EXIT."]
    build_data(path, "monet-sft", tmp_path / "b.jsonl", MetadataCaptioner(), markers=("", ""), limit=1)
    (r,) = _lines(tmp_path / "b.jsonl")
    assert r["response"] == "I will zoom in on the sign. The sign reads EXIT. So the sign says EXIT. \\boxed{EXIT}"
    assert r["imagination"] == ["The sign reads EXIT."]
    with pytest.raises(LatentcheckError, match="both"):
        build_data(path, "monet-sft", tmp_path / "c.jsonl", MetadataCaptioner(), markers=("<i>", ""))


def test_metadata_caption_string_for_multi_step_chain_is_an_error():
    s = InterleavedSample(id="x", where="f.json[0]", question="q", image=None, texts=["a", "b", "c"],
                          steps=[Step("i1", "f1"), Step("i2", "f2")], kind="zoom", source="s",
                          metadata={"caption": "one"})
    (err,) = MetadataCaptioner().describe([s])
    assert err.field == "metadata.caption" and "f.json[0]" in err.record and "2 intermediate images" in err.message


def test_assemble_whitespace_and_tags():
    s = InterleavedSample(id="x", where="w", question="q", image=None, kind="zoom", source="s",
                          texts=["<observation>early</observation> Look.<abs_vis_token><latent></abs_vis_token>",
                                 "  then \\boxed{1}"], steps=[Step(image="i", field="f")])
    assert assemble(s, [Description("D", "t")]) == "early Look. <imagine>D</imagine> then \\boxed{1}"
    assert extract_boxed("a \\boxed{x} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert extract_boxed("no box") is None


def test_toy_world_converts_with_metadata_captioner(tmp_path):
    info = write_world(tmp_path / "toy", n_train=4, n_val=0, n_test=0, seed=3)
    src = Path(info["paths"]["train"]["interleaved"])
    out = tmp_path / "toy_caps.jsonl"
    counts = build_data(src, "auto", out, MetadataCaptioner())
    assert counts["kept"] == 4 and counts["dropped"] == counts["errors"] == 0
    originals = json.loads(src.read_text())
    for rec, orig in zip(_lines(out), originals):
        md = orig["metadata"]
        shape = md["target"]["shape"]
        assert rec["id"] == md["id"] and rec["kind"] == "zoom" and rec["answer"] == md["answer"]
        assert rec["response"] == (f"I will zoom in on the {shape}. <imagine>{md['caption']}</imagine> "
                                   f"The answer is \\boxed{{{md['answer']}}}.")
        assert rec["imagination"] == [md["caption"]] and rec["meta"]["caption_origin"] == ["metadata.caption"]
        assert (out.parent / rec["image"]).resolve() == (src.parent / orig["data"][1]["content"][0]
                                                         ["image_file_name"]).resolve()
    mir = tmp_path / "toy_mirage.jsonl"
    counts = build_data(info["paths"]["train"]["mirage"], "auto", mir, MetadataCaptioner(), kind="zoom")
    assert counts["kept"] == 4
    rec = _lines(mir)[0]
    assert f"</think> <imagine>{rec['meta']['metadata']['caption']}</imagine> <think>" in rec["response"]


# ----------------------------------------------------------------------------------------------- model passes
def test_model_captioner_batches_and_sees_the_right_images(tmp_path, prompts):
    gen = FakeGenerator()
    cap = ModelCaptioner(gen, prompts, batch_size=2)
    zoom = [s for s in read_interleaved(write_monet_zoom(tmp_path), "auto")]
    edit = list(read_interleaved(write_monet_edit(tmp_path), "auto"))
    descs = cap.describe(zoom + edit)  # 1 + 1 + 2 + 1 zoom steps, 2 edit steps = 7 requests
    assert [len(c) for c in gen.calls] == [2, 2, 2, 1]
    assert [d.text for d in descs[0]] == ["The region is red."]
    assert [d.text for d in descs[2]] == ["The region is blue.", "The region is green."]
    assert [d.text for d in descs[4]] == ["A red box is drawn.", "A yellow box is drawn."]  # markers stripped
    assert descs[4][0].origin == "model:caption_edit" and descs[0][0].origin == "model:caption_zoom"
    reqs = [r for c in gen.calls for r in c]
    assert [len(r.images) for r in reqs] == [1, 1, 1, 1, 1, 2, 2]
    assert f"Q={ZOOM_Q}" in reqs[0].prompt and "C=I will zoom in on the sign." in reqs[0].prompt
    assert "C=Highlight the first bar. The first bar is 12. Highlight the second bar." in reqs[6].prompt


def test_model_captioner_unreadable_image_is_a_bad_record_naming_the_field(tmp_path, prompts):
    path = write_monet_edit(tmp_path)
    (tmp_path / "ReFocus" / "m2.png").write_bytes(b"not a png")
    out = tmp_path / "o.jsonl"
    counts = build_data(path, "auto", out, ModelCaptioner(FakeGenerator(), prompts))
    assert counts["errors"] == 1 and counts["kept"] == 0
    (err,) = [d["error"] for d in _lines(dropped_path_for(out))]
    assert err["field"] == "data[2].content[3].image_file_name" and "id=rf-0" in err["record"]
    assert "corrupt" in err["message"]


def test_refine_and_judge_passes(tmp_path, prompts):
    path = write_monet_zoom(tmp_path)
    gen = FakeGenerator(judge_replies={"Right half is green": "The colours contradict.\nDROP: answer contradicts"})
    out = tmp_path / "r.jsonl"
    counts = build_data(path, "monet-sft", out, ModelCaptioner(gen, prompts), refiner=ModelRefiner(gen, prompts),
                        judge=ModelJudge(gen, prompts))
    assert (counts["kept"], counts["dropped"], counts["errors"]) == (2, 2, 0)
    assert counts["dropped_reasons"] == {"assistant image not preceded by <abs_vis_token>": 1, "judge dropped": 1}
    kept = {r["id"]: r for r in _lines(out)}
    assert kept["vc-0"]["response"].startswith("Let me zoom in on the sign. <imagine>The region is red.</imagine>")
    assert kept["vc-0"]["meta"]["draft_response"].startswith("I will zoom in")
    assert kept["vc-0"]["meta"]["refined"] is True and kept["vc-0"]["meta"]["judge_reply"] == "KEEP"
    dropped = {d["id"]: d for d in _lines(dropped_path_for(out))}
    assert dropped["vc-2"]["reason"] == "judge dropped" and dropped["vc-2"]["detail"] == "answer contradicts"
    judge_prompts = [r.prompt for c in gen.calls for r in c if r.prompt.startswith("JUDGE")]
    assert "A=EXIT" in judge_prompts[0]


def test_refine_guards_markers_and_answer(tmp_path, prompts):
    path = write_monet_zoom(tmp_path)
    lose = FakeGenerator(refine=lambda c: c.replace("<imagine>", "").replace("</imagine>", ""))
    counts = build_data(path, "monet-sft", tmp_path / "a.jsonl", ModelCaptioner(lose, prompts),
                        refiner=ModelRefiner(lose, prompts))
    assert counts["kept"] == 0 and counts["dropped_reasons"]["refine lost the imagination markers"] == 3
    flip = FakeGenerator(refine=lambda c: c.replace("\\boxed{EXIT}", "\\boxed{ENTRY}"))
    counts = build_data(path, "monet-sft", tmp_path / "b.jsonl", ModelCaptioner(flip, prompts),
                        refiner=ModelRefiner(flip, prompts))
    assert counts["dropped_reasons"]["refine changed the final answer"] == 1 and counts["kept"] == 2
    assert {r["id"] for r in _lines(tmp_path / "b.jsonl")} == {"vc-2", "vc-3"}


def test_unparseable_judge_reply_drops(tmp_path, prompts):
    gen = FakeGenerator(judge_replies={"EXIT": "I think this one is fine overall."})
    counts = build_data(write_monet_zoom(tmp_path), "monet-sft", tmp_path / "o.jsonl", ModelCaptioner(gen, prompts),
                        judge=ModelJudge(gen, prompts))
    assert counts["dropped_reasons"]["unparseable judge reply"] == 1


@pytest.mark.parametrize("reply, keep, reason", [
    ("KEEP", True, ""), ("keep.", True, ""), ("**KEEP**", True, ""), ("Verdict: KEEP", True, ""),
    ("Reasoning...\nDROP: wrong answer", False, "wrong answer"), ("drop - ambiguous question", False,
                                                                   "ambiguous question"),
    ("**DROP:** blurry", False, "blurry"), ("DROP", False, "no reason given"),
    ("Keep in mind the chart.\nDROP: contradiction", False, "contradiction"),
    ("DROP: x\nafter thinking again: KEEP", True, ""),
    ("Keep in mind that it is fine", False, "unparseable judge reply"), ("", False, "unparseable judge reply"),
    ("Drop the second sentence, then it is fine", False, "unparseable judge reply"),
    ("Verdict: DROP: the crop is empty.", False, "the crop is empty"),
    ("The answer looks correct.", False, "unparseable judge reply"),
])
def test_parse_verdict(reply, keep, reason):
    v = parse_verdict(reply)
    assert (v.keep, v.reason) == (keep, reason)


def test_prompt_set_loading(tmp_path):
    default = PromptSet.load()
    for name in ("caption_zoom", "caption_edit", "refine", "judge"):
        assert getattr(default, name).strip()
    assert "{chain}" in default.refine and "DROP: <one short reason>" in default.judge
    rendered = default.render("refine", question="Q?", chain="CH", answer="7", open_marker="<i>", close_marker="</i>")
    assert "Q?" in rendered and "CH" in rendered and "{" + "chain}" not in rendered and "\\boxed{...}" in rendered
    d = tmp_path / "p"
    d.mkdir()
    (d / "judge.txt").write_text("Judge {chain} and \\boxed{A} -> KEEP")
    ps = PromptSet.load(d)
    assert ps.judge.startswith("Judge") and ps.refine == default.refine and ps.sources["judge"] == str(d / "judge.txt")
    (d / "judge.txt").write_text("Judge {chian}")
    with pytest.raises(LatentcheckError, match=r"judge.txt: unknown placeholder\(s\) \{chian\}"):
        PromptSet.load(d)
    (d / "judge.txt").unlink()
    (d / "refine.txt").write_text("Rewrite {question}")
    with pytest.raises(LatentcheckError, match=r"refine.txt: missing required placeholder\(s\) \{chain\}"):
        PromptSet.load(d)


# ----------------------------------------------------------------------------------------------- resume
def _mixed_input(tmp_path: Path) -> Path:
    """A toy file (7 samples) with one invalid sample, one bad record and one caption-less sample spliced in."""
    info = write_world(tmp_path / "toy", n_train=7, n_val=0, n_test=0)
    src = Path(info["paths"]["train"]["interleaved"])
    samples = json.loads(src.read_text())
    samples[2]["data"][2]["content"][0]["text"] = "no marker here"  # -> dropped
    samples[4]["data"][1]["content"][0]["image_file_name"] = "images/train/missing.png"  # -> bad record
    del samples[5]["metadata"]["caption"]
    samples[5]["data"][2]["content"][2]["text"] = "\\boxed{A}"  # -> no caption: error
    src.write_text(json.dumps(samples))
    return src


def test_resume_after_limit_and_crash_equals_uninterrupted_run(tmp_path, prompts):
    src = _mixed_input(tmp_path)
    full = tmp_path / "full.jsonl"
    ref = build_data(src, "auto", full, MetadataCaptioner(), chunk_size=2)
    assert (ref["read"], ref["kept"], ref["dropped"], ref["errors"]) == (7, 4, 1, 2)
    bad = [d for d in _lines(dropped_path_for(full)) if d["reason"] == "bad record"]
    assert {b["error"]["field"] for b in bad} == {"data[1].content[0].image_file_name", "metadata.caption"}
    assert all("interleaved_train.json[" in b["error"]["record"] for b in bad)

    part = tmp_path / "part.jsonl"
    first = build_data(src, "auto", part, MetadataCaptioner(), limit=3, chunk_size=2)
    assert first["read"] == 3
    second = build_data(src, "auto", part, MetadataCaptioner(), resume=True, chunk_size=2)
    assert second["skipped"] == 3 and second["read"] == 4
    assert part.read_text() == full.read_text()
    assert dropped_path_for(part).read_text() == dropped_path_for(full).read_text()
    ids = [r["id"] for r in _lines(part)]
    assert len(ids) == len(set(ids)) == 4

    # a crash inside the model pass, then resume with a working model
    crash = tmp_path / "crash.jsonl"
    good = FakeGenerator()
    ref_model = build_data(src, "auto", tmp_path / "model_full.jsonl", ModelCaptioner(good, prompts), chunk_size=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_data(src, "auto", crash, ModelCaptioner(FakeGenerator(fail_after=2), prompts), chunk_size=2)
    assert 0 < len(_lines(crash)) < ref_model["kept"]
    build_data(src, "auto", crash, ModelCaptioner(FakeGenerator(), prompts), chunk_size=2, resume=True)
    assert crash.read_text() == (tmp_path / "model_full.jsonl").read_text()
    assert dropped_path_for(crash).read_text() == dropped_path_for(tmp_path / "model_full.jsonl").read_text()


def test_resume_repairs_a_truncated_last_line(tmp_path):
    src = _mixed_input(tmp_path)
    full = tmp_path / "full.jsonl"
    build_data(src, "auto", full, MetadataCaptioner())
    out = tmp_path / "cut.jsonl"
    text = full.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    out.write_text(text[: last_start + 25])  # half of the last record, no newline
    dropped_path_for(out).write_text(dropped_path_for(full).read_text())
    counts = build_data(src, "auto", out, MetadataCaptioner(), resume=True)
    assert counts["repaired_bytes"] == 25 and counts["read"] == 1 and counts["kept"] == 1
    assert out.read_text() == text


def test_resume_keeps_duplicate_id_detection(tmp_path):
    path = write_monet_zoom(tmp_path)
    samples = json.loads(path.read_text())
    samples.append(samples[0])  # same id "vc-0" at a later position
    path.write_text(json.dumps(samples))
    full = build_data(path, "auto", tmp_path / "f.jsonl", MetadataCaptioner())
    assert full["errors"] == 2
    build_data(path, "auto", tmp_path / "p.jsonl", MetadataCaptioner(), limit=2)
    build_data(path, "auto", tmp_path / "p.jsonl", MetadataCaptioner(), resume=True)
    assert (tmp_path / "p.jsonl").read_text() == (tmp_path / "f.jsonl").read_text()
    dropped = _lines(tmp_path / "p.dropped.jsonl")
    assert dropped == _lines(tmp_path / "f.dropped.jsonl")
    dup = [d for d in dropped if d.get("error", {}).get("field") == "id"]
    assert len(dup) == 1 and "duplicate id 'vc-0'" in dup[0]["error"]["message"]
