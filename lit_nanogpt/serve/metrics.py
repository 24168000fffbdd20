"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own so that apps built side by side
(the tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Requests by route and status, tokens, the queue, the batch, time to first token and per-token latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lit_nanogpt_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("lit_nanogpt_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.tokens = Counter("lit_nanogpt_generated_tokens", "Tokens generated", registry=r)
        self.cancelled = Counter(
            "lit_nanogpt_cancelled_rows", "Rows released before their end: the client went away", registry=r
        )
        self.queue_depth = Gauge("lit_nanogpt_queue_depth", "Requests waiting for a slot", registry=r)
        self.running = Gauge("lit_nanogpt_running_rows", "Rows holding a slot of the batch", registry=r)
        self.batch_size = Histogram(
            "lit_nanogpt_batch_size", "Rows in each decode step", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.ttft = Histogram(
            "lit_nanogpt_time_to_first_token_seconds",
            "From a request's arrival to its first token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.itl = Histogram(
            "lit_nanogpt_inter_token_latency_seconds",
            "Between two consecutive tokens of one choice",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format, as ``CONTENT_TYPE``."""
        return generate_latest(self.registry)
