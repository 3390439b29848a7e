"""latentcheck: causal analysis of latent visual reasoning in multimodal LLMs."""

__version__ = "0.1.0"

from latentcheck import toy as _toy  # noqa: E402,F401  registers the toy zoo's names and the toy world as default data
