"""The sampling settings, defined once for ``generate``, ``predict`` and the ``ValidationSamples`` callback.

Each of them takes ``**sampling`` and builds a ``SamplingSettings`` from it. jsonargparse follows the
``**sampling`` into this dataclass, so the options stay flat (``--max_new_tokens``,
``--data.max_new_tokens``, a callback's ``max_new_tokens:``) while their types, defaults, help texts
and checks are the ones below.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "---------------"  # what nanoGPT's sample.py prints after each sample


@dataclass
class SamplingSettings:
    """How to continue a prompt: nanoGPT's ``sample.py`` settings, with its defaults.

    The help texts are here rather than in field docstrings: jsonargparse reads field docstrings
    only with ``docstring_parse_attribute_docstrings``, which reads the source of every class in
    the CLI and adds seconds to each ``lit-nanogpt`` start.

    Attributes:
        max_new_tokens: Characters generated per sample.
        temperature: Divides the logits; below 1 is more conservative. 0 means greedy (argmax).
        top_k: Sample among the k most likely characters; 1 is greedy; ``null`` for all.
        num_samples: Independent samples drawn from each prompt.
    """

    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = 200
    num_samples: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1 (1 is greedy), or unset to sample from all tokens")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy, 1 samples the model as it is)")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be at least 1")
