"""latentcheck.bench: one module per distributed benchmark format and its official protocol.

``registry`` holds the protocols as data (:class:`Benchmark`, :func:`get_benchmark`, ``BENCHMARKS``); the format
modules (``vstar``, ``hrbench``, ``mme_realworld``, ``blink``, ``vsp``, ``tablevqa``, ``generic``) hold the streaming
loaders, prompt builders and scorers; ``scoring`` holds the shared per-sample result helpers.
"""

from latentcheck.bench.generic import verify_md5
from latentcheck.bench.registry import (BENCHMARKS, Benchmark, PromptVariant, Selection, get_benchmark,
                                        register_benchmark)

__all__ = ["BENCHMARKS", "Benchmark", "PromptVariant", "Selection", "get_benchmark", "register_benchmark",
           "verify_md5"]
