"""Model profiles: a model's latent-reasoning protocol as data (core/profiles/*.toml).

The fields follow latent-models.md section 11.1. A profile is resolved against a checkpoint's tokenizer at load time
(``ResolvedTokens``): a token string that the tokenizer does not know is an error that names it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as schema

from latentcheck.core.errors import ProfileError
from latentcheck.core.registry import Registry

PROFILE_DIR = Path(__file__).parent / "profiles"

# The profile schema is strict (pydantic, ``extra="forbid"``, ``strict=True``): an unknown key or a value of the wrong
# type (``"false"`` for a boolean, ``4.5`` or ``"4"`` for an integer) is a one-line ProfileError naming the file, the
# section and the key; nothing is coerced. Integers are accepted where a float is expected.
STRICT = ConfigDict(extra="forbid", strict=True)

KINDS = ("latent", "plain", "text_imagination")
TRIGGERS = ("model_emits_start", "forced_prefix")
ENTRIES = ("after_start", "on_start")
LENGTHS = ("fixed", "until_end")
EXITS = ("force_end", "none")
RECORD_IDS = ("placeholder", "sampled")
VISIBILITIES = ("all", "latents_only", "start_only", "none")
HEADERS = ("chat", "mirage")
PROJECTIONS = ("none", "auto", "lvr_head")


@schema(config=STRICT)
class LatentSpec:
    """How the latent span is entered, fed and left."""

    trigger: Literal[TRIGGERS] = "model_emits_start"
    entry: Literal[ENTRIES] = "after_start"
    length: Literal[LENGTHS] = "fixed"
    k: int = Field(4, ge=1)
    exit: Literal[EXITS] = "force_end"
    record_id: Literal[RECORD_IDS] = "placeholder"
    eos_guard: bool = False
    feedback_layer: int = -1  # checked against the checkpoint's layer count in resolve_tokens
    post_norm: bool = True
    projection: Literal[PROJECTIONS] = "none"
    answer_point: Literal["end", "inner_end"] = "end"  # token after which options are scored
    max_blocks: int | None = Field(None, ge=0)  # latent blocks per answer; 0 = no limit. Required in latent
    # profiles: the authors' loops (Mirage, Monet, LVR) enter a new block on every start token, so theirs is 0


@schema(config=STRICT)
class DecodingSpec:
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(512, ge=1)


@schema(config=STRICT)
class PromptSpec:
    system: str = ""
    generation_header: Literal[HEADERS] = "chat"
    image_text_prefix: str = ""
    options_format: str = "{letter}. {option}"
    question_template: str = "{question}\n{options}"
    suffix: str = ""
    image_first: bool = True
    # put the image(s) where the user text has its image placeholder (Mirage src/test.py moves the image block to
    # the `<image>` of VSP's text_input); only for callers that name a placeholder (build_prompt image_placeholder)
    image_at_placeholder: bool = False


# --- the sections of a profile file that are flattened into Profile (schema only) ---------------------------------

@schema(config=STRICT)
class _Top:
    name: str = Field(min_length=1)
    kind: Literal[KINDS] = "plain"
    description: str = ""
    source: str = ""


@schema(config=STRICT)
class _Detect:
    tokens: list[str] = field(default_factory=list)


@schema(config=STRICT)
class _Tokens:
    start: str = ""
    end: str = ""
    placeholder: str = ""
    inner_end: str = ""


@schema(config=STRICT)
class _Attention:
    image_visibility: Literal[VISIBILITIES] = "all"
    latents_visible_after: bool = True
    start_visible_after: bool = True
    latents_see_input: bool = True


@schema(config=STRICT)
class _Imagination:
    start: str = ""
    end: str = ""


@schema(config=STRICT)
class _Answer:
    extractor: str = "letter"
    answer_prefix: str = ""


@schema(config=STRICT)
class _Processor:
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)


SECTIONS: dict[str, type] = {"detect": _Detect, "tokens": _Tokens, "latent": LatentSpec, "attention": _Attention,
                             "imagination": _Imagination, "decoding": DecodingSpec, "prompt": PromptSpec,
                             "answer": _Answer, "processor": _Processor}


@dataclass
class Profile:
    """One model profile (see module docstring)."""

    name: str
    kind: str = "plain"
    description: str = ""
    source: str = ""
    detect_tokens: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # start / end / placeholder / inner_end
    latent: LatentSpec = field(default_factory=LatentSpec)
    image_visibility: str = "all"
    latents_visible_after: bool = True
    start_visible_after: bool = True  # False: no later position attends to the latent-start position
    latents_see_input: bool = True
    imagination: dict[str, str] = field(default_factory=dict)  # start / end markers (text_imagination)
    decoding: DecodingSpec = field(default_factory=DecodingSpec)
    prompt: PromptSpec = field(default_factory=PromptSpec)
    extractor: str = "letter"
    answer_prefix: str = ""
    processor: dict[str, int] = field(default_factory=dict)
    path: str | None = None

    @property
    def is_latent(self) -> bool:
        return self.kind == "latent"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path", None)
        return d


def _describe(err: dict, section: str | None) -> str:
    """One pydantic error as ``[section] key: problem (got value)``."""
    loc = [str(x) for x in err.get("loc", ()) if x != "__root__"]
    where = (f"[{section}] " if section else "") + (".".join(loc) or "(section)")
    kind = err.get("type", "")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        if section is None and isinstance(err.get("input"), dict):
            return f"[{where}]: unknown section; known: {', '.join(SECTIONS)}"
        return f"{where}: unknown key"
    if kind == "missing_argument" or kind == "missing":
        return f"{where}: missing"
    got = err.get("input")
    shown = f" (got {got!r} of type {type(got).__name__})" if not isinstance(got, dict) else ""
    return f"{where}: {err.get('msg', 'invalid')}{shown}"


def _section(cls: type, raw: Any, section: str | None, problems: list[str]):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"[{section}]: must be a table, got {type(raw).__name__}")
        return cls() if section else None
    try:
        return cls(**raw)
    except ValidationError as e:
        problems.extend(_describe(err, section) for err in e.errors())
    except TypeError as e:  # pragma: no cover - pydantic reports bad keyword arguments itself
        problems.append(f"[{section}]: {e}")
    return None


def profile_from_dict(d: dict[str, Any], path: str | None = None) -> Profile:
    """Build and validate a profile from parsed TOML: strict schema (module constants), then the cross-field rules.
    Every problem is reported at once, in one line naming the file, the section and the key."""
    label = f"profile file {path}" if path else f"profile {d.get('name', '?')!r}"
    problems: list[str] = []
    top = {k: v for k, v in d.items() if k not in SECTIONS}
    head = _section(_Top, top, None, problems)
    parts = {name: _section(cls, d.get(name), name, problems) for name, cls in SECTIONS.items()}
    if problems:
        raise ProfileError(f"{label}: " + "; ".join(problems))
    from latentcheck.core.extract import EXTRACTORS

    if parts["answer"].extractor not in EXTRACTORS:
        problems.append(f"[answer] extractor: unknown extractor {parts['answer'].extractor!r}; known: "
                        f"{', '.join(sorted(EXTRACTORS))}")
    p = Profile(
        name=head.name, kind=head.kind, description=head.description, source=head.source,
        detect_tokens=list(parts["detect"].tokens),
        tokens={k: v for k, v in asdict(parts["tokens"]).items() if v},
        latent=parts["latent"], decoding=parts["decoding"], prompt=parts["prompt"],
        imagination={k: v for k, v in asdict(parts["imagination"]).items() if v},
        processor={k: v for k, v in asdict(parts["processor"]).items() if v is not None}, path=path,
        image_visibility=parts["attention"].image_visibility,
        latents_visible_after=parts["attention"].latents_visible_after,
        start_visible_after=parts["attention"].start_visible_after,
        latents_see_input=parts["attention"].latents_see_input,
        extractor=parts["answer"].extractor, answer_prefix=parts["answer"].answer_prefix,
    )
    if p.is_latent:
        for key in ("start", "end"):
            if not p.tokens.get(key):
                problems.append(f"[tokens] {key}: latent profiles need it")
        if p.latent.record_id == "placeholder" and not p.tokens.get("placeholder"):
            problems.append("[tokens] placeholder: latent.record_id = 'placeholder' needs it")
        if p.latent.max_blocks is None:
            problems.append("[latent] max_blocks: latent profiles need it (latent blocks per answer; 0 = no limit, "
                            "as in the Mirage / Monet / LVR loops)")
    if p.kind == "text_imagination" and not (p.imagination.get("start") and p.imagination.get("end")):
        problems.append("[imagination] start, end: text_imagination profiles need both markers")
    if problems:
        raise ProfileError(f"{label}: " + "; ".join(problems))
    return p


def load_profile_file(path: str | Path) -> Profile:
    """Load a profile from a TOML file (a user's own profile)."""
    from latentcheck.core.records import load_user_toml

    path = Path(path)
    if not path.exists():
        raise ProfileError(f"profile file not found: {path}")
    return profile_from_dict(load_user_toml(path, "profile file", ProfileError), str(path))


def builtin_profiles() -> Registry[Profile]:
    """All profiles shipped with latentcheck (one TOML file each in core/profiles/), by name; two files declaring
    the same name are an error."""
    out: Registry[Profile] = Registry("profile")
    for f in sorted(PROFILE_DIR.glob("*.toml")):
        p = load_profile_file(f)
        if p.name in out:
            raise ProfileError(f"profile file {f}: profile name {p.name!r} is already declared by another file")
        out.add(p.name, p)
    return out


def get_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a user's profile file by path."""
    if name_or_path.endswith(".toml") or Path(name_or_path).exists():
        return load_profile_file(name_or_path)
    profiles = builtin_profiles()
    key = name_or_path.replace("_", "-") if name_or_path.replace("_", "-") in profiles else name_or_path
    if key not in profiles:
        raise ProfileError(f"unknown profile {name_or_path!r}; built-in profiles: {', '.join(sorted(profiles))} "
                           "(or pass a .toml file)")
    return profiles[key]


def detect_profile(tokenizer, config) -> Profile:
    """Pick the profile a checkpoint makes unambiguous; raise asking for --profile otherwise."""
    declared = getattr(config, "latentcheck_profile", None)
    if declared:
        return get_profile(declared)
    vocab = tokenizer.get_vocab()
    matches = [p for p in builtin_profiles().values() if p.detect_tokens and all(t in vocab for t in p.detect_tokens)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ProfileError("several profiles match this checkpoint (" + ", ".join(p.name for p in matches)
                           + "); choose one with --profile")
    latent_like = [t for t in vocab if "latent" in t or "lvr" in t or "abs_vis" in t]
    if latent_like:
        raise ProfileError(f"checkpoint has latent-looking tokens {latent_like[:5]} but no profile matches; "
                           "write a profile file and pass it with --profile")
    return get_profile("qwen2_5_vl")


def latent_profiles_matching(profile: Profile, tokenizer) -> dict[str, list[str]]:
    """For a non-latent ``profile``: the built-in latent profiles whose detection tokens this tokenizer has (name ->
    tokens). Non-empty means the checkpoint looks like a latent-reasoning model run with a plain protocol, whose
    latent mode can then never trigger."""
    if profile.is_latent:
        return {}
    vocab = tokenizer.get_vocab()
    return {p.name: p.detect_tokens for p in builtin_profiles().values()
            if p.is_latent and p.detect_tokens and all(t in vocab for t in p.detect_tokens)}


@dataclass
class ResolvedTokens:
    """Token ids of a profile's strings in one checkpoint's tokenizer."""

    start: int | None = None
    end: int | None = None
    placeholder: int | None = None
    inner_end: int | None = None
    imagination_start: list[int] = field(default_factory=list)
    imagination_end: list[int] = field(default_factory=list)
    eos: list[int] = field(default_factory=list)
    pad: int = 0
    image: int | None = None
    vision_start: int | None = None


def resolve_tokens(profile: Profile, tokenizer, model) -> ResolvedTokens:
    """Resolve the profile's token strings; a missing token is a ProfileError naming it."""
    config = model.config
    if profile.is_latent:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        n_layers = getattr(text_config, "num_hidden_layers", None)
        fl = profile.latent.feedback_layer
        if n_layers is not None and not -n_layers <= fl < n_layers:
            raise ProfileError(f"profile {profile.name}: [latent] feedback_layer = {fl} is out of range for this "
                               f"checkpoint's {n_layers} decoder layers (valid: {-n_layers} .. {n_layers - 1})")
    vocab = tokenizer.get_vocab()
    r = ResolvedTokens()
    for key in ("start", "end", "placeholder", "inner_end"):
        s = profile.tokens.get(key)
        if not s:
            continue
        if s not in vocab:
            raise ProfileError(f"checkpoint tokenizer has no token {s!r} (profile {profile.name}, tokens.{key}); "
                               "is this the right profile for this checkpoint?")
        setattr(r, key, vocab[s])
    if profile.kind == "text_imagination":
        r.imagination_start = tokenizer.encode(profile.imagination["start"], add_special_tokens=False)
        r.imagination_end = tokenizer.encode(profile.imagination["end"], add_special_tokens=False)
    eos = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in (tokenizer.eos_token_id, gen_eos, getattr(config, "eos_token_id", None)):
        if isinstance(e, int):
            eos.add(e)
        elif isinstance(e, (list, tuple)):
            eos.update(e)
    for s in ("<|im_end|>", "<|endoftext|>"):
        if s in vocab:
            eos.add(vocab[s])
    r.eos = sorted(eos)
    r.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (r.eos[0] if r.eos else 0)
    r.image = getattr(config, "image_token_id", None)
    r.vision_start = getattr(config, "vision_start_token_id", None)
    return r
