"""CapImagine on real data: Monet-SFT in its real layout (dataset root above <subset>/train.json, observations as
Monet's loader keeps them, boxed answers inside observations kept, Monet-style chat JSON), the docs' real-data
example run as written, build-data through the openai backend against a real `transformers serve` (the reply cache
proven by a rerun), and intervene on marker-free imagination (the span rule, the do(Z) effect on the zoo)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.imagine.build_data import (MetadataCaptioner, build_data, monet_chat_sample, read_interleaved,
                                            write_monet_chat)
from latentcheck.imagine.generate import BackendSpec, build_data_with_models
from latentcheck.imagine.intervene import find_span, judged_span, prose_span
from latentcheck.toy.world import write_world

DOC = Path(__file__).resolve().parents[2] / "docs" / "caption-imagine.md"
Q = "What colour is the sign? Put your final answer within \\boxed{}."


def _t(text: str) -> dict:
    return {"type": "text", "text": text}


def _i(rel: str) -> dict:
    return {"type": "image", "image_file_name": rel}


def monet_root(tmp: Path) -> Path:
    """<root>/Monet-SFT-125K/Visual_CoT/train.json with image paths relative to Monet-SFT-125K/ (Monet's
    --dataset_root), three samples: the observation directly after the image, an observation further on, and an
    observation that holds the boxed answer."""
    root = tmp / "Monet-SFT-125K"
    for name, colour in (("q0", "grey"), ("z0", "red"), ("q1", "grey"), ("z1", "blue"), ("q2", "grey"),
                         ("z2", "green")):
        p = root / "Visual_CoT" / "images" / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (28, 28), {"grey": (128,) * 3, "red": (230, 0, 0), "blue": (0, 0, 230),
                                    "green": (0, 170, 0)}[colour]).save(p)
    img = "Visual_CoT/images/{}.png"

    def sample(i: int, after: list[dict]) -> dict:
        return {"data": [{"role": "system", "content": [_t("sys")]},
                         {"role": "user", "content": [_i(img.format(f"q{i}")), _t(Q)]},
                         {"role": "assistant", "content": [
                             _t("I will zoom in on the sign. <abs_vis_token></abs_vis_token>"), _i(img.format(f"z{i}")),
                             *after]}],
                "metadata": {"dataset_name": "Visual_CoT", "id": f"s{i}"}}

    samples = [
        sample(0, [_t("<observation>The sign is red.</observation> So the answer is \\boxed{red}.")]),
        sample(1, [_t("Looking closer, <observation>the sign is blue</observation>, so the answer is \\boxed{blue}.")]),
        sample(2, [_t("<observation>The sign is green. \\boxed{green}</observation>")]),
    ]
    (root / "Visual_CoT" / "train.json").write_text(json.dumps(samples))
    return root


# ----------------------------------------------------------------------------------------------- point 3
def test_monet_layout_observations_and_chat_json(tmp_path):
    root = monet_root(tmp_path)
    src = root / "Visual_CoT" / "train.json"
    samples = [s for s in read_interleaved(src, "monet-sft")]  # no dataset root given: found above the subset
    assert [s.image for s in samples] == [str((root / "Visual_CoT/images" / f"q{i}.png").resolve()) for i in range(3)]
    out = tmp_path / "ci" / "train.jsonl"
    counts = build_data(src, "monet-sft", out, MetadataCaptioner())
    assert counts["kept"] == 3 and counts["errors"] == 0
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    # adjacent observation: moved into the span once
    assert recs["s0"]["response"] == ("I will zoom in on the sign. <imagine>The sign is red.</imagine> So the answer is "
                                      "\\boxed{red}.")
    # not adjacent: still moved (never duplicated)
    assert recs["s1"]["response"].count("the sign is blue") == 1 and "<imagine>the sign is blue</imagine>" in \
        recs["s1"]["response"]
    # the boxed answer inside the observation stays in the chain, outside the span
    r2 = recs["s2"]["response"]
    assert "<imagine>The sign is green.</imagine>" in r2 and r2.endswith("\\boxed{green}") and \
        recs["s2"]["answer"] == "green"
    # Monet-style chat JSON: image paths relative to the JSON's folder (its dataset root), readable by Monet's format
    chat = tmp_path / "export" / "train_chat.json"
    write_monet_chat(out, chat)
    data = json.loads(chat.read_text())
    assert [d["data"][2]["content"][0]["text"] for d in data] == [recs[f"s{i}"]["response"] for i in range(3)]
    assert (chat.parent / data[0]["data"][1]["content"][0]["image_file_name"]).resolve() == \
        (root / "Visual_CoT/images/q0.png").resolve()
    back = list(read_interleaved(chat, "monet-sft", kind="zoom"))
    assert [b.question for b in back] == [Q] * 3 and all(not b.steps for b in back)
    assert monet_chat_sample(json.loads(out.read_text().splitlines()[0]), out.parent, out.parent)["data"][0][
        "content"][0]["text"] == "You are a helpful assistant."


def _doc_command(pattern: str) -> list[str]:
    """The first ```bash command of docs/caption-imagine.md that contains ``pattern`` (continuation lines joined)."""
    text = DOC.read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if pattern in line:
                return shlex.split(line.split("#", 1)[0])
    raise AssertionError(f"no documented command with {pattern!r}")


def test_docs_real_data_example_runs_as_written(tmp_path, tiny_checkpoint, monkeypatch):
    """The documented Monet-SFT command, with only /data and /models mapped onto a fixture in the real layout and
    tiny local checkpoints: completes, finds the dataset root by itself, and accounts for every sample."""
    root = monet_root(tmp_path / "data")
    ck = str(tiny_checkpoint("toy", "toy-capimagine"))
    argv = _doc_command("build-data /data/Monet-SFT-125K")
    assert "--dataset-root" not in argv and "--captioner" not in argv  # the default captioner is the model
    argv = [a.replace("/data/Monet-SFT-125K", str(root)) for a in argv]
    argv = [ck if a.startswith("/models/") else a for a in argv]
    assert argv[:2] == ["latentcheck", "caption-imagine"]
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, [*argv[1:], "--limit", "3", "--max-new-tokens", "6", "--cache", "none"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = next(a for i, a in enumerate(argv) if argv[i - 1] in ("-o", "--out"))
    kept = (tmp_path / out).read_text().splitlines() if (tmp_path / out).exists() else []
    dropped = [json.loads(x) for x in (tmp_path / out).with_suffix(".dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == 3 and not any(d["reason"] == "bad record" for d in dropped)
    for rec in map(json.loads, kept):
        assert rec["meta"]["caption_origin"][0].startswith("model:")


# ----------------------------------------------------------------------------------------------- point 2
def test_build_data_through_openai_backend_with_cache(transformers_server, tmp_path):
    """The captioner and judge served by a real `transformers serve` on 127.0.0.1; the rerun is answered from the
    cache (no request reaches the server) and writes the same records; the same roles run locally too."""
    write_world(tmp_path / "w", n_train=3, n_val=0, n_test=0, seed=0)
    src = tmp_path / "w" / "interleaved_train.json"
    cache = tmp_path / "replies.sqlite"
    spec = BackendSpec(transformers_server.model, url=transformers_server.base_url, cache=str(cache), concurrency=2)
    kw = dict(captioner="model", caption=spec, judge=spec, max_new_tokens=6)
    first = build_data_with_models(src, tmp_path / "a.jsonl", chat_json=tmp_path / "a.json", **kw)
    assert first["read"] == 3 and first["errors"] == 0
    assert first["calls"]["captioner"] == {"calls": 3, "cache_hits": 0, "errors": 0}
    assert first["calls"]["judge"]["calls"] == 3 and first["models"]["captioner"]["backend"] == "openai"
    again = build_data_with_models(src, tmp_path / "b.jsonl", **kw)
    assert again["calls"]["captioner"] == {"calls": 0, "cache_hits": 3, "errors": 0}
    assert again["calls"]["judge"] == {"calls": 0, "cache_hits": 3, "errors": 0}

    def rows(name: str) -> list:
        lines = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        lines += [json.loads(x) for x in (tmp_path / name).with_suffix(".dropped.jsonl").read_text().splitlines()]
        return sorted(json.dumps({k: v for k, v in r.items() if k != "where"}, sort_keys=True) for r in lines)

    assert rows("a.jsonl") == rows("b.jsonl") and len(rows("a.jsonl")) == 3
    local = BackendSpec(transformers_server.model, cache=None, load_kw={"device": "cpu"})
    loc = build_data_with_models(src, tmp_path / "c.jsonl", captioner="model", caption=local, judge=local,
                                 max_new_tokens=6)
    assert loc["calls"]["captioner"]["calls"] == 3 and loc["errors"] == 0 and len(rows("c.jsonl")) == 3
    assert loc["models"]["captioner"]["backend"] == "local"


def test_failed_requests_become_error_records_and_the_run_continues(tmp_path):
    """No server on the port: every caption request fails after its retries; each sample is an error record naming
    the image field, and the run completes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_world(tmp_path / "w", n_train=2, n_val=0, n_test=0, seed=0)
    spec = BackendSpec("nobody", url=f"http://127.0.0.1:{port}/v1", cache=None, max_retries=0)
    counts = build_data_with_models(tmp_path / "w" / "interleaved_train.json", tmp_path / "o.jsonl",
                                    captioner="model", caption=spec, max_new_tokens=4)
    assert counts["read"] == 2 and counts["errors"] == 2 and counts["kept"] == 0
    bad = [json.loads(x) for x in (tmp_path / "o.dropped.jsonl").read_text().splitlines()]
    assert all(b["error"]["field"].startswith("data[") and "captioner" in b["error"]["message"] for b in bad)


# ----------------------------------------------------------------------------------------------- point 4
@pytest.mark.parametrize("text, imagination, rule", [
    ("I will zoom in on the square. the square is red, in the top left The answer is \\boxed{A}.",
     "I will zoom in on the square. the square is red, in the top left", "prose:answer-cue"),
    ("Upon zooming in, the sign reads STOP. It is red. Therefore, the answer is \\boxed{B}.",
     "Upon zooming in, the sign reads STOP. It is red.", "prose:answer-cue"),
    ("Upon zooming in, the cup is white.\n\\boxed{A}", "Upon zooming in, the cup is white.", "prose:sentence"),
    ("Zooming in shows 3.5 kg on the label. \\boxed{3.5}", "Zooming in shows 3.5 kg on the label.",
     "prose:sentence"),
])
def test_prose_span_rule(text, imagination, rule):
    span = prose_span(text)
    assert (span.imagination, span.rule) == (imagination, rule)
    assert span.before + span.imagination + span.after == text and span.end_marker == ""


def test_span_rules_without_a_span_and_judge_marks():
    assert prose_span("The answer is \\boxed{A}.") is None and prose_span("no answer at all") is None
    m = ("<imagine>", "</imagine>")
    assert find_span("a <imagine>red</imagine> The answer is \\boxed{A}.", "auto", m).rule == "markers"
    assert find_span("a red sign. The answer is \\boxed{A}.", "auto", m).rule == "prose:answer-cue"
    assert find_span("a red sign. The answer is \\boxed{A}.", "markers", m) is None
    text = "Upon zooming in,  the sign\nis red. So \\boxed{A}."
    assert judged_span(text, "the sign is red").imagination == "the sign\nis red"
    assert judged_span(text, "'Upon zooming in,'").before == "" and judged_span(text, "a blue cup") is None


def test_intervene_on_the_zoo_model_trained_without_markers(tmp_path):
    """toy-capimagine-prose writes its imagination as plain prose (no markers); intervene finds the span with the
    prose rule on every sample, records it, and measures a do(Z) accuracy drop whose CI excludes zero."""
    r = CliRunner().invoke(app, ["caption-imagine", "intervene", "-m", "toy-capimagine-prose", "--limit", "60",
                                 "-o", tmp_path / "int", "--no-plots", "-q"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads((tmp_path / "int" / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "int" / "samples.jsonl").read_text().splitlines()[1:]]
    assert all("<imagine>" not in x["z_text"] for x in rows)
    assert s["n_intervened"] >= 55 and s["span_rules"] == {"prose:answer-cue": s["n_intervened"]}
    assert all(x["span_chars"][0] == 0 and x["z_text"][: x["span_chars"][1]].strip() == x["imagination"]
               for x in rows if x.get("intervened"))
    e = s["effect"]
    assert e["base"]["estimate"] >= 0.9 and e["delta"]["hi"] < 0 and e["delta"]["estimate"] <= -0.3, e
