"""Interventions on the fed-back latent vectors: declarative, serialisable specs plus a small registry.

A spec is ``{"name": "noise", "params": {"sigma": 0.5}, "steps": [0, 1]}`` (``steps`` = latent indices it touches;
``None`` = all). On the command line: ``noise:sigma=0.5@0,1``, ``zero``, ``scale:alpha=0.5``.

Two families:
- *vector* interventions transform the vector about to be fed back, step by step, inside the engine (identity, zero,
  near_zero, noise, noise_replace, scale, shared, index_mean);
- *sequence* interventions need the un-intervened run's latents first (swap with another instance, shuffle, reverse,
  drop the span, or a replay of given vectors): they become per-sample *overrides* of the latent sequence;
- *attention* interventions change who may attend to whom in some decoder layers (``knockout``: the answer cannot
  read the latent span, or the span cannot read the image, in a layer range); the engine turns them into per-layer
  attention masks (``core.kvshare.KeyKnockout``) while decoding.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.registry import Registry


@dataclass
class InterventionSpec:
    """A serialisable intervention."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    steps: list[int] | None = None

    @property
    def label(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        s = "" if self.steps is None else "@" + ",".join(map(str, self.steps))
        return self.name + (":" + p if p else "") + s

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InterventionSpec":
        return validate_spec(cls(name=d["name"], params=dict(d.get("params") or {}), steps=d.get("steps")))

    @property
    def definition(self) -> InterventionDef:
        return REGISTRY[self.name]

    @property
    def kind(self) -> str:
        return REGISTRY[self.name].kind

    @property
    def needs_stats(self) -> bool:
        """True when this spec needs dataset statistics of the baseline latents (a calibration pass)."""
        return REGISTRY[self.name].uses_stats(self.params)

    def seed_int(self, seed: int) -> int:
        return int(hashlib.sha256(f"{seed}|{self.label}".encode()).hexdigest()[:8], 16)


@dataclass
class InterventionDef:
    """A registered intervention and what it needs (callers ask these, never the name).

    ``needs_stats``: dataset statistics of the baseline latents (``LatentStats``, a calibration pass), True/False or a
    function of the spec's parameters; ``needs_partner``: another sample's latents (skipped without one);
    ``whole_span``: acts on the whole latent span (``@steps`` is ignored, per-index plans refuse it); ``check``: extra
    validation of the parameters (raises LatentcheckError); ``needs_embedding``: a sequence intervention that reads
    the model's input-embedding table (``fn`` gets an ``Embeddings`` as a fifth argument). Parameter types are the
    types of the defaults."""

    name: str
    kind: str  # "vector" | "sequence" | "attention"
    params: dict[str, Any]  # defaults
    doc: str
    fn: Callable | None = None
    needs_stats: bool | Callable[[dict[str, Any]], bool] = False
    needs_partner: bool = False
    whole_span: bool = False
    check: Callable[[dict[str, Any]], None] | None = None
    needs_embedding: bool = False

    def uses_stats(self, params: dict[str, Any]) -> bool:
        return bool(self.needs_stats(params) if callable(self.needs_stats) else self.needs_stats)


REGISTRY: Registry[InterventionDef] = Registry("intervention")


def register(name: str, kind: str, doc: str, *, needs_stats: bool | Callable[[dict[str, Any]], bool] = False,
             needs_partner: bool = False, whole_span: bool = False,
             check: Callable[[dict[str, Any]], None] | None = None, needs_embedding: bool = False, **defaults):
    """Decorator: register an intervention (vector: ``fn(v [n, H], steps [n], ctx, spec, seed) -> [n, H]``;
    sequence: ``fn(base [K, H], partner [K, H] | None, rng, spec) -> override [K', H]``, plus an ``Embeddings``
    argument when ``needs_embedding``; attention: ``fn(spec, n_layers) -> frozenset`` of the decoder layers it acts
    in, the engine reads the spec's ``query`` / ``key`` parameters). Duplicate names are an error."""
    if kind not in KINDS:
        raise LatentcheckError(f"intervention {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def deco(fn):
        REGISTRY.add(name, InterventionDef(name, kind, defaults, doc, fn, needs_stats, needs_partner, whole_span,
                                           check, needs_embedding))
        return fn
    return deco


KINDS = ("vector", "sequence", "attention")


@dataclass
class LatentStats:
    """Dataset statistics of the un-intervened latents (for shared-mean and per-index-mean interventions)."""

    mean: np.ndarray  # [H]
    index_mean: np.ndarray  # [K, H]
    mean_norm: float

    @classmethod
    def from_latents(cls, latents: list[np.ndarray]) -> "LatentStats":
        lat = [x for x in latents if x is not None and len(x)]
        if not lat:
            raise LatentcheckError("no latent vectors were produced by the baseline run (latent mode never "
                                   "triggered), so dataset statistics for 'shared'/'index_mean' are undefined")
        allv = np.concatenate(lat, 0)
        k = max(len(x) for x in lat)
        idx = np.stack([np.mean([x[i] for x in lat if len(x) > i], 0) for i in range(k)])
        return cls(mean=allv.mean(0), index_mean=idx, mean_norm=float(np.linalg.norm(allv, axis=1).mean()))

    def to_dict(self) -> dict:
        return {"mean_norm": self.mean_norm, "n_index": int(len(self.index_mean))}


@dataclass
class VectorContext:
    """What a vector intervention may use: per-row keys (for seeded noise), dataset stats."""

    keys: list[str]
    seed: int = 0
    stats: LatentStats | None = None


_GENERATORS = threading.local()


def _row_seed(key: str, step: int, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}|{key}|{step}".encode()).hexdigest()[:8], 16)


def _noise(v, steps, ctx, spec_seed):
    """Standard normal noise [n, H], row i seeded by (spec seed, sample key, latent step) only, so a row's noise does
    not depend on what else shares its batch. One reseeded CPU generator per thread (reseeding resets the state, so
    the values equal a fresh ``torch.Generator().manual_seed(s)`` per row; tests/core/test_interventions.py)."""
    import torch

    g = getattr(_GENERATORS, "g", None)
    if g is None:
        g = _GENERATORS.g = torch.Generator()
    out = torch.empty((v.shape[0], v.shape[-1]), dtype=torch.float32)
    for i, (k, st) in enumerate(zip(ctx.keys, steps.tolist())):
        torch.randn(v.shape[-1], generator=g.manual_seed(_row_seed(k, int(st), spec_seed)), out=out[i])
    return out.to(device=v.device, dtype=v.dtype)


@register("identity", "vector", "leave the vector unchanged (must equal the baseline exactly)")
def _identity(v, steps, ctx, spec, seed):
    return v


@register("zero", "vector", "set the vector to zero")
def _zero(v, steps, ctx, spec, seed):
    return v * 0


@register("near_zero", "vector", "set every coordinate to a small constant mu (paper's Z = mu ~ 0)", mu=1e-4)
def _near_zero(v, steps, ctx, spec, seed):
    return v * 0 + float(spec.params["mu"])


@register("scale", "vector", "multiply the vector by alpha", alpha=0.5)
def _scale(v, steps, ctx, spec, seed):
    return v * float(spec.params["alpha"])


@register("noise", "vector", "add Gaussian noise whose norm is sigma times the latent's own norm", sigma=0.5)
def _add_noise(v, steps, ctx, spec, seed):
    n = _noise(v, steps, ctx, spec.seed_int(seed))
    scale = v.norm(dim=-1, keepdim=True) / (v.shape[-1] ** 0.5)
    return v + float(spec.params["sigma"]) * scale * n


@register("noise_replace", "vector", "replace by Gaussian noise with the latent's own norm")
def _noise_replace(v, steps, ctx, spec, seed):
    n = _noise(v, steps, ctx, spec.seed_int(seed))
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12) * v.norm(dim=-1, keepdim=True)


def _check_shared(params: dict[str, Any]) -> None:
    if params["source"] not in ("mean", "random") and not Path(params["source"]).exists():
        raise LatentcheckError(f"shared: source must be 'mean', 'random' or an existing .npy file, "
                               f"got {params['source']!r}")


@register("shared", "vector", "replace every latent by one shared tensor tau: source=mean (dataset-mean latent), "
          "random (a fixed random vector with the mean latent norm) or a .npy file path", source="mean",
          needs_stats=lambda p: p["source"] in ("mean", "random"), check=_check_shared)
def _shared(v, steps, ctx, spec, seed):
    import torch

    src = spec.params["source"]
    if src == "mean":
        if ctx.stats is None:
            raise LatentcheckError("'shared:source=mean' needs baseline latent statistics")
        tau = torch.as_tensor(ctx.stats.mean)
    elif src == "random":
        if ctx.stats is None:
            raise LatentcheckError("'shared:source=random' needs baseline latent statistics (for the norm)")
        g = torch.Generator().manual_seed(spec.seed_int(seed))
        tau = torch.randn(v.shape[-1], generator=g, dtype=torch.float64)
        tau = tau / tau.norm() * ctx.stats.mean_norm
    else:
        tau = torch.as_tensor(read_npy(src, "shared")).reshape(-1)
        if tau.shape[0] != v.shape[-1]:
            raise LatentcheckError(f"shared tensor file {src} has {tau.shape[0]} values, the model's hidden size "
                                   f"is {v.shape[-1]}")
    return tau.to(v.device, v.dtype).expand_as(v).clone()


@register("index_mean", "vector", "replace latent k by the dataset mean of latent k", needs_stats=True)
def _index_mean(v, steps, ctx, spec, seed):
    import torch

    if ctx.stats is None:
        raise LatentcheckError("'index_mean' needs baseline latent statistics")
    im = ctx.stats.index_mean
    rows = [im[min(int(s), len(im) - 1)] for s in steps.tolist()]
    return torch.as_tensor(np.stack(rows)).to(v.device, v.dtype)


# Sequence interventions: fn(baseline [K, H], partner [K, H] | None, rng, spec) -> override [K', H]
@register("swap", "sequence", "feed another instance's latents (a seeded derangement of the samples)",
          needs_partner=True)
def _swap(base, partner, rng, spec):
    return partner


@register("shuffle", "sequence", "feed this instance's latents in a seeded random order")
def _shuffle(base, partner, rng, spec):
    return base[rng.permutation(len(base))]


@register("reverse", "sequence", "feed this instance's latents in reverse order")
def _reverse(base, partner, rng, spec):
    return base[::-1].copy()


@register("drop", "sequence", "drop the latent span but keep its start/end markers", whole_span=True)
def _drop(base, partner, rng, spec):
    return base[:0]


def _check_length(params: dict[str, Any]) -> None:
    k = params["k"]
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 0 or not float(k).is_integer():
        raise LatentcheckError(f"length: k must be a whole number >= 0, got {k!r}")


@register("length", "sequence", "feed a span of k vectors: the model's own first k; past its own span the last own "
          "vector repeated (format vs content: does the span's length matter?)", whole_span=True, check=_check_length,
          k=4)
def _length(base, partner, rng, spec):
    k = int(spec.params["k"])
    if k <= len(base):
        return base[:k].copy()
    if not len(base):
        raise LatentcheckError("length: the baseline produced no latent to extend (latent mode never triggered)")
    return np.concatenate([base, np.repeat(base[-1:], k - len(base), 0)])


def _check_knockout(params: dict[str, Any]) -> None:
    q, k = params["query"], params["key"]
    if q not in KNOCKOUT_QUERIES:
        raise LatentcheckError(f"knockout: query must be one of {', '.join(KNOCKOUT_QUERIES)}, got {q!r}")
    if k not in KNOCKOUT_KEYS:
        raise LatentcheckError(f"knockout: key must be one of {', '.join(KNOCKOUT_KEYS)}, got {k!r}")
    if q == "span" and k == "span":
        raise LatentcheckError("knockout: query=span,key=span would hide the span from itself; not supported")
    parse_layers(params["layers"], None)


KNOCKOUT_QUERIES = ("answer", "span")  # answer = every position outside a latent span (the text after it)
KNOCKOUT_KEYS = ("span", "image")


def parse_layers(text: Any, n_layers: int | None) -> frozenset[int]:
    """A layer range: ``all``, ``none`` (no layer), ``L`` or ``A-B`` (inclusive, 0-based decoder layers). With
    ``n_layers`` the range is checked against the model."""
    t = str(text).strip().lower()
    if t == "all":
        if n_layers is None:
            return frozenset()
        return frozenset(range(n_layers))
    if t in ("none", ""):
        return frozenset()
    a, sep, b = t.partition("-")
    try:
        lo = int(a)
        hi = int(b) if sep else lo
    except ValueError:
        raise LatentcheckError(f"bad layer range {text!r} (expected all, none, L or A-B, e.g. 0-3)") from None
    if lo < 0 or hi < lo:
        raise LatentcheckError(f"bad layer range {text!r}: need 0 <= A <= B")
    if n_layers is not None and hi >= n_layers:
        raise LatentcheckError(f"layer range {text!r} reaches past the model's {n_layers} decoder layers "
                               f"(0-{n_layers - 1})")
    return frozenset(range(lo, hi + 1))


@register("knockout", "attention", "attention knockout in a layer range: query=answer (every position outside the "
          "latent span) or span cannot attend to key=span or image, in decoder layers `layers` (all, none, L or "
          "A-B)", whole_span=True, check=_check_knockout, query="answer", key="span", layers="all")
def _knockout(spec, n_layers):
    return parse_layers(spec.params["layers"], n_layers)


@dataclass
class Embeddings:
    """What a ``needs_embedding`` intervention may read: the model's input-embedding table [V, H] (a torch tensor,
    never copied whole) and its tokenizer."""

    weight: Any
    tokenizer: Any = None

    def mean(self) -> np.ndarray:
        """The mean input embedding over the vocabulary [H]."""
        return self.weight.detach().float().mean(0).cpu().numpy()

    def of(self, token: str) -> np.ndarray:
        """The input embedding [H] of ``token`` (a text that must be exactly one token, or ``#ID`` for a token id)."""
        if token.startswith("#") and token[1:].isdigit():
            tid = int(token[1:])
        else:
            ids = self.tokenizer.encode(token, add_special_tokens=False) if self.tokenizer is not None else []
            if len(ids) != 1:
                raise LatentcheckError(f"placeholder: token {token!r} is {len(ids)} tokens for this tokenizer; give "
                                       "one token or #ID")
            tid = ids[0]
        if not 0 <= tid < self.weight.shape[0]:
            raise LatentcheckError(f"placeholder: token id {tid} is outside the vocabulary (0-{self.weight.shape[0] - 1})")
        return self.weight[tid].detach().float().cpu().numpy()


def _check_placeholder(params: dict[str, Any]) -> None:
    if params["source"] not in ("mean", "token"):
        raise LatentcheckError(f"placeholder: source must be 'mean' or 'token', got {params['source']!r}")
    if params["source"] == "token" and not str(params["token"]):
        raise LatentcheckError("placeholder: source=token needs token=TEXT (one token) or token=#ID")


@register("placeholder", "sequence", "keep the span's K positions but feed one constant embedding at each: "
          "source=mean (the mean input embedding) or source=token with token=TEXT|#ID (that token's embedding); "
          "position-preserving removal, unlike drop", whole_span=True, needs_embedding=True,
          check=_check_placeholder, source="mean", token="")
def _placeholder(base, partner, rng, spec, emb: Embeddings):
    v = emb.mean() if spec.params["source"] == "mean" else emb.of(str(spec.params["token"]))
    return np.repeat(v[None].astype(np.float32), len(base), 0)


@register("replay", "sequence", "feed given latent vectors (a .npy file [K, H] or set by the caller)", path="")
def _replay(base, partner, rng, spec):
    path = spec.params.get("path") or ""
    if not path or not Path(path).exists():
        raise LatentcheckError(f"replay: parameter 'path' must name an existing .npy file, got {path!r}")
    return read_npy(path, "replay").astype(np.float32)


def read_npy(path: str | Path, what: str) -> np.ndarray:
    """A numeric .npy array given by the user (``allow_pickle=False``: pickled objects are refused, never run)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LatentcheckError(f"{what}: cannot read {path} as a numeric .npy array ({e.__class__.__name__}: "
                               f"{str(e)[:160]}); pickled data is never loaded") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        raise LatentcheckError(f"{what}: {path} holds no numeric array")
    return arr


def validate_spec(spec: InterventionSpec) -> InterventionSpec:
    if spec.name not in REGISTRY:
        raise LatentcheckError(f"unknown intervention {spec.name!r}; valid: {', '.join(sorted(REGISTRY))}")
    d = REGISTRY[spec.name]
    bad = set(spec.params) - set(d.params)
    if bad:
        valid = ", ".join(f"{k} (default {v})" for k, v in d.params.items()) or "none"
        raise LatentcheckError(f"intervention {spec.name!r} has no parameter {sorted(bad)[0]!r}; valid: {valid}")
    params = dict(d.params)
    for k, v in spec.params.items():
        default = d.params[k]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise LatentcheckError(f"intervention {spec.name!r}: parameter {k!r} must be a number, got {v!r}") \
                    from None
        params[k] = v
    if d.check is not None:
        d.check(params)
    if spec.steps is not None:
        if not all(isinstance(s, int) and s >= 0 for s in spec.steps):
            raise LatentcheckError(f"intervention {spec.name!r}: steps must be non-negative integers")
    spec.params = params
    return spec


def parse_spec(text: str) -> InterventionSpec:
    """Parse ``name[:k=v,k=v][@i,j]`` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return InterventionSpec.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError) as e:
            raise LatentcheckError(f"bad intervention JSON {text!r}: {e}") from None
    steps = None
    if "@" in text:
        text, s = text.split("@", 1)
        try:
            steps = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise LatentcheckError(f"bad step list {s!r} in intervention (expected e.g. @0,1)") from None
    name, _, ps = text.partition(":")
    d = REGISTRY.get(name.strip())
    params = parse_params(ps, d.params if d else None, text, "intervention")
    return validate_spec(InterventionSpec(name=name.strip(), params=params, steps=steps))


def parse_params(ps: str, defaults: dict | None, text: str, what: str) -> dict[str, str]:
    """``k=v,k=v`` into a dict; a bare value is shorthand when the registry entry has exactly one parameter
    (``noise:0.5``). Shared by intervention and treatment specs."""
    params: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in ps.split(","))):
        if "=" not in item:
            if defaults is not None and len(defaults) == 1:
                params[next(iter(defaults))] = item
                continue
            raise LatentcheckError(f"bad {what} parameter {item!r} in {text!r} (expected key=value)")
        k, v = item.split("=", 1)
        params[k.strip()] = v.strip()
    return params


def parse_specs(items: list[str]) -> list[InterventionSpec]:
    """Parse several specs; each item may itself be a ';'-separated list."""
    out = []
    for it in items:
        for part in it.split(";"):
            if part.strip():
                out.append(parse_spec(part))
    return out


def apply_vector(spec: InterventionSpec, v, steps, ctx: VectorContext):
    """Apply a vector intervention to rows ``v`` [n, H] at latent indices ``steps`` [n] (respecting spec.steps)."""
    import torch

    fn = REGISTRY[spec.name].fn
    if spec.steps is None:
        return fn(v, steps, ctx, spec, ctx.seed)
    sel = torch.tensor([int(s) in spec.steps for s in steps.tolist()], dtype=torch.bool, device=v.device)
    if not bool(sel.any()):
        return v
    out = v.clone()
    sub = VectorContext(keys=[k for k, s in zip(ctx.keys, sel.tolist()) if s], seed=ctx.seed, stats=ctx.stats)
    out[sel] = fn(v[sel], steps[sel], sub, spec, ctx.seed)
    return out


def sequence_override(spec: InterventionSpec, base: np.ndarray, partner: np.ndarray | None, key: str,
                      seed: int, embeddings: Embeddings | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Override vectors for a sequence intervention, plus a mask of which indices are overridden (None = all).
    ``embeddings``: the model's input embeddings, for interventions that declare ``needs_embedding``."""
    rng = np.random.default_rng([spec.seed_int(seed), int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
    d = REGISTRY[spec.name]
    if d.needs_embedding:
        if embeddings is None:
            raise LatentcheckError(f"{spec.label}: needs the model's input embeddings (pass embeddings=)")
        new = d.fn(base, partner, rng, spec, embeddings)
    else:
        new = d.fn(base, partner, rng, spec)
    if spec.steps is None or d.whole_span:
        return new, None
    k = max(len(base), len(new))
    mask = np.array([i in spec.steps for i in range(k)], dtype=bool)
    return new, mask
