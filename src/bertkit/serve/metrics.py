"""Prometheus metrics of a server (GET /metrics), in a registry of its own so that several
servers in one process (tests) count apart.

    bertkit_requests_total{route, status}         answered requests
    bertkit_request_seconds{route}                 latency, arrival to answer (histogram)
    bertkit_errors_total{kind}                     validation, too_large, overloaded, unauthorized,
                                                   wrong_route, backend
    bertkit_requests_in_flight                     admitted, not yet answered
    bertkit_queue_size                             inputs waiting for the model
    bertkit_batch_size / bertkit_batch_tokens      inputs and word pieces per model batch (histograms)
    bertkit_queue_seconds / bertkit_batch_seconds  an input's wait for the model; a batch's model time
    bertkit_inputs_total / bertkit_tokens_total    inputs and word pieces run through the model
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
ERROR_KINDS = ("validation", "too_large", "overloaded", "unauthorized", "wrong_route", "backend")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_POWERS = tuple(2.0 ** i for i in range(15))  # 1 .. 16384


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("bertkit_requests", "Answered HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("bertkit_request_seconds", "Request latency, arrival to answer", ["route"],
                                 buckets=_LATENCY, registry=r)
        self.errors = Counter("bertkit_errors", "Failed requests by kind of error", ["kind"], registry=r)
        for kind in ERROR_KINDS:  # exported at 0 from the start, so rates work before the first error
            self.errors.labels(kind)
        self.in_flight = Gauge("bertkit_requests_in_flight", "Admitted requests not yet answered", registry=r)
        self.queue_size = Gauge("bertkit_queue_size", "Inputs waiting for the model", registry=r)
        self.batch_size = Histogram("bertkit_batch_size", "Inputs per model batch", buckets=_POWERS, registry=r)
        self.batch_tokens = Histogram("bertkit_batch_tokens", "Word pieces per model batch", buckets=_POWERS,
                                      registry=r)
        self.queue_seconds = Histogram("bertkit_queue_seconds", "An input's wait for the model", buckets=_LATENCY,
                                       registry=r)
        self.batch_seconds = Histogram("bertkit_batch_seconds", "Model time per batch", buckets=_LATENCY,
                                       registry=r)
        self.inputs = Counter("bertkit_inputs", "Inputs run through the model", registry=r)
        self.tokens = Counter("bertkit_tokens", "Word pieces run through the model", registry=r)

    def batch(self, n_inputs: int, n_tokens: int, waits: list[float], seconds: float) -> None:
        """One model batch done (Batcher's on_batch)."""
        self.batch_size.observe(n_inputs)
        self.batch_tokens.observe(n_tokens)
        self.batch_seconds.observe(seconds)
        for w in waits:
            self.queue_seconds.observe(w)
        self.inputs.inc(n_inputs)
        self.tokens.inc(n_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
