"""Text-generation backends: the ONE layer every feature uses to have a model produce text from a prompt
(benchmark judges, CapImagine captioner / refiner / judge / rewriter, intervene's corrupter).

API
---
::

    from latentcheck.core.backends import ChatPrompt, GenParams, make_backend

    backend = make_backend("local", "toy-direct")                       # any model the one loader loads
    backend = make_backend("openai", "Qwen2.5-72B-Instruct", base_url="http://127.0.0.1:8000/v1",
                           key_env="OPENAI_API_KEY", concurrency=8, max_retries=4)
    backend = make_backend("openai", ..., cache="runs/judge-cache.sqlite")   # cached: a rerun never pays twice
    outs = backend.generate([ChatPrompt("Is 2+2=4? yes or no", system=None, images=[])],
                            GenParams(max_new_tokens=16, temperature=0.0))
    outs[0].text, outs[0].cached, outs[0].error, outs[0].record()       # per-call record (JSON-able)
    backend.identity                                                    # what produced the text (recorded)
    backend.stats                                                       # {"calls", "cache_hits", "errors"}

* :class:`ChatPrompt` -- one user turn: ``text``, optional ``system`` prompt (None = the model's default) and
  ``images`` (PIL images, file paths or ``data:`` URIs; sent in order before the text).
* :class:`GenParams` -- decoding: ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (0 = off),
  ``seed``.
* :class:`Completion` -- ``text`` (reply; for local models the answer rule's reply, core/answers.py), ``error``
  (None, or why no reply came: the caller records it and goes on), ``cached``, ``attempts``, ``latency_s``,
  ``key`` (the cache key), ``usage``.
* Backends: ``local`` (:class:`LocalBackend`): a checkpoint through ``core.loader.load_model`` and decoded by
  ``core.engine.Engine`` in batches, offline. ``openai`` (:class:`OpenAIBackend`): any OpenAI-compatible chat
  endpoint (vLLM, SGLang, ``transformers serve``, hosted APIs) through the official ``openai`` client (optional
  extra ``latentcheck[judge]``); the key is read from the environment variable ``key_env`` (never stored);
  ``concurrency`` requests in flight; connection errors, timeouts, 429 and 5xx are retried ``max_retries`` times
  with exponential backoff (``backoff_s * 2**k``), other errors are returned at once.
* :class:`ResponseCache` -- a persistent SQLite file keyed by sha256 over (prompt text, system prompt, image bytes,
  backend identity, decoding params); :class:`CachedBackend` (what ``make_backend(..., cache=...)`` returns) looks
  every prompt up first and asks the backend only for the misses. Only successful replies are stored. SQLite holds
  plain text and JSON (nothing is unpickled).

Identity: local = ``{"backend": "local", "model", "weight_hash", "profile"}``; openai = ``{"backend": "openai",
"model", "base_url"}`` -- the cache and the per-sample records use it, so two judges never share replies.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from latentcheck.core.answers import read_trace
from latentcheck.core.errors import LatentcheckError, RecordError

BACKENDS = ("local", "openai")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class ChatPrompt:
    """One user turn: text, optional system prompt (None = model default) and images (PIL / path / data URI)."""

    text: str
    system: str | None = None
    images: tuple = ()
    key: str | None = None  # caller's label for the per-call record (not part of the cache key)


@dataclass(frozen=True)
class GenParams:
    """Decoding settings (temperature 0 = greedy)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise LatentcheckError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LatentcheckError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Completion:
    """One reply (or the error that replaced it)."""

    text: str | None
    key: str = ""
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    latency_s: float = 0.0
    usage: dict = field(default_factory=dict)
    prompt_key: str | None = None
    dropped_params: list = field(default_factory=list)  # params the endpoint refused (sent again without them)
    error_part: str | None = None  # the prompt part the error is about: "text", "image" (None: not the input's fault)

    def record(self) -> dict[str, Any]:
        """JSON-able per-call record (the caller adds the prompt and the backend identity where it wants them); the
        wall-clock latency lives under ``timing``, like every timing-like field (records.strip_timing)."""
        return {"reply": self.text, "error": self.error, "cached": self.cached, "attempts": self.attempts,
                "cache_key": self.key, "usage": self.usage, "dropped_params": self.dropped_params,
                "timing": {"latency_s": round(self.latency_s, 4)}}


class TextBackend(Protocol):
    identity: dict[str, Any]
    stats: dict[str, int]

    def generate(self, prompts: Sequence[ChatPrompt], params: GenParams) -> list[Completion]: ...


# ---------------------------------------------------------------------------------------------- images
def image_bytes(image: Any) -> bytes:
    """PNG / file / data-URI bytes of an image (for the cache key and the API payload)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, str):
        if image.startswith("data:"):
            return base64.b64decode(image.partition(",")[2])
        return Path(image).read_bytes()
    if isinstance(image, os.PathLike):
        return Path(image).read_bytes()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_data_uri(image: Any) -> str:
    if isinstance(image, str) and image.startswith("data:"):
        return image
    data = image_bytes(image)
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _pil(image: Any):
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        from PIL import Image

        img = Image.open(io.BytesIO(image_bytes(image)))
        img.load()
        return img.convert("RGB")
    return image


# ---------------------------------------------------------------------------------------------- cache
def cache_key(prompt: ChatPrompt, identity: dict[str, Any], params: GenParams) -> str:
    """sha256 over (text, system, image bytes, backend identity, params) -- canonical JSON."""
    imgs = [hashlib.sha256(image_bytes(i)).hexdigest() for i in prompt.images]
    blob = json.dumps({"text": prompt.text, "system": prompt.system, "images": imgs, "backend": identity,
                       "params": asdict(params)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Persistent reply cache (one SQLite file, safe across threads and processes)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                             "record TEXT NOT NULL, created REAL NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT reply, record FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else {"reply": row[0], **json.loads(row[1])}

    def put(self, key: str, reply: str, record: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                             (key, reply, json.dumps(record, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend:
    """A backend behind a :class:`ResponseCache`: hits are answered from the file, misses go to ``inner``."""

    def __init__(self, inner: TextBackend, cache: ResponseCache):
        self.inner, self.cache = inner, cache
        self.identity = inner.identity
        self.stats = {"calls": 0, "cache_hits": 0, "errors": 0}

    def generate(self, prompts: Sequence[ChatPrompt], params: GenParams) -> list[Completion]:
        keys = [cache_key(p, self.identity, params) for p in prompts]
        out: list[Completion | None] = [None] * len(prompts)
        miss = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is not None:
                out[i] = Completion(text=hit["reply"], key=k, cached=True, usage=hit.get("usage") or {},
                                    prompt_key=prompts[i].key)
                self.stats["cache_hits"] += 1
            else:
                miss.append(i)
        if miss:
            fresh = self.inner.generate([prompts[i] for i in miss], params)
            self.stats["calls"] += len(miss)
            for i, c in zip(miss, fresh):
                c.key = keys[i]
                if c.error is None and c.text is not None:
                    self.cache.put(keys[i], c.text, {"usage": c.usage, "identity": self.identity,
                                                     "params": asdict(params)})
                else:
                    self.stats["errors"] += 1
                out[i] = c
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- local
class LocalBackend:
    """A checkpoint through the one loader, decoded in batches by the one engine (offline)."""

    def __init__(self, lm, batch_size: int = 8):
        if batch_size < 1:
            raise LatentcheckError(f"batch_size must be >= 1, got {batch_size}")
        self.lm, self.batch_size = lm, batch_size
        self.identity = {"backend": "local", "model": lm.model_id, "weight_hash": lm.weight_hash,
                         "profile": lm.profile.name}
        self.stats = {"calls": 0, "cache_hits": 0, "errors": 0}
        self._engines: dict[GenParams, Any] = {}

    def _engine(self, params: GenParams):
        from latentcheck.core.engine import Engine
        from latentcheck.core.profiles import DecodingSpec

        if params not in self._engines:
            dec = DecodingSpec(do_sample=params.temperature > 0, temperature=params.temperature or 1.0,
                               top_p=params.top_p, top_k=params.top_k, max_new_tokens=params.max_new_tokens)
            self._engines[params] = Engine(self.lm, decoding=dec, seed=params.seed)
        return self._engines[params]

    def generate(self, prompts: Sequence[ChatPrompt], params: GenParams) -> list[Completion]:
        from latentcheck.core.prompts import build_prompt

        if not prompts:
            return []
        out: list[Completion | None] = [None] * len(prompts)
        built, idx = [], []
        for i, p in enumerate(prompts):
            try:
                imgs = [_pil(x) for x in p.images]
            except Exception as e:  # noqa: BLE001 - any decoder failure on untrusted bytes is this call's error
                out[i] = Completion(text=None, error=f"cannot read the image: {type(e).__name__}: {e}",
                                    prompt_key=p.key, error_part="image")
                self.stats["errors"] += 1
                continue
            try:
                built.append(build_prompt(self.lm, p.key or f"call-{self.stats['calls'] + i}", p.text,
                                          imgs or None, system=p.system))
                idx.append(i)
            except RecordError as e:  # a prompt longer than the model's positions, text / image the model refuses
                out[i] = Completion(text=None, error=f"cannot build the prompt: {e.message}", prompt_key=p.key,
                                    error_part="image" if e.field == "image" else "text")
                self.stats["errors"] += 1
        t0 = time.perf_counter()
        traces = [t[0] for t in self._engine(params).generate(built, batch_size=self.batch_size)] if built else []
        per = (time.perf_counter() - t0) / max(1, len(built))
        for i, tr in zip(idx, traces):
            out[i] = Completion(text=read_trace(self.lm, tr).reply, attempts=1, latency_s=per,
                                usage={"completion_tokens": len(tr.token_ids),
                                       "prompt_tokens": built[idx.index(i)].length},
                                prompt_key=prompts[i].key)
        self.stats["calls"] += len(prompts)
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- openai
class OpenAIBackend:
    """An OpenAI-compatible chat endpoint through the official ``openai`` client."""

    def __init__(self, model: str, base_url: str | None = None, key_env: str = DEFAULT_KEY_ENV,
                 concurrency: int = 4, max_retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 120.0):
        try:
            import openai
        except ImportError:  # pragma: no cover - depends on the environment
            raise LatentcheckError("the openai backend needs the openai client: pip install 'latentcheck[judge]'") \
                from None
        if concurrency < 1 or max_retries < 0:
            raise LatentcheckError("concurrency must be >= 1 and max_retries >= 0")
        self._openai = openai
        key = os.environ.get(key_env) if key_env else None
        if base_url is None and not key:
            raise LatentcheckError(f"the openai backend without --judge-url talks to api.openai.com and needs a key "
                                   f"in ${key_env}")
        # local servers (vLLM, SGLang, transformers serve) accept any key; the client insists on one
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", max_retries=0, timeout=timeout_s)
        self.model, self.base_url = model, str(self.client.base_url).rstrip("/")
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.identity = {"backend": "openai", "model": model, "base_url": self.base_url}
        self.stats = {"calls": 0, "cache_hits": 0, "errors": 0}
        self._lock = threading.Lock()
        self._refuses_top_k = False

    def _messages(self, p: ChatPrompt) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if p.system is not None:
            msgs.append({"role": "system", "content": p.system})
        if p.images:
            content = [{"type": "image_url", "image_url": {"url": image_data_uri(i)}} for i in p.images]
            content.append({"type": "text", "text": p.text})
            msgs.append({"role": "user", "content": content})
        else:
            msgs.append({"role": "user", "content": p.text})
        return msgs

    def _retryable(self, e: Exception) -> bool:
        o = self._openai
        if isinstance(e, (o.APIConnectionError, o.APITimeoutError, o.RateLimitError)):
            return True
        return isinstance(e, o.APIStatusError) and e.status_code >= 500

    def _one(self, p: ChatPrompt, params: GenParams) -> Completion:
        kw: dict[str, Any] = {"model": self.model, "messages": self._messages(p),
                              "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                              "seed": params.seed}
        if params.top_p != 1.0:
            kw["top_p"] = params.top_p
        dropped: list[str] = []
        if params.top_k and not self._refuses_top_k:
            kw["extra_body"] = {"top_k": params.top_k}
        elif params.top_k:
            dropped = ["top_k"]
        t0 = time.perf_counter()
        attempt, err = 0, None
        while attempt <= self.max_retries:
            attempt += 1
            try:
                r = self.client.chat.completions.create(**kw)
                text = r.choices[0].message.content if r.choices else None
                usage = r.usage.model_dump() if getattr(r, "usage", None) is not None else {}
                if text is None:
                    err = "the endpoint returned no message content"
                    break
                return Completion(text=text, attempts=attempt, latency_s=time.perf_counter() - t0,
                                  usage={k: v for k, v in usage.items() if isinstance(v, int)}, prompt_key=p.key,
                                  dropped_params=dropped)
            except Exception as e:  # noqa: BLE001 - every failure becomes a recorded error
                err = f"{type(e).__name__}: {e}"
                if (isinstance(e, self._openai.APIStatusError) and e.status_code in (400, 422)
                        and "extra_body" in kw and "top_k" in f"{e} {getattr(e, 'body', '')} {e.response.text}"):
                    # top_k is not an OpenAI parameter: vLLM / SGLang take it, strict servers refuse it
                    kw.pop("extra_body")
                    dropped.append("top_k")
                    self._refuses_top_k = True
                    attempt -= 1
                    continue
                if not isinstance(e, self._openai.OpenAIError) or not self._retryable(e) \
                        or attempt > self.max_retries:
                    break
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        with self._lock:
            self.stats["errors"] += 1
        return Completion(text=None, error=err, attempts=attempt, latency_s=time.perf_counter() - t0,
                          prompt_key=p.key)

    def generate(self, prompts: Sequence[ChatPrompt], params: GenParams) -> list[Completion]:
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            out = list(pool.map(lambda p: self._one(p, params), prompts))
        with self._lock:
            self.stats["calls"] += len(prompts)
        return out


# ---------------------------------------------------------------------------------------------- factory
def default_cache_path() -> Path:
    return Path(os.environ.get("LATENTCHECK_CACHE", Path.home() / ".cache" / "latentcheck")) / "responses.sqlite"


def make_backend(kind: str, model: str | Any, *, base_url: str | None = None, key_env: str = DEFAULT_KEY_ENV,
                 concurrency: int = 4, max_retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 120.0,
                 batch_size: int = 8, cache: str | os.PathLike | ResponseCache | bool | None = None,
                 load_kw: dict[str, Any] | None = None) -> TextBackend:
    """A backend by kind. ``model``: for ``local`` a path / zoo name / cached HF id, or an already loaded
    ``LoadedModel``; for ``openai`` the served model name. ``cache``: a path, a :class:`ResponseCache`, True (the
    default file ``$LATENTCHECK_CACHE/responses.sqlite``) or None/False (no cache)."""
    if kind == "local":
        if isinstance(model, str):
            from latentcheck.core.loader import load_model

            model = load_model(model, **(load_kw or {}))
        backend: TextBackend = LocalBackend(model, batch_size=batch_size)
    elif kind == "openai":
        if not isinstance(model, str) or not model:
            raise LatentcheckError("the openai backend needs the served model's name (--judge-model)")
        backend = OpenAIBackend(model, base_url=base_url, key_env=key_env, concurrency=concurrency,
                                max_retries=max_retries, backoff_s=backoff_s, timeout_s=timeout_s)
    else:
        raise LatentcheckError(f"unknown backend {kind!r}; known: {', '.join(BACKENDS)}")
    if cache is None or cache is False:
        return backend
    store = cache if isinstance(cache, ResponseCache) else ResponseCache(default_cache_path() if cache is True
                                                                          else cache)
    return CachedBackend(backend, store)


__all__ = ["ChatPrompt", "GenParams", "Completion", "TextBackend", "LocalBackend", "OpenAIBackend", "CachedBackend",
           "ResponseCache", "make_backend", "cache_key", "image_data_uri", "BACKENDS",
           "default_cache_path", "DEFAULT_KEY_ENV"]
