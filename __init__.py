"""latentcheck: causal analysis of latent visual reasoning in multimodal LLMs."""

from latentcheck.core import __version__  # noqa: E402,F401  (defined in core/, which imports nothing above it)

from latentcheck import toy as _toy  # noqa: E402,F401  registers the toy zoo's names and the toy world as default data


_API = ("load", "wrap_model", "perturb_latent", "perturb_input", "probe_latents", "benchmark", "caption_imagine",
        "caption_imagine_intervene", "audit_model", "register_intervention", "register_treatment",
        "register_task_source", "AnalysisResult", "LoadedModel", "Task")


def __getattr__(name: str):
    """The Python API (latentcheck/api.py), imported on first use so `import latentcheck` stays light."""
    if name in _API:
        from latentcheck import api

        return getattr(api, name)
    raise AttributeError(f"module 'latentcheck' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
