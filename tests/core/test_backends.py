"""The text-generation backend layer (core/backends.py) against a REAL `transformers serve` and the local engine."""

from __future__ import annotations

import re
import socket

import pytest

from latentcheck.core.backends import (CachedBackend, ChatPrompt, GenParams, LocalBackend, ResponseCache, cache_key,
                                       make_backend)
from latentcheck.core.errors import LatentcheckError

PROMPTS = [ChatPrompt("What colour is the target? A. red B. blue C. green D. yellow", key="q0"),
           ChatPrompt("Which shape is it? A. circle B. square", key="q1"),
           ChatPrompt("Name the colour.", system="You are a careful judge.", key="q2")]
GREEDY = GenParams(max_new_tokens=8)


@pytest.fixture(scope="module")
def direct_lm():
    from latentcheck.core.loader import load_model

    return load_model("toy-direct")


def _posts(server) -> int:
    server.log.flush()
    with open(server.log.name, encoding="utf-8", errors="replace") as fh:
        return len(re.findall(r'"POST /v1/chat/completions', fh.read()))


def test_openai_backend_matches_local_engine_greedy(transformers_server, direct_lm):
    """Oracle: the served model's greedy replies == the one engine's greedy replies for the same chat turn."""
    remote = make_backend("openai", transformers_server.model, base_url=transformers_server.base_url,
                          concurrency=2)
    local = LocalBackend(direct_lm, batch_size=2)
    r = remote.generate(PROMPTS, GREEDY)
    loc = local.generate(PROMPTS, GREEDY)
    assert [c.error for c in r] == [None] * 3 and any(c.text for c in r)
    assert [c.text for c in r] == [c.text for c in loc]
    assert all(c.attempts == 1 and not c.cached for c in r)
    assert remote.identity == {"backend": "openai", "model": transformers_server.model,
                               "base_url": transformers_server.base_url}
    assert remote.stats["calls"] == 3


def test_openai_backend_sends_images(transformers_server, direct_lm):
    """Images travel as data URIs; the server's reply equals the local engine's for the same image and text."""
    from PIL import Image

    img = Image.new("RGB", (56, 56), (200, 30, 30))
    p = [ChatPrompt("What colour is the target? A. red B. blue", images=(img,))]
    remote = make_backend("openai", transformers_server.model, base_url=transformers_server.base_url)
    r = remote.generate(p, GREEDY)[0]
    assert r.error is None and r.usage.get("prompt_tokens", 0) > 10
    assert r.text == LocalBackend(direct_lm).generate(p, GREEDY)[0].text


def test_cache_second_run_makes_no_server_calls(transformers_server, tmp_path):
    path = tmp_path / "replies.sqlite"
    first = make_backend("openai", transformers_server.model, base_url=transformers_server.base_url, cache=path)
    before = _posts(transformers_server)
    a = first.generate(PROMPTS, GREEDY)
    assert _posts(transformers_server) - before == 3
    assert first.stats == {"calls": 3, "cache_hits": 0, "errors": 0}
    # a new process-level object over the same file: nothing reaches the server
    second = make_backend("openai", transformers_server.model, base_url=transformers_server.base_url,
                          cache=ResponseCache(path))
    mid = _posts(transformers_server)
    b = second.generate(PROMPTS, GREEDY)
    assert _posts(transformers_server) == mid
    assert second.stats == {"calls": 0, "cache_hits": 3, "errors": 0}
    assert [c.text for c in b] == [c.text for c in a] and all(c.cached for c in b)
    # other params or another judge identity are other keys: asked again
    c = second.generate(PROMPTS[:1], GenParams(max_new_tokens=4))
    assert second.stats["calls"] == 1 and not c[0].cached
    assert _posts(transformers_server) == mid + 1


def test_cache_key_covers_prompt_identity_params_and_images():
    from PIL import Image

    ident = {"backend": "openai", "model": "m", "base_url": "u"}
    p = ChatPrompt("x")
    k = cache_key(p, ident, GREEDY)
    assert k == cache_key(ChatPrompt("x", key="other label"), ident, GREEDY)
    assert k != cache_key(ChatPrompt("x "), ident, GREEDY)
    assert k != cache_key(ChatPrompt("x", system="s"), ident, GREEDY)
    assert k != cache_key(p, {**ident, "model": "m2"}, GREEDY)
    assert k != cache_key(p, ident, GenParams(max_new_tokens=9))
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    assert cache_key(ChatPrompt("x", images=(red,)), ident, GREEDY) != cache_key(ChatPrompt("x", images=(blue,)),
                                                                                 ident, GREEDY)


def test_unreachable_endpoint_retries_then_records_the_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    b = make_backend("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.01,
                     timeout_s=5)
    out = b.generate(PROMPTS[:2], GREEDY)
    assert all(c.text is None and "Connection" in c.error and c.attempts == 3 for c in out)
    assert b.stats["errors"] == 2


def test_errors_are_not_cached(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = make_backend("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, cache=tmp_path / "c.db")
    assert b.generate(PROMPTS[:1], GREEDY)[0].error
    assert len(b.cache) == 0


def test_local_backend_equals_engine_and_caches(direct_lm, tmp_path):
    from latentcheck.core.engine import Engine
    from latentcheck.core.profiles import DecodingSpec
    from latentcheck.core.prompts import build_prompt

    eng = Engine(direct_lm, decoding=DecodingSpec(max_new_tokens=8))
    want = [eng.generate([build_prompt(direct_lm, "k", p.text, system=p.system)])[0][0].token_ids
            for p in PROMPTS]
    b = make_backend("local", direct_lm, cache=tmp_path / "local.sqlite", batch_size=3)
    out = b.generate(PROMPTS, GREEDY)
    assert [c.text for c in out] == [direct_lm.tokenizer.decode(w, skip_special_tokens=True).strip() for w in want]
    assert b.identity["backend"] == "local" and b.identity["weight_hash"] == direct_lm.weight_hash
    again = b.generate(PROMPTS, GREEDY)
    assert b.stats == {"calls": 3, "cache_hits": 3, "errors": 0} and [c.text for c in again] == [c.text for c in out]


def test_bad_arguments():
    with pytest.raises(LatentcheckError, match="unknown backend"):
        make_backend("vllm", "m")
    with pytest.raises(LatentcheckError, match="max_new_tokens"):
        GenParams(max_new_tokens=0)
    with pytest.raises(LatentcheckError, match="needs a key"):
        make_backend("openai", "gpt-4o", key_env="LATENTCHECK_TEST_NO_SUCH_KEY")
    assert isinstance(make_backend("openai", "m", base_url="http://127.0.0.1:9/v1", cache=None), object)
    assert not isinstance(make_backend("openai", "m", base_url="http://127.0.0.1:9/v1"), CachedBackend)


def test_endpoint_refusing_top_k_is_asked_again_without_it(transformers_server):
    """transformers serve (like hosted APIs) refuses top_k, which vLLM / SGLang accept: the backend sends the request
    again without it, says so per call, and stops offering it to that endpoint."""
    b = make_backend("openai", transformers_server.model, base_url=transformers_server.base_url, concurrency=1)
    params = GenParams(max_new_tokens=4, temperature=0.5, top_k=5)
    first, second = b.generate(PROMPTS[:2], params)
    assert first.error is None and first.dropped_params == ["top_k"] and first.attempts == 1
    assert second.error is None and second.dropped_params == ["top_k"]
    assert first.record()["dropped_params"] == ["top_k"]


def test_text_only_causal_lm_local_and_served(serve_model, tmp_path_factory):
    """A text-only causal LM (tiny Qwen2ForCausalLM, the toy tokenizer) as a judge: the local backend's greedy reply
    equals the model's own generate, and the served one (transformers serve) equals the local one."""
    from latentcheck.core.loader import load_model
    from latentcheck.toy.tiny import build_tiny_checkpoint

    ck = build_tiny_checkpoint(tmp_path_factory.mktemp("qwen2-judge"), arch="qwen2", seed=3)
    lm = load_model(str(ck), profile="qwen2_5_vl")
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"
    p = ChatPrompt("Is the answer correct? Answer yes or no.", system="You are a judge.")
    local = LocalBackend(lm).generate([p], GREEDY)[0]
    ids = lm.tokenizer.apply_chat_template([{"role": "system", "content": p.system},
                                            {"role": "user", "content": p.text}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    gen = lm.model.generate(**ids, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    assert local.text == lm.tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    server = serve_model(ck)
    remote = make_backend("openai", server.model, base_url=server.base_url).generate([p], GREEDY)[0]
    assert remote.error is None and remote.text.strip() == local.text
